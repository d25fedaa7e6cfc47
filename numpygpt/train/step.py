"""One training step, as every run takes it (train/loop.py runs it again and again):

    loss, grads = model.loss_and_grads(**batch)     forward and backward
    norm = clip_grad_norm(grads, max_norm)          the global gradient norm <= max_norm
    optimizer.step(model.params, grads, lr)         AdamW, the parameters updated in place
"""
import math

import numpy as np

from ..checks import NonFiniteError
from .optim import clip_grad_norm


def train_step(model, optimizer, batch, lr, max_norm, gradients=None):
    """One step on one batch -> (loss, the gradient norm before clipping).
    gradients: what computes (loss, grads) from the batch; default model.loss_and_grads (a
    data-parallel run's sums every rank's share: train/distributed.py).
    Raises NonFiniteError, before the update, when the loss or the norm is not finite, and
    when the update leaves the floating-point range."""
    gradients = gradients or model.loss_and_grads
    loss, grads = gradients(**batch)                        # forward + backward
    norm = clip_grad_norm(grads, max_norm)                  # scales nothing if nan/inf
    if not math.isfinite(loss) or not math.isfinite(norm):
        raise NonFiniteError(f"the loss is {loss}" if not math.isfinite(loss)
                             else f"the gradient norm is {norm}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            optimizer.step(model.params, grads, lr)         # AdamW
    except FloatingPointError as e:
        raise NonFiniteError(f"the update (lr {lr:.3g}) left the floating-point range "
                             f"({e})") from None
    return loss, norm
