"""The attention layer and its standard core in the engine. Textbook twin:
numpygpt/layers/attention.py (causal_attention_forward/backward, attention_forward/backward).

Devices: every array in the workspace (engine/workspace.py); q, k and v are views of the one
(B,T,3C) product and the core writes its heads straight into the (B,T,C) layout c_proj reads
(and dq, dk, dv into the (B,T,3C) layout c_attn's backward reads), so no head is copied; a head
at a time, the heads shared among the cores (engine/parallel.py); one (B,H,T,Tk) buffer holds
S, then exp(S), then P (in place); the softmax backward's row sum as an einsum (no (B,H,T,Tk)
temporary) and dS computed in dP's buffer. Decoding (a few query rows after a KV cache):
every head in one batched product on BLAS's threads, the softmax in base 2 (_decoding_core).
"""
import math

import numpy as np

from ..layers import allowed_keys, rope_forward, rope_backward, split_heads, sub, prefixed
from . import parallel
from .linear import linear_forward_fast, linear_backward_fast
from .tiled_attention import (LOG2E, tiled_attention_forward_fast,
                              tiled_attention_backward_fast)
from .workspace import FRESH

# Decoding scores a few query rows (1, or a group's H/K heads) against many keys: its time is
# reading the keys and values once. OpenBLAS reads the keys at a fraction of the memory's
# speed in a product with so few rows, unless the keys are the product's long side:
# S^T = k q^T. And P v with a few rows reads v fastest a chunk of keys at a time (the
# chunks' products summed). These few-row products run as BLAS calls on BLAS's own threads,
# every head in one batched call, not as a section a head at a time: with K = 3 or 1
# key/value heads, heads shared among 2 cores leave one idle, and a section's wake-up costs
# more than a decoded token's element-wise work. Measured on a 2-core AVX-512 VM, one layer
# of GPT-2's shape at 16384 keys: K = 12 ~4 ms (~25 GB/s), K = 3 ~1.2 ms (~21 GB/s).
FEW_ROWS = 32
KEY_CHUNK = 1024


def causal_attention_forward_fast(q, k, v, key_mask=None, ws=FRESH, name="attn", out=None,
                                  window=None, group=1):
    """q (B,H,T,D), k, v (B,H,Tk,D), key_mask (B,Tk) bool or None -> y (B,H,T,D), cache.
    out: a (B,H,T,D) array (a view of strided rows will do) to write y into.
    window: W, each query sees its last W keys only; None: all earlier ones.
    group: g query rows per position, position-major (row r is the query at position r // g):
    a key/value head's g query heads stacked, so that each of its keys is read once for all
    of them (grouped-query attention); the mask's rows repeated to match. The backward then
    sums dk and dv over the group by itself: they are sums over the rows of one matmul."""
    D = q.shape[-1]
    blocked = ~allowed_keys(q.shape[-2] // group, k.shape[-2], key_mask, window=window)  # (T,Tk) or (B,1,T,Tk)
    if not blocked.any():                                     # decoding's last query sees every key
        blocked = None
    elif group > 1:
        blocked = np.repeat(blocked, group, axis=-2)          # (gT,Tk) or (B,1,gT,Tk), rows (T,g)
    scale = 1.0 / math.sqrt(D)                                # a Python float: no float64 upcast
    probs = ws(name + ".probs", q.shape[:-1] + k.shape[-2:-1], q.dtype)   # (B,H,T,Tk)
    y = ws(name + ".y", q.shape, q.dtype) if out is None else out         # (B,H,T,D)

    few = q.shape[-2] <= FEW_ROWS                             # a few rows
    if few and k.shape[-2] > q.shape[-2] // group:            # ... after a cache of earlier ones
        _decoding_core(q * scale, k, v, blocked, probs, y, ws, name)    # (decoding)
        return y, (q, k, v, probs)
    scores_t = ws(name + ".scores_t", k.shape[:-1] + q.shape[-2:-1], q.dtype) if few else None

    def heads(h0, h1):                                        # the heads h0:h1
        q_, k_, v_, s = q[:, h0:h1], k[:, h0:h1], v[:, h0:h1], probs[:, h0:h1]
        if few:                                               # S^T = k q^T: keys BLAS's long side
            s_t = np.matmul(k_, (q_ * scale).swapaxes(-1, -2), out=scores_t[:, h0:h1])  # (B,h,Tk,T)
            np.copyto(s, s_t.swapaxes(-1, -2))                # (B,h,T,Tk)
        else:
            np.matmul(q_ * scale, k_.swapaxes(-1, -2), out=s)  # (B,h,T,D) @ (B,h,D,Tk) -> (B,h,T,Tk)
        _softmax_rows(s, blocked)
        np.matmul(s, v_, out=y[:, h0:h1])                     # (B,h,T,Tk) @ (B,h,Tk,D) -> (B,h,T,D)

    parallel.rows(q.shape[1], heads, size=probs.size, grain=1)   # = heads(0, H), a head at a time
    return y, (q, k, v, probs)


def _softmax_rows(s, blocked, exp=np.exp):
    """s (...,T,Tk) scores -> their softmax over the keys, in place; blocked: True = masked.
    exp=np.exp2 for scores in base 2 (S log2 e): the same P."""
    if blocked is not None:
        np.copyto(s, -np.inf, where=blocked)                  # masked: -inf
    row_max = s.max(axis=-1, keepdims=True)                   # (...,T,1)
    row_max[~np.isfinite(row_max)] = 0.0                      # fully masked row: any finite shift
    s -= row_max
    exp(s, out=s)                                             # masked entries: exp(-inf) = 0
    denom = s.sum(axis=-1, keepdims=True)
    denom[denom == 0] = 1.0                                   # fully masked row stays all 0
    s /= denom                                                # now P


def _decoding_core(qs, k, v, blocked, probs, y, ws, name):
    """Decoding's core: qs (B,H,T,D), a few rows already scaled, against a cache of keys ->
    probs (B,H,T,Tk) and y (B,H,T,D); every head in one batched matmul, on BLAS's threads.
    The softmax in base 2 (log2 e folded into q: NumPy's float32 exp2 is ~2x its exp)."""
    Tk, D = k.shape[-2:]
    scores_t = ws(name + ".scores_t", k.shape[:-1] + qs.shape[-2:-1], qs.dtype)  # (B,H,Tk,T)
    np.matmul(k, (qs * LOG2E).swapaxes(-1, -2), out=scores_t)  # S^T log2 e = k q^T log2 e
    np.copyto(probs, scores_t.swapaxes(-1, -2))               # (B,H,T,Tk)
    _softmax_rows(probs, blocked, np.exp2)                    # 2^(S log2 e - m) = e^(S - m')
    n = Tk // KEY_CHUNK                                       # whole chunks; the rest after them
    if n < 2:
        np.matmul(probs, v, out=y)                            # (B,H,T,Tk) @ (B,H,Tk,D)
        return
    whole = n * KEY_CHUNK
    p_chunks = probs[..., :whole].reshape(probs.shape[:-1] + (n, KEY_CHUNK)).swapaxes(-2, -3)
    v_chunks = v[..., :whole, :].reshape(v.shape[:-2] + (n, KEY_CHUNK, D))
    parts = ws(name + ".pv_parts", probs.shape[:-2] + (n, probs.shape[-2], D), y.dtype)
    np.matmul(p_chunks, v_chunks, out=parts)                  # (B,H,n,T,c) @ (B,H,n,c,D)
    np.sum(parts, axis=-3, out=y)                             # the chunks' P v summed
    if whole < Tk:
        y += probs[..., whole:] @ v[..., whole:, :]           # the last, short chunk


def causal_attention_backward_fast(dy, cache, ws=FRESH, name="attn", out=None):
    """dy (B,H,T,D) -> (dq, dk, dv), {}. out: three arrays to write dq, dk, dv into."""
    q, k, v, probs = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv = out or (ws(f"{name}.d{a}", x.shape, x.dtype) for a, x in zip("qkv", (q, k, v)))
    dps = ws(name + ".dp", probs.shape, probs.dtype)          # (B,H,T,Tk)

    def heads(h0, h1):                                        # the heads h0:h1
        q_, k_, v_, p_, dy_ = (a[:, h0:h1] for a in (q, k, v, probs, dy))
        np.matmul(p_.swapaxes(-1, -2), dy_, out=dv[:, h0:h1])  # (B,h,Tk,T) @ (B,h,T,D)
        dp = np.matmul(dy_, v_.swapaxes(-1, -2), out=dps[:, h0:h1])   # (B,h,T,D) @ (B,h,D,Tk)
        # ds = p * (dp - rowsum(dp * p)), in dp's buffer; the row sum without a temporary
        dp -= np.einsum("...ts,...ts->...t", dp, p_)[..., None]
        ds = np.multiply(dp, p_, out=dp)                      # (B,h,T,Tk)
        np.matmul(ds, k_, out=dq[:, h0:h1])                   # (B,h,T,Tk) @ (B,h,Tk,D)
        dq[:, h0:h1] *= scale
        np.matmul(ds.swapaxes(-1, -2), q_, out=dk[:, h0:h1])  # (B,h,Tk,T) @ (B,h,T,D)
        dk[:, h0:h1] *= scale

    parallel.rows(q.shape[1], heads, size=probs.size, grain=1)   # = heads(0, H), a head at a time
    return (dq, dk, dv), {}


def group_rows(x, n_kv_head, out):
    """x (B,H,T,D) -> out (B,K,T*g,D), g = H/K: key/value head j's query heads j*g..(j+1)*g-1
    as rows, position-major (row t*g + i is head j*g + i at position t)."""
    B, H, T, D = x.shape
    g = H // n_kv_head
    for j in range(n_kv_head):
        out[:, j].reshape(B, T, g, D)[...] = x[:, j * g:(j + 1) * g].swapaxes(1, 2)  # (B,g,T,D) -> (B,T,g,D)
    return out


def ungroup_rows(rows, out):
    """The inverse of group_rows: rows (B,K,T*g,D) -> out (B,H,T,D) (a view will do)."""
    B, H, T, D = out.shape
    n_kv_head = rows.shape[1]
    g = H // n_kv_head
    for j in range(n_kv_head):
        out[:, j * g:(j + 1) * g] = rows[:, j].reshape(B, T, g, D).swapaxes(1, 2)   # (B,T,g,D) -> (B,g,T,D)
    return out


def attention_forward_fast(x, p, n_head, key_mask=None, rope=None, past=None, attention="standard",
                           q_tile=128, k_tile=1024, n_kv_head=None, ws=FRESH, name="attn",
                           window=None):
    """The attention layer by the engine's cores. Textbook twin: layers/attention.py
    (attention_forward); the same arguments, cache and numbers.
    Grouped-query attention (n_kv_head = K < H) without repeat_kv's copies. The standard core
    (the one decoding uses): key/value head j's H/K query heads stacked as the rows of one
    (B,K,T*H/K,D) query array (group_rows), so that one matmul scores them all against head
    j's keys, read once for the group (decoding reads K heads of the cache, not H); the
    backward's dk, dv are then sums over those rows already (repeat_kv_backward). The tiled
    core runs once per key/value head on its group of query heads and a broadcast (stride 0)
    view of head j's keys and values; the backward sums each group's dk, dv."""
    B, T, C = x.shape
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    kv_width = n_kv_head * (C // n_head)                                  # K*D
    qkv, c_attn_cache = linear_forward_fast(x, sub(p, "c_attn"), ws, name + ".c_attn")  # (B,T,C+2KD)
    q, k, v = np.split(qkv, [C, C + kv_width], axis=-1)
    q, k, v = split_heads(q, n_head), split_heads(k, n_kv_head), split_heads(v, n_kv_head)  # views
    rope_cache = None
    if rope is not None:
        q, rope_cache = rope_forward(q, *rope)
        k, _ = rope_forward(k, *rope)
    if past is not None:
        k_cache, v_cache, t0 = past
        t1 = t0 + k.shape[2]
        k_cache[:, :, t0:t1], v_cache[:, :, t0:t1] = k, v
        k, v = k_cache[:, :, :t1], v_cache[:, :, :t1]                     # (B,K,Tk,D)
    y = ws(name + ".y", (B, T, C), qkv.dtype)                             # the heads merged
    if attention == "tiled":
        core = lambda q, k, v, name, out: tiled_attention_forward_fast(
            q, k, v, key_mask, q_tile, k_tile, ws, name, out=out, window=window)
    else:
        core = lambda q, k, v, name, out: causal_attention_forward_fast(
            q, k, v, key_mask, ws, name, out=out, window=window)
    if n_kv_head == n_head:
        _, core_cache = core(q, k, v, name, split_heads(y, n_head))
    elif attention == "standard":                                         # a group's queries as rows
        g = n_head // n_kv_head
        rows = group_rows(q, n_kv_head, ws(name + ".q_rows", (B, n_kv_head, T * g, C // n_head),
                                           q.dtype))                      # (B,K,gT,D)
        y_rows, core_cache = causal_attention_forward_fast(
            rows, k, v, key_mask, ws, name, out=ws(name + ".y_rows", rows.shape, rows.dtype),
            window=window, group=g)
        ungroup_rows(y_rows, split_heads(y, n_head))
    else:                                                                 # a core per group
        g = n_head // n_kv_head
        shape = (B, g) + k.shape[2:]                                      # (B,g,Tk,D)
        core_cache = [core(q[:, j * g:(j + 1) * g], np.broadcast_to(k[:, j:j + 1], shape),
                           np.broadcast_to(v[:, j:j + 1], shape), f"{name}.kv{j}",
                           split_heads(y, n_head)[:, j * g:(j + 1) * g])[1]
                      for j in range(n_kv_head)]
    out, c_proj_cache = linear_forward_fast(y, sub(p, "c_proj"), ws, name + ".c_proj")
    return out, (c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head, n_kv_head)


def attention_backward_fast(dout, cache, ws=FRESH, name="attn"):
    """Textbook twin: layers/attention.py (attention_backward)."""
    c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head, n_kv_head = cache
    dy, g_proj = linear_backward_fast(dout, c_proj_cache, ws, name + ".c_proj")
    dy = split_heads(dy, n_head)                                          # (B,H,T,D) view
    B, T, C = dout.shape
    kv_width = n_kv_head * (C // n_head)
    dqkv = ws(name + ".dqkv", (B, T, C + 2 * kv_width), dout.dtype)
    dq_v, dk_v, dv_v = np.split(dqkv, [C, C + kv_width], axis=-1)
    views = (split_heads(dq_v, n_head), split_heads(dk_v, n_kv_head),
             split_heads(dv_v, n_kv_head))                                # dq, dk, dv in place
    core_backward = (tiled_attention_backward_fast if attention == "tiled"
                     else causal_attention_backward_fast)
    if rope_cache is None:                       # the core writes into dqkv's layout
        targets = views
    else:                                        # rotated back first, then put in place
        targets = tuple(ws(f"{name}.d{a}", d.shape, d.dtype) for a, d in zip("qk", views)) + views[2:]
    if n_kv_head == n_head:
        core_backward(dy, core_cache, ws, name, out=targets)
    elif attention == "standard":                # a group's rows in one matmul: dk, dv summed by it
        q_rows = core_cache[0]                                            # (B,K,gT,D)
        dy_rows = group_rows(dy, n_kv_head, ws(name + ".dy_rows", q_rows.shape, dout.dtype))
        dq_rows = ws(name + ".dq_rows", q_rows.shape, dout.dtype)
        causal_attention_backward_fast(dy_rows, core_cache, ws, name,
                                       out=(dq_rows, targets[1], targets[2]))
        ungroup_rows(dq_rows, targets[0])
    else:                                        # tiled: each group's dk, dv summed: repeat_kv_backward
        g = n_head // n_kv_head
        for j, cache_j in enumerate(core_cache):
            heads = slice(j * g, (j + 1) * g)
            shape = (B, g) + cache_j[1].shape[2:]                         # (B,g,Tk,D)
            dk_j, dv_j = (ws(f"{name}.kv{j}.d{a}", shape, dout.dtype) for a in "kv")
            core_backward(dy[:, heads], cache_j, ws, f"{name}.kv{j}",
                          out=(targets[0][:, heads], dk_j, dv_j))
            np.sum(dk_j, axis=1, out=targets[1][:, j])                    # (B,g,Tk,D) -> (B,Tk,D)
            np.sum(dv_j, axis=1, out=targets[2][:, j])
    if rope_cache is not None:
        dq, _ = rope_backward(targets[0], rope_cache)
        dk, _ = rope_backward(targets[1], rope_cache)
        np.copyto(views[0], dq)
        np.copyto(views[1], dk)
    dx, g_attn = linear_backward_fast(dqkv, c_attn_cache, ws, name + ".c_attn")
    return dx, {**prefixed("c_attn", g_attn), **prefixed("c_proj", g_proj)}
