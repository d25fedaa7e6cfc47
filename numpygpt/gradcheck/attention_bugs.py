"""The bug zoo's wrong functions of the attention variants (bugs.py holds the zoo and the
other wrong backwards): grouped-query attention's backward and the sliding window's rolling
KV cache. Each is a copy of the right function with the line marked `# BUG` changed. Like
bugs.py, this module is left alone by bugs.swapped.
"""
import numpy as np


def repeat_kv_backward_one_head(dx, n_rep):
    """(B,H,Tk,D) -> (B,H/n_rep,Tk,D): a head used by n_rep query heads gets the sum of their
    gradients (the backward of a copy is a sum)."""
    if n_rep == 1:
        return dx
    B, H, Tk, D = dx.shape
    grouped = dx.reshape(B, H // n_rep, n_rep, Tk, D)            # (B,K,H/K,Tk,D): the groups
    return grouped[:, :, 0]                                      # BUG: .sum(axis=2), one head's


def move_to_front_one_slot_late(buffer, kept, capacity):
    """buffer (L,B,K,slots,D) -> (L,B,K,capacity,D) whose slots [0, n) hold buffer's slots
    `kept` (a slice of n): buffer itself, moved within, when it has capacity slots already."""
    new = buffer if buffer.shape[3] == capacity else np.zeros(
        buffer.shape[:3] + (capacity,) + buffer.shape[4:], dtype=buffer.dtype)
    n = kept.stop - kept.start
    new[:, :, :, 1:n + 1] = buffer[:, :, :, kept]            # BUG: [:n], slots 1..n, not 0..n-1
    return new
