"""Masked softmax cross-entropy over aligned labels, as PyTorch / HuggingFace define it.

For each position n with label y_n != ignore_index (default -100):
    loss_n = logsumexp(logits_n) - logits_n[y_n]
    dloss_n / dlogits_n = softmax(logits_n) - onehot(y_n)
A position whose label is ignore_index adds nothing to the loss or the gradient.

Reductions:
    "mean": sum over counted positions / number counted      (PyTorch, HuggingFace)
    "sum" : sum over counted positions
    "none": per-position losses, 0 where ignored; dlogits is then the gradient of their sum
    num_items=N (with "mean"): sum / N, where N is the count over a *whole* batch,
        so that micro-batches' gradients add up to the full batch's (gradient accumulation).
If no position counts, the loss is 0.0 and the gradient 0 (PyTorch's mean gives NaN).
`count_targets(labels)` tells the caller how many counted.

A loss is the one exception to the layer convention: it returns its gradient with itself.
Labels come from the user, so both losses check them (check_loss_arguments) before any work.
"""
import numpy as np

from ..checks import as_int_array, check_range, check_reduction


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean", num_items=None):
    """logits (...,V) float, labels (...) int, aligned -> loss, dlogits (...,V)."""
    logits = np.asarray(logits)
    V = logits.shape[-1]
    labels, denominator = check_loss_arguments(labels, logits.shape[:-1], V, ignore_index,
                                               reduction, num_items)
    z = logits.reshape(-1, V)                                           # (N,V)
    target = labels.reshape(-1)                                         # (N,)
    counted = target != ignore_index                                    # (N,)
    rows = np.arange(len(target))
    at = (rows, np.where(counted, target, 0))          # each row's target entry (ignored: any)
    # log-softmax, stable for logits of any magnitude: shift each row by its max
    with np.errstate(over="ignore"):     # e.g. -3e38 - 3e38 = -inf in float32: exp gives 0, right
        shifted = z - z.max(axis=-1, keepdims=True)                     # (N,V), row max 0
    sumexp = np.exp(shifted).sum(axis=-1, keepdims=True)                # (N,1), >= 1
    nll = np.where(counted, np.log(sumexp[:, 0]) - shifted[at], 0.0)    # (N,) 0 where ignored
    # d nll / d logits = softmax - onehot, / denominator, 0 on ignored rows
    dz = np.exp(shifted) / sumexp                                       # softmax (N,V)
    dz[at] -= 1.0                                                       # - onehot(y)
    dz = dz * (counted / denominator).astype(z.dtype)[:, None]          # (N,V)
    if reduction == "none":
        loss = nll.astype(z.dtype).reshape(labels.shape)
    else:
        loss = float(nll.sum(dtype=np.float64) / denominator)
    return loss, dz.reshape(logits.shape)


def count_targets(labels, ignore_index=-100):
    """Number of positions whose label is not ignore_index."""
    return int(np.count_nonzero(np.asarray(labels) != ignore_index))


def check_labels(labels, shape, vocab_size, ignore_index=-100, name="labels"):
    """Aligned labels against the (B,T) shape of the inputs / logits: each in [0, V) or
    ignore_index. -> the labels as an integer array."""
    labels = as_int_array(name, labels)
    if labels.shape != tuple(shape):
        raise ValueError(f"{name} has shape {labels.shape}, expected {tuple(shape)}")
    check_range(name, labels, 0, vocab_size, allowed=ignore_index,
                what=f"[0, vocab_size={vocab_size})")
    return labels


def loss_denominator(n_counted, reduction, num_items):
    """What the summed loss is divided by."""
    if num_items is not None:
        if reduction != "mean":
            raise ValueError(f"num_items={num_items!r} is only used with reduction='mean', "
                             f"got reduction={reduction!r}")
        if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 0:
            raise ValueError(f"num_items must be a non-negative integer, got {num_items!r}")
        if num_items < n_counted:
            raise ValueError(f"num_items={num_items} is smaller than the {n_counted} targets "
                             f"counted in this batch; it must be the count over the whole batch")
        return max(int(num_items), 1)
    return max(n_counted, 1) if reduction == "mean" else 1


def check_loss_arguments(labels, shape, vocab_size, ignore_index, reduction, num_items):
    """Everything a loss is told besides its input, checked -> (labels, denominator)."""
    check_reduction(reduction)
    labels = check_labels(labels, shape, vocab_size, ignore_index)
    return labels, loss_denominator(count_targets(labels, ignore_index), reduction, num_items)
