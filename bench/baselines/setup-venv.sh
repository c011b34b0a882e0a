#!/usr/bin/env bash
# Creates the virtual environment for the Celery baselines of kiln-bench
# (cases 1 and 2): Celery with RabbitMQ, its PostgreSQL result backend
# (SQLAlchemy + psycopg2) and boto3 for the S3 puts. Kept apart from the
# libtorch environment so that nothing here can change its torch.
#
#   KILN_BENCH_VENV  the environment (default ~/.cache/kiln/bench-venv)
#   KILN_PYTHON      the Python that creates it (default python3)
set -euo pipefail
venv=${KILN_BENCH_VENV:-$HOME/.cache/kiln/bench-venv}
py=${KILN_PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "[bench-venv] creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import celery, boto3, sqlalchemy, psycopg2, numpy' 2>/dev/null; then
  echo "[bench-venv] installing celery, boto3, sqlalchemy, psycopg2-binary, numpy" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check \
    'celery==5.*' boto3 'sqlalchemy==2.*' psycopg2-binary numpy
fi
"$venv/bin/python" -c 'import celery; print("celery", celery.__version__)' >&2
