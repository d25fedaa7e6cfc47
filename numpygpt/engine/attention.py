"""The standard attention core in the engine. Textbook twin: numpygpt/layers/attention.py
(causal_attention_forward, causal_attention_backward).

Devices: a head at a time, the heads shared among the cores (engine/parallel.py); one
(B,h,T,Tk) buffer holds S, then exp(S), then P (in place); the softmax backward's row sum
as an einsum (no (B,h,T,Tk) temporary) and dS computed in dP's buffer.
"""
import math

import numpy as np

from ..layers import (allowed_keys, linear_forward, linear_backward, rope_forward, rope_backward,
                      split_heads, merge_heads, sub, prefixed)
from . import parallel
from .tiled_attention import tiled_attention_forward_fast, tiled_attention_backward_fast


def causal_attention_forward_fast(q, k, v, key_mask=None):
    """q (B,H,T,D), k, v (B,H,Tk,D), key_mask (B,Tk) bool or None -> y (B,H,T,D), cache."""
    D = q.shape[-1]
    blocked = ~allowed_keys(q.shape[-2], k.shape[-2], key_mask)   # (T,Tk) or (B,1,T,Tk)
    scale = 1.0 / math.sqrt(D)                                # a Python float: no float64 upcast
    probs = np.empty_like(q, shape=q.shape[:-1] + k.shape[-2:-1])   # (B,H,T,Tk)
    y = np.empty_like(q)                                      # (B,H,T,D)

    def heads(h0, h1):                                        # the heads h0:h1
        q_, k_, v_, s = q[:, h0:h1], k[:, h0:h1], v[:, h0:h1], probs[:, h0:h1]
        np.matmul(q_ * scale, k_.swapaxes(-1, -2), out=s)     # (B,h,T,D) @ (B,h,D,Tk) -> (B,h,T,Tk)
        np.copyto(s, -np.inf, where=blocked)                  # masked: -inf
        row_max = s.max(axis=-1, keepdims=True)               # (B,h,T,1)
        row_max[~np.isfinite(row_max)] = 0.0                  # fully masked row: any finite shift
        s -= row_max
        np.exp(s, out=s)                                      # masked entries: exp(-inf) = 0
        denom = s.sum(axis=-1, keepdims=True)
        denom[denom == 0] = 1.0                               # fully masked row stays all 0
        s /= denom                                            # now P
        np.matmul(s, v_, out=y[:, h0:h1])                     # (B,h,T,Tk) @ (B,h,Tk,D) -> (B,h,T,D)

    parallel.rows(q.shape[1], heads, size=probs.size, grain=1)   # = heads(0, H), a head at a time
    return y, (q, k, v, probs)


def causal_attention_backward_fast(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, probs = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)

    def heads(h0, h1):                                        # the heads h0:h1
        q_, k_, v_, p_, dy_ = (a[:, h0:h1] for a in (q, k, v, probs, dy))
        np.matmul(p_.swapaxes(-1, -2), dy_, out=dv[:, h0:h1])  # (B,h,Tk,T) @ (B,h,T,D)
        dp = dy_ @ v_.swapaxes(-1, -2)                        # (B,h,T,D) @ (B,h,D,Tk) -> (B,h,T,Tk)
        # ds = p * (dp - rowsum(dp * p)), in dp's buffer; the row sum without a temporary
        dp -= np.einsum("...ts,...ts->...t", dp, p_)[..., None]
        ds = np.multiply(dp, p_, out=dp)                      # (B,h,T,Tk)
        np.matmul(ds, k_, out=dq[:, h0:h1])                   # (B,h,T,Tk) @ (B,h,Tk,D)
        dq[:, h0:h1] *= scale
        np.matmul(ds.swapaxes(-1, -2), q_, out=dk[:, h0:h1])  # (B,h,Tk,T) @ (B,h,T,D)
        dk[:, h0:h1] *= scale

    parallel.rows(q.shape[1], heads, size=probs.size, grain=1)   # = heads(0, H), a head at a time
    return (dq, dk, dv), {}


def attention_forward_fast(x, p, n_head, key_mask=None, rope=None, past=None, attention="standard",
                           q_tile=128, k_tile=1024):
    """The attention layer by the engine's cores. Textbook twin: layers/attention.py
    (attention_forward); the same arguments, cache and numbers."""
    qkv, c_attn_cache = linear_forward(x, sub(p, "c_attn"))               # (B,T,C) -> (B,T,3C)
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # 3 x (B,H,T,D)
    rope_cache = None
    if rope is not None:
        q, rope_cache = rope_forward(q, *rope)
        k, _ = rope_forward(k, *rope)
    if past is not None:
        k_cache, v_cache, t0 = past
        t1 = t0 + k.shape[2]
        k_cache[:, :, t0:t1], v_cache[:, :, t0:t1] = k, v
        k, v = k_cache[:, :, :t1], v_cache[:, :, :t1]                     # (B,H,Tk,D)
    if attention == "tiled":
        y, core_cache = tiled_attention_forward_fast(q, k, v, key_mask, q_tile, k_tile)
    else:
        y, core_cache = causal_attention_forward_fast(q, k, v, key_mask)
    out, c_proj_cache = linear_forward(merge_heads(y), sub(p, "c_proj"))
    return out, (c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head)


def attention_backward_fast(dout, cache):
    """Textbook twin: layers/attention.py (attention_backward)."""
    c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head = cache
    dy, g_proj = linear_backward(dout, c_proj_cache)
    dy = split_heads(dy, n_head)
    if attention == "tiled":
        (dq, dk, dv), _ = tiled_attention_backward_fast(dy, core_cache)
    else:
        (dq, dk, dv), _ = causal_attention_backward_fast(dy, core_cache)
    if rope_cache is not None:
        dq, _ = rope_backward(dq, rope_cache)
        dk, _ = rope_backward(dk, rope_cache)
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B,T,3C)
    dx, g_attn = linear_backward(dqkv, c_attn_cache)
    return dx, {**prefixed("c_attn", g_attn), **prefixed("c_proj", g_proj)}
