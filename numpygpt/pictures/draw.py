"""The pictures drawn as PNG files, from what attention_maps.py, histograms.py and
update_ratio.py compute. Needs matplotlib (the `plot` extra), imported only when drawing:
without it each function raises ValueError saying how to install it."""
import numpy as np

from .histograms import ACTIVATIONS, GRADIENTS
from .update_ratio import ratio_series

PLOT_EXTRA = 'matplotlib is not installed (pip install -e ".[plot]")'
RULE_OF_THUMB = 1e-3          # the update-to-weight ratio CS231n and nn-zero-to-hero aim for


def have_matplotlib():
    try:
        import matplotlib                      # noqa: F401  (the plot extra)
    except ImportError:
        return False
    return True


def pyplot():
    """What the drawings use of matplotlib.pyplot (subplots, get_cmap, close), built on
    matplotlib.figure.Figure: each figure is drawn straight to its file, so drawing never
    switches the backend (a notebook keeps its inline plots, a script needs no display).
    ValueError when matplotlib is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(PLOT_EXTRA) from None
    return _Files(matplotlib, Figure)


class _Files:
    def __init__(self, matplotlib, figure):
        self.matplotlib, self.figure = matplotlib, figure

    def subplots(self, nrows=1, ncols=1, figsize=None, dpi=None, layout=None, **kwargs):
        fig = self.figure(figsize=figsize, dpi=dpi, layout=layout)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    def get_cmap(self, name):
        return self.matplotlib.colormaps[name]

    def close(self, fig):
        """Nothing to close: the figure was never registered with pyplot."""


def draw_attention_maps(maps, example, path, tokens=None, title=""):
    """attention_maps(...)'s result, the batch row `example` -> a PNG at path: for each
    block, a row of P and a row of dS, one column per head. Keys a query may not see (later
    tokens, padding) are grey; so are padding queries' rows. A query whose label is -100
    (counted for nothing) has its row name in grey. tokens: the T row/column names."""
    plt = pyplot()
    probs, dscores = maps["probs"][:, example], maps["dscores"][:, example]   # (L,H,T,T)
    L, H, T, _ = probs.shape
    hidden = ~maps["allowed"][example] | ~maps["key_mask"][example][:, None]   # (T,T)
    counted = maps["counted"][example]
    tokens = [str(t) for t in (range(T) if tokens is None else tokens)]
    fig, axes = plt.subplots(2 * L, H, figsize=(2.4 * H + 1.0, 2.5 * 2 * L + 0.8), dpi=80,
                             squeeze=False, layout="constrained")
    for layer in range(L):
        for row, what, values in ((2 * layer, "P", probs[layer]), (2 * layer + 1, "dS", dscores[layer])):
            limit = 1.0 if what == "P" else max(float(np.abs(values[:, ~hidden]).max()), 1e-30)
            for head in range(H):
                ax = axes[row, head]
                shown = np.ma.masked_array(values[head], hidden)
                cmap = plt.get_cmap("viridis" if what == "P" else "RdBu_r").with_extremes(bad="0.85")
                image = ax.imshow(shown, cmap=cmap, vmin=0 if what == "P" else -limit,
                                  vmax=limit, interpolation="nearest")
                ax.set_title(f"block {layer}, head {head}: {what}", fontsize=8)
                ax.set_xticks(range(T))
                ax.set_xticklabels(tokens, fontsize=6, rotation=90)
                ax.set_yticks(range(T))
                ax.set_yticklabels(tokens, fontsize=6)
                for label, count in zip(ax.get_yticklabels(), counted):
                    label.set_color("black" if count else "0.6")
            fig.colorbar(image, ax=list(axes[row]), shrink=0.9, pad=0.01)
    fig.supxlabel("key (the token attended to)", fontsize=8)
    fig.supylabel("query (grey name: label -100)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_histograms(snapshots, path, title=""):
    """snapshots: [(label, layer_stats(...)), ...], e.g. at initialisation and after training
    -> a PNG at path: one row per tensor (activations, then gradients), one column per
    snapshot, one histogram line per block with its mean and std (and GELU's saturation)."""
    plt = pyplot()
    names = ACTIVATIONS + GRADIENTS
    fig, axes = plt.subplots(len(names), len(snapshots), dpi=80, squeeze=False,
                             figsize=(5.2 * len(snapshots), 2.2 * len(names)))
    for col, (label, stats) in enumerate(snapshots):
        for row, name in enumerate(names):
            ax = axes[row, col]
            for i, layer in enumerate(stats["layers"]):
                s = layer[name]
                centers = (s["edges"][:-1] + s["edges"][1:]) / 2
                density = s["counts"] / max(s["counts"].sum(), 1)
                note = (f", {layer['gelu_saturation']:.1%} saturated"
                        if name == "gelu_out" else "")
                ax.plot(centers, density, lw=1,
                        label=f"block {i}: mean {s['mean']:+.2e}, std {s['std']:.2e}{note}")
            ax.set_title(f"{label}: {name.replace('_', ' ')}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
            ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_update_ratios(history, path, title=""):
    """A run's history (its "update_ratio" entries, update_ratio.py) -> a PNG at path:
    log10 of each tensor's update-to-weight ratio against the step, and the rule of thumb
    1e-3 as a dashed line. A ratio of 0 (learning rate 0) is left out (log10 is -inf)."""
    plt = pyplot()
    series = ratio_series(history)
    if not series:
        raise ValueError("the history holds no update ratios (train with --plots DIR)")
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=80)
    for name, (steps, ratios) in series.items():
        keep = ratios > 0
        ax.plot(steps[keep], np.log10(ratios[keep]), lw=0.8, label=name)
    ax.axhline(np.log10(RULE_OF_THUMB), color="k", ls="--", lw=1, label="1e-3 (rule of thumb)")
    ax.set_xlabel("step")
    ax.set_ylabel("log10 std(update) / std(weight)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=1 + len(series) // 12, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
