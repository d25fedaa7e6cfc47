"""Rotary position embedding (RoPE), rotate-half layout (as HuggingFace / GPT-NeoX).

A relative encoding: instead of adding a learned vector per absolute position, q and k of
every head are rotated by an angle that grows with the position, so the score q_t . k_s
depends on t - s only. No position table, no maximum length.

With the head dim split in halves x = [x1, x2] and inv_freq[i] = base^(-2i/D):
    angle[t, i]    = pos[t] * inv_freq[i]          (both halves: cos, sin are [c, c], [s, s])
    rotate_half(x) = [-x2, x1]
    rope(x)        = x * cos + rotate_half(x) * sin
The rotation is orthogonal, so the backward is the inverse rotation:
    dx = dout * cos + rotate_half^T(dout * sin),   rotate_half^T(y) = [y2, -y1]
"""
import numpy as np


def rope_cos_sin(position_ids, head_dim, base=10000.0, dtype=np.float32):
    """position_ids (B,T) -> cos, sin, each (B,1,T,D): broadcast over the heads."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (D/2,)
    angle = np.asarray(position_ids, dtype=np.float64)[..., None] * inv_freq       # (B,T,D/2)
    angle = np.concatenate([angle, angle], axis=-1)[:, None]                       # (B,1,T,D)
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


def rope_forward(x, cos, sin):
    """x (B,H,T,D), cos, sin (B,1,T,D) -> rotated x (B,H,T,D)."""
    return x * cos + rotate_half(x) * sin, (cos, sin)


def rope_backward(dout, cache):
    """dout (B,H,T,D) -> dx (B,H,T,D), {}."""
    cos, sin = cache
    # out = x * cos + rotate_half(x) * sin
    return dout * cos + rotate_half_transpose(dout * sin), {}


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transpose(y):
    half = y.shape[-1] // 2
    return np.concatenate([y[..., half:], -y[..., :half]], axis=-1)
