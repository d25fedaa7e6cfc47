"""Data-parallel training over MPI: a step split over 2 or 3 ranks (uneven shares, one rank
counting no target at all) equals the single-process step on the full batch, loss and every
gradient, to 1e-12 in float64; the per-rank-mean version differs (the bug the global count
guards against). Runs `mpiexec` (the `mpi` extra); skipped, with the reason, where MPI
cannot start."""
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from numpygpt.train.distributed import (ReplicaDrift, SingleProcess, launched_ranks, share,
                                        shares)
from mpi_batch import model_and_batch

HERE = os.path.dirname(os.path.abspath(__file__))


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there), or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def mpi_unavailable():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e \".[mpi]\")"
    if mpiexec() is None:
        return "no mpiexec (pip install -e \".[mpi]\" installs MPICH's)"
    r = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", "from mpi4py import MPI; "
                        "MPI.COMM_WORLD.Barrier()"], capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else f"mpiexec -n 2 cannot start: {r.stderr.strip()[-300:]}"


MPI_PROBLEM = mpi_unavailable()
needs_mpi = pytest.mark.skipif(MPI_PROBLEM is not None, reason=str(MPI_PROBLEM))


def run_ranks(n, script, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.join(HERE, "..", "..")])}
    r = subprocess.run([mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, script),
                        *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_a_data_parallel_step_equals_the_full_batch_step(ranks, tmp_path):
    model, batch = model_and_batch()
    loss, grads = model.loss_and_grads(**batch)           # one process, the whole batch
    run_ranks(ranks, "mpi_step.py", tmp_path / "step.npz")
    got = np.load(tmp_path / "step.npz")
    counts = got["counts"]
    assert counts.sum() == (batch["labels"] != -100).sum() and counts[0] == 0
    assert abs(float(got["loss"]) - loss) <= 1e-12 * abs(loss)
    for name, g in grads.items():
        np.testing.assert_allclose(got[f"grad.{name}"], g, rtol=1e-12, atol=1e-12 * np.abs(g).max())
    # dividing by each rank's own count, then averaging the ranks, is a different number
    assert abs(float(got["wrong_loss"]) - loss) > 0.1
    # a stop signal on the last rank only reaches rank 0 through the same Allreduce
    assert (tmp_path / "step.npz.stop").read_text() == "True"


# ---- the commands under mpiexec ---------------------------------------------------------------

TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--eval-every", "2",
        "--save-every", "2"]
TRAIN = ["train", *TINY, "--seq-len", "32", "--batch-size", "5", "--sample-tokens", "0"]
SFT = ["sft", *TINY, "--batch-size", "7", "--n-test", "20", "--show", "0"]


def numpygpt(*argv, ranks=1, cwd=None):
    """`numpygpt ARGV`, alone or under `mpiexec -n RANKS`; -> the finished process."""
    command = [sys.executable, "-m", "numpygpt", *map(str, argv)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    r = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def assert_same_run(a, b):
    """Two checkpoints of the same run: parameters equal to float32 rounding on the model's
    scale, losses to 1e-5. (Not tensor by tensor: the key bias's true gradient is exactly 0,
    its computed one rounding noise of either sign, and AdamW turns that into updates of
    rounding size in a tensor whose values are all rounding size.)"""
    scale = max(float(np.abs(p).max()) for p in a["params"].values())
    worst = max(float(np.abs(a["params"][k] - b["params"][k]).max()) for k in a["params"])
    assert worst <= 1e-5 * scale, (worst, scale)
    np.testing.assert_allclose(b["extra"]["history"]["losses"], a["extra"]["history"]["losses"],
                               rtol=1e-5)
    assert a["step"] == b["step"]


@needs_mpi
@pytest.mark.parametrize("command", [TRAIN, SFT], ids=["train", "sft"])
def test_mpiexec_run_equals_the_single_process_run(command, tmp_path):
    from numpygpt.train import load_checkpoint
    numpygpt(*command, "--steps", "4", "--out", tmp_path / "one")
    r = numpygpt(*command, "--steps", "4", "--out", tmp_path / "two", ranks=2)
    header = r.stdout.splitlines()[0]
    assert header.startswith("data-parallel: 2 MPI ranks") and "1 BLAS thread per rank" in header
    assert ("= 3 + 2 rows" if command is TRAIN else "= 4 + 3 rows") in header
    assert r.stdout.count("data-parallel:") == 1           # rank 0 alone prints
    assert_same_run(load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two"))


@needs_mpi
def test_resume_with_a_different_number_of_ranks_continues_the_same_run(tmp_path):
    from numpygpt.train import load_checkpoint
    numpygpt(*TRAIN, "--steps", "6", "--out", tmp_path / "whole")
    numpygpt(*TRAIN, "--steps", "6", "--stop-at", "2", "--out", tmp_path / "parts", ranks=2)
    r = numpygpt("train", "--resume", tmp_path / "parts", "--stop-at", "4", ranks=3)
    assert "global batch 5 = 2 + 2 + 1 rows" in r.stdout and "resuming" in r.stdout
    numpygpt("train", "--resume", tmp_path / "parts")       # and the last steps in one process
    assert_same_run(load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts"))


def test_shares_split_the_batch_unevenly_and_drop_padding_columns():
    _, batch = model_and_batch()
    assert shares(5, 2) == [3, 2] and shares(5, 3) == [2, 2, 1] and shares(2, 3) == [1, 1, 0]
    parts = [share(batch, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["input_ids"][:, :3] for p in parts]),
                                  batch["input_ids"][:, :3])
    for p in parts:                                       # no column is padding in every row
        assert p["attention_mask"][:, -1].any()
    empty = share({k: v[:2] for k, v in batch.items()}, 2, 3)
    assert len(empty["input_ids"]) == 0


def test_one_process_is_a_world_of_one(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_ranks() == 1
    assert launched_ranks({"PMI_SIZE": "3"}) == 3
    w = SingleProcess()
    buf = np.arange(3.0)
    assert w.allreduce_sum(buf) is buf and w.all_equal(1.5)


class TwoRanksThatDisagree(SingleProcess):
    """Rank 0 of two whose Allreduce changes nothing and whose checksums never agree."""
    size = 2

    def all_equal(self, value):
        return False


def test_replicas_that_drift_apart_stop_the_run(tmp_path):
    import numpygpt as ng
    from numpygpt.train import AdamW, TrainSettings, train_loop
    model, batch = model_and_batch()
    settings = TrainSettings(task="sft", steps=4, eval_every=2, save_every=1)
    with pytest.raises(ReplicaDrift, match="step 2: the ranks' parameters differ"):
        train_loop(model, AdamW(model.params), settings, lambda rng: batch,
                   np.random.default_rng(0), out=str(tmp_path / "run"),
                   world=TwoRanksThatDisagree())
    assert ng.train.load_checkpoint(str(tmp_path / "run"))["step"] == 1   # the last good one


def test_mpiexec_without_mpi4py_says_how_to_install_it(monkeypatch):
    from numpygpt.train.distributed import world
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # importing it raises ImportError
    with pytest.raises(ValueError, match=r'mpi4py is not installed: pip install -e "\.\[mpi\]"'):
        world()


@needs_mpi
def test_the_data_parallel_benchmark_runs_and_its_loss_curves_agree(tmp_path):
    """benchmarks/data_parallel.py, shortened: both runs train on the same global batches, so
    their losses agree to float32 rounding; the table and the JSON have both runs."""
    script = os.path.join(HERE, "..", "..", "benchmarks", "data_parallel.py")
    r = subprocess.run([sys.executable, script, "--steps", "4", "--warmup", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "data_parallel.json").read_text())
    assert list(report["runs"]) == ["1 process", "2 ranks"]
    one, two = (np.array(run["losses"]) for run in report["runs"].values())
    assert len(one) == len(two) == 4 and np.all(np.abs(one - two) <= 1e-5 * np.abs(one))
    assert report["max_loss_difference"] == pytest.approx(np.max(np.abs(one - two)))
    assert "2 ranks x 1 thread / 1 process" in r.stdout


def started_under_mpiexec(out, *options):
    """`mpiexec -n 2 numpygpt sft` in its own session, once its first checkpoint is on disk
    (training has started); -> the mpiexec process."""
    command = [mpiexec(), "-n", "2", sys.executable, "-m", "numpygpt", *map(str, SFT),
               "--steps", "100000", "--save-every", "1", "--out", str(out), *options]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.json").exists():
        assert p.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    return p


def rank_pids(mpiexec_pid):
    """{rank: pid} of the Python processes under mpiexec (under its proxy, for MPICH), each
    rank read from its environment (PMI_RANK, OMPI_COMM_WORLD_RANK)."""
    found, todo = {}, [mpiexec_pid]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(c) for c in f.read().split()]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        rank = env.get(b"PMI_RANK", env.get(b"OMPI_COMM_WORLD_RANK"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if rank is not None and b"numpygpt" in f.read():
                found[int(rank)] = pid
    return found


def assert_stopped_together(p, out):
    """Every rank ends (a hang fails after 60 s), once, after one step, rank 0's checkpoint saved."""
    from numpygpt.train import load_checkpoint
    try:
        stdout, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("a rank did not stop: mpiexec still running after 60 s") from None
    stopped = re.findall(r"stopped after step (\d+)", stdout + stderr)
    assert len(stopped) == 1, stdout + stderr                # rank 0 alone says it
    checkpoint = load_checkpoint(out)
    assert checkpoint["step"] == int(stopped[0])
    return stdout + stderr


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_ctrl_c_to_mpiexec_stops_every_rank_after_the_same_step(tmp_path):
    p = started_under_mpiexec(tmp_path / "run")
    os.kill(p.pid, signal.SIGINT)
    assert_stopped_together(p, tmp_path / "run")


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, rank):
    p = started_under_mpiexec(tmp_path / "run")
    ranks = rank_pids(p.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[rank], signal.SIGTERM)
    text = assert_stopped_together(p, tmp_path / "run")
    assert "SIGTERM" in text or "another rank" in text
