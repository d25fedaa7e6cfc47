"""Tiled causal attention (FlashAttention-2 style): the same function as the textbook
layer in numpygpt.attention, computed block by block so that no (T,T) array ever exists.

The textbook layer holds S and P, each (B,H,T,T): memory O(T^2). Here queries and keys
are cut into blocks of `block_size` rows; for one query block we walk over the key blocks
left to right and keep a running (online) softmax:

    S_ij  = q_i k_j^T / sqrt(D)                              (B,H,bq,bk), one tile
    m_new = max(m, rowmax(S_ij))                             running row max
    P_ij  = exp(S_ij - m_new)
    l     = l * exp(m - m_new) + rowsum(P_ij)                running normaliser
    acc   = acc * exp(m - m_new) + P_ij v_j                  running unnormalised output
    y_i   = acc / l,   lse_i = m + log(l)                    kept: y (B,H,T,D), lse (B,H,T)

Causal: key block j > i is entirely above the diagonal, so it is skipped, not masked
(half the work); only the diagonal tile j == i needs the triangular mask.

Backward recomputes each tile from q, k and the saved log-sum-exp instead of storing P:

    P_ij = exp(S_ij - lse_i)                     exact softmax probabilities of the tile
    dv_j += P_ij^T dy_i
    dP_ij = dy_i v_j^T
    dS_ij = P_ij * (dP_ij - D_i),   D_i = rowsum(dy_i * y_i)    (= rowsum(dP * P), the
                                                               softmax backward term)
    dq_i += dS_ij k_j / sqrt(D),    dk_j += dS_ij^T q_i / sqrt(D)

Memory: O(T D + block_size^2) per (batch, head) instead of O(T^2).
Key padding mask (B,T): masked keys get -inf in S. A query row whose every key is masked
has no distribution; as in the textbook layer its output and every gradient are 0
(we store lse = +inf for it, so exp(S - lse) = 0, never NaN).
"""
import numpy as np


def _check_qkv(q, k, v, key_mask, block_size):
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray) or a.ndim != 4:
            raise ValueError(f"{name} must be a 4-d ndarray (B,H,T,D), got shape {np.shape(a)}")
        if a.shape != q.shape:
            raise ValueError(f"{name} has shape {a.shape}, which does not match q shape {q.shape}")
        if a.dtype != q.dtype or a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} has dtype {a.dtype}; q, k, v must all be float32 or float64")
    if key_mask is not None:
        B, _, T, _ = q.shape
        if not isinstance(key_mask, np.ndarray) or key_mask.dtype != bool or key_mask.shape != (B, T):
            raise ValueError(f"key_mask must be a bool array of shape (B,T)={(B, T)}, "
                             f"got {getattr(key_mask, 'dtype', type(key_mask).__name__)} "
                             f"{np.shape(key_mask)}")


def _key_bias(key_mask, dtype):
    """(B,T) bool -> (B,1,1,T) additive bias: 0 for a real key, -inf for padding."""
    if key_mask is None:
        return None
    return np.where(key_mask, 0.0, -np.inf).astype(dtype)[:, None, None, :]


def tiled_attention_forward(q, k, v, key_mask=None, block_size=128):
    """q, k, v (B,H,T,D), key_mask (B,T) bool or None -> y (B,H,T,D), cache.
    Loops over query blocks x key blocks (at or below the diagonal); everything else is
    vectorised over batch and heads."""
    _check_qkv(q, k, v, key_mask, block_size)
    B, H, T, D = q.shape
    dt = q.dtype
    bs = int(block_size)
    qs = q * dt.type(1.0 / np.sqrt(D))                 # fold the 1/sqrt(D) scale into q once
    kT = k.swapaxes(-1, -2)                            # (B,H,D,T), a view
    bias = _key_bias(key_mask, dt)                     # (B,1,1,T) or None
    # query and key blocks share their offsets, so the diagonal tile (j0 == i0) is the only
    # one the causal mask cuts, always by the same upper triangle
    causal = np.triu(np.full((bs, bs), -np.inf, dtype=dt), k=1)
    y = np.empty_like(q)
    lse = np.empty((B, H, T, 1), dtype=dt)
    for i0 in range(0, T, bs):
        i1 = min(i0 + bs, T)
        q_i = qs[:, :, i0:i1]                                      # (B,H,bq,D)
        m = np.full((B, H, i1 - i0, 1), -np.inf, dtype=dt)         # running row max
        l = np.zeros((B, H, i1 - i0, 1), dtype=dt)                 # running normaliser
        acc = np.zeros((B, H, i1 - i0, D), dtype=dt)               # running P @ v
        for j0 in range(0, i1, bs):                                # key blocks j <= i only
            j1 = min(j0 + bs, T)
            s = q_i @ kT[:, :, :, j0:j1]                           # (B,H,bq,D) @ (B,H,D,bk) -> (B,H,bq,bk)
            if j0 == i0:
                s += causal[:i1 - i0, :j1 - j0]                    # keys after the query: -inf
            if bias is not None:
                s += bias[..., j0:j1]                              # padding keys: -inf
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))   # (B,H,bq,1)
            # a row with every key so far masked has m_new = -inf: shift it by 0 instead (no NaN)
            shift = np.where(m_new > -np.inf, m_new, 0.0).astype(dt, copy=False)
            s -= shift
            np.exp(s, out=s)                                       # P tile, unnormalised
            alpha = np.exp(m - shift)                              # rescales the sums so far (0 at first)
            l *= alpha
            l += s.sum(axis=-1, keepdims=True)
            acc *= alpha
            acc += s @ v[:, :, j0:j1]                              # (B,H,bq,bk) @ (B,H,bk,D)
            m = m_new
        empty = l == 0                                             # fully masked rows
        np.divide(acc, np.where(empty, 1.0, l).astype(dt, copy=False), out=y[:, :, i0:i1])
        # lse = m + log(l); +inf for an empty row so that exp(S - lse) = 0 in the backward
        with np.errstate(divide="ignore"):
            lse[:, :, i0:i1] = np.where(empty, np.inf, m + np.log(l))
    return y, (q, k, v, key_mask, bs, y, lse)


def tiled_attention_backward(dy, cache):
    """dy (B,H,T,D) -> dq, dk, dv (B,H,T,D). Recomputes each tile's probabilities from
    q, k and the saved log-sum-exp; holds one (B,H,bq,bk) tile at a time."""
    q, k, v, key_mask, bs, y, lse = cache
    if not isinstance(dy, np.ndarray) or dy.shape != q.shape:
        raise ValueError(f"dy has shape {np.shape(dy)}, which does not match q shape {q.shape}")
    dy = dy.astype(q.dtype, copy=False)
    B, H, T, D = q.shape
    dt = q.dtype
    scale = dt.type(1.0 / np.sqrt(D))
    qs = q * scale
    kT, vT = k.swapaxes(-1, -2), v.swapaxes(-1, -2)               # (B,H,D,T) views
    bias = _key_bias(key_mask, dt)
    causal = np.triu(np.full((bs, bs), -np.inf, dtype=dt), k=1)
    Dvec = (dy * y).sum(axis=-1, keepdims=True)                     # (B,H,T,1) = rowsum(dP * P)
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    for i0 in range(0, T, bs):
        i1 = min(i0 + bs, T)
        q_i, dy_i = qs[:, :, i0:i1], dy[:, :, i0:i1]                # (B,H,bq,D)
        lse_i, D_i = lse[:, :, i0:i1], Dvec[:, :, i0:i1]            # (B,H,bq,1)
        dq_i = dq[:, :, i0:i1]                                      # a view: accumulate in place
        for j0 in range(0, i1, bs):
            j1 = min(j0 + bs, T)
            s = q_i @ kT[:, :, :, j0:j1]                            # (B,H,bq,bk) recomputed
            if j0 == i0:
                s += causal[:i1 - i0, :j1 - j0]
            if bias is not None:
                s += bias[..., j0:j1]
            s -= lse_i
            p = np.exp(s, out=s)                                    # exact probabilities
            dv[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i            # (B,H,bk,bq) @ (B,H,bq,D)
            ds = dy_i @ vT[:, :, :, j0:j1]                          # dP (B,H,bq,bk)
            ds -= D_i
            ds *= p                                                 # dS = P * (dP - D)
            dq_i += ds @ k[:, :, j0:j1]                             # (B,H,bq,bk) @ (B,H,bk,D)
            dk[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i            # (B,H,bk,bq) @ (B,H,bq,D)
    dq *= scale                                                     # S = (q k^T) * scale
    return dq, dk, dv
