"""The lm_head and the cross-entropy together, a chunk of rows at a time: the (N,V) logits
never exist at once, and the rows labelled -100 cost nothing.

The standard path (lm_head_forward, then cross_entropy) holds the (N,V) logits and their
gradient: at N = 1024, V = 50257 that is ~200 MB each in float32. Here, for the rows n that
count (label y_n != ignore_index), with x_n (C,) and W (V,C):

    z_n    = W x_n                                    one row of logits (V,)
    loss_n = logsumexp(z_n) - z_n[y_n]
    g_n    = (softmax(z_n) - onehot(y_n)) / denom     d loss / d z_n (denom: the reduction's)
    dx_n   = W^T g_n                                  (C,)
    dW     = sum_n g_n x_n^T                          (V,C)

A row labelled ignore_index adds nothing to the loss or to either gradient (its dx row is 0),
so it is dropped *before* the matmul: an SFT batch whose prompt positions are -100 pays only
for its answer positions. The counted rows are taken chunk_rows at a time.

Like cross_entropy (a loss computes its gradient with itself, the one exception to the layer
convention): reductions "mean", "sum", "none" (per-position losses, 0 where ignored,
gradients of their sum), num_items with "mean", and no counted position -> loss 0 and zero
gradients. The same numbers as the standard path (tests/layers/test_chunked_loss.py).
"""
import numpy as np

from .cross_entropy import check_loss_arguments

CHUNK_BYTES = 32 * 2 ** 20      # default chunk: as many rows as fit ~32 MiB of logits


def default_chunk_rows(vocab_size, itemsize=4):
    return max(1, CHUNK_BYTES // (vocab_size * itemsize))


def lm_head_cross_entropy(x, p, labels, ignore_index=-100, reduction="mean", num_items=None,
                          chunk_rows=None, need_grads=True):
    """x (...,C), p {"weight": (V,C)}, labels (...) aligned -> loss, dx (...,C), {"weight": (V,C)}.
    loss: a float ("mean", "sum") or an array of labels' shape ("none").
    need_grads=False: the loss alone (dx and grads are None)."""
    W = p["weight"]
    V, C = W.shape
    labels, denominator = check_loss_arguments(labels, x.shape[:-1], V, ignore_index,
                                               reduction, num_items)
    chunk_rows = chunk_rows or default_chunk_rows(V, x.dtype.itemsize)
    xf = x.reshape(-1, C)                                          # (N,C)
    target = labels.reshape(-1)                                    # (N,)
    counted = np.flatnonzero(target != ignore_index)               # the rows that count, (n,)
    nll = np.zeros(target.shape, dtype=x.dtype)                    # (N,) 0 where ignored
    dx = np.zeros_like(xf)                                         # (N,C) 0 where ignored
    dW = np.zeros_like(W)                                          # (V,C)
    for start in range(0, len(counted), chunk_rows):
        rows = counted[start:start + chunk_rows]                   # (m,)
        xc, yc = xf[rows], target[rows]                            # (m,C), (m,)
        at = (np.arange(len(rows)), yc)                            # each row's target entry
        z = xc @ W.T                                               # (m,C) @ (C,V) -> (m,V)
        with np.errstate(over="ignore"):     # as cross_entropy: -3e38 - 3e38 = -inf, exp 0: right
            shifted = z - z.max(axis=1, keepdims=True)             # (m,V), row max 0
        sumexp = np.exp(shifted).sum(axis=1, keepdims=True)        # (m,1), >= 1
        nll[rows] = np.log(sumexp[:, 0]) - shifted[at]             # (m,)
        if not need_grads:
            continue
        g = np.exp(shifted) / sumexp                               # softmax (m,V)
        g[at] -= 1.0                                               # softmax - onehot(y)
        g = g / denominator                                        # d loss / d z
        dx[rows] = g @ W                                           # (m,V) @ (V,C) -> (m,C)
        dW += g.T @ xc                                             # (V,m) @ (m,C) -> (V,C)
    if reduction == "none":
        loss = nll.reshape(labels.shape)
    else:
        loss = float(nll.sum(dtype=np.float64) / denominator)
    if not need_grads:
        return loss, None, None
    return loss, dx.reshape(x.shape), {"weight": dW}
