"""Causal multi-head self-attention, as GPT-2: fused q/k/v projection, 1/sqrt(D) scale,
causal mask (optionally a sliding window), optional key-padding mask, output projection;
with grouped-query attention (K key/value heads shared by groups of H/K query heads) as an
option.

    qkv = x @ W_attn + b_attn                     (B,T,C) -> (B,T,C+2KD)
    q, k, v = split(qkv) -> heads                 q (B,H,T,D), k, v (B,K,T,D), D = C/H
    [q, k = rope(q), rope(k)]                     only with pos_encoding="rope"
    k, v = repeat_kv(k), repeat_kv(v)             (B,K,Tk,D) -> (B,H,Tk,D): head h gets h // (H/K)
    S = q @ k^T / sqrt(D)                         (B,H,T,Tk)   <- the O(T^2) part
    S[t, s] = -inf where key s may not be seen    (allowed_keys: later keys, keys outside
                                                   the window t - W < s <= t, padding)
    P = softmax(S, axis=-1)                       (B,H,T,Tk)
    y = P @ v                                     (B,H,T,D)
    out = merge(y) @ W_proj + b_proj              (B,T,C)

Tk is the number of keys: Tk = T in training; with a KV cache the T new queries attend to
every cached key as well (Tk = cached + T), and they are the *last* T of the Tk positions.

K = H (the default) is GPT-2's attention: 3C wide, no repeat. K = 1 is multi-query attention.
The repeat copies key/value head j to the H/K query heads j*H/K .. (j+1)*H/K - 1, so its
backward is the sum over that group: dk_j = sum_{h in group j} dk_h (the same for v).
A KV cache holds the K heads, not the H repeated ones.

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
                      q_tile=128, k_tile=1024, n_kv_head=None, window=None):
    """x (B,T,C), p {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"} -> (B,T,C).
    key_mask (B,Tk) bool: False for padding keys. rope: (cos, sin) each (B,1,T,D), or None.
    past: decoding with a KV cache, (k_cache, v_cache, t0): (B,K,capacity,D) buffers whose
    slots [0, t0) hold the earlier tokens' keys and values; this call's are stored at
    [t0, t0+T) and its queries attend to all Tk = t0+T.
    attention: the core, "standard" or "tiled" (q_tile queries x k_tile keys a tile).
    n_kv_head: K, the key/value heads (None: n_head); c_attn is then (C, C+2KD).
    window: the sliding window W (config.sliding_window), or None for full causal attention."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    C = x.shape[-1]
    kv_width = n_kv_head * (C // n_head)                                  # K*D
    qkv, c_attn_cache = linear_forward(x, sub(p, "c_attn"))               # (B,T,C) -> (B,T,C+2KD)
    q, k, v = np.split(qkv, [C, C + kv_width], axis=-1)                   # (B,T,C), 2 x (B,T,KD)
    q = split_heads(q, n_head)                                            # (B,H,T,D)
    k = split_heads(k, n_kv_head)                                         # (B,K,T,D)
    v = split_heads(v, n_kv_head)                                         # (B,K,T,D)
    rope_cache = None
    if rope is not None:
        q, rope_cache = rope_forward(q, *rope)                            # (B,H,T,D)
        k, _ = rope_forward(k, *rope)
    if past is not None:                      # the keys and values of every earlier token, too
        k_cache, v_cache, t0 = past
        t1 = t0 + k.shape[2]
        k_cache[:, :, t0:t1] = k                                          # kept for the next calls
        v_cache[:, :, t0:t1] = v
        k, v = k_cache[:, :, :t1], v_cache[:, :, :t1]                     # (B,K,Tk,D)
    k = repeat_kv(k, n_head // n_kv_head)                                 # (B,K,Tk,D) -> (B,H,Tk,D)
    v = repeat_kv(v, n_head // n_kv_head)                                 # (B,K,Tk,D) -> (B,H,Tk,D)
    if attention == "tiled":
        y, core_cache = tiled_attention_forward(q, k, v, key_mask, q_tile, k_tile, window)
    else:
        y, core_cache = causal_attention_forward(q, k, v, key_mask, window)   # (B,H,T,D)
    out, c_proj_cache = linear_forward(merge_heads(y), sub(p, "c_proj"))  # (B,T,C) -> (B,T,C)
    return out, (c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head, n_kv_head)


def attention_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head, n_kv_head = cache
    dy, g_proj = linear_backward(dout, c_proj_cache)             # out = merge(y) @ W_proj + b
    dy = split_heads(dy, n_head)                                 # (B,T,C) -> (B,H,T,D)
    if attention == "tiled":
        (dq, dk, dv), _ = tiled_attention_backward(dy, core_cache)
    else:
        (dq, dk, dv), _ = causal_attention_backward(dy, core_cache)
    dk = repeat_kv_backward(dk, n_head // n_kv_head)             # (B,H,T,D) -> (B,K,T,D): group sums
    dv = repeat_kv_backward(dv, n_head // n_kv_head)             # (B,H,T,D) -> (B,K,T,D)
    if rope_cache is not None:                                   # q, k = rope(q), rope(k)
        dq, _ = rope_backward(dq, rope_cache)
        dk, _ = rope_backward(dk, rope_cache)
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B,T,C+2KD)
    dx, g_attn = linear_backward(dqkv, c_attn_cache)             # qkv = x @ W_attn + b
    return dx, {**prefixed("c_attn", g_attn), **prefixed("c_proj", g_proj)}


def repeat_kv(x, n_rep):
    """(B,K,Tk,D) -> (B,K*n_rep,Tk,D): each key/value head repeated for its n_rep query heads,
    head j at j*n_rep .. (j+1)*n_rep - 1 (HuggingFace's repeat_kv). n_rep = 1: x itself."""
    if n_rep == 1:
        return x
    return np.repeat(x, n_rep, axis=1)                           # (B,K,Tk,D) -> (B,H,Tk,D)


def repeat_kv_backward(dx, n_rep):
    """(B,H,Tk,D) -> (B,H/n_rep,Tk,D): a head used by n_rep query heads gets the sum of their
    gradients (the backward of a copy is a sum)."""
    if n_rep == 1:
        return dx
    B, H, Tk, D = dx.shape
    grouped = dx.reshape(B, H // n_rep, n_rep, Tk, D)            # (B,K,H/K,Tk,D): the groups
    return grouped.sum(axis=2)                                   # (B,K,Tk,D)


def split_heads(x, n_head):
    """(B,T,C) -> (B,H,T,D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B,H,T,D) -> (B,T,C)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)
