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
    small product cannot stall waiting for a BLAS thread the scheduler has put aside); a
    section of element-wise passes only says so (blas=False) and leaves BLAS alone;
  - the pieces' results come back in order: a fixed thread count gives the same bits on
    every run, and any count equals threads=1 to float32 rounding;
  - threads=1 (or a call from inside a piece) runs work(0, n) in the calling thread, BLAS
    untouched: the serial code, bit for bit. Work below SMALL_WORK elements runs in the
    calling thread too, with one BLAS thread.

The thread count: NUMPYGPT_THREADS in the environment (a count above the CPUs this process
may run on is capped to them, with a message: more threads than cores only wait for each
other), else those CPUs; `set_threads(n)` changes it (an MPI rank sets 1), `using_threads(n)` for a `with`
block. Without threadpoolctl BLAS cannot be limited, and numpygpt runs serially.

On a busy machine: with the default count (neither NUMPYGPT_THREADS nor set_threads), the
pieces are still cut for every CPU, but they run on as many threads as other processes leave
cores free (engine/load.py, re-measured every RECHECK_S seconds), each running thread taking
a run of consecutive pieces (with one, the calling thread runs them all, in order). Two threads that wait for each other at the end of
every section, on cores someone else holds, are slower than one. Only who runs a piece
changes, never the cut or BLAS's threads inside it: the same bits, busy or idle.
"""
import contextlib
import contextvars
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

from . import load

try:
    from threadpoolctl import ThreadpoolController
except ImportError:                 # no way to hold BLAS to one thread: run serially
    ThreadpoolController = None

ENV = "NUMPYGPT_THREADS"
SMALL_WORK = 1 << 16                # elements: below this a section runs in the calling thread
RECHECK_S = 0.5                     # the free cores are measured again after this many seconds


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
# the cores other processes leave free, as last measured (from this module's import on)
_free = {"runners": None, "snapshot": load.cpu_snapshot(), "others": None}
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


@contextlib.contextmanager
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
            "follows_load": adaptive(), "runners": runners(), "others_cpu": _free["others"],
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


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS held to one thread for the block, then given back its count. threadpoolctl's
    controllers are called directly: its `limit` costs ~10 us, and a decoded token enters
    dozens of small sections (a LayerNorm of one row)."""
    libs = _blas().lib_controllers
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


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


def rows(n, work, size=None, grain=None, blas=True):
    """work(lo, hi) over range(n), cut into one piece per thread, the pieces run at once;
    returns the results of the calls in order ([work(0, n)] when run serially).
    size: about how many elements the section touches; below SMALL_WORK it runs serially
    (the pool's ~30 us would cost more than it saves).
    grain: each thread then calls work on at most `grain` items at a time (serially too),
    a tile that stays in the core's cache across the passes over it.
    blas=False: work makes no BLAS call (element-wise passes), so BLAS's thread count is left
    as it is: setting it costs ~30 us right after a product, and a decoded token enters a
    few dozen such small sections (a LayerNorm of one row)."""
    threads = get_threads()
    if threads == 1 or getattr(_inside, "active", False):
        return _run_piece(work, 0, n, grain)            # serial; BLAS as it is
    hold = _one_blas_thread if blas else contextlib.nullcontext
    if size is not None and size < SMALL_WORK:
        with hold():                                    # small: one thread, one BLAS thread, so a
            return _run_piece(work, 0, n, grain)        # small product cannot stall on a busy machine
    if n < 2:
        return _run_piece(work, 0, n, grain)
    parts = pieces(n, threads)
    groups = pieces(len(parts), runners())          # consecutive pieces, one group per thread

    def run_group(a, b):
        return [r for lo, hi in parts[a:b] for r in _run_piece(work, lo, hi, grain)]
    with hold():
        # each group runs in a copy of the caller's context: np.errstate (overflow raises)
        # holds in the workers as it does in the caller
        futures = [_pool(threads - 1).submit(contextvars.copy_context().run, run_group, a, b)
                   for a, b in groups[1:]]
        try:
            results = run_group(*groups[0])
        finally:
            wait(futures)                       # every piece ends before the section does
        for f in futures:
            results += f.result()               # (raises a piece's exception)
    return results


def adaptive():
    """Does the number of threads running the pieces follow the load? Only with the default
    count: NUMPYGPT_THREADS or set_threads(n) fixes it."""
    return _state["threads"] is None and not (os.environ.get(ENV) or "").strip()


def runners():
    """How many threads run a section's pieces now: get_threads(), or, with the default count,
    the cores other processes left free over the last RECHECK_S seconds or more (measured
    again when that is older)."""
    threads = get_threads()
    if not adaptive():
        return threads
    before = _free["snapshot"]
    if before is None or time.perf_counter() - before[0] >= RECHECK_S:
        _note(before, load.cpu_snapshot())
    return max(1, min(threads, _free["runners"] or threads))


def _note(before, now):
    """Keep the others' share between two snapshots and the free cores it leaves; the newer
    snapshot starts the next interval."""
    others = load.others_cpu(before, now)                 # a share of the whole machine
    if now is not None:
        _free["snapshot"] = now
    if others is not None:
        _free["others"], _free["runners"] = others, load.free_cores(others)


def describe():
    """One line for a command's header: the thread count, where it comes from, and on how many
    threads the sections run now and why (measured since this module was imported, at least
    load.SHORTEST_S: a command's header waits for the rest of it)."""
    threads = get_threads()
    if ThreadpoolController is None:
        return "threads: 1 (threadpoolctl is not installed: BLAS cannot be limited, numpygpt runs serially)"
    if not adaptive():
        source = (f"set_threads({threads})" if _state["threads"] is not None
                  else f"{ENV}={os.environ.get(ENV)}")
        return f"threads: {threads} ({source}, fixed)"
    line = f"threads: {threads} (one per CPU; {ENV}=N fixes the count)"
    if threads == 1:
        return line
    before = _free["snapshot"]
    if before is not None:
        time.sleep(max(0.0, load.SHORTEST_S - (time.perf_counter() - before[0])))
        _note(before, load.cpu_snapshot())
    others = _free["others"]
    if others is None:
        return line + "; the load on the machine cannot be read (no /proc): every thread runs"
    now = runners()
    return (line + f"; other processes use {others:.0%} of the CPUs, so the sections run on "
            f"{now} thread{'s' * (now > 1)} now (measured again every {RECHECK_S:g} s; the same "
            f"numbers on any count)")
