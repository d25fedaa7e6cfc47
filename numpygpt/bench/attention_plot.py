"""The figure of `numpygpt bench-attention` (numpygpt/bench/attention.py measures, this draws):
forward+backward time and peak memory against the sequence length N, log-log, one line per
implementation, unreliable times crossed out in red, and one (B,H,N,N) float32 array for scale;
and the roofline: each measured forward+backward at (its FLOP/byte, its achieved GFLOP/s), under
the two roofs measured in the same run, the matmul's GFLOP/s (flat) and the triad's GB/s times
FLOP/byte (the slope); a point's height under the lower roof is what its code leaves unused.
matplotlib is imported inside plot(): without it plot() returns PLOT_HINT instead."""

PLOT_HINT = 'no plot: matplotlib is not installed (pip install -e ".[plot]")'


def plot(result, path):
    """Log-log time and memory against N; returns a note instead if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return PLOT_HINT
    fig, (ax_t, ax_m, ax_r) = plt.subplots(1, 3, figsize=(14.5, 3.8), dpi=80)
    for impl in result["impls"]:
        ok = [r for r in result["rows"] if r["impl"] == impl and r["status"] == "ok"]
        ns = [r["n"] for r in ok]
        ax_t.loglog(ns, [r["fwd_bwd_s"] for r in ok], "o-", label=f"{impl} fwd+bwd")
        bad = [r for r in ok if r.get("unreliable")]          # times not to be trusted
        if bad:
            ax_t.loglog([r["n"] for r in bad], [r["fwd_bwd_s"] for r in bad], "x", color="red",
                        ms=10, mew=2, label=f"{impl} UNRELIABLE")
        if impl != "torch":
            ax_m.loglog(ns, [r["peak_bytes"] / 2**20 for r in ok], "o-", label=f"{impl} peak")
    tt = {r["n"]: r["tt_bytes"] for r in result["rows"]}     # every size has a row, skipped or not
    ax_m.loglog(sorted(tt), [tt[n] / 2**20 for n in sorted(tt)], "k:", label="one (B,H,N,N) array")
    roofline(ax_r, result)
    c = result["config"]
    for ax, ylabel in ((ax_t, "seconds"), (ax_m, "MiB"), (ax_r, "achieved GFLOP/s")):
        if ax is not ax_r:
            ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())       # short ranges: no overlapping labels
        if ax is ax_r:                                      # beside the panel: points fill it
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
        else:
            ax.legend(fontsize=7)
    ax_t.set_title("forward+backward time", fontsize=9)
    ax_m.set_title("peak memory of forward+backward", fontsize=9)
    fig.suptitle(f"causal attention ({c['engine']} engine), B={c['batch_size']} H={c['n_head']} "
                 f"D={c['head_dim']} float32, "
                 f"tiles {c['q_tile']} queries x {c['k_tile']} keys"
                 + "".join(f"; {name} " + (f"W={v['window']}" if v["window"] else f"K={v['n_kv_head']}")
                           for name, v in c.get("variants", {}).items())
                 + (f"; interrupted at N={result['interrupted_at']}"
                    if result.get("interrupted_at") is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def roofline(ax, result):
    """Each implementation's forward+backward points (N growing along the line) and the roofs."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    xs = []
    for impl in result["impls"]:
        ok = [r for r in result["rows"] if r["impl"] == impl and r.get("gbps_fwd_bwd")]
        if ok:
            xs += [r["intensity_fwd_bwd"] for r in ok]
            ax.loglog([r["intensity_fwd_bwd"] for r in ok], [r["gflops_fwd_bwd"] for r in ok],
                      "o-", ms=4, label=impl)
    mm, bw = result["matmul_gflops_median"], result["triad_gbps"]
    ridge = mm / bw                                  # where the two roofs meet
    lo, hi = min(xs + [ridge]) / 2, max(xs + [ridge]) * 2
    ax.loglog([ridge, hi], [mm, mm], "k--", lw=1, label=f"matmul {mm:.0f} GFLOP/s")
    ax.loglog([lo, ridge], [bw * lo, mm], "k:", lw=1, label=f"triad {bw:.1f} GB/s x FLOP/byte")
    ax.set_xlabel("FLOP/byte (numpygpt/attention_cost.py)")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))      # a short range: 10, 20, 50, ...
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("roofline, forward+backward", fontsize=9)
