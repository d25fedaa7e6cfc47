"""Data-parallel training on one machine: 1 process with every core against N MPI ranks with
one thread each, on bench-step's `small` workload (numpygpt/bench/step.py: V=50257, C=256,
L=4, H=4, batch 4 x 256 tokens), trained on the default text for the same steps from the same
seed. Both runs see the same global batches, so their loss curves agree to float32 rounding;
the tokens/s differ.

    python benchmarks/data_parallel.py                       # 1 x all cores against 2 x 1
    python benchmarks/data_parallel.py --ranks 2 --steps 30 --out results/ddp

Each run: the median seconds per step after the first --warmup steps (and how far it sits
above the fastest step), tokens/s = B*T / median; a float32 matmul GFLOP/s measured just before each run (on
rank 0, with its threads); and the share of the CPUs other processes used in the second before
it (above 10%: the machine was busy and the figure is suspect). Writes DIR/data_parallel.json and, with matplotlib,
DIR/data_parallel.png (the two loss curves). Needs the `mpi` extra (pip install -e ".[mpi]").
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from numpygpt import GPT  # noqa: E402
from numpygpt.config import TRAINING  # noqa: E402
from numpygpt.engine import parallel  # noqa: E402
from numpygpt.bench.measure import matmul_gflops, others_cpu_now, above_fastest, OTHERS_LIMIT  # noqa: E402
from numpygpt.bench.step import workload  # noqa: E402
from numpygpt.train import AdamW, TrainSettings, train_loop  # noqa: E402
from numpygpt.train.data import get_batch, load_dataset  # noqa: E402
from numpygpt.train.distributed import one_thread_per_rank, world  # noqa: E402


def worker(steps, out):
    """One run (this process alone, or one rank of mpiexec): rank 0 writes what it timed."""
    w = world()
    threads = one_thread_per_rank(w) or f"{parallel.get_threads()} threads"
    config, B, T, _ = workload("small")
    s = TrainSettings(batch_size=B, seq_len=T, steps=steps, warmup=5, eval_every=steps,
                      save_every=steps)
    train_ids, _ = load_dataset(None, s.val_fraction, T)
    model = GPT(config, seed=0, execution=TRAINING)      # the engine, as `numpygpt train`
    stamps = []

    def next_batch(rng):                      # called once per step: its times are the steps'
        stamps.append(time.perf_counter())
        return get_batch(train_ids, B, T, rng)

    gflops = matmul_gflops() if w.rank == 0 else None
    result = train_loop(model, AdamW(model.params, s.lr, weight_decay=s.weight_decay, engine="fast"), s,
                        next_batch, np.random.default_rng(0), log=lambda line: None, world=w)
    stamps.append(time.perf_counter())
    if w.rank == 0:
        with open(out, "w") as f:
            json.dump({"ranks": w.size, "world": w.name, "threads": threads,
                       "batch": [B, T], "step_s": np.diff(stamps).tolist(),
                       "losses": result["losses"], "matmul_gflops": gflops}, f)


def summary(run, warmup):
    t = np.array(run["step_s"][warmup:])
    med = float(np.median(t))
    B, T = run["batch"]
    return {"median_s": med, "above_fastest": above_fastest(t), "tokens_per_s": B * T / med}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks of the data-parallel run")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--out", default="bench_results/data_parallel")
    p.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.steps, args.worker)
        return 0
    if args.ranks < 2 or args.steps <= args.warmup + 2:
        p.error("--ranks must be >= 2 and --steps > --warmup + 2")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    if mpiexec is None:
        p.error('no mpiexec: pip install -e ".[mpi]"')
    os.makedirs(args.out, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps)]
    runs = {}
    for name, prefix in (("1 process", []), (f"{args.ranks} ranks", [mpiexec, "-n", str(args.ranks)])):
        path = os.path.join(args.out, f"run-{len(runs)}.json")
        others = others_cpu_now()                  # is the machine quiet before this run?
        subprocess.run(prefix + me + ["--worker", path], check=True)
        with open(path) as f:
            runs[name] = json.load(f)
        runs[name]["others_cpu_before"] = others
    one, many = runs.values()
    print(f"small workload: batch {one['batch'][0]} x {one['batch'][1]} tokens, {args.steps} steps "
          f"(the first {args.warmup} not timed), float32")
    print(f"{'run':<12}{'threads':<26}{'s/step':>8}{'> fastest':>10}{'tokens/s':>10}"
          f"{'matmul GF/s':>13}{'others before':>15}")
    for name, run in runs.items():
        s = summary(run, args.warmup)
        run["summary"] = s
        print(f"{name:<12}{run['threads']:<26}{s['median_s']:>8.3f}{s['above_fastest']:>+10.0%}"
              f"{s['tokens_per_s']:>10,.0f}{run['matmul_gflops']:>13.0f}"
              + (f"{'-':>15}" if run["others_cpu_before"] is None else
                 f"{run['others_cpu_before']:>14.0%}"
                 + ("  BUSY" if run["others_cpu_before"] > OTHERS_LIMIT else "")))
    ratio = many["summary"]["tokens_per_s"] / one["summary"]["tokens_per_s"]
    diff = float(np.max(np.abs(np.array(one["losses"]) - np.array(many["losses"]))))
    print(f"{args.ranks} ranks x 1 thread / 1 process: {ratio:.2f}x the tokens/s; "
          f"the loss curves differ by at most {diff:.1e} (the same global batches)")
    report = {"runs": runs, "ratio": ratio, "max_loss_difference": diff}
    with open(os.path.join(args.out, "data_parallel.json"), "w") as f:
        json.dump(report, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('no plot: matplotlib is not installed (pip install -e ".[plot]")')
        return 0
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=80)
    for name, run in runs.items():
        ax.plot(np.arange(1, len(run["losses"]) + 1), run["losses"], label=f"{name} ({run['threads']})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "data_parallel.png"))
    print(f"wrote {os.path.join(args.out, 'data_parallel.json')}, data_parallel.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
