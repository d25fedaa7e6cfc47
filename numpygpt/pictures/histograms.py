"""Per-block statistics of activations and gradients: are they healthy?

For every block, over the real tokens of one batch (padding left out):

    activations   attn out  a, the attention's output (added to the residual stream)
                  gelu out  the MLP's hidden layer after GELU
                  mlp out   m, the MLP's output (added to the residual stream)
    gradients     d attn out, d gelu out, d mlp out: the loss's gradient at each

each with its mean, its standard deviation and a histogram. For GELU, also its saturation:
the share of units whose local slope |gelu'(h)| is below 0.05 (h below about -2.4), which
pass almost no gradient back (for tanh, nn-zero-to-hero counts |tanh| > 0.97: slope < 0.06).
A healthy network keeps each layer's std of the same order, no layer's gradients vanishing or
exploding against the others', and few saturated units (nn-zero-to-hero, part 3).
"""
import numpy as np

from .probe import probe

ACTIVATIONS = ("attn_out", "gelu_out", "mlp_out")
GRADIENTS = ("d_attn_out", "d_gelu_out", "d_mlp_out")
SATURATED_SLOPE = 0.05            # |gelu'(h)| below this: the unit passes almost no gradient
BINS = 60


def tensor_stats(values, bins=BINS):
    """An array -> {"mean", "std", "counts" (bins,), "edges" (bins + 1,)}: numpy's mean, std
    and histogram of its entries (as float64), over the range of the entries."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("tensor_stats: the array is empty (no real token?)")
    counts, edges = np.histogram(values, bins=bins)
    return {"mean": float(values.mean()), "std": float(values.std()),
            "counts": counts, "edges": edges}


def layer_stats(model, input_ids, labels, attention_mask=None, position_ids=None, bins=BINS):
    """A GPT and one batch -> {"loss": float, "layers": one dict per block: {name:
    tensor_stats(...)} for each of ACTIVATIONS and GRADIENTS, and "gelu_saturation": the share
    of the block's GELU units (over the real tokens) with |gelu'(h)| < SATURATED_SLOPE}.
    Padding positions are left out (their activations are computed but never read)."""
    run = probe(model, input_ids, labels, attention_mask, position_ids)
    real = run["key_mask"]                                       # (B,T) bool
    layers = []
    for block in run["blocks"]:
        stats = {name: tensor_stats(block[name][real], bins) for name in ACTIVATIONS + GRADIENTS}
        slope = block["gelu_slope"][real]                        # (N,4C) gelu'(h), real tokens
        stats["gelu_saturation"] = float(np.mean(np.abs(slope) < SATURATED_SLOPE))
        layers.append(stats)
    return {"loss": run["loss"], "layers": layers}


def stats_lines(stats):
    """layer_stats' numbers as a table, one line per block: each tensor's mean and std."""
    head = "".join(f"{name:>22}" for name in ACTIVATIONS + GRADIENTS)
    lines = [f"{'block':<6}{head}{'gelu saturated':>16}"]
    for i, layer in enumerate(stats["layers"]):
        cells = "".join(f"{layer[n]['mean']:>+11.2e}{layer[n]['std']:>11.2e}"
                        for n in ACTIVATIONS + GRADIENTS)
        lines.append(f"{i:<6}{cells}{layer['gelu_saturation']:>16.1%}")
    return lines
