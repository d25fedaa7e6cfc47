"""Token embedding plus learned absolute position embedding.

    x[b, t] = wte[ids[b, t]] + wpe[pos[b, t]]          (B,T) -> (B,T,C)

The backward is a scatter-add: every occurrence of a token id adds its row of dx into that
id's row of dwte. Repeated ids must *accumulate*, which is why it uses np.add.at and not
`dwte[ids] += dx` (fancy-index assignment keeps only one of the writes).
With RoPE there is no position table: p has no "wpe.weight" and grads none either.
"""
import numpy as np


def embedding_forward(input_ids, p, position_ids=None):
    """ids (B,T) int, p {"wte.weight": (V,C), ["wpe.weight": (n_positions,C)]}, position_ids
    (B,T) (default 0..T-1) -> x (B,T,C)."""
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    x = p["wte.weight"][input_ids]                                 # (B,T) -> (B,T,C)
    if "wpe.weight" in p:                                          # learned positions
        x = x + p["wpe.weight"][position_ids]                      # (B,T,C) + (B,T,C)
    shapes = {name: table.shape for name, table in p.items()}
    return x, (input_ids, position_ids, shapes)


def embedding_backward(dx, cache):
    """dx (B,T,C) -> None (ids have no gradient), {"wte.weight": (V,C), ["wpe.weight": ...]}."""
    input_ids, position_ids, shapes = cache
    C = dx.shape[-1]
    rows = dx.reshape(-1, C)                                       # (N,C), N = B*T
    grads = {}
    for name, ids in (("wte.weight", input_ids), ("wpe.weight", position_ids)):
        if name in shapes:
            grads[name] = np.zeros(shapes[name], dtype=dx.dtype)
            np.add.at(grads[name], np.asarray(ids).reshape(-1), rows)   # table[ids] -> += dx
    return None, grads
