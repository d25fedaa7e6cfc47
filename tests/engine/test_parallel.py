"""numpygpt/engine/parallel.py, the one seam where threads enter, and what it promises: every
piece of range(n) run once, in order; BLAS held to one thread inside a section; errors and
np.errstate reach the caller; the setting checked and restored. (That the kernels built on it
compute their textbook twins' numbers at any thread count: tests/engine/test_kernels.py.)"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from numpygpt.engine import parallel

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


# ---- the helper --------------------------------------------------------------------------------

@pytest.mark.parametrize("n, parts", [(10, 2), (7, 3), (2, 5), (1, 2), (100, 1), (0, 2)])
def test_pieces_cover_the_range_in_order(n, parts):
    cut = parallel.pieces(n, parts)
    assert len(cut) == max(1, min(parts, n))
    assert cut[0][0] == 0 and cut[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cut, cut[1:]))                 # contiguous
    sizes = [hi - lo for lo, hi in cut]
    assert max(sizes) - min(sizes) <= 1


def test_one_thread_is_one_call_in_the_calling_thread(threads):
    threads(1)
    calls = []
    out = parallel.rows(10, lambda lo, hi: calls.append((lo, hi, threading.get_ident())) or hi - lo)
    assert out == [10] and calls == [(0, 10, threading.get_ident())]


def test_two_threads_split_the_range_and_return_in_order(threads):
    threads(2)
    seen = []
    out = parallel.rows(10, lambda lo, hi: seen.append(threading.get_ident()) or (lo, hi))
    assert out == [(0, 5), (5, 10)]
    assert len(set(seen)) == 2                                              # two threads ran


def test_grain_cuts_each_piece_into_tiles(threads):
    for n_threads in (1, 2):
        threads(n_threads)
        out = parallel.rows(10, lambda lo, hi: (lo, hi), grain=3)
        assert [hi - lo for lo, hi in out] == ([3, 3, 3, 1] if n_threads == 1 else [3, 2, 3, 2])
        assert out[0][0] == 0 and out[-1][1] == 10
        assert all(a[1] == b[0] for a, b in zip(out, out[1:]))


def test_small_work_runs_in_the_calling_thread(threads):
    threads(2)
    seen = []
    parallel.rows(10, lambda lo, hi: seen.append((lo, hi, threading.get_ident())),
                  size=parallel.SMALL_WORK - 1)
    assert seen == [(0, 10, threading.get_ident())]


def test_blas_is_one_thread_inside_a_section_and_restored_after(threads):
    before = blas_threads()
    threads(2)
    inside = parallel.rows(4, lambda lo, hi: blas_threads())
    assert inside == [[1] * len(before)] * 2
    assert blas_threads() == before
    threads(1)                                   # serial: BLAS untouched
    assert parallel.rows(4, lambda lo, hi: blas_threads()) == [before]


def test_element_wise_sections_leave_blas_alone_and_small_products_hold_it_to_one(threads):
    """blas=False (LayerNorm, GELU, AdamW: no product) leaves BLAS's count as it is, small or
    not; a small section that may run a product holds it to one thread."""
    threads(2)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):   # 2, where BLAS has two
        before = blas_threads()
        for size in (None, parallel.SMALL_WORK - 1):
            assert parallel.rows(4, lambda lo, hi: blas_threads(), size=size, blas=False) in (
                [before] * 2, [before])
        assert parallel.rows(4, lambda lo, hi: blas_threads(),
                             size=parallel.SMALL_WORK - 1) == [[1] * len(before)]
        assert blas_threads() == before


def test_a_section_inside_a_piece_runs_serially(threads):
    threads(2)
    inner = parallel.rows(2, lambda lo, hi: parallel.rows(8, lambda a, b: (a, b)))
    assert inner == [[(0, 8)], [(0, 8)]]


def test_an_error_in_a_worker_reaches_the_caller_and_the_pool_survives(threads):
    threads(2)

    def work(lo, hi):
        if lo > 0:
            raise KeyError("piece 2")
        return lo
    with pytest.raises(KeyError, match="piece 2"):
        parallel.rows(4, work)
    assert parallel.rows(4, lambda lo, hi: hi) == [2, 4]
    assert blas_threads() == [b for b in blas_threads()]     # (restored: no exception inside)


def test_errstate_holds_in_the_workers(threads):
    """The model raises on overflow (np.errstate in the calling thread): the pieces run by the
    pool's threads must raise too."""
    threads(2)
    x = np.full(8, 1e30, np.float32)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            parallel.rows(8, lambda lo, hi: x[lo:hi] * x[lo:hi] if lo > 0 else None)


def test_sequential_sections_inside_a_piece_stay_in_the_pieces_thread(threads):
    """A piece that runs two sections one after the other runs both serially in its own thread:
    the nested flag is restored, not cleared, when the first one ends (cleared, the second
    would go to the pool; from a worker it would wait on itself: the deadlock tested below in
    a child with a timeout). Here only the calling thread's piece nests, so a regression fails."""
    threads(2)

    def piece(lo, hi):
        if lo > 0:
            return True
        me = threading.get_ident()
        seen = []
        for _ in range(3):
            parallel.rows(8, lambda a, b: seen.append(threading.get_ident()))
        return set(seen) == {me} and len(seen) == 3
    assert parallel.rows(2, piece) == [True, True]


CONTENTION = """
import threading, numpy as np
from numpygpt.engine import parallel
parallel.set_threads(4)                                     # more threads than the 2 cores
x = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
expect = np.tanh(x)
busy = [threading.Thread(target=lambda: [np.exp(x) for _ in range(20000)], daemon=True)
        for _ in range(2)]                                  # other threads holding the cores
for t in busy:
    t.start()
for rep in range(200):
    out = np.empty_like(expect)
    def piece(lo, hi):
        for _ in range(2):                                  # sequential sections inside a piece
            parallel.rows(hi - lo, lambda a, b: np.tanh(x[lo + a:lo + b],
                                                        out=out[lo + a:lo + b]))
        return hi - lo
    assert sum(parallel.rows(64, piece, grain=5)) == 64
    assert np.array_equal(out, expect), rep                 # every row written before the return
print("ok")
"""


def test_sections_under_contention_finish_and_write_every_row():
    """More threads than cores, busy threads beside them, sections inside pieces, two
    sections one after the other inside one piece: every section ends, every row written.
    Run in a child with a timeout, so that a deadlock fails the test instead of hanging it."""
    r = subprocess.run([sys.executable, "-c", CONTENTION], capture_output=True, text=True,
                       timeout=120, env=os.environ)
    assert r.stdout.strip() == "ok", r.stderr


def test_a_thread_count_above_the_cpus_is_capped_with_a_message():
    cpus = parallel.available_cpus()
    r = run_python("from numpygpt.engine import parallel; print(parallel.get_threads())",
                   NUMPYGPT_THREADS=str(cpus + 998))
    assert r.stdout.strip() == str(cpus), r.stderr
    assert f"NUMPYGPT_THREADS={cpus + 998} is more than the {cpus} CPUs" in r.stderr


def test_thread_setting_is_checked_and_restored(threads):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            parallel.set_threads(bad)
    threads(2)
    with parallel.using_threads(1):
        assert parallel.get_threads() == 1 and not parallel.settings()["parallel"]
    assert parallel.get_threads() == 2 and parallel.settings()["parallel"]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_environment_variable_sets_the_default():
    r = run_python("from numpygpt.engine import parallel; print(parallel.get_threads())",
                   NUMPYGPT_THREADS="1")
    assert r.stdout.strip() == "1", r.stderr
    r = run_python("from numpygpt.engine import parallel; parallel.get_threads()", NUMPYGPT_THREADS="x")
    assert r.returncode != 0 and "NUMPYGPT_THREADS='x'" in r.stderr


def test_without_threadpoolctl_everything_runs_serially():
    code = ("import sys; sys.modules['threadpoolctl'] = None\n"
            "from numpygpt.engine import parallel; parallel.set_threads(2)\n"
            "print(parallel.get_threads(), parallel.rows(4, lambda lo, hi: (lo, hi)))")
    r = run_python(code)
    assert r.stdout.strip() == "1 [(0, 4)]", r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_makes_its_own_pool(threads):
    threads(2)
    parallel.rows(4, lambda lo, hi: hi)                      # the parent's pool exists
    code = ("import os, sys\nfrom numpygpt.engine import parallel\nparallel.set_threads(2)\n"
            "parallel.rows(4, lambda lo, hi: hi)\npid = os.fork()\n"
            "if pid == 0:\n    os._exit(0 if parallel.rows(4, lambda lo, hi: hi) == [2, 4] else 3)\n"
            "print(os.waitpid(pid, 0)[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "0", r.stderr


def test_capped_keeps_a_count_within_the_cpus_and_names_what_asked(capsys):
    cpus = parallel.available_cpus()
    assert parallel.capped(cpus, "--threads x") == cpus
    assert capsys.readouterr().err == ""
    assert parallel.capped(cpus + 1, "--threads y") == cpus
    assert f"--threads y is more than the {cpus} CPUs" in capsys.readouterr().err
