"""The chunked lm_head + cross-entropy in the engine. Textbook twin:
numpygpt/layers/chunked_loss.py (lm_head_cross_entropy): the same rows dropped, the same
chunks of counted rows, the same numbers.

Devices: one (chunk_rows, V) buffer reused for z, exp(z) and the gradient in place; every
product and pass cut into pieces shared among the cores (engine/parallel.py), with BLAS held to
one thread in each (so the bits do not depend on how many threads run the pieces): the
logits by vocabulary columns, the softmax by rows, dx by channels; dx computed as (W^T z^T)^T (OpenBLAS runs this orientation several times
faster for m << V); dW written by the first chunk's matmul, its vocabulary rows on the cores,
and accumulated by the others in vocabulary slices of ~12 MiB (NumPy's matmul cannot add into
its output, and a second (V,C) temporary would fault in fresh pages).
"""
import numpy as np

from ..layers.chunked_loss import default_chunk_rows
from ..layers.cross_entropy import check_loss_arguments
from . import parallel
from .workspace import FRESH

SLICE_BYTES = 12 * 2 ** 20      # dW is accumulated in vocabulary slices of ~12 MiB


def _accumulate_outer(dW, g, xc, tmp):
    """dW (V,C) += g^T @ xc, g (m,V), xc (m,C), one vocabulary slice at a time, so that the
    only temporary is tmp (S,C) and not a second (V,C) array (NumPy's matmul cannot add
    into its output); each slice's rows on the cores."""
    S = tmp.shape[0]
    for v0 in range(0, dW.shape[0], S):
        v1 = min(v0 + S, dW.shape[0])

        def slice_rows(a, b):                                    # rows v0+a:v0+b of dW
            part = np.matmul(g[:, v0 + a:v0 + b].T, xc, out=tmp[a:b])   # (s,m) @ (m,C) -> (s,C)
            dW[v0 + a:v0 + b] += part

        parallel.rows(v1 - v0, slice_rows, size=(v1 - v0) * xc.shape[1])   # = slice_rows(0, v1 - v0)


def lm_head_cross_entropy_fast(x, p, labels, ignore_index=-100, reduction="mean",
                               num_items=None, chunk_rows=None, need_grads=True, ws=FRESH,
                               name="lm_head"):
    """x (...,C), p {"weight": (V,C)}, labels (...) aligned -> loss, dx (...,C), {"weight": (V,C)},
    as the twin's. need_grads=False: the loss alone, a third of the matmuls."""
    weight = p["weight"]
    V, C = weight.shape
    labels, denominator = check_loss_arguments(labels, x.shape[:-1], V, ignore_index,
                                               reduction, num_items)
    dtype = x.dtype
    xf = x.reshape(-1, C)                                    # (N,C)
    target = labels.reshape(-1)                              # (N,)
    N = target.shape[0]
    rows = np.flatnonzero(target != ignore_index)            # the rows that count
    n = rows.size
    R = chunk_rows or default_chunk_rows(V, dtype.itemsize)

    nll = np.zeros(N, dtype=dtype) if reduction == "none" else None
    total = 0.0                                              # summed in float64
    dx = dW = None
    if n == 0:                                               # nothing counts: loss 0, zero grads
        if need_grads:
            dx = ws.zeros(name + ".dx", xf.shape, dtype)
            dW = ws.zeros(name + ".dweight", weight.shape, dtype)
    else:
        all_rows = n == N
        xk = xf if all_rows else xf[rows]                    # (n,C): ignored rows dropped here
        tk = target if all_rows else target[rows]            # (n,)
        if need_grads:
            dxk = ws(name + (".dx" if all_rows else ".dx_counted"), (n, C), dtype)
            dW = ws(name + ".dweight", (V, C), dtype)        # the first chunk writes it
            tmp = ws(name + ".slice", (max(1, min(V, SLICE_BYTES // (C * dtype.itemsize))), C),
                     dtype)
        buf = ws(name + ".logits", (min(R, n), V), dtype)    # one chunk of logits, reused
        inv_denom = dtype.type(1.0 / denominator)
        for start in range(0, n, R):
            xc, t = xk[start:start + R], tk[start:start + R]       # (m,C), (m,)
            m = t.shape[0]
            z = buf[:m]                                            # (m,V) logits, then exp, then g

            def logits_part(v0, v1):                               # vocabulary columns v0:v1
                np.matmul(xc, weight[v0:v1].T, out=z[:, v0:v1])    # (m,C) @ (C,v) -> (m,v)

            def chunk_rows(lo, hi):                                # rows lo:hi of the chunk
                z_ = z[lo:hi]
                at = (np.arange(hi - lo), t[lo:hi])                # the target entry of each row
                with np.errstate(over="ignore"):     # as cross_entropy: -huge - huge = -inf, exp 0
                    z_ -= z_.max(axis=1, keepdims=True)            # shift: row max is 0
                z_target = z_[at]                                  # (r,) shifted target logit
                np.exp(z_, out=z_)                                 # z now holds exp(z)
                sumexp = z_.sum(axis=1, keepdims=True)             # (r,1), >= 1
                if need_grads:
                    # g = (softmax - onehot) / denom, in place: exp(z) * (1 / (denom * sumexp)) - onehot / denom
                    z_ *= inv_denom / sumexp
                    z_[at] -= inv_denom
                return np.log(sumexp[:, 0]) - z_target             # loss_n = lse - z_target

            parallel.rows(V, logits_part, size=m * V)              # = logits_part(0, V)
            # = chunk_rows(0, m): the element-wise passes, the rows shared among the cores
            nll_c = np.concatenate(parallel.rows(m, chunk_rows, size=m * V))
            if nll is not None:
                nll[rows[start:start + m]] = nll_c
            total += float(nll_c.sum(dtype=np.float64))
            if not need_grads:
                continue
            # dx = z @ W, (m,V) @ (V,C) -> (m,C), computed as (W^T @ z^T)^T: the same numbers, but
            # OpenBLAS runs this orientation several times faster for m << V (bench-step --loss-memory)
            dxT = ws(name + ".dx_chunk", (C, m), dtype)

            def dx_part(c0, c1):                                   # channels c0:c1 of dx
                np.matmul(weight[:, c0:c1].T, z.T, out=dxT[c0:c1])  # (c,V) @ (V,m) -> (c,m)

            parallel.rows(C, dx_part, size=m * V)                  # = dx_part(0, C)
            dxk[start:start + m] = dxT.T
            if start == 0:
                def dweight_rows(v0, v1):                          # vocabulary rows v0:v1 of dW
                    np.matmul(z[:, v0:v1].T, xc, out=dW[v0:v1])    # (v,m) @ (m,C) -> (v,C)

                parallel.rows(V, dweight_rows, size=V * C)         # = dweight_rows(0, V)
            else:
                _accumulate_outer(dW, z, xc, tmp)
        if need_grads and all_rows:
            dx = dxk
        elif need_grads:
            dx = ws.zeros(name + ".dx", xf.shape, dtype)
            dx[rows] = dxk                                         # ignored rows: dx = 0

    if reduction == "none":
        loss = nll.reshape(labels.shape)
    else:
        loss = total / denominator
    if not need_grads:
        return loss, None, None
    return loss, dx.reshape(x.shape), {"weight": dW}
