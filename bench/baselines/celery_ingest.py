"""Case 1 baseline: publish N Celery tasks with apply_async; print JSON.

  BENCH_AMQP_URL=... [BENCH_CONFIRM=1] python celery_ingest.py --jobs 100000

Each task carries a prompt and the parameters a Kiln job carries. The time
runs from the first apply_async to the return of the last one (with
BENCH_CONFIRM=1 each returns after the broker confirmed it). Nobody consumes
the tasks; the caller deletes the virtual host afterwards.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from celery_app import app, noop  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    a = ap.parse_args()
    params = {"width": 256, "height": 256, "steps": 1, "seed": 7}
    # Connect and declare the queue outside the timing, as Kiln's dispatcher
    # is started (and connected) before its clock starts.
    with app.connection_for_write() as conn:
        conn.ensure_connection()
    noop.apply_async(args=["warm-up", params])
    t0 = time.perf_counter()
    for i in range(a.jobs):
        noop.apply_async(args=[f"a prompt for the ingest benchmark, number {i}", params])
    dt = time.perf_counter() - t0
    import celery

    print(json.dumps({
        "celery": celery.__version__,
        "confirm": os.environ.get("BENCH_CONFIRM") == "1",
        "jobs": a.jobs,
        "seconds": dt,
        "jobs_per_s": a.jobs / dt,
    }))


if __name__ == "__main__":
    main()
