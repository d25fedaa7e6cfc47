"""Tiled causal attention (FlashAttention-2 style): the same function as the textbook
core in layers/attention.py, computed block by block so that no (T,T) array ever exists.

The textbook layer holds S and P, each (B,H,T,T): memory O(T^2). Here queries are cut into
blocks of `q_tile` rows and, for each query block i, the keys before its end into chunks
of at most `k_tile` (wide chunks: bigger matmuls, fewer Python steps). Over the key
chunks j we keep a running (online) softmax:

    S_ij  = q_i k_j^T / sqrt(D)                              (B,H,bq,bk), one tile
    m_new = max(m, rowmax(S_ij))                             running row max
    P_ij  = exp(S_ij - m_new)
    l     = l * exp(m - m_new) + rowsum(P_ij)                running normaliser
    acc   = acc * exp(m - m_new) + P_ij v_j                  running unnormalised output
    y_i   = acc / l,   lse_i = m + log(l)                    kept: y (B,H,T,D), lse (B,H,T)

Causal: keys after the query block are never visited (half the work). The chunks are cut
from the block's end backwards, so the diagonal lies in the first chunk visited and only
its last bq columns need the triangular mask.

Backward recomputes each tile from q, k and the saved log-sum-exp instead of storing P:

    P_ij = exp(S_ij - lse_i)                     exact softmax probabilities of the tile
    dv_j += P_ij^T dy_i
    dP_ij = dy_i v_j^T
    dS_ij = P_ij * (dP_ij - D_i),   D_i = rowsum(dy_i * y_i)    (= rowsum(dP * P), the
                                                               softmax backward term)
    dq_i += dS_ij k_j / sqrt(D),    dk_j += dS_ij^T q_i / sqrt(D)

Speed (NumPy's element-wise ops run on one core while BLAS uses all of them, so every pass
over a tile counts):
  - base 2: exp(x) = 2^(x log2 e); log2 e is folded into the scale of q, and m and lse are
    kept in base 2 (lse2 = lse log2 e). NumPy's float32 exp2 is ~1.4x faster than exp.
  - row sums by matmul: [v, 1] gives P v and rowsum(P) in one product.
  - subtractions by matmul: S - lse = [q, -lse] [k, 1]^T and dP - D = [dy, -D] [v, 1]^T, so
    the backward makes two passes over a tile (exp2, the product with P) besides its matmuls.

Memory: O(T D + q_tile * k_tile) per (batch, head) instead of O(T^2).
Key padding mask (B,T): masked keys get -inf in S. A query row whose every key is masked
has no distribution; as in the textbook layer its output and every gradient are 0
(its S is -inf on every key, so we store lse = 0 and exp(S - lse) = 0, never NaN).
"""
import numpy as np

from .. import parallel

LOG2E = 1.4426950408889634      # exp(x) = 2^(x log2 e): NumPy's float32 exp2 is ~1.4x faster than exp


def _check_qkv(q, k, v, key_mask, q_tile, k_tile):
    for name, bs in (("q_tile", q_tile), ("k_tile", k_tile)):
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise ValueError(f"{name} must be a positive integer, got {bs!r}")
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


def _key_chunks(i0, i1, bk):
    """Key chunks [j0, j1) for the query block [i0, i1): at most bk keys each, covering keys
    0 .. i1-1 (none after the block: causal), cut from the right so that the diagonal sits in
    the last chunk and only its last i1-i0 columns need the causal mask (when bk >= bq)."""
    return [(max(j1 - bk, 0), j1) for j1 in range(i1, 0, -bk)]


def _mask_tile(s, i0, i1, j0, j1, causal, bias):
    """Adds -inf to the tile s (B,H,i1-i0,j1-j0) where key > query (causal) or key is padding."""
    c0 = max(j0, i0)                                       # first key column that can follow a query
    if c0 < j1:
        s[..., c0 - j0:] += causal[:i1 - i0, c0 - i0:j1 - i0]
    if bias is not None:
        s += bias[..., j0:j1]


def tiled_attention_forward(q, k, v, key_mask=None, q_tile=128, k_tile=1024):
    """q, k, v (B,H,T,D), key_mask (B,T) bool or None -> y (B,H,T,D), cache.
    Loops over query blocks x key chunks (at or below the diagonal), a head at a time (the
    heads shared among the cores: numpygpt/parallel.py), vectorised over the batch."""
    _check_qkv(q, k, v, key_mask, q_tile, k_tile)
    B, H, T, D = q.shape
    dt = q.dtype
    bq, bk = int(q_tile), int(k_tile)
    bias = _key_bias(key_mask, dt)                     # (B,1,1,T) or None
    causal = np.triu(np.full((bq, bq), -np.inf, dtype=dt), k=1)    # key after query: -inf
    y = np.empty_like(q)
    lse2 = np.empty((B, H, T, 1), dtype=dt)

    def heads(h0, h1):                                 # the heads h0:h1 of every line
        h = h1 - h0
        qs = q[:, h0:h1] * dt.type(LOG2E / np.sqrt(D))             # S2 = S log2 e: scale folded into q once
        kT = np.ascontiguousarray(k[:, h0:h1].swapaxes(-1, -2))    # (B,h,D,T), rows contiguous for BLAS
        v1 = np.concatenate([v[:, h0:h1], np.ones((B, h, T, 1), dt)], axis=-1)   # [v, 1] (B,h,T,D+1)
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            q_i = qs[:, :, i0:i1]                                      # (B,h,bq,D)
            m = np.full((B, h, i1 - i0, 1), -np.inf, dtype=dt)         # running row max (base 2)
            acc = np.zeros((B, h, i1 - i0, D + 1), dtype=dt)           # running [P v, rowsum(P)]
            for j0, j1 in _key_chunks(i0, i1, bk):
                s = q_i @ kT[:, :, :, j0:j1]                           # (B,h,bq,D) @ (B,h,D,bk) -> (B,h,bq,bk)
                _mask_tile(s, i0, i1, j0, j1, causal, bias)
                m_new = np.maximum(m, s.max(axis=-1, keepdims=True))   # (B,h,bq,1)
                # a row with every key so far masked has m_new = -inf: shift it by 0 instead (no NaN)
                shift = np.where(m_new > -np.inf, m_new, 0.0).astype(dt, copy=False)
                s -= shift
                np.exp2(s, out=s)                                      # P tile, unnormalised
                acc *= np.exp2(m - shift)                              # rescales the sums so far (0 at first)
                acc += s @ v1[:, :, j0:j1]                             # (B,h,bq,bk) @ (B,h,bk,D+1)
                m = m_new
            l = acc[..., -1:]                                          # rowsum(P), (B,h,bq,1)
            empty = l == 0                                             # fully masked rows
            np.divide(acc[..., :-1], np.where(empty, 1.0, l).astype(dt, copy=False),
                      out=y[:, h0:h1, i0:i1])
            # lse2 = m + log2(l); 0 for an empty row (its S is -inf everywhere, so exp(S - lse) = 0)
            with np.errstate(divide="ignore"):
                lse2[:, h0:h1, i0:i1] = np.where(empty, 0.0, m + np.log2(l))

    parallel.rows(H, heads, size=B * H * T * min(T, bk), grain=1)   # = heads(0, H), a head at a time
    return y, (q, k, v, key_mask, bq, bk, y, lse2)


def tiled_attention_backward(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv) each (B,H,T,D), {}. Recomputes each tile's probabilities from
    q, k and the saved log-sum-exp; holds two (B,h,bq,bk) tiles at a time per core."""
    q, k, v, key_mask, bq, bk, y, lse2 = cache
    if not isinstance(dy, np.ndarray) or dy.shape != q.shape:
        raise ValueError(f"dy has shape {np.shape(dy)}, which does not match q shape {q.shape}")
    dy = np.ascontiguousarray(dy, dtype=q.dtype)
    B, H, T, D = q.shape
    dt = q.dtype
    scale = dt.type(1.0 / np.sqrt(D))
    bias = _key_bias(key_mask, dt)
    causal = np.triu(np.full((bq, bq), -np.inf, dtype=dt), k=1)
    dq = np.zeros((B, H, T, D), dt)
    dk = np.zeros((B, H, T, D), dt)
    dv = np.zeros((B, H, T, D), dt)

    def heads(h0, h1):                                 # the heads h0:h1 of every line
        q_, k_, v_, y_, dy_ = (a[:, h0:h1] for a in (q, k, v, y, dy))
        ones = np.ones((B, h1 - h0, T, 1), dt)
        Dvec = (dy_ * y_).sum(axis=-1, keepdims=True)                   # (B,h,T,1) = rowsum(dP * P)
        qa = np.concatenate([q_ * dt.type(LOG2E) * scale, -lse2[:, h0:h1]], axis=-1)  # [q', -lse2]
        kaT = np.concatenate([k_, ones], axis=-1).swapaxes(-1, -2).copy()  # [k, 1]^T (B,h,D+1,T)
        dya = np.concatenate([dy_, -Dvec], axis=-1)                      # [dy, -D]   (B,h,T,D+1)
        vaT = np.concatenate([v_, ones], axis=-1).swapaxes(-1, -2).copy()  # [v, 1]^T (B,h,D+1,T)
        q_, k_ = np.ascontiguousarray(q_), np.ascontiguousarray(k_)
        dq_, dk_, dv_ = dq[:, h0:h1], dk[:, h0:h1], dv[:, h0:h1]       # views: accumulate in place
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            qa_i, dya_i = qa[:, :, i0:i1], dya[:, :, i0:i1]             # (B,h,bq,D+1)
            q_i, dy_i = q_[:, :, i0:i1], dy_[:, :, i0:i1]               # (B,h,bq,D)
            dq_i = dq_[:, :, i0:i1]
            for j0, j1 in _key_chunks(i0, i1, bk):
                p = qa_i @ kaT[:, :, :, j0:j1]                          # S2 - lse2 (B,h,bq,bk) recomputed
                _mask_tile(p, i0, i1, j0, j1, causal, bias)
                np.exp2(p, out=p)                                       # exact probabilities P
                dv_[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i           # (B,h,bk,bq) @ (B,h,bq,D)
                ds = dya_i @ vaT[:, :, :, j0:j1]                        # dP - D (B,h,bq,bk)
                ds *= p                                                 # dS = P * (dP - D)
                dq_i += ds @ k_[:, :, j0:j1]                            # (B,h,bq,bk) @ (B,h,bk,D)
                dk_[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i           # (B,h,bk,bq) @ (B,h,bq,D)
        dq_ *= scale                                                    # S = (q k^T) * scale
        dk_ *= scale

    parallel.rows(H, heads, size=B * H * T * min(T, bk), grain=1)   # = heads(0, H), a head at a time
    return (dq, dk, dv), {}
