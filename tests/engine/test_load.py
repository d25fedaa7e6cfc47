"""numpygpt/engine/load.py and the sections' runners (engine/parallel.py): the cores other
processes leave free, measured from /proc, decide how many threads run a section's pieces,
never how the work is cut; so the numbers are the same busy or idle."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.engine import load, parallel

pytest.importorskip("threadpoolctl")


def test_others_share_is_the_machine_busy_time_less_our_own():
    # 1 s of wall time on 2 CPUs: the machine busy 1.5 CPU s, of which 0.5 were ours
    assert load.others_cpu((0.0, 10.0, 2.0), (1.0, 11.5, 2.5), cpus=2) == pytest.approx(0.5)
    assert load.others_cpu((0.0, 10.0, 2.0), (1.0, 10.0, 2.0), cpus=2) == 0.0
    assert load.others_cpu((0.0, 10.0, 2.0), (0.1, 10.2, 2.0), cpus=2) is None   # too short
    assert load.others_cpu(None, (1.0, 10.0, 2.0)) is None


@pytest.mark.parametrize("others, cpus, free", [(0.0, 2, 2), (0.1, 2, 2), (0.3, 2, 1),
                                                 (0.5, 2, 1), (1.0, 2, 1), (0.3, 4, 3),
                                                 (0.5, 8, 4), (1.0, 8, 1)])
def test_free_cores_round_to_the_nearest_and_leave_at_least_one(others, cpus, free):
    assert load.free_cores(others, cpus) == free


@pytest.fixture
def fake_machine(monkeypatch):
    """A machine of 2 CPUs whose /proc readings the test writes: set(busy_share_of_others)
    advances the clock by 1 s with the others using that share and this process one core."""
    state = {"t": 100.0, "busy": 0.0, "mine": 0.0}

    def advance(others_share, seconds=1.0):
        state["t"] += seconds
        state["busy"] += (2 * others_share + 1.0) * seconds
        state["mine"] += 1.0 * seconds

    monkeypatch.setattr(load, "cpu_snapshot", lambda: (state["t"], state["busy"], state["mine"]))
    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(parallel, "available_cpus", lambda: 2)
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: state["t"])
    monkeypatch.setattr(parallel, "_free", {"runners": None, "snapshot": load.cpu_snapshot(),
                                            "others": None})
    monkeypatch.delenv(parallel.ENV, raising=False)
    monkeypatch.setitem(parallel._state, "threads", None)
    return advance


def test_the_default_count_runs_on_the_cores_others_leave(fake_machine):
    fake_machine(0.0)
    assert parallel.runners() == 2                      # idle: every thread
    fake_machine(0.5)                                   # one core busy elsewhere
    assert parallel.runners() == 1
    fake_machine(0.02, seconds=0.1)                     # too soon to measure again
    assert parallel.runners() == 1
    fake_machine(0.02, seconds=1.0)                     # quiet again: both threads
    assert parallel.runners() == 2
    line = parallel.describe()
    assert "threads: 2 (one per CPU; NUMPYGPT_THREADS=N fixes the count)" in line
    assert "the sections run on 2 threads now" in line


def test_a_fixed_count_does_not_follow_the_load(fake_machine, monkeypatch):
    fake_machine(1.0)
    monkeypatch.setitem(parallel._state, "threads", 2)
    assert not parallel.adaptive() and parallel.runners() == 2
    assert parallel.describe() == "threads: 2 (set_threads(2), fixed)"
    monkeypatch.setitem(parallel._state, "threads", None)
    monkeypatch.setenv(parallel.ENV, "2")
    assert not parallel.adaptive() and parallel.runners() == 2
    assert parallel.describe() == "threads: 2 (NUMPYGPT_THREADS=2, fixed)"
    monkeypatch.delenv(parallel.ENV)
    assert parallel.adaptive() and parallel.runners() == 1
    assert "other processes use 100% of the CPUs, so the sections run on 1 thread now" in \
        parallel.describe()


def test_one_runner_runs_every_piece_in_the_calling_thread_in_order(threads, monkeypatch):
    threads(2)
    seen = []
    work = lambda lo, hi: seen.append((lo, hi, threading.get_ident())) or (lo, hi)
    monkeypatch.setattr(parallel, "runners", lambda: 1)
    assert parallel.rows(10, work) == [(0, 5), (5, 10)]               # the cut for 2 threads
    assert {t for *_, t in seen} == {threading.get_ident()}
    seen.clear()
    monkeypatch.setattr(parallel, "runners", lambda: 2)
    assert parallel.rows(10, work) == [(0, 5), (5, 10)]
    assert len({t for *_, t in seen}) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_step_gives_the_same_bits_on_one_runner_as_on_two(dtype, threads, monkeypatch):
    """The cut is fixed by the thread count; the load decides only who runs the pieces. Sizes
    above parallel.SMALL_WORK, so the linear, loss and attention sections are really cut."""
    cfg = ng.GPTConfig(vocab_size=512, n_positions=64, n_embd=96, n_head=2, n_layer=1)
    model = ng.GPT(cfg, seed=0, dtype=dtype, execution=ng.Execution(engine="fast", loss="chunked"))
    rng = np.random.default_rng(0)
    ids, labels = rng.integers(0, 512, (2, 64)), rng.integers(0, 512, (2, 64))
    threads(2)
    results = {}
    for n in (1, 2):
        monkeypatch.setattr(parallel, "runners", lambda n=n: n)
        loss, grads = model.loss_and_grads(ids, labels)
        results[n] = (loss, {k: g.copy() for k, g in grads.items()})
    assert results[1][0] == results[2][0]
    for k, g in results[1][1].items():
        assert np.array_equal(g, results[2][1][k]), k


BUSY = """
import time
from numpygpt.engine import parallel
parallel.set_threads(None)
time.sleep(1.0)                    # the busy processes run meanwhile
print(parallel.runners(), parallel.describe())
"""


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc")
def test_busy_processes_on_every_core_leave_one_runner():
    """A real machine: as many spinning processes as CPUs, and the default count runs its
    sections on one thread."""
    cpus = os.cpu_count()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        env = {k: v for k, v in os.environ.items() if k != parallel.ENV}
        r = subprocess.run([sys.executable, "-c", BUSY], capture_output=True, text=True,
                           env=env, timeout=60)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    runners, line = r.stdout.split(" ", 1)
    assert runners == "1", r.stdout + r.stderr
    assert "so the sections run on 1 thread now" in line
