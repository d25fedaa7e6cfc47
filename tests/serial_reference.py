"""numpygpt's serial code as it was at c4ea370, before numpygpt/parallel.py, copied verbatim
(the docstrings cut): the layers and the optimiser step that now run in parallel sections.
tests/test_parallel.py holds the new code at threads=1 to these, bit for bit."""
import math

import numpy as np

from numpygpt.checks import check_reduction
from numpygpt.layers.attention import allowed_keys
from numpygpt.layers.cross_entropy import check_labels, loss_denominator
from numpygpt.layers.fused_loss import default_chunk_size, _check_inputs, SLICE_BYTES
from numpygpt.layers.gelu import GELU_SCALE, GELU_COEF
from numpygpt.layers.tiled_attention import LOG2E, _check_qkv, _key_bias, _key_chunks, _mask_tile


def causal_attention_forward(q, k, v, key_mask=None):
    """q (B,H,n,D), k, v (B,H,S,D), key_mask (B,S) bool or None -> y (B,H,n,D).
    The n queries are the last n of the S positions: n = S in training; with a KV cache, the
    new tokens against every cached key. One (B,H,n,S) buffer holds S, then exp(S), then P."""
    D = q.shape[-1]
    blocked = ~allowed_keys(q.shape[-2], k.shape[-2], key_mask)   # (n,S) or (B,1,n,S)
    scale = 1.0 / math.sqrt(D)                                # a Python float: no float64 upcast
    scores = (q * scale) @ k.swapaxes(-1, -2)                 # (B,H,n,D) @ (B,H,D,S) -> (B,H,n,S)
    np.copyto(scores, -np.inf, where=blocked)                 # S[t, s] = -inf: s > t or padding
    row_max = scores.max(axis=-1, keepdims=True)              # (B,H,n,1)
    row_max[~np.isfinite(row_max)] = 0.0                      # fully masked row: any finite shift
    scores -= row_max
    p = np.exp(scores, out=scores)                            # masked entries: exp(-inf) = 0
    denom = p.sum(axis=-1, keepdims=True)
    denom[denom == 0] = 1.0                                   # fully masked row stays all 0
    p /= denom
    y = p @ v                                                 # (B,H,n,S) @ (B,H,S,D) -> (B,H,n,D)
    return y, (q, k, v, p)


def causal_attention_backward(dy, cache):
    """dy (B,H,n,D) -> (dq, dk, dv), {}."""
    q, k, v, p = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    # y = p @ v
    dv = p.swapaxes(-1, -2) @ dy                              # (B,H,S,n) @ (B,H,n,D)
    dp = dy @ v.swapaxes(-1, -2)                              # (B,H,n,D) @ (B,H,D,S) -> (B,H,n,S)
    # p = softmax(scores): ds = p * (dp - rowsum(dp * p)); masked entries have p = 0.
    # The rowsum as an einsum makes no (B,H,n,S) temporary; ds is computed in dp's buffer.
    # (rowsum(dp * p) = rowsum(dy * y) is cheaper, but not exactly 0 where a row sees one key.)
    dp -= np.einsum("...ts,...ts->...t", dp, p)[..., None]
    ds = np.multiply(dp, p, out=dp)                           # (B,H,n,S)
    # scores = (q * scale) @ k^T
    dq = ds @ k                                               # (B,H,n,S) @ (B,H,S,D)
    dq *= scale
    dk = ds.swapaxes(-1, -2) @ q                              # (B,H,S,n) @ (B,H,n,D)
    dk *= scale
    return (dq, dk, dv), {}


def tiled_attention_forward(q, k, v, key_mask=None, q_tile=128, k_tile=1024):
    """q, k, v (B,H,T,D), key_mask (B,T) bool or None -> y (B,H,T,D), cache.
    Loops over query blocks x key chunks (at or below the diagonal); everything else is
    vectorised over batch and heads."""
    _check_qkv(q, k, v, key_mask, q_tile, k_tile)
    B, H, T, D = q.shape
    dt = q.dtype
    bq, bk = int(q_tile), int(k_tile)
    qs = q * dt.type(LOG2E / np.sqrt(D))               # S2 = S log2 e: scale folded into q once
    kT = np.ascontiguousarray(k.swapaxes(-1, -2))      # (B,H,D,T), rows contiguous for BLAS
    v1 = np.concatenate([v, np.ones((B, H, T, 1), dt)], axis=-1)   # [v, 1] (B,H,T,D+1)
    bias = _key_bias(key_mask, dt)                     # (B,1,1,T) or None
    causal = np.triu(np.full((bq, bq), -np.inf, dtype=dt), k=1)    # key after query: -inf
    y = np.empty_like(q)
    lse2 = np.empty((B, H, T, 1), dtype=dt)
    for i0 in range(0, T, bq):
        i1 = min(i0 + bq, T)
        q_i = qs[:, :, i0:i1]                                      # (B,H,bq,D)
        m = np.full((B, H, i1 - i0, 1), -np.inf, dtype=dt)         # running row max (base 2)
        acc = np.zeros((B, H, i1 - i0, D + 1), dtype=dt)           # running [P v, rowsum(P)]
        for j0, j1 in _key_chunks(i0, i1, bk):
            s = q_i @ kT[:, :, :, j0:j1]                           # (B,H,bq,D) @ (B,H,D,bk) -> (B,H,bq,bk)
            _mask_tile(s, i0, i1, j0, j1, causal, bias)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))   # (B,H,bq,1)
            # a row with every key so far masked has m_new = -inf: shift it by 0 instead (no NaN)
            shift = np.where(m_new > -np.inf, m_new, 0.0).astype(dt, copy=False)
            s -= shift
            np.exp2(s, out=s)                                      # P tile, unnormalised
            acc *= np.exp2(m - shift)                              # rescales the sums so far (0 at first)
            acc += s @ v1[:, :, j0:j1]                             # (B,H,bq,bk) @ (B,H,bk,D+1)
            m = m_new
        l = acc[..., -1:]                                          # rowsum(P), (B,H,bq,1)
        empty = l == 0                                             # fully masked rows
        np.divide(acc[..., :-1], np.where(empty, 1.0, l).astype(dt, copy=False), out=y[:, :, i0:i1])
        # lse2 = m + log2(l); 0 for an empty row (its S is -inf everywhere, so exp(S - lse) = 0)
        with np.errstate(divide="ignore"):
            lse2[:, :, i0:i1] = np.where(empty, 0.0, m + np.log2(l))
    return y, (q, k, v, key_mask, bq, bk, y, lse2)


def tiled_attention_backward(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv) each (B,H,T,D), {}. Recomputes each tile's probabilities from
    q, k and the saved log-sum-exp; holds two (B,H,bq,bk) tiles at a time."""
    q, k, v, key_mask, bq, bk, y, lse2 = cache
    if not isinstance(dy, np.ndarray) or dy.shape != q.shape:
        raise ValueError(f"dy has shape {np.shape(dy)}, which does not match q shape {q.shape}")
    dy = np.ascontiguousarray(dy, dtype=q.dtype)
    B, H, T, D = q.shape
    dt = q.dtype
    scale = dt.type(1.0 / np.sqrt(D))
    ones = np.ones((B, H, T, 1), dt)
    Dvec = (dy * y).sum(axis=-1, keepdims=True)                    # (B,H,T,1) = rowsum(dP * P)
    qa = np.concatenate([q * dt.type(LOG2E) * scale, -lse2], axis=-1)   # [q', -lse2] (B,H,T,D+1)
    kaT = np.concatenate([k, ones], axis=-1).swapaxes(-1, -2).copy()  # [k, 1]^T (B,H,D+1,T)
    dya = np.concatenate([dy, -Dvec], axis=-1)                      # [dy, -D]   (B,H,T,D+1)
    vaT = np.concatenate([v, ones], axis=-1).swapaxes(-1, -2).copy()  # [v, 1]^T (B,H,D+1,T)
    q, k = np.ascontiguousarray(q), np.ascontiguousarray(k)
    bias = _key_bias(key_mask, dt)
    causal = np.triu(np.full((bq, bq), -np.inf, dtype=dt), k=1)
    dq = np.zeros((B, H, T, D), dt)
    dk = np.zeros((B, H, T, D), dt)
    dv = np.zeros((B, H, T, D), dt)
    for i0 in range(0, T, bq):
        i1 = min(i0 + bq, T)
        qa_i, dya_i = qa[:, :, i0:i1], dya[:, :, i0:i1]             # (B,H,bq,D+1)
        q_i, dy_i = q[:, :, i0:i1], dy[:, :, i0:i1]                 # (B,H,bq,D)
        dq_i = dq[:, :, i0:i1]                                      # a view: accumulate in place
        for j0, j1 in _key_chunks(i0, i1, bk):
            p = qa_i @ kaT[:, :, :, j0:j1]                          # S2 - lse2 (B,H,bq,bk) recomputed
            _mask_tile(p, i0, i1, j0, j1, causal, bias)
            np.exp2(p, out=p)                                       # exact probabilities P
            dv[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i            # (B,H,bk,bq) @ (B,H,bq,D)
            ds = dya_i @ vaT[:, :, :, j0:j1]                        # dP - D (B,H,bq,bk)
            ds *= p                                                 # dS = P * (dP - D)
            dq_i += ds @ k[:, :, j0:j1]                             # (B,H,bq,bk) @ (B,H,bk,D)
            dk[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i            # (B,H,bk,bq) @ (B,H,bq,D)
    dq *= scale                                                     # S = (q k^T) * scale
    dk *= scale
    return (dq, dk, dv), {}


def gelu_forward(x):
    """x (...) -> gelu(x) (...)."""
    x = np.asarray(x)
    th = _tanh_inner(x)
    out = np.add(th, 1.0, out=th)
    out *= x
    out *= 0.5                                               # 0.5 * x * (1 + th)
    return out, (x,)


def gelu_backward(dout, cache):
    """dout (...) -> dx = dout * gelu'(x) (...), {}."""
    (x,) = cache
    th = _tanh_inner(x)
    t = x * x
    t *= 3.0 * GELU_COEF * GELU_SCALE
    t += GELU_SCALE
    t *= x                                                   # x * s * (1 + 3 k x^2)
    dx = np.multiply(th, th, out=np.empty_like(th))
    np.subtract(1.0, dx, out=dx)                             # 1 - th^2
    dx *= t
    dx += th
    dx += 1.0
    dx *= 0.5                                                # 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3k x^2)
    dx *= dout
    return dx, {}


def _tanh_inner(x):
    """th = tanh(s * (x + k x^3)), in one new buffer."""
    th = np.multiply(x, x, out=np.empty_like(x))             # x^2 (an array even when 0-d)
    th *= GELU_COEF * GELU_SCALE
    th += GELU_SCALE
    th *= x                                                  # s * (x + k x^3)
    return np.tanh(th, out=th)


def layernorm_forward(x, p, eps=1e-5):
    """x (...,C), p {"weight": (C,), "bias": (C,)} -> out (...,C)."""
    mean = x.mean(axis=-1, keepdims=True)                    # (...,C) -> (...,1)
    xc = x - mean                                            # (...,C)
    var = (xc * xc).mean(axis=-1, keepdims=True)             # (...,1), biased
    rstd = 1.0 / np.sqrt(var + eps)                          # (...,1)
    xhat = xc * rstd                                         # (...,C)
    out = xhat * p["weight"] + p["bias"]                     # (...,C)
    return out, (xhat, rstd, p["weight"])


def layernorm_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    # out = xhat * weight + bias
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)       # (C,)
    dbias = dout.reshape(-1, C).sum(axis=0)                  # (C,)
    g = dout * weight                                        # (...,C) d loss / d xhat
    # xhat = (x - mean) * rstd, mean and rstd being functions of x
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, {"weight": dweight, "bias": dbias}


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
            at = (np.arange(m), t)                                 # the target entry of each row
            z = np.matmul(xc, weight.T, out=buf[:m])               # (m,C) @ (C,V) -> (m,V) logits
            with np.errstate(over="ignore"):     # as cross_entropy: -huge - huge = -inf, exp 0
                z -= z.max(axis=1, keepdims=True)                  # shift: row max is 0
            z_target = z[at]                                       # (m,) shifted target logit
            np.exp(z, out=z)                                       # z now holds exp(z)
            sumexp = z.sum(axis=1, keepdims=True)                  # (m,1), >= 1
            nll_c = np.log(sumexp[:, 0]) - z_target                # loss_n = lse - z_target
            if nll is not None:
                nll[rows[start:start + m]] = nll_c
            total += float(nll_c.sum(dtype=np.float64))
            if not need_grads:
                continue
            # g = (softmax - onehot) / denom, in place: exp(z) * (1 / (denom * sumexp)) - onehot / denom
            z *= inv_denom / sumexp
            z[at] -= inv_denom
            # dx = z @ W, (m,V) @ (V,C) -> (m,C), computed as (W^T @ z^T)^T: the same numbers, but
            # OpenBLAS runs this orientation several times faster for m << V (measured: README, "Speed")
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


def adamw_step(self, params, grads, lr=None):
    """Update params in place with grads (same keys); lr overrides self.lr (schedules)."""
    lr = self.lr if lr is None else lr
    b1, b2 = self.betas
    self.t += 1
    # scalars stay Python floats: float32 arrays are not upcast (NEP 50)
    bias1 = 1.0 - b1 ** self.t
    bias2 = 1.0 - b2 ** self.t
    for name, p in params.items():
        g = grads[name]
        m, v = self.m[name], self.v[name]
        if self.decays[name] and self.weight_decay:
            p *= 1.0 - lr * self.weight_decay                  # decoupled: p <- p - lr*wd*p
        m *= b1
        m += (1.0 - b1) * g                                    # m <- b1 m + (1-b1) g
        v *= b2
        v += (1.0 - b2) * (g * g)                              # v <- b2 v + (1-b2) g^2
        denom = np.sqrt(v / bias2) + self.eps                  # sqrt(v_hat) + eps
        p -= (lr / bias1) * m / denom                          # p <- p - lr m_hat / denom
