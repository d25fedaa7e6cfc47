"""Data-parallel training over MPI: a step split over 2 or 3 ranks (uneven shares, one rank
counting no target at all) equals the single-process step on the full batch, loss and every
gradient, to 1e-12 in float64; the per-rank-mean version differs (the bug the global count
guards against). Runs `mpiexec` (the `mpi` extra); skipped, with the reason, where MPI
cannot start."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numpygpt.train.distributed import SingleProcess, launched_ranks, share, shares
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
