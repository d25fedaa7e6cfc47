"""Tiled attention in the engine. Textbook twin: numpygpt/layers/tiled_attention.py
(tiled_attention_forward, tiled_attention_backward): the same online softmax and the same
recomputation in the backward.

Devices (NumPy's element-wise ops run on one core while BLAS uses all of them, so every pass
over a tile counts):
  - a head at a time, the heads shared among the cores (engine/parallel.py);
  - wide key chunks (k_tile keys): bigger matmuls, fewer Python steps; the chunks are cut
    from the block's end backwards, so the diagonal lies in the first chunk visited and only
    its last q_tile columns need the triangular mask;
  - a sliding window W: the chunks start at the first key of the block's first query's
    window (no chunk outside the band is made), so time and memory grow as T W; only the
    q_tile - 1 keys at the band's lower edge need a (triangular) mask;
  - base 2: exp(x) = 2^(x log2 e); log2 e is folded into the scale of q, and m and lse are
    kept in base 2 (lse2 = lse log2 e). NumPy's float32 exp2 is ~1.4x faster than exp;
  - row sums by matmul: [v, 1] gives P v and rowsum(P) in one product;
  - subtractions by matmul: S - lse = [q, -lse] [k, 1]^T and dP - delta = [dy, -delta] [v, 1]^T,
    so the backward makes two passes over a tile (exp2, the product with P) besides its matmuls;
  - exp2, the shifts and the masks in place, in the tile's own buffer; the masked entries
    set to 0 before exp2 and after it (no exp2 of -inf: NumPy's slow path);
  - y, lse and dq, dk, dv in the workspace (engine/workspace.py) or the caller's `out`.
"""
import numpy as np

from . import parallel
from .workspace import FRESH

LOG2E = 1.4426950408889634      # exp(x) = 2^(x log2 e)


def _padding(key_mask):
    """(B,Tk) bool -> (B,1,1,Tk) bool, True for padding (a masked key), or None."""
    if key_mask is None:
        return None
    return ~key_mask[:, None, None, :]


def _key_chunks(i0, i1, bk, window=None):
    """Key chunks [j0, j1) for the queries at positions [i0, i1): at most bk keys each,
    covering keys 0 .. i1-1 (none after the block: causal), or only i0-W+1 .. i1-1 with a
    window W (none before the first query's window), cut from the right so that the
    diagonal sits in the first chunk and only its last i1-i0 columns need the causal mask
    (when bk >= bq)."""
    lo = 0 if window is None else max(i0 - window + 1, 0)
    return [(max(j1 - bk, lo), j1) for j1 in range(i1, lo, -bk)]


def _masks(bq):
    """The two triangles of the band (bq,bq), True where masked: causal[r, c] where key c
    comes after query r (c > r); edge[r, c] where key lo+c fell out of the window of query
    i0+r, lo = i0-W+1 being the first key of the first query's window (c < r)."""
    full = np.ones((bq, bq), dtype=bool)
    return np.triu(full, k=1), np.tril(full, k=-1)


def _masked(i0, i1, j0, j1, masks, padding, window=None):
    """What is masked in the tile (B,h,i1-i0,j1-j0) of the queries at positions [i0, i1) and
    the keys [j0, j1): key > query (causal), key <= query - W (window) or key is padding, the
    rule of layers/causal_mask.py. -> [(the tile's columns, a bool mask over them)]."""
    causal, edge = masks
    masked = []
    c0 = max(j0, i0)                                       # first key column that can follow a query
    if c0 < j1:
        masked.append((slice(c0 - j0, None), causal[:i1 - i0, c0 - i0:j1 - i0]))
    if window is not None:
        lo = i0 - window + 1                               # the first query's first key
        c0, c1 = max(j0, lo), min(j1, lo + i1 - i0 - 1)    # keys a later query of the block lost
        if c0 < c1:
            masked.append((slice(c0 - j0, c1 - j0), edge[:i1 - i0, c0 - lo:c1 - lo]))
    if padding is not None:
        masked.append((slice(None), padding[..., j0:j1]))
    return masked


def _fill(s, masked, value):
    """The masked entries of the tile s set to value."""
    for cols, where in masked:
        np.copyto(s[..., cols], value, where=where)


def _exp2_masked(s, masked):
    """s = 2^s in place, the masked entries exactly 0. NumPy's exp2 takes a slow path for
    every element whose result underflows (its pass over a tile whose masked third is -inf
    took ~3.5x its pass over a clean tile, float32, AVX-512), so the masked entries are set
    to 0 before it (2^0 = 1, the fast path) and to 0 after it."""
    _fill(s, masked, 0.0)
    np.exp2(s, out=s)
    _fill(s, masked, 0.0)


def tiled_attention_forward_fast(q, k, v, key_mask=None, q_tile=128, k_tile=1024, ws=FRESH,
                                 name="attn", out=None, window=None):
    """q (B,H,T,D), k, v (B,H,Tk,D), key_mask (B,Tk) bool or None -> y (B,H,T,D), cache.
    The queries are the last T of the Tk positions (a KV cache's case when Tk > T).
    window: W, each query sees its last W keys only; None: all earlier ones.
    out: a (B,H,T,D) array (a view of strided rows will do) to write y into."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    off = Tk - T                                       # query i sits at position off + i
    dt = q.dtype
    bq, bk = int(q_tile), int(k_tile)
    padding = _padding(key_mask)                       # (B,1,1,Tk) or None
    masks = _masks(bq)                                 # the band's two triangles
    y = ws(name + ".y", q.shape, dt) if out is None else out
    lse2 = ws(name + ".lse2", (B, H, T, 1), dt)

    def heads(h0, h1):                                 # the heads h0:h1
        h = h1 - h0
        qs = q[:, h0:h1] * dt.type(LOG2E / np.sqrt(D))             # S2 = S log2 e: scale folded into q once
        kT = np.ascontiguousarray(k[:, h0:h1].swapaxes(-1, -2))    # (B,h,D,Tk), rows contiguous for BLAS
        v1 = np.concatenate([v[:, h0:h1], np.ones((B, h, Tk, 1), dt)], axis=-1)   # [v, 1] (B,h,Tk,D+1)
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            q_i = qs[:, :, i0:i1]                                      # (B,h,bq,D)
            m = np.full((B, h, i1 - i0, 1), -np.inf, dtype=dt)         # running row max (base 2)
            acc = np.zeros((B, h, i1 - i0, D + 1), dtype=dt)           # running [P v, rowsum(P)]
            for j0, j1 in _key_chunks(off + i0, off + i1, bk, window):
                s = q_i @ kT[:, :, :, j0:j1]                           # (B,h,bq,D) @ (B,h,D,bk) -> (B,h,bq,bk)
                masked = _masked(off + i0, off + i1, j0, j1, masks, padding, window)
                _fill(s, masked, -np.inf)                              # masked: -inf, out of the max
                m_new = np.maximum(m, s.max(axis=-1, keepdims=True))   # (B,h,bq,1)
                # a row with every key so far masked has m_new = -inf: shift it by 0 instead (no NaN)
                shift = np.where(m_new > -np.inf, m_new, 0.0).astype(dt, copy=False)
                s -= shift
                _exp2_masked(s, masked)                                # P tile, unnormalised
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

    parallel.rows(H, heads, size=B * H * T * min(Tk, bk), grain=1)   # = heads(0, H), a head at a time
    return y, (q, k, v, key_mask, bq, bk, window, y, lse2)


def tiled_attention_backward_fast(dy, cache, ws=FRESH, name="attn", out=None):
    """dy (B,H,T,D) -> (dq, dk, dv), {}. Recomputes each tile's probabilities from q, k and the
    saved log-sum-exp; holds two (B,h,q_tile,k_tile) tiles at a time per core.
    out: three arrays to write dq, dk, dv into."""
    q, k, v, key_mask, bq, bk, window, y, lse2 = cache
    dy = dy.astype(q.dtype, copy=False)
    B, H, T, D = q.shape
    Tk = k.shape[2]
    off = Tk - T
    dt = q.dtype
    scale = dt.type(1.0 / np.sqrt(D))
    padding = _padding(key_mask)
    masks = _masks(bq)
    dq, dk, dv = out or (ws(f"{name}.d{a}", x.shape, dt) for a, x in zip("qkv", (q, k, v)))

    def heads(h0, h1):                                 # the heads h0:h1
        q_, k_, v_, y_, dy_ = (a[:, h0:h1] for a in (q, k, v, y, dy))
        ones = np.ones((B, h1 - h0, Tk, 1), dt)
        delta = (dy_ * y_).sum(axis=-1, keepdims=True)                  # (B,h,T,1) = rowsum(dP * P)
        qa = np.concatenate([q_ * dt.type(LOG2E) * scale, -lse2[:, h0:h1]], axis=-1)  # [q', -lse2]
        kaT = np.concatenate([k_, ones], axis=-1).swapaxes(-1, -2).copy()  # [k, 1]^T (B,h,D+1,Tk)
        dya = np.concatenate([dy_, -delta], axis=-1)                     # [dy, -delta] (B,h,T,D+1)
        vaT = np.concatenate([v_, ones], axis=-1).swapaxes(-1, -2).copy()  # [v, 1]^T (B,h,D+1,Tk)
        q_, k_ = np.ascontiguousarray(q_), np.ascontiguousarray(k_)
        dq_, dk_, dv_ = dq[:, h0:h1], dk[:, h0:h1], dv[:, h0:h1]       # views: accumulate in place
        for d in (dq_, dk_, dv_):
            d.fill(0)
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            qa_i, dya_i = qa[:, :, i0:i1], dya[:, :, i0:i1]             # (B,h,bq,D+1)
            q_i, dy_i = q_[:, :, i0:i1], dy_[:, :, i0:i1]               # (B,h,bq,D)
            dq_i = dq_[:, :, i0:i1]
            for j0, j1 in _key_chunks(off + i0, off + i1, bk, window):
                p = qa_i @ kaT[:, :, :, j0:j1]                          # S2 - lse2 (B,h,bq,bk) recomputed
                masked = _masked(off + i0, off + i1, j0, j1, masks, padding, window)
                _exp2_masked(p, masked)                                 # exact probabilities P
                dv_[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i           # (B,h,bk,bq) @ (B,h,bq,D)
                ds = dya_i @ vaT[:, :, :, j0:j1]                        # dP - delta (B,h,bq,bk)
                ds *= p                                                 # dS = P * (dP - delta)
                dq_i += ds @ k_[:, :, j0:j1]                            # (B,h,bq,bk) @ (B,h,bk,D)
                dk_[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i           # (B,h,bk,bq) @ (B,h,bq,D)
        dq_ *= scale                                                    # S = (q k^T) * scale
        dk_ *= scale

    parallel.rows(H, heads, size=B * H * T * min(Tk, bk), grain=1)   # = heads(0, H), a head at a time
    return (dq, dk, dv), {}
