"""Parallel execution: both cores for NumPy's work, entering at one seam (as llm.c's OpenMP
pragmas do in C). A reader who skips this module loses none of the math.

NumPy runs an element-wise pass (exp, tanh, +, *) on one core; only BLAS (matmul) uses
several. But NumPy releases the GIL inside its loops, so Python threads can run the cores
on independent slices of the work: rows of the token dimension, heads of attention, chunks
of the optimiser's arrays. A hot spot says

    parallel.rows(n, work)          # = work(0, n), cut into [lo, hi) pieces run at once

and means exactly `work(0, n)`: the same lines on every row, done in pieces. Here:

  - a persistent pool of threads - 1 workers; the calling thread runs the first piece;
  - range(n) is cut into `threads` contiguous pieces, the same cut for the same n and count;
  - BLAS is held to one thread inside the section (threadpoolctl), so that two Python
    threads each run one BLAS thread instead of four threads fighting for two cores (and a
    small product cannot stall waiting for a BLAS thread the scheduler has put aside);
  - the pieces' results come back in order: a fixed thread count gives the same bits on
    every run, and any count equals threads=1 to float32 rounding;
  - threads=1 (or a call from inside a piece) runs work(0, n) in the calling thread, BLAS
    untouched: the serial code, bit for bit. Work below SMALL_WORK elements runs in the
    calling thread too, with one BLAS thread.

The thread count: NUMPYGPT_THREADS in the environment (a count above the CPUs this process
may run on is capped to them, with a message: more threads than cores only wait for each
other), else those CPUs; `set_threads(n)` changes it (an MPI rank sets 1), `using_threads(n)` for a `with`
block. Without threadpoolctl BLAS cannot be limited, and numpygpt runs serially.
"""
import contextvars
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

try:
    from threadpoolctl import ThreadpoolController
except ImportError:                 # no way to hold BLAS to one thread: run serially
    ThreadpoolController = None

ENV = "NUMPYGPT_THREADS"
SMALL_WORK = 1 << 16                # elements: below this a section runs in the calling thread


def available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _threads_from_env():
    value = os.environ.get(ENV)
    if value is None or value.strip() == "":
        return available_cpus()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}={value!r}: expected a positive integer")
    return capped(n, f"{ENV}={n}")


def capped(n, what):
    """n threads, or the CPUs this process may run on when n is more (more threads than cores
    only wait for each other), said once on stderr naming `what` asked for n."""
    cpus = available_cpus()
    if n > cpus:
        if _state["capped"] != what:
            print(f"numpygpt: {what} is more than the {cpus} CPUs this process may run on: "
                  f"using {cpus} threads", file=sys.stderr)
            _state["capped"] = what
        return cpus
    return n


_state = {"threads": None, "pool": None, "blas": None, "capped": None}   # threads None: env
_lock = threading.Lock()
_inside = threading.local()         # .active: this thread is running a piece of a section


def set_threads(n):
    """Use n threads (n >= 1) for the parallel sections from now on; None: the default again
    (NUMPYGPT_THREADS, else every CPU)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    _state["threads"] = n


def get_threads():
    """The thread count the parallel sections use (1 when BLAS cannot be limited)."""
    if ThreadpoolController is None:
        return 1
    return _state["threads"] if _state["threads"] is not None else _threads_from_env()


@contextmanager
def using_threads(n):
    """with using_threads(1): ... runs the block with n threads, then restores the setting."""
    before = _state["threads"]
    set_threads(n)
    try:
        yield
    finally:
        _state["threads"] = before


def settings():
    """What the benchmarks record: the thread count, whether sections run in parallel, BLAS."""
    blas = _blas()
    return {"threads": get_threads(), "parallel": get_threads() > 1,
            "threadpoolctl": ThreadpoolController is not None, "env": os.environ.get(ENV),
            "blas": [{k: lib.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
                     for lib in (blas.info() if blas is not None else [])]}


def limit_blas(n):
    """Hold BLAS to n threads for the rest of the process (a data-parallel rank sets 1).
    -> False when BLAS cannot be limited (no threadpoolctl)."""
    blas = _blas()
    if blas is None:
        return False
    blas.limit(limits=n)
    return True


def _blas():
    if ThreadpoolController is None:
        return None
    if _state["blas"] is None:
        _state["blas"] = ThreadpoolController().select(user_api="blas")
    return _state["blas"]


def _pool(workers):
    """The persistent pool, (re)made with `workers` threads."""
    with _lock:
        pool, made_for = _state["pool"] or (None, None)
        if made_for != (workers, os.getpid()):         # (a forked child has no pool threads)
            if pool is not None and made_for[1] == os.getpid():
                pool.shutdown(wait=True)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="numpygpt")
            _state["pool"] = (pool, (workers, os.getpid()))
        return pool


def pieces(n, parts):
    """range(n) cut into at most `parts` contiguous [lo, hi), sizes differing by at most one."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + q + (i < r))
    return list(zip(bounds[:-1], bounds[1:]))


def _run_piece(work, lo, hi, grain):
    """work over [lo, hi), in steps of at most `grain` (all at once when grain is None)."""
    step = max(hi - lo if grain is None else grain, 1)
    if hi <= lo:
        return [work(lo, hi)]
    active, _inside.active = getattr(_inside, "active", False), True
    try:
        return [work(a, min(a + step, hi)) for a in range(lo, hi, step)]
    finally:
        _inside.active = active


def rows(n, work, size=None, grain=None):
    """work(lo, hi) over range(n), cut into one piece per thread, the pieces run at once;
    returns the results of the calls in order ([work(0, n)] when run serially).
    size: about how many elements the section touches; below SMALL_WORK it runs serially
    (the pool's ~30 us would cost more than it saves).
    grain: each thread then calls work on at most `grain` items at a time (serially too),
    a tile that stays in the core's cache across the passes over it."""
    threads = get_threads()
    if threads == 1 or getattr(_inside, "active", False):
        return _run_piece(work, 0, n, grain)            # serial; BLAS as it is
    if size is not None and size < SMALL_WORK:
        with _blas().limit(limits=1):                   # small: one thread, one BLAS thread, so a
            return _run_piece(work, 0, n, grain)        # small product cannot stall on a busy machine
    if n < 2:
        return _run_piece(work, 0, n, grain)
    parts = pieces(n, threads)
    pool = _pool(threads - 1)
    with _blas().limit(limits=1):
        # each piece runs in a copy of the caller's context: np.errstate (overflow raises)
        # holds in the workers as it does in the caller
        futures = [pool.submit(contextvars.copy_context().run, _run_piece, work, lo, hi, grain)
                   for lo, hi in parts[1:]]
        try:
            results = _run_piece(work, *parts[0], grain)
        finally:
            wait(futures)                       # every piece ends before the section does
        for f in futures:
            results += f.result()               # (raises a piece's exception)
    return results

