"""Case 2 baseline, the submitting side: warm up, submit N render tasks,
wait until every result is SUCCESS in the PostgreSQL result backend, and
print JSON (jobs/s and submit-to-succeeded latencies).

  BENCH_AMQP_URL=... BENCH_RESULT_BACKEND=db+postgresql://... \
  python celery_queue.py --jobs 5000 --prefix TENANT/BATCH --dsn postgresql://...

The worker side is `celery -A celery_app worker` with the same environment,
started by kiln-bench before this script. Latency of a task: the backend's
`date_done` (UTC, written by the worker) minus the moment its apply_async
began; throughput: tasks over the time from the first submit to the last
`date_done`.
"""
import argparse
import json
import os
import sys
import time

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from celery_app import app, render  # noqa: E402


def wait_for(cur, ids, timeout):
    deadline = time.time() + timeout
    want = len(ids)
    while True:
        cur.execute(
            "select count(*) from celery_taskmeta where status = 'SUCCESS' and task_id = any(%s)",
            (list(ids),),
        )
        have = cur.fetchone()[0]
        if have >= want:
            return
        cur.execute("select count(*) from celery_taskmeta where status = 'FAILURE'")
        if cur.fetchone()[0]:
            cur.execute("select result from celery_taskmeta where status = 'FAILURE' limit 1")
            raise SystemExit(f"a task failed: {cur.fetchone()[0]!r}")
        if time.time() > deadline:
            raise SystemExit(f"{have} of {want} tasks done after {timeout} s")
        time.sleep(0.1)


def submit(prefix, n, start, width, seed):
    sent = {}
    for i in range(start, start + n):
        t = time.time()
        r = render.apply_async(args=[f"{prefix}/{i}", f"queue benchmark prompt {i}", seed, width, width])
        sent[r.id] = t
    return sent


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    db = psycopg2.connect(a.dsn)
    db.autocommit = True
    cur = db.cursor()

    warm = submit(a.prefix + "-warm", a.warmup, 0, a.width, a.seed)
    # The backend creates its table on the first stored result.
    deadline = time.time() + 120
    while True:
        cur.execute("select to_regclass('celery_taskmeta') is not null")
        if cur.fetchone()[0]:
            break
        if time.time() > deadline:
            raise SystemExit("no result table after 120 s: is the worker running?")
        time.sleep(0.1)
    wait_for(cur, warm, 300)

    t0 = time.time()
    sent = submit(a.prefix, a.jobs, a.warmup, a.width, a.seed)
    t_submitted = time.time()
    wait_for(cur, sent, a.timeout)
    cur.execute(
        "select task_id, extract(epoch from date_done) from celery_taskmeta where task_id = any(%s)",
        (list(sent),),
    )
    done = {tid: float(ts) for tid, ts in cur.fetchall()}
    last = max(done.values())
    lat = [done[t] - s for t, s in sent.items()]
    import celery

    print(json.dumps({
        "celery": celery.__version__,
        "jobs": a.jobs,
        "submit_seconds": t_submitted - t0,
        "seconds": last - t0,
        "jobs_per_s": a.jobs / (last - t0),
        "latency_p50_s": pct(lat, 50),
        "latency_p99_s": pct(lat, 99),
    }))


if __name__ == "__main__":
    main()
