"""Causal multi-head self-attention, as GPT-2: fused q/k/v projection, 1/sqrt(head_dim)
scale, causal mask, optional key-padding mask, output projection.

    qkv = x @ W_attn + b_attn                     (B,T,C) -> (B,T,3C)
    q, k, v = split(qkv) -> heads                 3 x (B,H,T,D), D = C/H
    [q, k = rope(q), rope(k)]                     only with pos_encoding="rope"
    S = q @ k^T / sqrt(D)                         (B,H,T,T)   <- the O(T^2) part
    S[t, s] = -inf where s > t or key s is padding
    P = softmax(S, axis=-1)                       (B,H,T,T)
    y = P @ v                                     (B,H,T,D)
    out = merge(y) @ W_proj + b_proj              (B,T,C)

Softmax backward, row by row: dS = P * (dP - sum(dP * P, axis=-1)).
A query row whose every key is masked (e.g. a left-padding position) has no
distribution to normalise; we define its P row as 0, so its output and every
gradient through it are 0, never NaN.
"""
import math

import numpy as np

from .rope import rope_forward, rope_backward
from .mlp import linear_forward, linear_backward


def split_heads(x, n_head):
    """(B,T,C) -> (B,H,T,D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B,H,T,D) -> (B,T,C)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def allowed_keys(n_query, n_key, key_mask=None):
    """Bool mask of which key s each query may see: causal and not padding. The queries are
    the *last* n_query of the n_key positions (all of them in training; the new tokens when
    decoding with a KV cache), so query i sits at position n_key - n_query + i and sees s <= it.
    (n_query,n_key) without key_mask, (B,1,n_query,n_key) with key_mask (B,n_key)."""
    causal = np.tri(n_query, n_key, k=n_key - n_query, dtype=bool)
    if key_mask is None:
        return causal
    return causal & key_mask[:, None, None, :]


def causal_attention_forward(q, k, v, key_mask=None):
    """The textbook core: q, k, v (B,H,T,D), key_mask (B,T) bool or None -> y (B,H,T,D).
    Materialises the (B,H,T,T) probabilities. One (B,H,T,T) buffer holds S, then exp(S),
    then P (in place): each fresh (B,H,T,T) temporary would cost a pass and page faults.
    (With a KV cache, q holds only the n newest of k's S positions: (B,H,n,S) scores.)"""
    D = q.shape[-1]
    blocked = ~allowed_keys(q.shape[-2], k.shape[-2], key_mask)   # (T,T) or (B,1,T,T)
    scale = 1.0 / math.sqrt(D)                                # a Python float: no float64 upcast
    scores = (q * scale) @ k.swapaxes(-1, -2)                 # (B,H,T,D) @ (B,H,D,T) -> (B,H,T,T)
    np.copyto(scores, -np.inf, where=blocked)                 # S[t, s] = -inf: s > t or padding
    row_max = scores.max(axis=-1, keepdims=True)              # (B,H,T,1)
    row_max[~np.isfinite(row_max)] = 0.0                      # fully masked row: any finite shift
    scores -= row_max
    p = np.exp(scores, out=scores)                            # masked entries: exp(-inf) = 0
    denom = p.sum(axis=-1, keepdims=True)
    denom[denom == 0] = 1.0                                   # fully masked row stays all 0
    p /= denom
    y = p @ v                                                 # (B,H,T,T) @ (B,H,T,D) -> (B,H,T,D)
    return y, (q, k, v, p)


def causal_attention_backward(dy, cache):
    """dy (B,H,T,D) -> dq, dk, dv (B,H,T,D)."""
    q, k, v, p = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    # y = p @ v
    dv = p.swapaxes(-1, -2) @ dy                              # (B,H,T,T)^T @ (B,H,T,D)
    dp = dy @ v.swapaxes(-1, -2)                              # (B,H,T,D) @ (B,H,D,T) -> (B,H,T,T)
    # p = softmax(scores): ds = p * (dp - rowsum(dp * p)); masked entries have p = 0.
    # The rowsum as an einsum makes no (B,H,T,T) temporary; ds is computed in dp's buffer.
    # (rowsum(dp * p) = rowsum(dy * y) is cheaper, but not exactly 0 where a row sees one key.)
    dp -= np.einsum("...ts,...ts->...t", dp, p)[..., None]
    ds = np.multiply(dp, p, out=dp)                           # (B,H,T,T)
    # scores = (q * scale) @ k^T
    dq = ds @ k                                               # (B,H,T,T) @ (B,H,T,D)
    dq *= scale
    dk = ds.swapaxes(-1, -2) @ q
    dk *= scale
    return dq, dk, dv


def attention_forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head,
                      key_mask=None, rope=None, impl="naive", block_size=128):
    """x (B,T,C) -> out (B,T,C). rope = (cos, sin) each (B,1,T,D), or None.
    impl selects the core: "naive" (above) or "tiled" (numpygpt.tiled_attention)."""
    qkv, attn_cache = linear_forward(x, c_attn_w, c_attn_b)      # (B,T,C) -> (B,T,3C)
    q, k, v = np.split(qkv, 3, axis=-1)                            # 3 x (B,T,C)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))         # 3 x (B,H,T,D)
    if rope is not None:
        q, k = rope_forward(q, *rope), rope_forward(k, *rope)
    if impl == "tiled":
        from .tiled_attention import tiled_attention_forward
        y, core_cache = tiled_attention_forward(q, k, v, key_mask, block_size=block_size)
    else:
        y, core_cache = causal_attention_forward(q, k, v, key_mask)   # (B,H,T,D)
    out, proj_cache = linear_forward(merge_heads(y), c_proj_w, c_proj_b)   # (B,T,C) -> (B,T,C)
    return out, (attn_cache, rope, impl, core_cache, proj_cache, n_head)


def attention_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}."""
    attn_cache, rope, impl, core_cache, proj_cache, n_head = cache
    dy, g_proj = linear_backward(dout, proj_cache)               # out = merge(y) @ W_proj + b
    dy = split_heads(dy, n_head)                                 # (B,T,C) -> (B,H,T,D)
    if impl == "tiled":
        from .tiled_attention import tiled_attention_backward
        dq, dk, dv = tiled_attention_backward(dy, core_cache)
    else:
        dq, dk, dv = causal_attention_backward(dy, core_cache)
    if rope is not None:
        dq, dk = rope_backward(dq, *rope), rope_backward(dk, *rope)
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B,T,3C)
    dx, g_attn = linear_backward(dqkv, attn_cache)               # qkv = x @ W_attn + b
    return dx, {"c_attn.weight": g_attn["weight"], "c_attn.bias": g_attn["bias"],
                "c_proj.weight": g_proj["weight"], "c_proj.bias": g_proj["bias"]}
