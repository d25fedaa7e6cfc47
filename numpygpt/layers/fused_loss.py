"""Fused lm_head + cross-entropy, computed chunk by chunk of rows, so that the (N,V)
logits never exist at once, and rows labelled ignore_index cost nothing.

The textbook path (lm_head_forward, then cross_entropy) materialises logits (N,V), the
shifted logits, their exp and dlogits: at N = 1024, V = 50257 that is ~200 MB each in float32.
Here, for the rows n that count (label y_n != ignore_index), with x_n (C,), W (V,C):

    z_n    = W x_n                                    one row of logits (V,)
    loss_n = logsumexp(z_n) - z_n[y_n]
    g_n    = (softmax(z_n) - onehot(y_n)) / denom     d loss / d z_n  (denom: the reduction's)
    dx_n   = W^T g_n                                  (C,)
    dW     = sum_n g_n x_n^T                          (V,C)

Rows labelled ignore_index add nothing to the loss or to either gradient (their dx row
is 0), so they are dropped *before* the matmul: an SFT batch whose prompt positions are
-100 pays only for its answer positions. The counted rows are taken `chunk_size` at a
time; one (chunk_size, V) buffer is reused for z, exp(z) and g in place.

The same numbers as the textbook path (tests/layers/test_fused_loss.py): reductions "mean", "sum",
"none" (per-position losses, 0 where ignored, gradients of their sum), num_items with
"mean", and no counted position -> loss 0 and zero gradients.
"""
import numpy as np

from .. import parallel
from ..checks import check_reduction
from .cross_entropy import check_labels, loss_denominator

CHUNK_BYTES = 32 * 2 ** 20      # default chunk: as many rows as fit a ~32 MiB (rows, V) buffer
SLICE_BYTES = 12 * 2 ** 20      # dW is accumulated in vocabulary slices of ~12 MiB


def default_chunk_size(vocab_size, itemsize=4):
    return max(1, CHUNK_BYTES // (vocab_size * itemsize))


def _check_inputs(x, weight, chunk_size):
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be a float32 or float64 array (...,C), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} of shape {np.shape(x)}")
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or weight.dtype != x.dtype:
        raise ValueError(f"weight must be a (V,C) array of x's dtype {x.dtype}, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} of shape {np.shape(weight)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {weight.shape}, which does not match x's last "
                         f"dimension C={x.shape[-1]}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or
                                   not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def _accumulate_outer(dW, g, xc, tmp):
    """dW (V,C) += g^T @ xc, g (m,V), xc (m,C), one vocabulary slice at a time, so that the
    only temporary is tmp (S,C) and not a second (V,C) array (NumPy's matmul cannot add
    into its output)."""
    S = tmp.shape[0]
    for v0 in range(0, dW.shape[0], S):
        v1 = min(v0 + S, dW.shape[0])
        part = np.matmul(g[:, v0:v1].T, xc, out=tmp[:v1 - v0])   # (S,m) @ (m,C) -> (S,C)
        dW[v0:v1] += part


def lm_head_cross_entropy(x, p, labels, ignore_index=-100, reduction="mean",
                          num_items=None, chunk_size=None, need_grads=True):
    """x (...,C), p {"weight": (V,C)}, labels (...) aligned -> loss, dx (...,C), {"weight": (V,C)}.

    loss is a float ("mean", "sum") or an array of labels' shape ("none").
    chunk_size: rows per chunk; None picks about 32 MiB of logits per chunk.
    need_grads=False: the loss alone (dx and the grads are None), a third of the matmuls."""
    weight = p["weight"]
    check_reduction(reduction)
    _check_inputs(x, weight, chunk_size)
    V, C = weight.shape
    labels = check_labels(labels, x.shape[:-1], V, ignore_index)
    dtype = x.dtype
    xf = x.reshape(-1, C)                                    # (N,C)
    target = labels.reshape(-1)                              # (N,)
    N = target.shape[0]
    rows = np.flatnonzero(target != ignore_index)            # the rows that count
    n = rows.size
    denominator = loss_denominator(n, reduction, num_items)
    R = chunk_size or default_chunk_size(V, dtype.itemsize)

    nll = np.zeros(N, dtype=dtype) if reduction == "none" else None
    total = 0.0                                              # summed in float64
    dx = dW = None
    if n == 0:                                               # nothing counts: loss 0, zero grads
        if need_grads:
            dx, dW = np.zeros_like(xf), np.zeros_like(weight)
    else:
        all_rows = n == N
        xk = xf if all_rows else xf[rows]                    # (n,C): ignored rows dropped here
        tk = target if all_rows else target[rows]            # (n,)
        if need_grads:
            dxk = np.empty((n, C), dtype=dtype)
            dW = np.empty((V, C), dtype=dtype)               # the first chunk writes it
            tmp = np.empty((max(1, min(V, SLICE_BYTES // (C * dtype.itemsize))), C), dtype=dtype)
        buf = np.empty((min(R, n), V), dtype=dtype)          # one chunk of logits, reused
        inv_denom = dtype.type(1.0 / denominator)
        for start in range(0, n, R):
            xc, t = xk[start:start + R], tk[start:start + R]       # (m,C), (m,)
            m = t.shape[0]
            z = np.matmul(xc, weight.T, out=buf[:m])               # (m,C) @ (C,V) -> (m,V) logits

            def chunk_rows(lo, hi):                                # rows lo:hi of the chunk
                z_ = z[lo:hi]
                at = (np.arange(hi - lo), t[lo:hi])                # the target entry of each row
                with np.errstate(over="ignore"):     # as cross_entropy: -huge - huge = -inf, exp 0
                    z_ -= z_.max(axis=1, keepdims=True)            # shift: row max is 0
                z_target = z_[at]                                  # (m,) shifted target logit
                np.exp(z_, out=z_)                                 # z now holds exp(z)
                sumexp = z_.sum(axis=1, keepdims=True)             # (m,1), >= 1
                if need_grads:
                    # g = (softmax - onehot) / denom, in place: exp(z) * (1 / (denom * sumexp)) - onehot / denom
                    z_ *= inv_denom / sumexp
                    z_[at] -= inv_denom
                return np.log(sumexp[:, 0]) - z_target             # loss_n = lse - z_target

            # = chunk_rows(0, m): the element-wise passes, the rows shared among the cores
            nll_c = np.concatenate(parallel.rows(m, chunk_rows, size=m * V))
            if nll is not None:
                nll[rows[start:start + m]] = nll_c
            total += float(nll_c.sum(dtype=np.float64))
            if not need_grads:
                continue
            # dx = z @ W, (m,V) @ (V,C) -> (m,C), computed as (W^T @ z^T)^T: the same numbers, but
            # OpenBLAS runs this orientation several times faster for m << V (bench-step --loss-memory)
            dxk[start:start + m] = (weight.T @ z.T).T
            if start == 0:
                np.matmul(z.T, xc, out=dW)                         # (V,m) @ (m,C) -> (V,C)
            else:
                _accumulate_outer(dW, z, xc, tmp)
        if need_grads and all_rows:
            dx = dxk
        elif need_grads:
            dx = np.zeros_like(xf)
            dx[rows] = dxk                                         # ignored rows: dx = 0

    if reduction == "none":
        loss = nll.reshape(labels.shape)
    else:
        loss = total / denominator
    if not need_grads:
        return loss, None, None
    return loss, dx.reshape(x.shape), {"weight": dW}
