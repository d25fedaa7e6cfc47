"""Token embedding plus learned absolute position embedding.

    x[b, t] = wte[ids[b, t]] + wpe[pos[b, t]]          (B,T) -> (B,T,C)

The backward is a scatter-add: every occurrence of a token id adds its row of
dx into that id's row of dwte. Repeated ids must *accumulate*, which is why the
backward uses np.add.at and not `dwte[ids] += dx` (that keeps only one write).
"""
import numpy as np


def embedding_forward(input_ids, wte, wpe=None, position_ids=None):
    """ids (B,T) int, wte (V,C), wpe (P,C) or None (RoPE), position_ids (B,T) or None."""
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    x = wte[input_ids]                                  # (B,T) -> (B,T,C)
    if wpe is not None:
        x = x + wpe[position_ids]                       # (B,T,C) + (B,T,C)
    cache = (input_ids, position_ids, wte.shape, None if wpe is None else wpe.shape)
    return x, cache


def embedding_backward(dx, cache, dwte=None):
    """dx (B,T,C) -> grads {"wte": (V,C), "wpe": (P,C)} (no "wpe" with RoPE).
    dwte: an existing (V,C) gradient to accumulate into, in place (the tied lm_head's), or None."""
    input_ids, position_ids, wte_shape, wpe_shape = cache
    C = dx.shape[-1]
    if dwte is None:
        dwte = np.zeros(wte_shape, dtype=dx.dtype)
    elif dwte.shape != tuple(wte_shape) or dwte.dtype != dx.dtype:
        raise ValueError(f"dwte has shape {dwte.shape} and dtype {dwte.dtype}, expected "
                         f"{tuple(wte_shape)} and {dx.dtype}")
    # x = wte[ids]  ->  dwte[ids] += dx, accumulating over repeated ids
    # (NumPy >= 1.25's add.at is as fast as a sort + np.add.reduceat here: measured, see README, "Speed")
    np.add.at(dwte, input_ids.reshape(-1), dx.reshape(-1, C))
    grads = {"wte": dwte}
    if wpe_shape is not None:
        dwpe = np.zeros(wpe_shape, dtype=dx.dtype)
        # x += wpe[pos]  ->  dwpe[pos] += dx
        np.add.at(dwpe, np.asarray(position_ids).reshape(-1), dx.reshape(-1, C))
        grads["wpe"] = dwpe
    return grads
