"""The update-to-weight ratio: how much one step changes each weight tensor, relative to it.

    ratio = std(p_after - p_before) / std(p_before)       one number per tensor per step

The update is the difference of the parameters across the step, whatever the optimiser did
(AdamW's moments, weight decay, clipping): the optimiser's code is not touched. Rule of
thumb (CS231n, nn-zero-to-hero part 3): about 1e-3, i.e. log10(ratio) near -3. Far below,
the tensor barely learns (learning rate too low); far above, each step rewrites it (too high).

Kept for the tensors with two dimensions, the matrices and the embeddings, as nn-zero-to-hero
does: a bias starts at 0 and a LayerNorm weight at 1, where std(p) is 0 and the ratio has
no meaning.
"""
import numpy as np


def ratio_names(params):
    """The names of the tensors the ratio is kept for: those with two dimensions."""
    return [name for name, p in params.items() if np.ndim(p) == 2]


def snapshot(params, names=None):
    """Copies of the tensors (default: ratio_names(params)), taken before a step."""
    names = ratio_names(params) if names is None else names
    return {name: np.array(params[name], dtype=np.float64) for name in names}


def update_ratios(before, params):
    """snapshot(...) taken before a step, and the parameters after it -> {name: std(after -
    before) / std(before)} (float), for each tensor of the snapshot whose std(before) > 0."""
    ratios = {}
    for name, old in before.items():
        scale = old.std()
        if scale > 0:
            update = np.asarray(params[name], dtype=np.float64) - old
            ratios[name] = float(update.std() / scale)
    return ratios


def ratio_series(history):
    """A run's history["update_ratio"], [[step, {name: ratio}], ...] -> {name: (steps,
    ratios)} as arrays, the steps in order (a resumed run's entries follow the earlier ones)."""
    series = {}
    for step, ratios in history.get("update_ratio", []):
        for name, value in ratios.items():
            steps, values = series.setdefault(name, ([], []))
            steps.append(step)
            values.append(value)
    return {name: (np.array(s), np.array(v)) for name, (s, v) in series.items()}
