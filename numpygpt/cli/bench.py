"""`numpygpt bench-attention`, `numpygpt bench-decode` and `numpygpt bench-step`: the benchmarks of numpygpt/bench/,
their options, the table printed as they go, and the files they write."""
import contextlib
import json
import os

from ..engine import parallel
from ..config import ENGINES, ATTENTIONS
from ..bench.attention import sweep, table_header, table_row, summary_lines, write_files
from ..bench.attention_variants import VARIANTS, DEFAULT_WINDOW, parse_variants
from ..bench.attention_estimate import check_memory, seconds_left, gb, duration
from ..bench.step import WORKLOADS, bench_workload, format_table, machine_info
from ..bench.loss import bench_loss, format_loss
from ..bench import decode as bench_decode
from ..bench.measure import load_average, others_cpu_now
from ..bench.torch_gpt import torch_available
from ..checks import available_memory
from .common import (check_output_dir, eprint, float_in, positive_float,
                     positive_int)
from .progress import Progress

LONG_WAIT = 30     # seconds: a sweep with more than this to go says again how long


# ---- bench-attention ------------------------------------------------------------------------

def add_attention_arguments(p):
    p.add_argument("--batch-size", type=positive_int, default=1, help="B (>= 1, default 1)")
    p.add_argument("--n-head", type=positive_int, default=4, help="H (>= 1, default 4)")
    p.add_argument("--head-dim", type=positive_int, default=64, help="D (>= 1, default 64)")
    add_engine_argument(p)
    p.add_argument("--q-tile", type=positive_int, default=256,
                   help="queries per tile of the tiled core (>= 1, default 256)")
    p.add_argument("--k-tile", type=positive_int, default=1024,
                   help="keys per tile of the tiled core (>= 1, default 1024)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed runs per measurement after one warm-up, median reported (>= 1, default 3)")
    p.add_argument("--min-n", type=positive_int, default=128, help="smallest N (>= 1, default 128)")
    p.add_argument("--max-n", type=positive_int, default=8192,
                   help="largest N (>= --min-n, default 8192)")
    p.add_argument("--memory-budget-gb", type=positive_float, default=8.0,
                   help="skip the standard core where its (B,H,N,N) arrays exceed this (> 0, default 8)")
    p.add_argument("--out", default="bench_results/attention",
                   help="directory for attention_scaling.{json,csv,png}")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column")
    p.add_argument("--variants", metavar="LIST",
                   help=f"comma-separated, from {', '.join(VARIANTS)}: the tiled core with "
                        f"grouped-query (K = --n-kv-head), multi-query (K = 1) attention or a "
                        f"sliding window (W = --sliding-window) besides (default: none)")
    p.add_argument("--n-kv-head", type=positive_int, metavar="K",
                   help="(>= 1, divides --n-head) the gqa variant's key/value heads (default H/4)")
    p.add_argument("--sliding-window", type=positive_int, metavar="W",
                   help=f"(>= 1) the window variant's W (default {DEFAULT_WINDOW})")
    add_threads_argument(p)


def check_variants(args):
    """--variants parsed into a list; --n-kv-head and --sliding-window only with their variant."""
    args.variants = (parse_variants(args.variants, args.n_head, args.n_kv_head)
                     if args.variants is not None else [])
    for option, value, variant in (("--n-kv-head", args.n_kv_head, "gqa"),
                                   ("--sliding-window", args.sliding_window, "window")):
        if value is not None and variant not in args.variants:
            raise ValueError(f"{option} {value} is the {variant} variant's: add --variants {variant}")


def add_engine_argument(p):
    p.add_argument("--engine", choices=ENGINES, default="fast",
                   help="fast (default): numpygpt/engine/; textbook: numpygpt/layers/, the code a "
                        "reader reads (the same numbers, slower)")


def engine_line(args):
    """The header line that says which code is timed."""
    where = "numpygpt/engine/" if args.engine == "fast" else "numpygpt/layers/ (the textbook)"
    return f"engine: {args.engine} ({where}); --engine {'textbook' if args.engine == 'fast' else 'fast'} for the other"


def add_threads_argument(p):
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"numpygpt's threads (>= 1; default: ${parallel.ENV}, else every CPU); "
                        f"1 runs serially")


def threads_of(args):
    """A context in which numpygpt runs with --threads (the setting as it is, without it: the
    default count follows the load, engine/parallel.py)."""
    if args.threads is None:
        return contextlib.nullcontext()
    return parallel.using_threads(parallel.capped(args.threads, f"--threads {args.threads}"))


def run_attention(args):
    """Sweep, print the table as it goes, write the files."""
    if args.max_n < args.min_n:
        raise ValueError(f"--max-n {args.max_n} is smaller than --min-n {args.min_n}")
    check_variants(args)
    available = available_memory()
    peak_n, peak = check_memory(args, available)          # refused here, before any work
    check_output_dir("--out", args.out)
    eprint(f"estimate: peak memory ~{gb(peak)} at N={peak_n}"
           + (f" ({gb(available)} available)" if available is not None else ""))
    with threads_of(args):
        return _run_attention(args)


def _run_attention(args):
    print(engine_line(args))
    eprint(parallel.describe())
    progress = Progress()
    impls_seen = []

    def on_row(n, rows, seconds):
        # the time still to come, from the size just measured by the N^2 law: said after the
        # first size, and again whenever more than LONG_WAIT seconds remain (a larger size is
        # less dominated by fixed costs, so each estimate is better than the one before)
        left = seconds_left(n, seconds, args)
        if not impls_seen or left > LONG_WAIT:
            progress.done()
            if left > 0:
                eprint(f"estimate: N={n} took {duration(sum(seconds.values()))}; up to "
                       f"N={args.max_n} ~{duration(left)} more "
                       f"(the N^2 law; Ctrl-C keeps the sizes done)")
        if not impls_seen:
            impls_seen.extend(r["impl"] for r in rows)
            print(table_header(impls_seen))
        progress.done()
        print(table_row(n, rows, impls_seen), flush=True)

    result = sweep(args, progress, on_row)
    progress.done()
    return finish(result, summary_lines(result), write_files(result, args.out))


def finish(result, lines, written):
    """A sweep's summary lines and the files written; -> the exit code: 130 (143 for SIGTERM)
    when it was interrupted and the files hold the sizes measured before."""
    for line in lines:
        print(line)
    paths, note = written
    if note:
        print(note)
    print("wrote " + ", ".join(paths))
    if result["interrupted_at"] is not None:
        print(f"interrupted at N={result['interrupted_at']} ({result['interrupted_by']}): the "
              f"files hold the sizes measured before it ({', '.join(map(str, result['config']['sizes']))})")
        return 143 if result["interrupted_by"] == "SIGTERM" else 130
    return 0


# ---- bench-decode ---------------------------------------------------------------------------

def add_decode_arguments(p):
    p.add_argument("--config", default="gpt2",
                   help="the model shape, a preset of numpygpt/config.py (default gpt2: GPT-2 "
                        "124M's), with RoPE positions and random float32 weights")
    p.add_argument("--min-n", type=positive_int, default=128, help="smallest N (>= 1, default 128)")
    p.add_argument("--max-n", type=positive_int, default=16384,
                   help="largest N (>= --min-n, default 16384)")
    p.add_argument("--window", type=positive_int, default=512,
                   help="W of the sliding-window variant (>= 1, default 512)")
    p.add_argument("--max-prefill-n", type=positive_int, default=1024,
                   help="time the prefill up to this N (>= 1, default 1024; it costs ~N tokens' FLOPs)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed tokens per measurement after one warm-up, median reported (>= 1, default 5)")
    p.add_argument("--out", default="bench_results/decode", help="directory for decode.{json,csv,png}")
    add_threads_argument(p)


def run_decode(args):
    """Refuse what cannot run, sweep, print the table as it goes, write the files."""
    if args.max_n < args.min_n:
        raise ValueError(f"--max-n {args.max_n} is smaller than --min-n {args.min_n}")
    configs = bench_decode.variant_configs(args.config, args.window)
    available = available_memory()
    peak = bench_decode.check_memory(args, configs, available)     # refused here, before any work
    check_output_dir("--out", args.out)
    eprint(f"estimate: peak memory ~{gb(peak)}"
           + (f" ({gb(available)} available)" if available is not None else ""))
    with threads_of(args):
        return _run_decode(args)


def _run_decode(args):
    print("engine: fast (numpygpt/engine/, the standard core; prefill by the tiled core); "
          f"{args.config}'s shape with RoPE positions (learned ones end at n_positions), "
          "random float32 weights, one sequence")
    progress = Progress()

    def on_row(n, rows):
        progress.done()
        if n == args.min_n:
            print(bench_decode.table_header())
        for r in rows:
            print(bench_decode.table_row(r), flush=True)

    result = bench_decode.sweep(args, progress, on_row)
    progress.done()
    return finish(result, bench_decode.summary_lines(result),
                  bench_decode.write_files(result, args.out))


# ---- bench-step -----------------------------------------------------------------------------

def add_step_arguments(p):
    p.add_argument("--configs", default="tiny,small,gpt2,gpt2-1k",
                   help=f"comma-separated workloads, from {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed steps per implementation (>= 1, default 3)")
    p.add_argument("--warmup", type=positive_int, default=1,
                   help="untimed steps first (>= 1: the first step also checks the losses agree; "
                        "default 1)")
    p.add_argument("--mask-fraction", type=float_in(0, 1, high_open=True), default=0.0,
                   help="fraction of label positions set to -100, in [0, 1), e.g. 0.75 for an SFT batch")
    add_engine_argument(p)
    p.add_argument("--attention", choices=ATTENTIONS, default=None,
                   help="numpygpt's attention core (default: standard, tiled for gpt2-1k)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch")
    p.add_argument("--loss-memory", action="store_true",
                   help="also time and measure the loss step alone, chunked against standard "
                        "(V=50257, C=768, B*T=1024)")
    p.add_argument("--out", metavar="DIR", help="write DIR/bench_step.json")
    add_threads_argument(p)


def run_step(args):
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    bad = [n for n in names if n not in WORKLOADS]
    if not names or bad:
        raise ValueError(f"--configs {args.configs!r}: unknown {bad or 'empty'}; "
                         f"known: {', '.join(WORKLOADS)}")
    check_output_dir("--out", args.out)
    with threads_of(args):
        return _run_step(args, names)


def _run_step(args, names):
    load_before = load_average()                # before any work of ours adds to it
    others_before = others_cpu_now()            # is the machine quiet? (1 s, before any work)
    use_torch = not args.no_torch and torch_available()
    if not args.no_torch and not use_torch:
        eprint("numpygpt bench-step: note: PyTorch is not installed; timing numpygpt only")
    progress = Progress()
    print(engine_line(args))
    eprint(parallel.describe())
    results = [bench_workload(name, args.repeats, args.warmup, args.mask_fraction, use_torch,
                              args.attention, args.engine, args.seed, progress) for name in names]
    loss = bench_loss(repeats=args.repeats, seed=args.seed, progress=progress) if args.loss_memory else None
    progress.done()
    report = {"benchmark": "bench-step", "machine": machine_info(), "threads": parallel.settings(),
              "repeats": args.repeats,
              "warmup": args.warmup, "engine": args.engine, "attention": args.attention,
              "results": results}
    report["loadavg_before"], report["others_cpu_before"] = load_before, others_before
    for line in format_table(results, load_before, others_before):
        print(line)
    if loss is not None:
        report["loss_step"] = loss
        print()
        for line in format_loss(loss):
            print(line)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bench_step.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {path}")
    return 0
