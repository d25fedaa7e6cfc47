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
"""
import numpy as np

from ..checks import as_int_array, check_range, check_reduction


def count_targets(labels, ignore_index=-100):
    """Number of positions whose label is not ignore_index."""
    return int(np.count_nonzero(np.asarray(labels) != ignore_index))


def check_labels(labels, shape, vocab_size, ignore_index=-100, name="labels"):
    """Validate aligned labels against the (B,T) shape of the inputs / logits."""
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


def cross_entropy(logits, labels, ignore_index=-100, reduction="mean", num_items=None):
    """logits (...,V) float, labels (...) int, aligned -> loss, dlogits (...,V)."""
    check_reduction(reduction)
    logits = np.asarray(logits)
    V = logits.shape[-1]
    labels = check_labels(labels, logits.shape[:-1], V, ignore_index)
    flat = logits.reshape(-1, V)                                        # (N,V)
    target = labels.reshape(-1)                                         # (N,)
    counted = target != ignore_index                                    # (N,)
    n_counted = int(counted.sum())
    denominator = loss_denominator(n_counted, reduction, num_items)

    # log-softmax, stable for logits of any magnitude: shift each row by its max
    with np.errstate(over="ignore"):        # e.g. -3e38 - 3e38 = -inf in float32: exp gives 0, right
        shifted = flat - flat.max(axis=-1, keepdims=True)               # (N,V), max 0
    exp = np.exp(shifted)
    sumexp = exp.sum(axis=-1, keepdims=True)                            # (N,1), >= 1
    rows = np.arange(flat.shape[0])
    safe_target = np.where(counted, target, 0)                          # ignored rows: any valid index
    nll = np.log(sumexp[:, 0]) - shifted[rows, safe_target]             # (N,)
    nll = np.where(counted, nll, 0).astype(logits.dtype, copy=False)

    # d(nll)/d(logits) = softmax - onehot, scaled by 1/denominator, 0 on ignored rows
    dlogits = exp / sumexp                                              # softmax (N,V)
    dlogits[rows, safe_target] -= 1
    dlogits *= (counted / denominator).astype(logits.dtype)[:, None]

    if reduction == "none":
        loss = nll.reshape(labels.shape)
    else:
        loss = float(nll.sum(dtype=np.float64) / denominator)
    return loss, dlogits.reshape(logits.shape)
