"""Attention time and memory against sequence length N (`numpygpt bench-attention`).

The network is the same for any N; the cost is not. For N over a geometric range this
measures, for the standard core (holds (B,H,N,N) probabilities) and the tiled core (holds
one q_tile x k_tile tile at a time), by the engine (engine/attention.py,
engine/tiled_attention.py; `--engine textbook`: their twins in numpygpt/layers/):

    forward time, forward+backward time     median of --repeats after one warm-up run
                                            (measure.time_call: a call under 10 ms is
                                            timed several calls to a repeat)
    peak memory of forward+backward         tracemalloc (it sees NumPy's allocations)
    bytes of one (B,H,N,N) float32 array    what O(N^2) attention has to hold, at least
    FLOPs, counted with the causal mask     P = B H N(N+1)/2 (query, key) pairs, each a
                                            D-long dot product (2D FLOPs) per matmul:
                                            forward  2 matmuls (q k^T, P v)        4 D P
                                            backward 4 matmuls (dv, dP, dq, dk)    8 D P
                                            The same count for every implementation (the
                                            tiled backward's recomputation of S is not
                                            credited), so GFLOP/s compare like with like.
    achieved GFLOP/s, beside the float32 matmul GFLOP/s measured in the same run (at
                                            every N, just before it: "% mm")
    bytes moved, arithmetic intensity       numpygpt/attention_cost.py's closed forms
                                            (FLOPs / bytes), and the achieved GB/s, beside a
                                            STREAM triad's GB/s measured at the start of the
                                            run: the two roofs of the plot's roofline panel
    log-log slope of time and memory against N over the upper half of the range
                                            (~2 means O(N^2), ~1 means O(N))

and, with --variants (bench/attention_variants.py), the tiled core with grouped-query (gqa),
multi-query (mqa) attention and a sliding window (window), and, when PyTorch is installed,
torch.nn.functional.scaled_dot_product_attention (is_causal=True) on the same shapes. The standard core is skipped at sizes whose
(B,H,N,N) arrays would not fit in --memory-budget-gb.
Writes attention_scaling.json, attention_scaling.csv and (with matplotlib)
attention_scaling.png into --out.
"""
import csv
import json
import os
import platform
import time

import numpy as np

from ..engine import parallel
from ..engine.attention import causal_attention_forward_fast, causal_attention_backward_fast
from ..engine.tiled_attention import tiled_attention_forward_fast, tiled_attention_backward_fast
from ..layers import (causal_attention_forward, causal_attention_backward,
                      tiled_attention_forward, tiled_attention_backward)
from ..dataflow import core_flops
from .attention_variants import (VARIANTS, cost_fields, variant_fns, variant_inputs, variants_config,
                                 torch_fns, roofline_lines)
from .measure import (time_call, peak_memory, matmul_gflops, triad_bandwidth, loglog_slope, cpu_snapshot,
                      others_cpu, others_cpu_now, load_average, busy_note, problems,
                      above_fastest, advice, blas_note)
from .attention_plot import plot

# The standard forward+backward holds up to 3 (B,H,N,N) float32 arrays at once in the engine
# (p, dp and one temporary): measured peak / one array is 2.0 to 3.5 at N = 512..8192; the
# textbook's twin holds up to 5 (scores, probs, dprobs, the product, dscores).
STANDARD_TT_ARRAYS = {"fast": 3, "textbook": 5}
CORES = {   # (engine, core) -> (forward, backward)
    ("fast", "standard"): (causal_attention_forward_fast, causal_attention_backward_fast),
    ("fast", "tiled"): (tiled_attention_forward_fast, tiled_attention_backward_fast),
    ("textbook", "standard"): (causal_attention_forward, causal_attention_backward),
    ("textbook", "tiled"): (tiled_attention_forward, tiled_attention_backward),
}


def geometric_sizes(min_n, max_n):
    """min_n, 2 min_n, 4 min_n, ... up to max_n."""
    if min_n < 1 or max_n < min_n:
        raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    sizes = []
    n = min_n
    while n <= max_n:
        sizes.append(n)
        n *= 2
    return sizes


def causal_flops(n, batch, n_head, head_dim):
    """(forward, forward+backward) FLOPs of causal attention (numpygpt.dataflow's count;
    the backward is twice the forward)."""
    forward = core_flops(batch, n_head, head_dim, n, causal=True)
    return forward, 3 * forward


def tt_bytes(n, batch, n_head, itemsize=4):
    """Bytes of one (B,H,N,N) array."""
    return batch * n_head * n * n * itemsize


def torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


# ---- one implementation at one size ------------------------------------------------------

def numpy_fns(impl, q, k, v, dy, q_tile, k_tile, engine="fast"):
    """(forward, forward+backward) as functions of no arguments."""
    forward, bwd = CORES[engine, impl]
    if impl == "standard":
        fwd = lambda: forward(q, k, v, None)
    else:
        fwd = lambda: forward(q, k, v, None, q_tile, k_tile)

    def fwd_bwd():
        _, cache = fwd()
        return bwd(dy, cache)

    return fwd, fwd_bwd


def measure(impl, n, args, rng, torch=None):
    """One row of results: times, memory, FLOPs for `impl` at length n."""
    B, H, D = args.batch_size, args.n_head, args.head_dim
    row = {"n": n, "impl": impl, "status": "ok", "note": "", "tt_bytes": tt_bytes(n, B, H),
           **cost_fields(impl, n, args)}
    flops_f, flops_fb = row["flops_fwd"], row["flops_fwd_bwd"]
    budget = args.memory_budget_gb * 1e9
    arrays = STANDARD_TT_ARRAYS[args.engine]
    if impl == "standard" and arrays * row["tt_bytes"] > budget:
        row.update(status="skipped", note=f"needs ~{arrays} x {row['tt_bytes'] / 1e9:.2f} GB "
                   f"of (B,H,N,N) arrays > --memory-budget-gb {args.memory_budget_gb:g}")
        return row
    if impl in VARIANTS:
        q, k, v, dy = variant_inputs(impl, n, args, rng)
    else:
        q, k, v, dy = (rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(4))
    if impl in VARIANTS:
        fwd, fwd_bwd = variant_fns(impl, q, k, v, dy, args)
        row["peak_bytes"] = peak_memory(fwd_bwd)
    elif impl == "torch":
        fwd, fwd_bwd = torch_fns(torch, q, k, v, dy)
        row["peak_bytes"] = None
        row["note"] = "memory not measured (tracemalloc does not see PyTorch's allocator)"
    else:
        fwd, fwd_bwd = numpy_fns(impl, q, k, v, dy, args.q_tile, args.k_tile, args.engine)
        row["peak_bytes"] = peak_memory(fwd_bwd)
    t_f = time_call(fwd, repeats=args.repeats, warmup=1)
    t_fb = time_call(fwd_bwd, repeats=args.repeats, warmup=1)
    row.update(fwd_s=t_f["median"], fwd_bwd_s=t_fb["median"], fwd_times=t_f["times"],
               fwd_bwd_times=t_fb["times"], gflops_fwd=flops_f / t_f["median"] / 1e9,
               gflops_fwd_bwd=flops_fb / t_fb["median"] / 1e9)
    if row["bytes_fwd"] is not None:                # achieved GB/s by the closed forms' bytes
        row.update(gbps_fwd=row["bytes_fwd"] / t_f["median"] / 1e9,
                   gbps_fwd_bwd=row["bytes_fwd_bwd"] / t_fb["median"] / 1e9)
    return row


# ---- the sweep ---------------------------------------------------------------------------

def sweep(args, progress=None, on_row=None):
    """Every size x implementation; returns the results dict written to JSON."""
    sizes = geometric_sizes(args.min_n, args.max_n)
    torch = None if args.no_torch else torch_or_none()
    impls = (["standard", "tiled"] + (["torch"] if torch is not None else [])
             + list(getattr(args, "variants", None) or []))
    notes = []
    if args.no_torch:
        notes.append("torch column skipped (--no-torch)")
    elif torch is None:
        notes.append('torch column skipped: PyTorch is not installed (the CPU build: '
                     'pip install torch==2.13.0, then pip install -e ".[oracle]")')
    load_before = load_average()
    others_before = others_cpu_now()              # is the machine quiet? (1 s, before any work)
    if progress:
        progress.update("triad bandwidth ...", force=True)
    triad = triad_bandwidth() / 1e9               # the memory roof, once (~1 s)
    rng = np.random.default_rng(args.seed)
    rows = []
    best = 0.0
    interrupted_at = interrupted_by = None
    for n in sizes:
        try:
            mm, size_rows, others, seconds = measure_size(n, impls, args, rng, torch, progress)
        except KeyboardInterrupt as e:            # Ctrl-C: keep the sizes measured before it
            if not rows:
                raise
            interrupted_at, interrupted_by = n, getattr(e, "signal_name", "SIGINT")
            sizes = [m for m in sizes if m < n]
            break
        best = max(best, mm)
        for row in size_rows:
            if row["status"] == "skipped":
                notes.append(f"standard skipped at N={n}: {row['note']}")
            row["others_cpu"] = others
            judge(row, best)                      # with the best matmul so far, for the table
        rows += size_rows
        if on_row:
            on_row(n, size_rows, seconds)
    mms = [r["matmul_gflops"] for r in rows]
    for row in rows:
        judge(row, max(mms))                  # again, against the best of the whole run
    threads = parallel.settings()
    result = {
        "config": {"engine": args.engine, "batch_size": args.batch_size, "n_head": args.n_head,
                   "head_dim": args.head_dim, "q_tile": args.q_tile, "k_tile": args.k_tile,
                   "repeats": args.repeats, "dtype": "float32",
                   "sizes": sizes, "memory_budget_gb": args.memory_budget_gb, "seed": args.seed,
                   "variants": variants_config(args)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": None if torch is None else torch.__version__,
                    "torch_threads": None if torch is None else torch.get_num_threads(),
                    # numpygpt's threads (numpygpt/parallel.py) and BLAS's
                    "numpygpt_threads": threads["threads"], "parallel": threads["parallel"],
                    "threads": threads,
                    # thread settings: on a busy machine OMP_NUM_THREADS=1 (BLAS and torch) is
                    # far steadier than threads that wait for each other's time slices
                    "thread_env": {k: os.environ.get(k) for k in
                                   ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                    parallel.ENV)},
                    # 1-minute load average: other processes on the machine skew every time
                    "loadavg_before": load_before, "loadavg_after": load_average(),
                    "others_cpu_before": others_before},
        "matmul_gflops_median": float(np.median(mms)), "matmul_gflops_min": min(mms),
        "matmul_gflops_max": max(mms), "triad_gbps": triad,
        "flops_formula": "pairs = B*H*N*(N+1)/2 (a window W: B*H*sum min(t+1, W)); forward "
                         "4*D*pairs; forward+backward 12*D*pairs",
        "impls": impls, "rows": rows, "slopes": slopes(rows, sizes, impls), "notes": notes,
        "interrupted_at": interrupted_at,         # the size Ctrl-C stopped (None: all done)
        "interrupted_by": interrupted_by,
    }
    return result


def measure_size(n, impls, args, rng, torch, progress):
    """Every implementation at one size: (matmul GFLOP/s, rows, other processes' CPU share,
    {"matmul": seconds, "impls": seconds} of wall time)."""
    # the yardstick, measured again at every size: on a shared machine the matmul rate
    # moves with the load, so each size is compared with a matmul of the same moment
    if progress:
        progress.update(f"N={n}: matmul GFLOP/s ...", force=True)
    before = cpu_snapshot()
    t0 = time.perf_counter()
    mm = matmul_gflops(seed=args.seed)
    t1 = time.perf_counter()
    rows = []
    for impl in impls:
        if progress:
            progress.update(f"N={n}: {impl} ...")
        row = measure(impl, n, args, rng, torch)
        row["matmul_gflops"] = mm
        if row["status"] != "skipped":
            row["pct_of_matmul_fwd_bwd"] = 100.0 * row["gflops_fwd_bwd"] / mm
        rows.append(row)
    seconds = {"matmul": t1 - t0, "impls": time.perf_counter() - t1}
    return mm, rows, others_cpu(before, cpu_snapshot()), seconds


def judge(row, best_matmul):
    """row["unreliable"]: why its times may not be trusted (empty: nothing seen)."""
    if row["status"] != "ok":
        row["unreliable"] = []
        return
    row["above_fastest_fwd_bwd"] = above_fastest(row["fwd_bwd_times"])
    slowed = max(above_fastest(row["fwd_times"]), row["above_fastest_fwd_bwd"])
    row["unreliable"] = problems(slowed, row["matmul_gflops"], best_matmul, row.get("others_cpu"))


def slopes(rows, sizes, impls):
    """Log-log slope of each measure against N over the upper half of the sizes (None where
    fewer than two sizes there were measured). A slope through a time judged unreliable would
    fit noise: the time slopes are then None, and "unreliable" lists the sizes why."""
    upper = sizes[len(sizes) // 2:] if len(sizes) > 2 else sizes
    out = {}
    for impl in impls:
        ok = [r for r in rows if r["impl"] == impl and r["status"] == "ok" and r["n"] in upper]
        bad = [r["n"] for r in ok if r.get("unreliable")]
        out[impl] = {"n_range": [ok[0]["n"], ok[-1]["n"]] if ok else None, "unreliable": bad}
        for key in ("fwd_s", "fwd_bwd_s", "peak_bytes"):
            pts = [(r["n"], r[key]) for r in ok if r.get(key)]
            fit = len(pts) >= 2 and not (bad and key != "peak_bytes")   # memory is not timed
            out[impl][key] = loglog_slope(*zip(*pts)) if fit else None
    return out


# ---- output ------------------------------------------------------------------------------

def fmt_s(x):
    return "-" if x is None else (f"{x * 1e3:.1f}ms" if x < 1 else f"{x:.2f}s")


def fmt_mb(x):
    return "-" if x is None else f"{x / 2**20:.1f}"


def table_header(impls):
    cols = [f"{'N':>6}", f"{'TxT MiB':>9}"]
    for impl in impls:
        cols.append(f"{impl + ' fwd':>13} {'fwd+bwd':>9}" + (f" {'peak MiB':>9}" if impl != "torch" else ""))
    cols.append(f"{'tiled GF/s':>10} {'% mm':>5} {'GB/s':>5}")
    return " | ".join(cols)


def table_row(n, rows, impls):
    by = {r["impl"]: r for r in rows}
    cols = [f"{n:>6}", f"{fmt_mb(rows[0]['tt_bytes']):>9}"]
    for impl in impls:
        r = by[impl]
        if r["status"] != "ok":
            cols.append(f"{'skipped':>13} {'':>9}" + (f" {'':>9}" if impl != "torch" else ""))
            continue
        cols.append(f"{fmt_s(r['fwd_s']):>13} {fmt_s(r['fwd_bwd_s']):>9}"
                    + (f" {fmt_mb(r['peak_bytes']):>9}" if impl != "torch" else ""))
    t = by["tiled"]
    cols.append(f"{t['gflops_fwd_bwd']:>10.1f} {t['pct_of_matmul_fwd_bwd']:>4.0f}% "
                f"{t['gbps_fwd_bwd']:>5.1f}")
    flags = sorted({f"{r['impl']}: {p}" if len(rows) > 1 and "matmul" not in p and "other" not in p
                    else p for r in rows for p in r.get("unreliable", [])})
    return " | ".join(cols) + (f"  UNRELIABLE: {'; '.join(flags)}" if flags else "")


def summary_lines(result):
    """Slopes, the matmul yardstick and notes, as lines of text."""
    lines = [f"matmul float32 (1024^3, measured at every N): median {result['matmul_gflops_median']:.1f} "
             f"GFLOP/s, {result['matmul_gflops_min']:.1f} to {result['matmul_gflops_max']:.1f}; "
             f"triad (at the start) {result['triad_gbps']:.1f} GB/s"]
    m = result["machine"]
    load = m["loadavg_before"], m["loadavg_after"]
    env = {k: v for k, v in m["thread_env"].items() if v is not None}
    if None not in load:
        lines.append(f"load average (1 min) before {load[0]:.2f}, after {load[1]:.2f} "
                     f"on {m['cpu_count']} cores"
                     + (f"; {', '.join(f'{k}={v}' for k, v in env.items())}" if env else "")
                     + (f"; {busy_note(m.get('others_cpu_before'))}"
                        if busy_note(m.get("others_cpu_before")) else ""))
    lines.append(f"numpygpt threads {m['numpygpt_threads']} (parallel "
                 f"{'on' if m['parallel'] else 'off'}), BLAS threads "
                 f"{blas_note(m['threads']['blas'])}"
                 + (f", torch threads {m['torch_threads']}" if m.get("torch_threads") else ""))
    bad = sorted({r["n"] for r in result["rows"] if r.get("unreliable")})
    if bad:
        reasons = [x for r in result["rows"] for x in r.get("unreliable") or []]
        lines.append(f"UNRELIABLE at N={', '.join(map(str, bad))} (reasons beside each row): "
                     f"{advice([x.split(': ', 1)[-1] for x in reasons])}")
    for impl, s in result["slopes"].items():
        if s["n_range"] is None:
            lines.append(f"slope {impl:8s}: no sizes measured in the upper half of the range")
            continue
        f = lambda x: "-" if x is None else f"{x:.2f}"
        if s.get("unreliable"):
            lines.append(f"log-log slope {impl:8s} N={s['n_range'][0]}..{s['n_range'][1]}: time "
                         f"NOT FITTED (unreliable at N={', '.join(map(str, s['unreliable']))}), "
                         f"memory {f(s['peak_bytes'])}")
            continue
        lines.append(f"log-log slope {impl:8s} N={s['n_range'][0]}..{s['n_range'][1]}: "
                     f"time fwd {f(s['fwd_s'])}, fwd+bwd {f(s['fwd_bwd_s'])}, memory {f(s['peak_bytes'])}")
    tiled = [r for r in result["rows"] if r["impl"] == "tiled"]
    lines.append("tiled fwd+bwd GFLOP/s as % of matmul: " + ", ".join(
        f"N={r['n']} {r['pct_of_matmul_fwd_bwd']:.0f}%" for r in tiled[-4:]))
    lines += roofline_lines(result)
    lines.append(f"FLOPs counted with the causal mask: {result['flops_formula']}")
    lines += [f"note: {n}" for n in result["notes"]]
    return lines


CSV_FIELDS = ["n", "impl", "status", "fwd_s", "fwd_bwd_s", "peak_bytes", "tt_bytes", "flops_fwd",
              "flops_fwd_bwd", "bytes_fwd", "bytes_fwd_bwd", "intensity_fwd", "intensity_fwd_bwd",
              "gflops_fwd", "gflops_fwd_bwd", "gbps_fwd", "gbps_fwd_bwd", "pct_of_matmul_fwd_bwd", "matmul_gflops",
              "above_fastest_fwd_bwd", "others_cpu", "unreliable", "note"]


def write_files(result, out_dir):
    """JSON, CSV and (if matplotlib imports) PNG; returns (paths written, note or None)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    path = os.path.join(out_dir, "attention_scaling.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    paths.append(path)
    path = os.path.join(out_dir, "attention_scaling.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "unreliable": "; ".join(r.get("unreliable", []))} for r in result["rows"])
    paths.append(path)
    path = os.path.join(out_dir, "attention_scaling.png")
    note = plot(result, path)
    if note is None:
        paths.append(path)
    return paths, note
