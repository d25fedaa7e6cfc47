"""Decoding time and bytes against context length N (`numpygpt bench-decode`).

A decoded token is one row through the whole network: every weight is read once for 2 FLOPs,
and every cached key and value once for a few FLOPs (numpygpt.dataflow, decode_token_bytes):
about 0.5 FLOP a byte in float32, where the machine does tens of FLOPs in the time it reads
a byte. So the time of a token is the time to read its bytes, and this measures both:

    per-token decode time    the engine's forward of one token whose KV cache holds N - 1
                             earlier ones (random keys and values: the time does not depend
                             on them), median of --repeats after WARMUP tokens; the cache is set
                             back to N - 1 tokens before every call, so N holds still
    bytes a token reads      weights + 2 * n_layer * K * D * min(N, W) * 4 (float32)
    the bound                those bytes / the triad bandwidth at the same N: the median of
                             one triad measured before each variant's row (a shared
                             machine's bandwidth moves by a third from one second to the next)
    achieved bytes/s         bytes / time, and its fraction of the triad's
    prefill                  the engine's forward of N tokens into an empty cache by the tiled
                             core (its memory grows as N, not N^2), per token, up to
                             --max-prefill-n (a prefill costs ~N times a token's FLOPs)

for four variants of one model shape (config.PRESETS, RoPE positions so that N may pass
GPT-2's 1024-row position table): MHA (K = H key/value heads), GQA (K = H/4), MQA (K = 1)
and MHA with a sliding window of W keys. Random float32 weights, one sequence (B = 1).
Writes decode.json, decode.csv and (with matplotlib) decode.png into --out.
"""
import csv
import dataclasses
import json
import os
import platform

import numpy as np

from ..config import PRESETS, Execution
from ..dataflow import decode_token_bytes, decode_weight_bytes, kv_cache_bytes, decode_token_flops
from ..decode.kv_cache import KVCache
from ..engine import Engine, parallel
from ..model import init_params
from .attention import geometric_sizes
from .measure import (time_call, matmul_gflops, triad_bandwidth, cpu_snapshot, others_cpu,
                      others_cpu_now, load_average, problems, above_fastest, blas_note)
from .decode_plot import plot

VARIANTS = ("MHA", "GQA", "MQA", "window")
DECODE = Execution(engine="fast")                      # the standard core: decoding's
PREFILL = Execution(engine="fast", attention="tiled")
TRIAD_BYTES = 3 * (1 << 24) * 8                        # triad_bandwidth's three float64 arrays
WARMUP = 5              # untimed tokens first: a fresh cache's first five ran up to ~1.5x slower


def variant_configs(preset, window):
    """name -> GPTConfig: the preset's shape with RoPE, K = H, H/4, 1, and H with a window."""
    if preset not in PRESETS:
        raise ValueError(f"--config {preset!r} is not one of {', '.join(PRESETS)}")
    base = dataclasses.replace(PRESETS[preset], pos_encoding="rope")
    H = base.n_head
    if H % 4 != 0:
        raise ValueError(f"--config {preset}: n_head={H} is not divisible by 4 (GQA uses H/4)")
    return {"MHA": base, "GQA": dataclasses.replace(base, n_kv_head=H // 4),
            "MQA": dataclasses.replace(base, n_kv_head=1),
            "window": dataclasses.replace(base, sliding_window=window)}


def peak_bytes(configs, max_n, max_prefill_n):
    """Estimated peak memory: every distinct weight set, the largest KV cache, the triad's
    arrays and a prefill's logits and activations (~20 (N,C) arrays a layer, the tiled core)."""
    seen, weights = set(), 0
    for c in configs.values():
        key = c.n_kv_head
        if key not in seen:
            seen.add(key)
            weights += decode_weight_bytes(c)
    cache = max(2 * kv_cache_bytes(c, min(max_n, 2 * (c.sliding_window or max_n)))
                for c in configs.values())
    c = configs["MHA"]
    n = min(max_prefill_n, max_n)
    prefill = n * (c.vocab_size + 20 * c.n_layer * c.n_embd) * 4
    return weights + max(cache, TRIAD_BYTES) + prefill


def check_memory(args, configs, available):
    peak = peak_bytes(configs, args.max_n, args.max_prefill_n)
    if available is not None and peak > available:
        raise ValueError(f"--max-n {args.max_n}: bench-decode's peak memory is estimated at "
                         f"{peak / 2**30:.2f} GiB, more than the {available / 2**30:.2f} GiB "
                         f"available; lower --max-n (or --max-prefill-n)")
    return peak


# ---- one variant at one N --------------------------------------------------------------------

def cache_before(config, n, rng):
    """A KV cache holding N - 1 tokens (the last W - 1 with a window W), the N-th to come,
    and set(): puts it back in that state."""
    cache = KVCache(config, 1, n, np.float32)
    block = rng.standard_normal((cache.capacity, config.head_dim)).astype(np.float32)
    cache.k[...] = block                               # every page written: no zero page read
    cache.v[...] = block
    window = config.sliding_window
    start = 0 if window is None else max(0, n - window)    # the oldest token a window keeps

    def set_back():
        cache.start, cache.length = start, n - 1
        cache.next_pos[:] = n - 1
        cache.key_mask[:] = False
        cache.key_mask[:, :n - 1 - start] = True
    set_back()
    return cache, set_back


def decode_time(config, params, n, repeats, rng, token):
    """time_call's dict for the N-th token, and the bytes the cache allocated."""
    engine = Engine(config, DECODE)
    cache, set_back = cache_before(config, n, rng)

    def step():
        set_back()
        engine.forward(token, params, kv_cache=cache)
    return time_call(step, repeats=repeats, warmup=WARMUP), cache.k.nbytes + cache.v.nbytes


def measure(name, config, params, n, args, rng, token):
    """One row: the per-token decode time at N, its bytes and the bound, the prefill."""
    t, allocated = decode_time(config, params, n, args.repeats, rng, token)
    row = {"n": n, "variant": name, "n_kv_head": config.kv_heads, "window": config.sliding_window,
           "decode_s": t["median"], "decode_times": t["times"],
           "kv_bytes": kv_cache_bytes(config, n), "kv_allocated_bytes": allocated,
           "weight_bytes": decode_weight_bytes(config), "bytes": decode_token_bytes(config, n),
           "flops": decode_token_flops(config, n), "prefill_s": None, "prefill_per_token_s": None}
    if n <= args.max_prefill_n:
        prefiller = Engine(config, PREFILL)
        ids = rng.integers(0, config.vocab_size, (1, n))

        def prefill():
            prefiller.forward(ids, params, kv_cache=KVCache(config, 1, n, np.float32))
        p = time_call(prefill, repeats=1, warmup=1)
        row["prefill_s"], row["prefill_per_token_s"] = p["median"], p["median"] / n
    return row


def judge(row, triad, triad_best, mm, mm_best):
    """The bound and the fractions against the triad of this N; reasons not to trust it."""
    row["triad_bytes_per_s"], row["matmul_gflops"] = triad, mm
    row["bound_s"] = row["bytes"] / triad
    row["achieved_bytes_per_s"] = row["bytes"] / row["decode_s"]
    row["fraction_of_triad"] = row["achieved_bytes_per_s"] / triad
    row["above_fastest"] = above_fastest(row["decode_times"])
    row["unreliable"] = problems(row["above_fastest"], mm, mm_best, row.get("others_cpu"))
    if triad < 0.75 * triad_best:
        row["unreliable"].append(f"triad at {triad / triad_best:.0%} of its best in this run")


# ---- the sweep -------------------------------------------------------------------------------

def sweep(args, progress=None, on_row=None):
    """Every N x variant; the results dict written to JSON."""
    sizes = geometric_sizes(args.min_n, args.max_n)
    configs = variant_configs(args.config, args.window)
    load_before, others_before = load_average(), others_cpu_now()
    params = {}
    for name, c in configs.items():                    # the window's weights are MHA's
        same = [p for other, p in params.items() if configs[other].n_kv_head == c.n_kv_head]
        params[name] = same[0] if same else init_params(c, args.seed, np.float32)
    rng = np.random.default_rng(args.seed)
    token = np.array([[1]])
    rows, triads, mms = [], [], []
    interrupted_at = interrupted_by = None
    for n in sizes:
        try:
            if progress:
                progress.update(f"N={n}: triad and matmul ...", force=True)
            mm, triads_n = matmul_gflops(seed=args.seed), []
            size_rows = []
            for name, c in configs.items():
                if progress:
                    progress.update(f"N={n}: {name} ...")
                triads_n.append(triad_bandwidth())     # beside each row: the bandwidth moves
                before = cpu_snapshot()
                row = measure(name, c, params[name], n, args, rng, token)
                row["others_cpu"] = others_cpu(before, cpu_snapshot())
                size_rows.append(row)
            triad = float(np.median(triads_n))
        except KeyboardInterrupt as e:                 # Ctrl-C: keep the sizes measured before it
            if not rows:
                raise
            interrupted_at, interrupted_by = n, getattr(e, "signal_name", "SIGINT")
            sizes = [m for m in sizes if m < n]
            break
        triads.append(triad)
        mms.append(mm)
        for row in size_rows:
            judge(row, triad, max(triads), mm, max(mms))
        rows += size_rows
        if on_row:
            on_row(n, size_rows)
    for row in rows:                                   # against the best of the whole run
        judge(row, row["triad_bytes_per_s"], max(triads), row["matmul_gflops"], max(mms))
    threads = parallel.settings()
    base = configs["MHA"]
    return {
        "benchmark": "bench-decode",
        "config": {"preset": args.config, "engine": "fast (numpygpt/engine/, the standard core)",
                   "prefill": "fast engine, tiled core", "dtype": "float32", "batch_size": 1,
                   "pos_encoding": "rope", "n_layer": base.n_layer, "n_embd": base.n_embd,
                   "n_head": base.n_head, "head_dim": base.head_dim, "vocab_size": base.vocab_size,
                   "variants": {k: {"n_kv_head": c.kv_heads, "sliding_window": c.sliding_window}
                                for k, c in configs.items()},
                   "window": args.window, "repeats": args.repeats, "sizes": sizes,
                   "max_prefill_n": args.max_prefill_n, "seed": args.seed},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "threads": threads, "loadavg_before": load_before,
                    "loadavg_after": load_average(), "others_cpu_before": others_before},
        "triad_bytes_per_s": {"median": float(np.median(triads)) if triads else None,
                              "max": max(triads, default=None)},
        "matmul_gflops_median": float(np.median(mms)) if mms else None,
        "bytes_formula": "weights (every parameter but the position table) + "
                         "2 * n_layer * K * D * min(N, W) * 4",
        "rows": rows, "interrupted_at": interrupted_at, "interrupted_by": interrupted_by,
    }


# ---- output ----------------------------------------------------------------------------------

def table_header():
    return (f"{'N':>6} {'variant':>7} {'K':>3} {'KV MiB':>8} {'read MiB':>9} {'ms/token':>9} "
            f"{'bound ms':>9} {'GB/s':>6} {'% triad':>7} {'prefill ms/tok':>14}")


def table_row(r):
    pre = "-" if r["prefill_per_token_s"] is None else f"{r['prefill_per_token_s'] * 1e3:.2f}"
    flags = f"  UNRELIABLE: {'; '.join(r['unreliable'])}" if r.get("unreliable") else ""
    return (f"{r['n']:>6} {r['variant']:>7} {r['n_kv_head']:>3} {r['kv_bytes'] / 2**20:>8.1f} "
            f"{r['bytes'] / 2**20:>9.1f} {r['decode_s'] * 1e3:>9.2f} {r['bound_s'] * 1e3:>9.2f} "
            f"{r['achieved_bytes_per_s'] / 1e9:>6.1f} {100 * r['fraction_of_triad']:>6.0f}% "
            f"{pre:>14}{flags}")


def summary_lines(result):
    rows = result["rows"]
    lines = []
    if result["triad_bytes_per_s"]["median"] is not None:
        lines.append(f"triad (STREAM's count, 3 words an element), measured at every N: median "
                     f"{result['triad_bytes_per_s']['median'] / 1e9:.1f} GB/s; float32 matmul "
                     f"median {result['matmul_gflops_median']:.0f} GFLOP/s")
    m = result["machine"]
    if None not in (m["loadavg_before"], m["loadavg_after"]):
        lines.append(f"load average (1 min) before {m['loadavg_before']:.2f}, after "
                     f"{m['loadavg_after']:.2f} on {m['cpu_count']} cores; numpygpt threads "
                     f"{m['threads']['threads']}, BLAS threads {blas_note(m['threads']['blas'])}")
    by = {(r["n"], r["variant"]): r for r in rows}
    if rows:
        top = max(r["n"] for r in rows)
        mha = by.get((top, "MHA"))
        for name in ("GQA", "MQA", "window"):
            r = by.get((top, name))
            if mha and r:
                lines.append(f"N={top}: {name} (K={r['n_kv_head']}) per token "
                             f"{r['decode_s'] / mha['decode_s']:.2f}x MHA's, KV cache read "
                             f"{r['kv_bytes'] / mha['kv_bytes']:.4g}x")
    long = [r for r in rows if r["n"] >= 4096]
    if long:
        lines.append("achieved / triad at N >= 4096: " + ", ".join(
            f"{r['variant']}@{r['n']} {100 * r['fraction_of_triad']:.0f}%" for r in long))
    bad = sorted({r["n"] for r in rows if r.get("unreliable")})
    if bad:
        lines.append(f"UNRELIABLE at N={', '.join(map(str, bad))}: another job shared the "
                     f"machine or the repeats were slowed; rerun when it is idle")
    lines.append(f"bytes a token reads: {result['bytes_formula']}")
    lines.append(f"prefill: the tiled core, N <= --max-prefill-n {result['config']['max_prefill_n']}")
    return lines


CSV_FIELDS = ["n", "variant", "n_kv_head", "window", "decode_s", "bound_s", "bytes", "kv_bytes",
              "kv_allocated_bytes", "weight_bytes", "flops", "achieved_bytes_per_s",
              "triad_bytes_per_s", "fraction_of_triad", "matmul_gflops", "prefill_s",
              "prefill_per_token_s", "above_fastest", "others_cpu", "unreliable"]


def write_files(result, out_dir):
    """decode.json, decode.csv and (if matplotlib imports) decode.png; (paths, note or None)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"decode.{ext}") for ext in ("json", "csv", "png")]
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "unreliable": "; ".join(r.get("unreliable", []))} for r in result["rows"])
    note = plot(result, paths[2])
    return (paths if note is None else paths[:2]), note

