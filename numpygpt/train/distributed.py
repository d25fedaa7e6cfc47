"""Data-parallel training over MPI: every rank holds the same model and optimiser state and
computes on its share of the global batch; one Allreduce makes the step the full batch's.

The lesson's loss rule decides how: the loss is the mean over the targets that count in the
whole batch, never a mean of per-rank means. So each rank sums (reduction="sum"):

    loss_r, grads_r = sum over rank r's counted targets          n_r = its count
    Allreduce:  loss = sum_r loss_r,  grads = sum_r grads_r,  n = sum_r n_r
    every rank: loss / n, grads / n       -> exactly the full batch's mean and gradient

Dividing each rank's sum by its own n_r and averaging the ranks' results is the
gradient-accumulation bug: ranks with few counted targets (an SFT batch whose prompts are
long) weigh as much as ranks with many. The tests show it differs.

Every rank draws the same global batch from the same RNG and keeps its rows (np.array_split:
uneven shares allowed, a share may be empty), so the data stream does not depend on the
number of ranks and a run resumes with any number of them. Every rank applies the same
AdamW step to the same numbers, so the replicas stay identical; a checksum compared across
ranks every few steps proves it.

mpi4py is an optional extra (pip install -e ".[mpi]"): it is imported only when a run is
started under mpiexec with more than one rank.
"""
import os

import numpy as np

from ..engine import parallel
from ..layers import count_targets

# the environment variables MPI launchers set (MPICH/Hydra, Open MPI, Slurm's PMI)
WORLD_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID", "PMIX_RANK")


class ReplicaDrift(RuntimeError):
    """The ranks of a data-parallel run no longer hold the same parameters."""


class SingleProcess:
    """The one-process world: rank 0 of 1, and an Allreduce that changes nothing."""
    rank, size = 0, 1
    name = "1 process"

    def allreduce_sum(self, buffer):
        return buffer

    def all_equal(self, value):
        return True


class MPIWorld:
    """MPI.COMM_WORLD, with the two collectives training needs."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        version = " ".join(MPI.Get_library_version().split()[:3]).rstrip(",")
        self.name = f"{self.size} MPI ranks ({version})"

    def allreduce_sum(self, buffer):
        """The elementwise sum over the ranks of a contiguous array, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def all_equal(self, value):
        """True when every rank passed the same float."""
        values = self.comm.allgather(float(value))
        return all(v == values[0] for v in values)


def launched_ranks(environ=os.environ):
    """The number of ranks mpiexec started this process among (1 when not under MPI)."""
    for name in WORLD_SIZE_VARS:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launched_rank(environ=os.environ):
    """This process's rank as the launcher numbered it (0 when not under MPI)."""
    for name in RANK_VARS:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def world():
    """The world this process runs in: SingleProcess, or MPIWorld under mpiexec -n N > 1.
    Under mpiexec without mpi4py installed: a ValueError saying how to install it."""
    if launched_ranks() <= 1:
        return SingleProcess()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ValueError("this process was started by mpiexec, but mpi4py is not installed: "
                         "pip install -e \".[mpi]\" (mpi4py and an MPI from the registry)") from None
    return MPIWorld(MPI.COMM_WORLD)


def one_thread_per_rank(world):
    """In a data-parallel run the ranks are the parallelism: each holds BLAS and numpygpt's
    own parallel sections to one thread (threadpoolctl sets BLAS's, NumPy being loaded).
    -> how the threads were set, for the run's header."""
    if world.size == 1:
        return None
    parallel.set_threads(1)
    if not parallel.limit_blas(1):
        return "BLAS threads not limited (threadpoolctl is not installed)"
    return "1 BLAS thread per rank"


def share(batch, rank, size):
    """This rank's rows of a global batch (dict of (B,T) arrays): np.array_split's rank-th
    block, so shares differ by at most one row and the first B % size ranks take one more.
    Trailing columns that are padding in every row of the share are dropped."""
    B = len(batch["input_ids"])
    rows = np.array_split(np.arange(B), size)[rank]
    out = {k: v[rows] for k, v in batch.items()}
    if "attention_mask" in out and len(rows):
        used = np.flatnonzero(np.asarray(out["attention_mask"]).any(axis=0))
        T = int(used[-1]) + 1 if used.size else 1
        out = {k: v[:, :T] for k, v in out.items()}
    return out


def shares(batch_size, size):
    """How many rows of the global batch each rank takes."""
    return [len(r) for r in np.array_split(np.arange(batch_size), size)]


def data_parallel_loss_and_grads(model, batch, world, stop=False):
    """The loss and gradients of the *global* batch (the mean over every counted target in
    it), computed on this rank's share; the same numbers on every rank.
    stop: this rank was asked to stop (a signal); returned summed, so every rank agrees.
    -> (loss, grads, stop_anywhere)."""
    mine = share(batch, world.rank, world.size)
    n_mine = count_targets(mine["labels"])
    if len(mine["input_ids"]) and n_mine:
        loss_mine, grads = model.loss_and_grads(**mine, reduction="sum")
    else:                                   # nothing to sum here: zeros join the Allreduce
        loss_mine, grads = 0.0, {k: np.zeros_like(p) for k, p in model.params.items()}
    # one buffer, one Allreduce: every gradient, then the loss, the count and the stop flag
    sizes = [g.size for g in grads.values()]
    buffer = np.empty(sum(sizes) + 3, dtype=model.dtype)
    np.concatenate([g.reshape(-1) for g in grads.values()], out=buffer[:-3])
    buffer[-3:] = loss_mine, n_mine, float(stop)
    world.allreduce_sum(buffer)
    loss_sum, n, stops = (float(v) for v in buffer[-3:])
    scale = model.dtype.type(1.0 / max(n, 1.0))    # the global count (0 counted: all zeros)
    buffer *= scale
    offsets = np.cumsum([0] + sizes)
    grads = {name: buffer[o:o + size].reshape(g.shape)        # views of the summed buffer
             for (name, g), o, size in zip(grads.items(), offsets, sizes)}
    return loss_sum / max(n, 1.0), grads, stops > 0


class DataParallelGradients:
    """model.loss_and_grads for a data-parallel run: called with the global batch, it returns
    the global batch's loss and gradients, the same on every rank.
    stop_here: set by the loop when this rank was asked to stop; it travels in the Allreduce.
    stop_agreed: after a call, whether any rank had been asked: every rank then stops."""

    def __init__(self, model, world):
        self.model, self.world = model, world
        self.stop_here, self.stop_agreed = False, False

    def __call__(self, **batch):
        loss, grads, self.stop_agreed = data_parallel_loss_and_grads(
            self.model, batch, self.world, stop=self.stop_here)
        return loss, grads


def params_checksum(params):
    """A float64 sum of every parameter: equal on every rank while the replicas agree."""
    return float(sum(np.sum(p, dtype=np.float64) for p in params.values()))
