"""Timing helpers shared by the PyTorch baselines of kiln-bench."""
import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, seconds, warmup=2, min_runs=3, max_runs=1000):
    """Median seconds of one call of `fn` after `warmup` calls, over at
    least `min_runs` calls or `seconds` of timed calls."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < seconds and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
