"""The pictures a learner looks at, computed by the textbook (numpygpt/layers/, model.py):
data functions return arrays, drawing functions (draw.py) write PNGs.

    probe.py            probe(model, ids, labels): one forward and backward, the tensors inside kept
    attention_maps.py   attention_maps(model, ids, labels): P and dS per block and head;
                        attention_dscores(core_cache, dy): dS from the core's cache
    histograms.py       layer_stats(model, ids, labels): mean, std, histogram of each block's
                        activations and gradients, GELU's saturation
    update_ratio.py     snapshot(params) before a step, update_ratios(before, params) after:
                        std(update) / std(weight) per tensor (rule of thumb: about 1e-3)
    draw.py             draw_attention_maps, draw_histograms, draw_update_ratios (matplotlib)

`numpygpt tour --plots DIR` draws the attention maps; `numpygpt train/sft --plots DIR` the
histograms at the start and the end and the update ratios (docs/pictures.md).
"""
from .probe import probe
from .attention_maps import attention_maps, attention_dscores
from .histograms import (ACTIVATIONS, GRADIENTS, SATURATED_SLOPE, layer_stats, stats_lines,
                         tensor_stats)
from .update_ratio import ratio_names, ratio_series, snapshot, update_ratios
from .draw import (PLOT_EXTRA, RULE_OF_THUMB, draw_attention_maps, draw_histograms,
                   draw_update_ratios, have_matplotlib)

__all__ = ["probe", "attention_maps", "attention_dscores", "ACTIVATIONS", "GRADIENTS",
           "SATURATED_SLOPE", "layer_stats", "stats_lines", "tensor_stats", "ratio_names",
           "ratio_series", "snapshot", "update_ratios", "PLOT_EXTRA", "RULE_OF_THUMB",
           "draw_attention_maps", "draw_histograms", "draw_update_ratios", "have_matplotlib"]
