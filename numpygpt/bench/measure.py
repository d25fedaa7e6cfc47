"""Measuring: the median of repeats after warm-up, peak memory (tracemalloc sees NumPy's
allocations), a float32 matmul GFLOP/s for the same machine and run, log-log slopes."""
import time
import tracemalloc

import numpy as np


def time_call(fn, repeats=5, warmup=1):
    """Run fn() warmup times untimed, then `repeats` times; seconds as a dict."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    return {"median": float(np.median(times)), "min": float(times.min()),
            "max": float(times.max()), "times": times.tolist()}


def peak_memory(fn):
    """Peak bytes allocated (above what was allocated before) while fn() runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return int(peak - base)


def matmul_gflops(n=1024, dtype=np.float32, repeats=5, warmup=2, seed=0):
    """GFLOP/s of an (n,n) @ (n,n) matmul: 2 n^3 FLOPs, median of repeats. The practical
    limit a NumPy program can reach on this machine."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    t = time_call(lambda: np.matmul(a, b, out=out), repeats, warmup)
    return 2.0 * n ** 3 / t["median"] / 1e9


def loglog_slope(xs, ys):
    """Least-squares slope of log(y) against log(x): ~2 for O(N^2), ~1 for O(N)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
