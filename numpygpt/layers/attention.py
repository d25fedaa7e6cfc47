"""Causal multi-head self-attention, as GPT-2: fused q/k/v projection, 1/sqrt(head_dim) scale,
causal mask, optional key-padding mask, output projection.

    qkv = x @ W_attn + b_attn                     (B,T,C) -> (B,T,3C)
    q, k, v = split(qkv) -> heads                 3 x (B,H,T,D), D = C/H
    [q, k = rope(q), rope(k)]                     only with pos_encoding="rope"
    S = q @ k^T / sqrt(D)                         (B,H,T,T)   <- the O(T^2) part
    S[t, s] = -inf where s > t or key s is padding
    P = softmax(S, axis=-1)                       (B,H,T,T)
    y = P @ v                                     (B,H,T,D)
    out = merge(y) @ W_proj + b_proj              (B,T,C)

Softmax backward, row by row: dS = P * (dP - rowsum(dP * P)).
A query row whose every key is masked (e.g. a left-padding position) has no distribution to
normalise; its P row is defined as 0, so its output and every gradient through it are 0.

The core runs a head at a time, the heads shared among the cores (numpygpt/parallel.py:
`parallel.rows(H, heads)` means heads(0, H)); the math is the same for every head.

The core (S, P, y) has two implementations with the same numbers: the textbook one here,
which keeps P, and layers/tiled_attention.py, which never holds it (the `impl` argument).
"""
import math

import numpy as np

from .. import parallel
from .linear import linear_forward, linear_backward
from .params import sub, prefixed
from .rope import rope_forward, rope_backward
from .tiled_attention import tiled_attention_forward, tiled_attention_backward


# ---- the core: softmax(q k^T / sqrt(D)) v --------------------------------------------------

def causal_attention_forward(q, k, v, key_mask=None):
    """q (B,H,n,D), k, v (B,H,S,D), key_mask (B,S) bool or None -> y (B,H,n,D).
    The n queries are the last n of the S positions: n = S in training; with a KV cache, the
    new tokens against every cached key. One (B,H,n,S) buffer holds S, then exp(S), then P."""
    D = q.shape[-1]
    blocked = ~allowed_keys(q.shape[-2], k.shape[-2], key_mask)   # (n,S) or (B,1,n,S)
    scale = 1.0 / math.sqrt(D)                                # a Python float: no float64 upcast
    scores = np.empty_like(q, shape=q.shape[:-1] + k.shape[-2:-1])   # (B,H,n,S)
    y = np.empty_like(q)                                          # (B,H,n,D)

    def heads(h0, h1):                                        # the heads h0:h1 of every line
        q_, k_, v_, s = q[:, h0:h1], k[:, h0:h1], v[:, h0:h1], scores[:, h0:h1]
        np.matmul(q_ * scale, k_.swapaxes(-1, -2), out=s)     # (B,h,n,D) @ (B,h,D,S) -> (B,h,n,S)
        np.copyto(s, -np.inf, where=blocked)                  # S[t, s] = -inf: s > t or padding
        row_max = s.max(axis=-1, keepdims=True)               # (B,h,n,1)
        row_max[~np.isfinite(row_max)] = 0.0                  # fully masked row: any finite shift
        s -= row_max
        p = np.exp(s, out=s)                                  # masked entries: exp(-inf) = 0
        denom = p.sum(axis=-1, keepdims=True)
        denom[denom == 0] = 1.0                               # fully masked row stays all 0
        p /= denom
        np.matmul(p, v_, out=y[:, h0:h1])                     # (B,h,n,S) @ (B,h,S,D) -> (B,h,n,D)

    parallel.rows(q.shape[1], heads, size=scores.size, grain=1)   # = heads(0, H), a head at a time
    return y, (q, k, v, scores)


def causal_attention_backward(dy, cache):
    """dy (B,H,n,D) -> (dq, dk, dv), {}."""
    q, k, v, p = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)

    def heads(h0, h1):                                        # the heads h0:h1 of every line
        q_, k_, v_, p_, dy_ = (a[:, h0:h1] for a in (q, k, v, p, dy))
        # y = p @ v
        np.matmul(p_.swapaxes(-1, -2), dy_, out=dv[:, h0:h1])  # (B,h,S,n) @ (B,h,n,D)
        dp = dy_ @ v_.swapaxes(-1, -2)                        # (B,h,n,D) @ (B,h,D,S) -> (B,h,n,S)
        # p = softmax(scores): ds = p * (dp - rowsum(dp * p)); masked entries have p = 0.
        # The rowsum as an einsum makes no (B,h,n,S) temporary; ds is computed in dp's buffer.
        # (rowsum(dp * p) = rowsum(dy * y) is cheaper, but not exactly 0 where a row sees one key.)
        dp -= np.einsum("...ts,...ts->...t", dp, p_)[..., None]
        ds = np.multiply(dp, p_, out=dp)                      # (B,h,n,S)
        # scores = (q * scale) @ k^T
        np.matmul(ds, k_, out=dq[:, h0:h1])                   # (B,h,n,S) @ (B,h,S,D)
        dq[:, h0:h1] *= scale
        np.matmul(ds.swapaxes(-1, -2), q_, out=dk[:, h0:h1])  # (B,h,S,n) @ (B,h,n,D)
        dk[:, h0:h1] *= scale

    parallel.rows(q.shape[1], heads, size=p.size, grain=1)   # = heads(0, H), a head at a time
    return (dq, dk, dv), {}


def allowed_keys(n_query, n_key, key_mask=None):
    """Which key s each query may see: causal and not padding. Query i sits at position
    n_key - n_query + i and sees s <= it. (n_query,n_key), or (B,1,n_query,n_key) with
    key_mask (B,n_key)."""
    causal = np.tri(n_query, n_key, k=n_key - n_query, dtype=bool)
    if key_mask is None:
        return causal
    return causal & key_mask[:, None, None, :]


# ---- the layer: projections, heads, positions around the core ------------------------------

def attention_forward(x, p, n_head, key_mask=None, rope=None, impl="textbook", tiles=(128, 1024),
                      past=None):
    """x (B,T,C), p {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"} -> (B,T,C).
    key_mask (B,S) bool: False for padding keys. rope: (cos, sin) each (B,1,T,D), or None.
    impl: the core, "textbook" or "tiled" (tiles: its query block, key chunk).
    past: decoding with a KV cache, (k_cache, v_cache, t0): (B,H,max_len,D) buffers whose
    slots [0, t0) hold the earlier tokens' keys and values; this call's are stored at
    [t0, t0+T) and its queries attend to all t0+T (S = t0+T; textbook core only)."""
    qkv, c_attn_cache = linear_forward(x, sub(p, "c_attn"))               # (B,T,C) -> (B,T,3C)
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # 3 x (B,H,T,D)
    rope_cache = None
    if rope is not None:
        (q, rope_cache), (k, _) = rope_forward(q, *rope), rope_forward(k, *rope)
    if past is not None:                      # the keys and values of every earlier token, too
        k_cache, v_cache, t0 = past
        t1 = t0 + k.shape[2]
        k_cache[:, :, t0:t1], v_cache[:, :, t0:t1] = k, v
        k, v = k_cache[:, :, :t1], v_cache[:, :, :t1]                     # (B,H,S,D)
    core = "tiled" if impl == "tiled" and past is None else "textbook"
    if core == "tiled":
        y, core_cache = tiled_attention_forward(q, k, v, key_mask, *tiles)       # (B,H,T,D)
    else:
        y, core_cache = causal_attention_forward(q, k, v, key_mask)              # (B,H,T,D)
    out, c_proj_cache = linear_forward(merge_heads(y), sub(p, "c_proj"))  # (B,T,C) -> (B,T,C)
    return out, (c_attn_cache, rope_cache, core, core_cache, c_proj_cache, n_head)


def attention_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    c_attn_cache, rope_cache, core, core_cache, c_proj_cache, n_head = cache
    dy, g_proj = linear_backward(dout, c_proj_cache)             # out = merge(y) @ W_proj + b
    dy = split_heads(dy, n_head)                                 # (B,T,C) -> (B,H,T,D)
    if core == "tiled":
        (dq, dk, dv), _ = tiled_attention_backward(dy, core_cache)
    else:
        (dq, dk, dv), _ = causal_attention_backward(dy, core_cache)
    if rope_cache is not None:
        (dq, _), (dk, _) = rope_backward(dq, rope_cache), rope_backward(dk, rope_cache)
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B,T,3C)
    dx, g_attn = linear_backward(dqkv, c_attn_cache)             # qkv = x @ W_attn + b
    return dx, {**prefixed("c_attn", g_attn), **prefixed("c_proj", g_proj)}


def split_heads(x, n_head):
    """(B,T,C) -> (B,H,T,D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B,H,T,D) -> (B,T,C)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)
