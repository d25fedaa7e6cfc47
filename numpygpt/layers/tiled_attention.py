"""Tiled causal attention (FlashAttention-2 style): the same y as the standard core in
layers/attention.py, computed a tile at a time, so that no (T,Tk) array ever exists.

The standard core holds S and P, each (B,H,T,Tk): memory O(T^2). Here the queries are cut into
blocks of q_tile rows and, for each block, the keys into tiles of k_tile. Over the key tiles
j of a query block i, a running ("online") softmax:

    S_ij  = q_i k_j^T / sqrt(D)                       (B,H,q_tile,k_tile), one tile
    m_new = max(m, rowmax(S_ij))                      running row max
    P_ij  = exp(S_ij - m_new)                         this tile's exp, against the new max
    l     = l exp(m - m_new) + rowsum(P_ij)           running sum of exp
    acc   = acc exp(m - m_new) + P_ij v_j             running sum of exp times v
    y_i   = acc / l,   lse_i = m + log(l)             kept: y (B,H,T,D), lse (B,H,T,1)

exp(m - m_new) rescales what was summed against the old max to the new one, so at the end
acc / l is softmax(S_i) v exactly. Causal: the key tiles after a block's last query are
never visited (about half the work); the mask (layers/causal_mask.py) hides the rest.
Sliding window W: the key tiles wholly before the window of a block's first query are
skipped too, so a block visits about (W + q_tile) / k_tile + 1 tiles however long the text,
and the work grows as T W instead of T^2.

The backward recomputes each tile from q, k and the saved log-sum-exp instead of storing P:

    P_ij   = exp(S_ij - lse_i)                        the tile's exact probabilities
    dv_j  += P_ij^T dy_i
    dP_ij  = dy_i v_j^T
    dS_ij  = P_ij (dP_ij - delta_i),   delta_i = rowsum(dy_i y_i)   (= rowsum(dP P))
    dq_i  += dS_ij k_j / sqrt(D),      dk_j += dS_ij^T q_i / sqrt(D)

Memory: O(T D + q_tile k_tile) per (batch, head) instead of O(T Tk).
A query row whose every key is masked has no distribution: as in the standard core its output and
every gradient are 0 (its l stays 0; lse is stored as 0, and exp(-inf - 0) = 0).
"""
import math

import numpy as np

from .causal_mask import allowed_keys


def tiled_attention_forward(q, k, v, key_mask=None, q_tile=128, k_tile=1024, window=None):
    """q (B,H,T,D), k, v (B,H,Tk,D), key_mask (B,Tk) bool or None -> y (B,H,T,D), cache.
    window: W, each query sees its last W keys only; None: all earlier ones."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    y = np.zeros_like(q)                                           # (B,H,T,D)
    lse = np.zeros((B, H, T, 1), dtype=q.dtype)                    # (B,H,T,1)
    for i0 in range(0, T, q_tile):
        i1 = min(i0 + q_tile, T)
        q_i = q[:, :, i0:i1]                                       # (B,H,bq,D)
        m = np.full((B, H, i1 - i0, 1), -np.inf, dtype=q.dtype)    # running row max
        l = np.zeros((B, H, i1 - i0, 1), dtype=q.dtype)            # running sum of exp
        acc = np.zeros((B, H, i1 - i0, D), dtype=q.dtype)          # running sum of exp times v
        for j0 in range(0, Tk - T + i1, k_tile):                   # up to the block's last query
            j1 = min(j0 + k_tile, Tk - T + i1)
            if window is not None and j1 <= Tk - T + i0 - window + 1:
                continue             # every key of the tile is older than every query's window
            s = q_i @ k[:, :, j0:j1].swapaxes(-1, -2) / math.sqrt(D)             # (B,H,bq,bk)
            allowed = allowed_keys(T, Tk, key_mask, (i0, i1), (j0, j1), window)
            s = np.where(allowed, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))  # (B,H,bq,1)
            shift = np.where(np.isfinite(m_new), m_new, 0.0)       # no key seen yet: any finite shift
            p = np.exp(s - shift)                                  # (B,H,bq,bk)
            rescale = np.exp(m - shift)                            # the sums so far, to the new max
            l = l * rescale + p.sum(axis=-1, keepdims=True)        # (B,H,bq,1)
            acc = acc * rescale + p @ v[:, :, j0:j1]               # (B,H,bq,bk) @ (B,H,bk,D)
            m = m_new
        empty = l == 0                                             # every key masked
        y[:, :, i0:i1] = acc / np.where(empty, 1.0, l)             # (B,H,bq,D); empty rows stay 0
        lse[:, :, i0:i1] = np.where(empty, 0.0, m + np.log(np.where(empty, 1.0, l)))
    return y, (q, k, v, key_mask, q_tile, k_tile, window, y, lse)


def tiled_attention_backward(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, key_mask, q_tile, k_tile, window, y, lse = cache
    T, D = q.shape[2], q.shape[3]
    Tk = k.shape[2]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    delta = (dy * y).sum(axis=-1, keepdims=True)                   # (B,H,T,1) = rowsum(dP * P)
    for i0 in range(0, T, q_tile):
        i1 = min(i0 + q_tile, T)
        q_i, dy_i = q[:, :, i0:i1], dy[:, :, i0:i1]                # (B,H,bq,D)
        for j0 in range(0, Tk - T + i1, k_tile):
            j1 = min(j0 + k_tile, Tk - T + i1)
            if window is not None and j1 <= Tk - T + i0 - window + 1:
                continue             # every key of the tile is older than every query's window
            s = q_i @ k[:, :, j0:j1].swapaxes(-1, -2) / math.sqrt(D)             # (B,H,bq,bk)
            allowed = allowed_keys(T, Tk, key_mask, (i0, i1), (j0, j1), window)
            s = np.where(allowed, s, -np.inf)
            p = np.exp(s - lse[:, :, i0:i1])                       # the tile's probabilities
            dv[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i           # (B,H,bk,bq) @ (B,H,bq,D)
            dp = dy_i @ v[:, :, j0:j1].swapaxes(-1, -2)            # (B,H,bq,D) @ (B,H,D,bk)
            ds = p * (dp - delta[:, :, i0:i1])                     # (B,H,bq,bk)
            dq[:, :, i0:i1] += ds @ k[:, :, j0:j1] / math.sqrt(D)  # (B,H,bq,bk) @ (B,H,bk,D)
            dk[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i / math.sqrt(D)          # (B,H,bk,D)
    return (dq, dk, dv), {}
