#!/usr/bin/env python3
"""The SFT recipe over seeds: `numpygpt sft` with its defaults, once with the prompt masked
and once on the whole sequence (--no-prompt-mask), for each seed; prints each run's held-out
exact match and answer loss, and per objective the spread over the seeds (min, median, max).
One run never stands for the method: a seed can fail where the next one succeeds.

    python docs/sft_seeds.py                              # seeds 0-4, 1 thread, runs/sft-seeds
    python docs/sft_seeds.py --seeds 0 1 2 --threads 2 --runs DIR --json FILE
    python docs/sft_seeds.py --table FILE                 # the table of a saved sweep

Each run is `numpygpt sft --show 0 --seed S [--no-prompt-mask] --out RUNS/NAME`, a process
of its own with NUMPYGPT_THREADS, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set to --threads
(a seed's numbers depend on the thread counts through float32 rounding). Its output is kept in
RUNS/NAME.log; a run whose log holds its result is not run again, so an interrupted sweep
continues with the run it stopped in (delete RUNS to start over). About 2 minutes a run on
one idle core. The masked runs are held to SFT_CLAIM (numpygpt/train/settings.py), the
exact match the README and the tour promise on every seed of SFT_SEEDS: below it on any
seed, the sweep exits 1.

docs/make_outputs.py --slow runs the sweep for the README and saves it in docs/sft_seeds.json;
docs/training.md shows the same table from that file (`--table`), and tests/test_sft_seeds.py
holds the file to the recipe's settings and to SFT_CLAIM.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from numpygpt.train import SFT, SFT_CLAIM, SFT_SEEDS  # noqa: E402

OBJECTIVES = {   # name -> (the option that selects it, the table's label)
    "masked": ([], "prompt masked (-100)"),
    "nomask": (["--no-prompt-mask"], "whole sequence (no mask)"),
}
THREAD_VARS = ("NUMPYGPT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RESULT = re.compile(r"^after (\d+) steps \(([^)]*)\): held-out exact match ([\d.]+)% -> "
                    r"([\d.]+)%, answer loss ([\d.]+) -> ([\d.]+)$", re.M)
RECIPE = ("n_layer", "n_head", "n_embd", "steps", "batch_size", "lr", "min_lr", "warmup",
          "weight_decay", "grad_clip", "n_test")


def sft_argv(seed, objective, out):
    return ["numpygpt", "sft", "--show", "0", "--seed", str(seed), *OBJECTIVES[objective][0],
            "--out", str(out)]


def read_result(log):
    """The result line of a finished run's log -> dict, or None if the run did not finish."""
    m = RESULT.search(log)
    if m is None:
        return None
    return {"steps": int(m.group(1)), "time": m.group(2),
            "exact_match": float(m.group(4)), "answer_loss": float(m.group(6))}


def run_one(seed, objective, runs, threads):
    """One `numpygpt sft` run (or its saved result) -> dict."""
    name = f"{objective}-seed{seed}"
    out, log_path = runs / name, runs / f"{name}.log"
    argv = sft_argv(seed, objective, out)
    header = f"$ {' '.join(argv)}   # threads {threads}\n"
    if log_path.is_file():
        log = log_path.read_text(encoding="utf-8")
        result = read_result(log) if log.startswith(header) else None
        if result is not None:
            print(f"{name}: saved in {log_path}: {result['exact_match']:.1f}%", file=sys.stderr)
            return {"seed": seed, "objective": objective, **result}
        if not log.startswith(header):
            raise SystemExit(f"sft_seeds.py: error: {log_path} is the log of another command; "
                             f"choose another --runs or delete it")
        shutil.rmtree(out, ignore_errors=True)        # an interrupted run: run it again
    elif out.exists():
        raise SystemExit(f"sft_seeds.py: error: {out} exists but is not a run of this sweep "
                         f"(no {log_path.name}); choose another --runs")
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS},
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
               "PYTHONPATH", "").split(os.pathsep) if p])}
    load = os.getloadavg()[0]
    print(f"{name}: running (load {load:.2f}) ...", file=sys.stderr, flush=True)
    with open(log_path, "w", encoding="utf-8") as f:
        f.write(header)
        f.flush()
        proc = subprocess.run([sys.executable, "-m", *argv], env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    log = log_path.read_text(encoding="utf-8")
    result = read_result(log)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"sft_seeds.py: error: {name} exited {proc.returncode} without a "
                         f"result; see {log_path}")
    print(f"{name}: {result['exact_match']:.1f}% in {result['time']}", file=sys.stderr)
    return {"seed": seed, "objective": objective, "load_before": round(load, 2), **result}


def sweep(seeds, threads, runs):
    """Every seed, masked then unmasked -> the saved form (a dict)."""
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [run_one(seed, objective, runs, threads) for objective in OBJECTIVES for seed in seeds]
    return {"recipe": {k: getattr(SFT, k) for k in RECIPE}, "threads": threads,
            "seeds": list(seeds), "claim": SFT_CLAIM, "seconds": round(time.time() - t0),
            "numpy": np.__version__, "blas": blas(), "runs": rows}


def blas():
    """The BLAS numpy calls (its kernel decides the rounding), as threadpoolctl names it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def spread(values):
    return min(values), statistics.median(values), max(values)


def table(saved):
    """The text table of a sweep: a row per objective, a column per seed, then the spread."""
    seeds, r = saved["seeds"], saved["recipe"]
    by = {(row["objective"], row["seed"]): row for row in saved["runs"]}
    threads = f"{saved['threads']} thread{'s' if saved['threads'] != 1 else ''}"
    lines = [f"numpygpt sft as it comes ({r['steps']} steps of batch {r['batch_size']}, lr "
             f"{r['lr']:g}, n_layer {r['n_layer']}), {threads} per run:"]
    head = "".join(f"{f'seed {s}':>7}" for s in seeds) + f"{'min':>7}{'median':>7}{'max':>7}"
    for key, what, fmt in (("exact_match", f"exact match ({r['n_test']} held out)", "{:.1f}%"),
                           ("answer_loss", "answer loss (held out, nats)", "{:.4f}")):
        lines.append(f"{what:<28}{head}")
        for objective, (_, label) in OBJECTIVES.items():
            values = [by[objective, s][key] for s in seeds]
            cells = [fmt.format(v) for v in values + list(spread(values))]
            lines.append(f"  {label:<26}" + "".join(f"{c:>7}" for c in cells))
    masked = [by["masked", s]["exact_match"] for s in seeds]
    holds = min(masked) >= 100 * saved["claim"]
    lines.append(f"claim (masked, every seed): >= {saved['claim']:.0%} exact match: "
                 f"{'holds' if holds else 'FAILS'} (lowest {min(masked):.1f}%)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SFT_SEEDS),
                        help=f"(default {' '.join(map(str, SFT_SEEDS))}: SFT_SEEDS)")
    parser.add_argument("--threads", type=int, default=1,
                        help="NUMPYGPT_THREADS and BLAS threads of every run (default 1)")
    parser.add_argument("--runs", default="runs/sft-seeds", help="the runs' checkpoints and logs")
    parser.add_argument("--json", help="save the sweep here")
    parser.add_argument("--table", metavar="FILE", help="show the table of a saved sweep; no runs")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.table is not None:
        saved = json.loads(Path(args.table).read_text(encoding="utf-8"))
    else:
        saved = sweep(args.seeds, args.threads, Path(args.runs))
        if args.json is not None:
            Path(args.json).write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
    print("\n".join(table(saved)))
    masked = [row["exact_match"] for row in saved["runs"] if row["objective"] == "masked"]
    return 0 if min(masked) >= 100 * saved["claim"] else 1


if __name__ == "__main__":
    sys.exit(main())
