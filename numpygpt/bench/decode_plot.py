"""The figure of `numpygpt bench-decode` (numpygpt/bench/decode.py measures, this draws):
per-token decode time against the context length N, log-log, one line per variant, beside
the time its bytes take at the triad bandwidth measured in the run (dashed); unreliable
times crossed out in red; and the KV-cache bytes a token reads.
matplotlib is imported inside plot(): without it plot() returns PLOT_HINT instead."""

from .attention_plot import PLOT_HINT


def plot(result, path):
    """Log-log time (with the bandwidth bound) and KV bytes against N; a note if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return PLOT_HINT
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    variants = result["config"]["variants"]
    for i, name in enumerate(variants):
        rows = [r for r in result["rows"] if r["variant"] == name]
        if not rows:
            continue
        color = f"C{i}"
        k, w = variants[name]["n_kv_head"], variants[name]["sliding_window"]
        label = f"{name} (K={k}" + (f", W={w})" if w else ")")
        ns = [r["n"] for r in rows]
        ax_t.loglog(ns, [r["decode_s"] * 1e3 for r in rows], "o-", color=color, label=label)
        ax_t.loglog(ns, [r["bound_s"] * 1e3 for r in rows], "--", color=color, alpha=0.6)
        bad = [r for r in rows if r.get("unreliable")]
        if bad:
            ax_t.loglog([r["n"] for r in bad], [r["decode_s"] * 1e3 for r in bad], "x",
                        color="red", ms=10, mew=2)
        ax_m.loglog(ns, [r["kv_bytes"] / 2**20 for r in rows], "o-", color=color, label=label)
    ax_t.plot([], [], "k--", alpha=0.6, label="bytes / triad bandwidth")
    for ax, ylabel in ((ax_t, "ms per token"), (ax_m, "MiB")):
        ax.set_xlabel("context length N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    triad = result["triad_bytes_per_s"]["median"]
    ax_t.set_title("decode time per token" + (f" (triad {triad / 1e9:.1f} GB/s)" if triad else ""),
                   fontsize=9)
    ax_m.set_title("KV cache a token reads", fontsize=9)
    c = result["config"]
    fig.suptitle(f"decoding, {c['preset']} shape (L={c['n_layer']} C={c['n_embd']} "
                 f"H={c['n_head']} V={c['vocab_size']}), RoPE, float32, B=1, fast engine"
                 + (f"; interrupted at N={result['interrupted_at']}"
                    if result.get("interrupted_at") is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
