"""Causal multi-head self-attention, as GPT-2: fused q/k/v projection, 1/sqrt(D) scale,
causal mask (optionally a sliding window), optional key-padding mask, output projection.

    qkv = x @ W_attn + b_attn                     (B,T,C) -> (B,T,3C)
    q, k, v = split(qkv) -> heads                 3 x (B,H,T,D), D = C/H
    [q, k = rope(q), rope(k)]                     only with pos_encoding="rope"
    S = q @ k^T / sqrt(D)                         (B,H,T,Tk)   <- the O(T^2) part
    S[t, s] = -inf where key s may not be seen    (allowed_keys: later keys, keys outside
                                                   the window t - W < s <= t, padding)
    P = softmax(S, axis=-1)                       (B,H,T,Tk)
    y = P @ v                                     (B,H,T,D)
    out = merge(y) @ W_proj + b_proj              (B,T,C)

Tk is the number of keys: Tk = T in training; with a KV cache the T new queries attend to
every cached key as well (Tk = cached + T), and they are the *last* T of the Tk positions.

Softmax backward, row by row: dS = P * (dP - rowsum(dP * P)).
A query row whose every key is masked (e.g. a left-padding position) has no distribution to
normalise; its P row is defined as 0, so its output and every gradient through it are 0.

The core (S, P, y) is computed one of two ways, with the same numbers: "standard" here, which
holds P, and "tiled" (layers/tiled_attention.py), which never does.
"""
import math

import numpy as np

from .causal_mask import allowed_keys
from .linear import linear_forward, linear_backward
from .params import sub, prefixed
from .rope import rope_forward, rope_backward
from .tiled_attention import tiled_attention_forward, tiled_attention_backward


def softmax(scores):
    """Row softmax of scores (...,Tk) whose masked entries are -inf. A row with every entry
    masked has no distribution: its probabilities are defined as 0."""
    row_max = scores.max(axis=-1, keepdims=True)                    # (...,1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)          # fully masked: any finite shift
    e = np.exp(scores - row_max)                                    # masked entries: exp(-inf) = 0
    total = e.sum(axis=-1, keepdims=True)                           # (...,1)
    return e / np.where(total > 0, total, 1.0)                      # fully masked: stays 0


# ---- the core: softmax(q k^T / sqrt(D)) v --------------------------------------------------

def causal_attention_forward(q, k, v, key_mask=None, window=None):
    """q (B,H,T,D), k, v (B,H,Tk,D), key_mask (B,Tk) bool or None -> y (B,H,T,D).
    window: W, each query sees its last W keys only (itself included); None: all earlier."""
    D = q.shape[-1]
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)                  # (B,H,T,D) @ (B,H,D,Tk) -> (B,H,T,Tk)
    allowed = allowed_keys(q.shape[2], k.shape[2], key_mask, window=window)   # (T,Tk) or (B,1,T,Tk)
    scores = np.where(allowed, scores, -np.inf)                     # (B,H,T,Tk)
    probs = softmax(scores)                                         # (B,H,T,Tk)
    y = probs @ v                                                   # (B,H,T,Tk) @ (B,H,Tk,D) -> (B,H,T,D)
    return y, (q, k, v, probs)


def causal_attention_backward(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, probs = cache
    D = q.shape[-1]
    # y = probs @ v
    dv = probs.swapaxes(-1, -2) @ dy                                # (B,H,Tk,T) @ (B,H,T,D) -> (B,H,Tk,D)
    dprobs = dy @ v.swapaxes(-1, -2)                                # (B,H,T,D) @ (B,H,D,Tk) -> (B,H,T,Tk)
    # probs = softmax(scores): masked entries have probs = 0, so they get no gradient
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))   # (B,H,T,Tk)
    # scores = q @ k^T / sqrt(D)
    dq = dscores @ k / math.sqrt(D)                                 # (B,H,T,Tk) @ (B,H,Tk,D) -> (B,H,T,D)
    dk = dscores.swapaxes(-1, -2) @ q / math.sqrt(D)                # (B,H,Tk,T) @ (B,H,T,D) -> (B,H,Tk,D)
    return (dq, dk, dv), {}


# ---- the layer: projections, heads, positions around the core ------------------------------

def attention_forward(x, p, n_head, key_mask=None, rope=None, past=None, attention="standard",
                      q_tile=128, k_tile=1024, window=None):
    """x (B,T,C), p {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"} -> (B,T,C).
    key_mask (B,Tk) bool: False for padding keys. rope: (cos, sin) each (B,1,T,D), or None.
    past: decoding with a KV cache, (k_cache, v_cache, t0): (B,H,capacity,D) buffers whose
    slots [0, t0) hold the earlier tokens' keys and values; this call's are stored at
    [t0, t0+T) and its queries attend to all Tk = t0+T.
    attention: the core, "standard" or "tiled" (q_tile queries x k_tile keys a tile).
    window: the sliding window W (config.sliding_window), or None for full causal attention."""
    qkv, c_attn_cache = linear_forward(x, sub(p, "c_attn"))               # (B,T,C) -> (B,T,3C)
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # 3 x (B,H,T,D)
    rope_cache = None
    if rope is not None:
        q, rope_cache = rope_forward(q, *rope)                            # (B,H,T,D)
        k, _ = rope_forward(k, *rope)
    if past is not None:                      # the keys and values of every earlier token, too
        k_cache, v_cache, t0 = past
        t1 = t0 + k.shape[2]
        k_cache[:, :, t0:t1] = k                                          # kept for the next calls
        v_cache[:, :, t0:t1] = v
        k, v = k_cache[:, :, :t1], v_cache[:, :, :t1]                     # (B,H,Tk,D)
    if attention == "tiled":
        y, core_cache = tiled_attention_forward(q, k, v, key_mask, q_tile, k_tile, window)
    else:
        y, core_cache = causal_attention_forward(q, k, v, key_mask, window)   # (B,H,T,D)
    out, c_proj_cache = linear_forward(merge_heads(y), sub(p, "c_proj"))  # (B,T,C) -> (B,T,C)
    return out, (c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head)


def attention_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head = cache
    dy, g_proj = linear_backward(dout, c_proj_cache)             # out = merge(y) @ W_proj + b
    dy = split_heads(dy, n_head)                                 # (B,T,C) -> (B,H,T,D)
    if attention == "tiled":
        (dq, dk, dv), _ = tiled_attention_backward(dy, core_cache)
    else:
        (dq, dk, dv), _ = causal_attention_backward(dy, core_cache)
    if rope_cache is not None:                                   # q, k = rope(q), rope(k)
        dq, _ = rope_backward(dq, rope_cache)
        dk, _ = rope_backward(dk, rope_cache)
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
