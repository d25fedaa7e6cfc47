"""The time and memory of one training step for named workloads, float32, against PyTorch
eager when installed (`numpygpt bench-step`): forward + backward, the optimiser step
(numpygpt's AdamW against torch.optim.AdamW, fused, on the same parameters), and the two
together.

For each workload (a preset model of numpygpt/config.py and a batch):
  - numpygpt's step: median, min and max of `repeats` timed steps after the warm-up steps
  - tokens/s = B*T / median
  - analytic FLOPs: numpygpt.dataflow.training_flops, matmuls of forward + backward, the
    lm_head counted over the n positions that count (the chunked loss skips -100 rows)
  - achieved GFLOP/s, and its ratio to a float32 (1024,1024) matmul's GFLOP/s measured
    just before and after the workload in the same run (bench/measure.py)
  - peak memory of one step: tracemalloc (NumPy's own allocations) and, for numpygpt and
    PyTorch alike, the growth of the process's peak resident set (Linux VmHWM, reset
    before the step), which sees PyTorch's allocator too
  - with PyTorch: the same model with the same weights in PyTorch eager (bench/torch_gpt.py),
    its loss checked against numpygpt's (a wrong model would make the timing meaningless),
    timed *interleaved* with numpygpt step by step, so that load on the machine hits both
    alike; ratio = numpygpt median / PyTorch median.
  - the optimiser: clipping to MAX_NORM and AdamW.step on the step's gradients
    (numpygpt/train/optim.py), and clip_grad_norm_ + torch.optim.AdamW(fused=True) (its
    fastest CPU variant; foreach where fused is missing) on the PyTorch model's, same
    hyperparameters and weight-decay groups, timed interleaved with the rest; the whole
    step = forward + backward + optimiser, repeat by repeat.
  - minor page faults per whole step (getrusage), counted over FAULT_STEPS steps after the
    timed ones: each is a fresh 4 KiB page the step wrote for the first time (memory that
    was not reused), numpygpt's and PyTorch's.
  - the thread settings (numpygpt's parallel threads, BLAS's, PyTorch's), and whether the
    figures can be trusted: how far the median repeat is above the fastest, the matmul yardstick before against
    after, the CPU share other processes took during the timed repeats, the load average
    before (bench/measure.py); the reasons are printed beside the figures.
  - with mask_fraction f: that fraction of the label positions is -100 (an SFT batch);
    numpygpt's step on the same batch with nothing masked is timed interleaved as well,
    and the ratio masked / unmasked reported.
"""
import ctypes
import gc
import os
import platform
import time

try:
    import resource                        # Unix: getrusage counts the page faults
except ImportError:
    resource = None

import numpy as np

from ..engine import parallel
from ..config import PRESETS, Execution
from ..dataflow import training_flops
from ..model import GPT
from ..train.optim import AdamW, default_decay, clip_grad_norm
from .measure import (matmul_gflops, peak_memory, cpu_snapshot, others_cpu, load_average,
                      busy_note, problems, advice, above_fastest, blas_note)
from .torch_gpt import torch_available, build_torch_gpt, torch_step_fn, torch_adamw_fn

WORKLOADS = {   # name -> (preset, batch_size, seq_len, attention core)
    "tiny": ("tiny", 8, 128, "standard"),
    "small": ("small", 4, 256, "standard"),
    "gpt2": ("gpt2", 1, 256, "standard"),
    "gpt2-1k": ("gpt2", 1, 1024, "tiled"),
}
FLOPS_FORMULA = ("3 * (L * (24*B*T*C^2 + 2*B*T*(T+1)*C) + 2*n*V*C), n = positions not -100 "
                 "(matmuls only; backward = 2 x forward; attention with the causal mask)")
LOSS_RTOL = 1e-4      # float32 losses of the two implementations must agree this closely
ADAMW = {"lr": 1e-5, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}   # both optimisers
MAX_NORM = 1.0        # both clip the gradients to this global norm before AdamW
FAULT_STEPS = 3       # whole steps over which the page faults are counted


def workload(name):
    """name -> (GPTConfig, batch_size, seq_len, attention core)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    preset, B, T, attention = WORKLOADS[name]
    return PRESETS[preset], B, T, attention


def random_batch(config, batch_size, seq_len, mask_fraction=0.0, seed=0):
    """Random ids and aligned labels (B,T); exactly round(mask_fraction * B*T) labels are -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch_size, seq_len))
    labels = rng.integers(0, config.vocab_size, size=(batch_size, seq_len))
    n_masked = int(round(mask_fraction * labels.size))
    masked = rng.choice(labels.size, size=n_masked, replace=False)
    labels.reshape(-1)[masked] = -100
    return ids, labels


# ---- memory: the growth of the peak resident set, for NumPy and PyTorch alike ----------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def faults_per_step(step, n=FAULT_STEPS):
    """Minor page faults of the process per call of step(), over n calls (None without
    getrusage)."""
    if resource is None:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def peak_rss_growth(fn, reset=None):
    """Bytes by which the peak resident set grows above the current one while fn() runs,
    or None where Linux's VmHWM reset (/proc/self/clear_refs) is not available.
    reset(): frees what the previous step left (PyTorch's .grad tensors) before measuring."""
    if reset is not None:
        reset()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)   # hand freed heap back: reuse must show as growth
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                           # reset VmHWM to the current VmRSS
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) * 1024
    except OSError:
        return None


# ---- one configuration ----------------------------------------------------------------------

def summarise(times, flops, tokens):
    t = np.asarray(times)
    med = float(np.median(t))
    return {"median_s": med, "min_s": float(t.min()), "max_s": float(t.max()),
            "above_fastest": above_fastest(t), "times_s": t.tolist(),
            "tokens_per_s": tokens / med, "gflops_per_s": flops / med / 1e9}


def bench_workload(name, repeats=3, warmup=1, mask_fraction=0.0, use_torch=True,
                   attention=None, engine="fast", seed=0, progress=None):
    """Time, FLOP/s and memory of one workload; a JSON-able dict. attention: the core
    (None: the workload's own)."""
    config, B, T, default_attention = workload(name)
    attention = attention or default_attention
    execution = Execution(engine=engine, attention=attention, loss="chunked")
    ids, labels = random_batch(config, B, T, mask_fraction, seed)
    n_counted = int(np.count_nonzero(labels != -100))
    flops = training_flops(config, B, T, causal=True, n_counted=n_counted)
    model = GPT(config, seed=seed, dtype=np.float32, execution=execution)
    say = progress.update if progress is not None else (lambda text, force=False: None)

    steps = {"numpygpt": lambda: model.loss_and_grads(ids, labels)[0]}
    if mask_fraction > 0:
        unmasked = random_batch(config, B, T, 0.0, seed)[1]
        steps["numpygpt_unmasked"] = lambda: model.loss_and_grads(ids, unmasked)[0]
    result = {"config": config.to_dict(), "name": name, "batch_size": B, "seq_len": T,
              "tokens": B * T, "mask_fraction": mask_fraction, "counted_positions": n_counted,
              "attention": attention, "engine": engine, "flops": flops, "flops_formula": FLOPS_FORMULA,
              "threads": parallel.settings(), "loadavg_before": load_average()}
    if use_torch:
        import torch
        torch.manual_seed(seed)
        tmodel = build_torch_gpt(model.params, config)
        steps["torch"] = torch_step_fn(tmodel, ids, labels)
        result["torch_threads"] = torch.get_num_threads()

    losses = {}
    for k, fn in steps.items():                      # warm-up, and the losses to compare
        for _ in range(warmup):
            say(f"{name}: warm-up {k}", force=True)
            losses[k] = float(fn())
    if use_torch:
        result["loss_numpygpt"], result["loss_torch"] = losses["numpygpt"], losses["torch"]
        diff = abs(losses["numpygpt"] - losses["torch"])
        result["loss_rel_diff"] = diff / max(1.0, abs(losses["torch"]))
        result["losses_agree"] = bool(result["loss_rel_diff"] <= LOSS_RTOL)
        if not result["losses_agree"]:
            raise RuntimeError(f"{name}: numpygpt loss {losses['numpygpt']!r} and PyTorch loss "
                               f"{losses['torch']!r} differ by {diff:.3g}: the models are not the same")

    # the optimisers, on the gradients of a step (PyTorch's .grad are left by its steps)
    grads = model.loss_and_grads(ids, labels)[1]
    optimizer = AdamW(model.params, **ADAMW, engine=engine)

    def numpygpt_optimizer():
        clip_grad_norm(grads, MAX_NORM)
        optimizer.step(model.params, grads)
    steps["numpygpt_adamw"] = numpygpt_optimizer
    if use_torch:
        steps["torch_adamw"], result["torch_adamw"] = torch_adamw_fn(
            tmodel, {n: default_decay(n) for n in model.params}, max_norm=MAX_NORM, **ADAMW)
    for k in ("numpygpt_adamw", "torch_adamw"):
        if k in steps:
            say(f"{name}: warm-up {k}", force=True)
            for _ in range(warmup):
                steps[k]()

    # the yardstick, after the warm-up (building the models moves memory around): just before
    # and just after the timed repeats
    say(f"{name}: matmul GFLOP/s", force=True)
    gflops_before = matmul_gflops()
    # interleaved: every repeat runs each step once, in a rotating order
    times = {k: [] for k in steps}
    order = list(steps)
    before = cpu_snapshot()
    for r in range(repeats):
        for k in order[r % len(order):] + order[:r % len(order)]:
            say(f"{name}: repeat {r + 1}/{repeats} {k}")
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    result["others_cpu"] = others_cpu(before, cpu_snapshot())
    gflops_after = matmul_gflops()
    matmul = (gflops_before + gflops_after) / 2
    result["matmul_gflops"] = matmul
    result["matmul_gflops_before_after"] = [gflops_before, gflops_after]

    say(f"{name}: page faults", force=True)
    for k in ("numpygpt", "torch"):                 # whole steps, warm after the repeats
        if k in steps:
            def whole(k=k):
                steps[k]()
                steps[k + "_adamw"]()
            result[k + "_faults_per_step"] = faults_per_step(whole)

    say(f"{name}: peak memory", force=True)
    for k in steps:
        if k.endswith("_adamw"):
            result[k.replace("_adamw", "_optimizer")] = summarise(times[k], 0, B * T)
            continue
        fn = steps[k]
        s = summarise(times[k], flops if k != "numpygpt_unmasked" else training_flops(config, B, T),
                      B * T)
        s["matmul_ratio"] = s["gflops_per_s"] / matmul
        if k != "numpygpt_unmasked":
            s["peak_rss_bytes"] = peak_rss_growth(fn, getattr(fn, "reset", None))
        if k == "numpygpt":
            s["peak_tracemalloc_bytes"] = peak_memory(fn)
        result[k] = s
    for k in ("numpygpt", "torch"):                 # the whole step, repeat by repeat
        if k in result:
            result[k + "_total"] = summarise(np.add(times[k], times[k + "_adamw"]), flops, B * T)
    if use_torch:
        for part in ("", "_optimizer", "_total"):
            result[f"ratio{part}_vs_torch"] = (result["numpygpt" + part]["median_s"]
                                               / result["torch" + part]["median_s"])
        paired = np.array(times["numpygpt"]) / np.array(times["torch"])
        result["ratio_vs_torch_paired_median"] = float(np.median(paired))
    if mask_fraction > 0:
        result["ratio_masked_vs_unmasked"] = (result["numpygpt"]["median_s"]
                                              / result["numpygpt_unmasked"]["median_s"])
    slowed = max(result[k]["above_fastest"] for k in ("numpygpt", "torch") if k in result)
    # (the load average before a workload counts the workloads before it: the CPU share of
    # other processes while it was timed is the measure here; run_step checks the load once)
    result["unreliable"] = problems(slowed, min(gflops_before, gflops_after),
                                    max(gflops_before, gflops_after), result["others_cpu"])
    return result


# ---- report ---------------------------------------------------------------------------------

def _mb(n):
    return "-" if n is None else f"{n / 2 ** 20:.0f}"


def _count(n):
    return "?" if n is None else f"{n:,.0f}"


def _ms(s):
    return f"{s['median_s'] * 1e3:.0f} ({s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f})"


def format_table(results, load_before=None, others_before=None):
    """Markdown tables: forward + backward one row per configuration; then the optimiser and
    the whole step; then why a figure may not be trusted."""
    head = ("| config | B x T | numpygpt ms (min-max) | tokens/s | GFLOP/s | % of matmul "
            "| peak MiB (RSS / tracemalloc) | PyTorch ms (min-max) | PyTorch peak MiB | numpygpt/PyTorch |")
    lines = ["forward + backward:", head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        n, t = r["numpygpt"], r.get("torch")
        row = [f"{r['name']}" + (f" (mask {r['mask_fraction']:.0%})" if r["mask_fraction"] else ""),
               f"{r['batch_size']} x {r['seq_len']}", _ms(n),
               f"{n['tokens_per_s']:.0f}", f"{n['gflops_per_s']:.1f}",
               f"{100 * n['matmul_ratio']:.0f}% of {r['matmul_gflops']:.0f}",
               f"{_mb(n.get('peak_rss_bytes'))} / {_mb(n.get('peak_tracemalloc_bytes'))}"]
        if t is not None:
            row += [_ms(t), _mb(t.get("peak_rss_bytes")), f"{r['ratio_vs_torch']:.2f}x"]
        else:
            row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    head = ("| config | numpygpt clip+AdamW ms | PyTorch clip+AdamW ms | numpygpt/PyTorch "
            "| numpygpt step ms | PyTorch step ms | numpygpt/PyTorch "
            "| page faults per step: numpygpt / PyTorch |")
    lines += ["", "optimiser (clip to the global norm, AdamW), and the whole step (forward + "
              "backward + optimiser, repeat by repeat):", head,
              "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t = "torch" in r
        row = [r["name"], _ms(r["numpygpt_optimizer"]),
               _ms(r["torch_optimizer"]) + f" {r['torch_adamw']}" if t else "-",
               f"{r['ratio_optimizer_vs_torch']:.2f}x" if t else "-", _ms(r["numpygpt_total"]),
               _ms(r["torch_total"]) if t else "-", f"{r['ratio_total_vs_torch']:.2f}x" if t else "-",
               f"{_count(r.get('numpygpt_faults_per_step'))} / {_count(r.get('torch_faults_per_step'))}"]
        lines.append("| " + " | ".join(row) + " |")
    for r in results:
        if "ratio_masked_vs_unmasked" in r:
            u = r["numpygpt_unmasked"]
            lines.append(f"\n{r['name']}: {r['mask_fraction']:.0%} of positions -100: "
                         f"{r['numpygpt']['median_s'] * 1e3:.0f} ms against "
                         f"{u['median_s'] * 1e3:.0f} ms unmasked = {r['ratio_masked_vs_unmasked']:.2f}x")
    lines.append("")
    busy = busy_note(others_before)
    if load_before is not None:
        lines.append(f"load average (1 min) before the run {load_before:.2f}"
                     + (f"; {busy}" if busy else ""))
    th = results[0]["threads"] if results else parallel.settings()
    lines.append(f"numpygpt threads {th['threads']} (parallel {'on' if th['parallel'] else 'off'}), "
                 f"BLAS threads {blas_note(th['blas'])}"
                 + (f", PyTorch threads {results[0]['torch_threads']}"
                    if results and "torch_threads" in results[0] else ""))
    lines += verdicts(results, others_before if busy else None)
    return lines


def verdicts(results, others_before=None):
    """Each figure's line: reliable, or UNRELIABLE and why. others_before: the share of the
    CPUs other processes used before the run when it was BUSY (busy_note), else None."""
    lines = []
    for r in results:
        others = "?" if r["others_cpu"] is None else f"{r['others_cpu']:.0%}"
        reasons = list(r["unreliable"])
        if others_before and r["others_cpu"] is None:     # busy, and not measured since
            reasons.append(f"other processes used {others_before:.0%} of the CPUs before the "
                           f"run, not measured during it")
        if reasons:
            lines.append(f"{r['name']}: UNRELIABLE: {'; '.join(reasons)}: {advice(reasons)}")
        else:
            above = max(r[k]["above_fastest"] for k in ("numpygpt", "torch") if k in r)
            lines.append(f"{r['name']}: reliable (median repeat at most {above:.0%} above the fastest, "
                         f"matmul before/after {r['matmul_gflops_before_after'][0]:.0f}/"
                         f"{r['matmul_gflops_before_after'][1]:.0f} GFLOP/s, other processes {others} of the CPUs)")
    return lines


def machine_info():
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    if torch_available():
        import torch
        info["torch"] = torch.__version__
    return info
