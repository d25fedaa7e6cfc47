"""The embedding in the engine. Textbook twin: numpygpt/layers/embedding.py (embedding_forward,
embedding_backward).

Devices: the rows gathered into the workspace (engine/workspace.py); with tied weights the
backward adds its rows into the lm_head's gradient (`into`), which holds the other use of the
same matrix already, instead of a second (V,C) array summed afterwards.
"""
import numpy as np

from .workspace import FRESH


def embedding_forward_fast(input_ids, p, position_ids=None, ws=FRESH, name="emb"):
    """ids (B,T), p {"wte.weight": (V,C), ["wpe.weight": ...]} -> x (B,T,C), cache as the twin's."""
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    wte = p["wte.weight"]
    x = ws(name + ".out", (B, T, wte.shape[1]), wte.dtype)
    np.take(wte, input_ids, axis=0, out=x)                              # (B,T) -> (B,T,C)
    if "wpe.weight" in p:
        pos = ws(name + ".pos", x.shape, p["wpe.weight"].dtype)
        np.take(p["wpe.weight"], position_ids, axis=0, out=pos)
        x += pos
    shapes = {key: table.shape for key, table in p.items()}
    return x, (input_ids, position_ids, shapes)


def embedding_backward_fast(dx, cache, ws=FRESH, name="emb", into=None):
    """dx (B,T,C) -> None, {"wte.weight": (V,C), ["wpe.weight": ...]}. into: an array to add the
    wte gradient to (and return as it), instead of a zeroed one."""
    input_ids, position_ids, shapes = cache
    rows = dx.reshape(-1, dx.shape[-1])                                 # (N,C)
    grads = {}
    for key, ids in (("wte.weight", input_ids), ("wpe.weight", position_ids)):
        if key not in shapes:
            continue
        if key == "wte.weight" and into is not None:
            grads[key] = into
        else:
            grads[key] = ws.zeros(f"{name}.d{key}", shapes[key], dx.dtype)
        np.add.at(grads[key], np.asarray(ids).reshape(-1), rows)        # repeated ids add up
    return None, grads
