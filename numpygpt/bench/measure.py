"""Measuring: the median of repeats after warm-up, peak memory (tracemalloc sees NumPy's
allocations), a float32 matmul GFLOP/s and a STREAM-style triad's memory bandwidth for the same
machine and run (the two roofs of a roofline), log-log slopes, and
whether a figure can be trusted (how far its median repeat is above its fastest, the matmul yardstick against its
best in the run, the CPU time other processes took meanwhile)."""
import os
import time
import tracemalloc

import numpy as np

from ..engine import parallel
from ..engine.load import cpu_snapshot, others_cpu      # noqa: F401 (the benchmarks' too)


MIN_REPEAT_S = 0.01        # a repeat shorter than this times several calls (as timeit does)


def time_call(fn, repeats=5, warmup=1):
    """Run fn() warmup times untimed, then `repeats` times; seconds per call as a dict.
    A call under MIN_REPEAT_S is timed `number` calls to a repeat (number from the last
    warm-up call): the clock's and the scheduler's jitter of some microseconds would
    otherwise be a large part of a 0.1 ms figure."""
    t_one = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        t_one = time.perf_counter() - t0
    number = max(1, int(MIN_REPEAT_S / t_one)) if t_one > 0 else 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    times = np.array(times)
    return {"median": float(np.median(times)), "min": float(times.min()),
            "max": float(times.max()), "times": times.tolist(), "number": number}


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


TRIAD_WORDS = 3      # STREAM's count: read b, read c, write a (see triad_bandwidth)


def triad_bandwidth(n=1 << 24, repeats=5, chunk=1 << 17, seed=0):
    """Bytes/s of a STREAM triad, a = b + s*c, over float64 arrays of n elements (default
    2^24: 128 MiB each, 4x a 32 MiB L3 cache, so every pass streams from main memory), the
    best of `repeats` passes after one warm-up pass, on numpygpt's threads (engine/parallel.py:
    each thread its own contiguous part of the arrays), as the decoding it is compared with.

    NumPy has no fused triad: a pass is cut into chunks of `chunk` elements (1 MiB of `a`, which
    stays in the cache), each `a = c * s` then `a += b`, so that memory sees one triad:
    b and c read, a written. Bytes are counted as STREAM counts them, TRIAD_WORDS = 3 words per
    element (3 * n * 8 per pass). The hardware moves a fourth: before a line of `a` is written
    the cache reads it (write-allocate), so the bus carried 4/3 of the figure returned.
    The figure is the machine's rate for a program that reads two streams and writes one,
    what decoding (which reads its weights and its KV cache) can at best hope for."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n)
    c = rng.standard_normal(n)
    a = np.empty(n)
    scalar = 3.0

    def part(lo, hi):                       # one chunk: its a stays in cache between the two ops
        np.multiply(c[lo:hi], scalar, out=a[lo:hi])
        np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    one_pass = lambda: parallel.rows(n, part, size=n, grain=chunk, blas=False)
    one_pass()                              # warm-up: a's pages are touched once
    best = min(time_call(one_pass, repeats=1, warmup=0)["min"] for _ in range(repeats))
    return TRIAD_WORDS * n * a.itemsize / best


def loglog_slope(xs, ys):
    """Least-squares slope of log(y) against log(x): ~2 for O(N^2), ~1 for O(N)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# ---- is a measurement to be trusted? ----------------------------------------------------------
# On a shared machine another job takes time slices from the threads being timed: the repeats
# slow down, the matmul yardstick drops, and a slope fitted through such times means nothing. Each
# figure is judged by three signs, and the reasons are printed beside it.

ABOVE_FASTEST_LIMIT = 0.5        # the median repeat this far above the fastest one (an idle 2-core
                          # VM moves the same work by up to ~30% from moment to moment)
YARDSTICK_LIMIT = 0.75    # the matmul rate at this figure / the best one seen in the run
OTHERS_LIMIT = 0.10       # share of the machine's CPU time other processes used meanwhile


def others_cpu_now(seconds=1.0):
    """The share (0..1) of the CPUs other processes use over the next `seconds`, this process
    idle meanwhile. Unlike the load average, it does not count what this process (an earlier
    benchmark in the same run) did just before; None where /proc is not there."""
    before = cpu_snapshot()
    time.sleep(seconds)
    return others_cpu(before, cpu_snapshot())


def busy_note(others):
    """What to say about the machine before a run: '' when it was quiet."""
    if others is None or others <= OTHERS_LIMIT:
        return ""
    return f"BUSY before the run: other processes used {others:.0%} of the CPUs"


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def problems(above_fastest=None, matmul=None, matmul_best=None, others=None):
    """Why a figure may not be trusted: a list of short reasons, empty when none."""
    out = []
    if above_fastest is not None and above_fastest > ABOVE_FASTEST_LIMIT:
        out.append(f"median repeat {above_fastest:.0%} above the fastest")
    if matmul is not None and matmul_best and matmul < YARDSTICK_LIMIT * matmul_best:
        out.append(f"matmul at {matmul / matmul_best:.0%} of its best in this run")
    if others is not None and others > OTHERS_LIMIT:
        out.append(f"other processes used {others:.0%} of the CPUs")
    return out


def advice(reasons):
    """What to do about a figure flagged for these reasons."""
    if any(r.startswith(("other processes", "matmul at")) for r in reasons):
        return "another job shared the machine; rerun when it is idle"
    return "its repeats were slowed; run it again, or with more --repeats"


def above_fastest(times):
    """How far the median of repeated times sits above the fastest: (median - min) / min
    (0 for one repeat). The figure shown is the median, so this is what can move it: one slow
    repeat (a page-fault storm, a daemon waking) leaves the median, and this, where they
    were; when half the repeats or more were slowed, both move."""
    t = np.asarray(times, dtype=np.float64)
    return float((np.median(t) - t.min()) / t.min()) if len(t) else 0.0


def blas_note(blas):
    """'2 (openblas 0.3.31, kernel SkylakeX)' from parallel.settings()["blas"]: the thread count
    and the kernel, which sets a matmul's speed (OPENBLAS_CORETYPE can force a slower one)."""
    if not blas:
        return "?"
    return ", ".join(f"{b.get('num_threads')} ({b.get('internal_api')} {b.get('version')}, "
                     f"kernel {b.get('architecture') or '?'})" for b in blas)

