"""Run by tests/train/test_distributed.py under `mpiexec -n N`: one data-parallel step on a
fixed float64 SFT batch; rank 0 writes the loss and every gradient to argv[1] (.npz), with
the per-rank-mean version (the bug the global count guards against) beside them."""
import sys

import numpy as np

from numpygpt.train.distributed import data_parallel_loss_and_grads, share, world
from mpi_batch import model_and_batch

model, batch = model_and_batch()
w = world()
loss, grads, _ = data_parallel_loss_and_grads(model, batch, w)

# the bug: each rank divides by its own count, and the ranks' means are averaged
mine = share(batch, w.rank, w.size)
n_mine = int((mine["labels"] != -100).sum())
wrong = np.zeros(1)
if n_mine:
    wrong[0] = model.loss(**mine)                  # this rank's own mean
wrong = w.allreduce_sum(wrong) / w.size
counts = np.zeros(w.size)
counts[w.rank] = n_mine
counts = w.allreduce_sum(counts)
if w.rank == 0:
    np.savez(sys.argv[1], loss=loss, wrong_loss=wrong[0], counts=counts,
             **{f"grad.{k}": g for k, g in grads.items()})

# a stop signal on one rank reaches every rank through the same Allreduce
_, _, stop = data_parallel_loss_and_grads(model, batch, w, stop=(w.rank == w.size - 1))
if w.rank == 0:
    with open(sys.argv[1] + ".stop", "w") as f:
        f.write(str(bool(stop)))
