"""`numpygpt bench-step`: the time and memory of one training step (forward + backward,
no optimiser) for named configurations, float32, against PyTorch eager when installed.

For each configuration:
  - numpygpt's step: median, min and max of `repeats` timed steps after one warm-up step
  - tokens/s = B*T / median
  - analytic FLOPs: matmul FLOPs of forward + backward (backward = 2 x forward),
        forward = L * (24 B T C^2 + 2 B T (T+1) C) + 2 n V C
    24 B T C^2: the four projections (qkv 3C^2, attn proj C^2, fc 4C^2, mlp proj 4C^2) x 2;
    2 B T (T+1) C: q k^T and P v with the causal mask, only the T(T+1)/2 allowed pairs;
    2 n V C: the lm_head over the n positions that count (n = B T when nothing is -100;
    the fused loss skips -100 rows). Element-wise work (softmax, GELU, LayerNorm) is not
    counted. numpygpt.dataflow.training_flops gives the same number for n = B T.
  - achieved GFLOP/s, and its ratio to a float32 (1024,1024) matmul's GFLOP/s measured
    just before and after the configuration in the same run (numpygpt.benchutil)
  - peak memory of one step: tracemalloc (NumPy's own allocations) and, for numpygpt and
    PyTorch alike, the growth of the process's peak resident set (Linux VmHWM, reset
    before the step), which sees PyTorch's allocator too
  - with PyTorch: the same model with the same weights in PyTorch eager (TorchGPT below:
    scaled_dot_product_attention(is_causal=True), tied lm_head, cross_entropy with
    ignore_index=-100, GELU tanh), its loss checked against numpygpt's (a wrong model
    would make the timing meaningless), timed *interleaved* with numpygpt step by step,
    so that load on the machine hits both alike; ratio = numpygpt median / PyTorch median.
  - with --mask-fraction f: that fraction of the label positions is -100 (an SFT batch);
    numpygpt's step on the same batch with nothing masked is timed interleaved as well,
    and the ratio masked / unmasked reported.
"""
import ctypes
import gc
import json
import math
import os
import platform
import sys
import time

import numpy as np

from .benchutil import matmul_gflops, peak_memory
from .config import GPTConfig
from .model import GPT
from .progress import Progress

CONFIGS = {   # name -> model sizes and batch, as issue 5 names them
    "tiny": dict(vocab_size=256, n_embd=128, n_layer=2, n_head=4, seq_len=128, batch_size=8),
    "small": dict(vocab_size=50257, n_embd=256, n_layer=4, n_head=4, seq_len=256, batch_size=4),
    "gpt2": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, seq_len=256, batch_size=1),
    "gpt2-1k": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, seq_len=1024, batch_size=1),
}
FLOPS_FORMULA = ("3 * (L * (24*B*T*C^2 + 2*B*T*(T+1)*C) + 2*n*V*C), n = positions not -100 "
                 "(matmuls only; backward = 2 x forward; attention with the causal mask)")
LOSS_RTOL = 1e-4      # float32 losses of the two implementations must agree this closely


def make_config(name, attn_impl="naive"):
    """name -> (GPTConfig, batch_size, seq_len)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    c = dict(CONFIGS[name])
    B, T = c.pop("batch_size"), c.pop("seq_len")
    return GPTConfig(n_positions=max(1024, T), attn_impl=attn_impl, **c), B, T


def make_batch(config, batch_size, seq_len, mask_fraction=0.0, seed=0):
    """Random ids and aligned labels (B,T); exactly round(mask_fraction * B*T) labels are -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch_size, seq_len))
    labels = rng.integers(0, config.vocab_size, size=(batch_size, seq_len))
    n_masked = int(round(mask_fraction * labels.size))
    masked = rng.choice(labels.size, size=n_masked, replace=False)
    labels.reshape(-1)[masked] = -100
    return ids, labels


def step_flops(config, batch_size, seq_len, n_counted=None):
    """Analytic matmul FLOPs of one training step (FLOPS_FORMULA)."""
    B, T, C, V, L = batch_size, seq_len, config.n_embd, config.vocab_size, config.n_layer
    n = B * T if n_counted is None else n_counted
    blocks = L * (24 * B * T * C * C + 2 * B * T * (T + 1) * C)
    return 3 * (blocks + 2 * n * V * C)


def dataflow_flops(config, batch_size, seq_len):
    """numpygpt.dataflow's count when that module exists (a cross-check), else None."""
    try:
        from .dataflow import training_flops
    except ImportError:
        return None
    return int(training_flops(config, batch_size, seq_len, causal=True))


# ---- memory: the growth of the peak resident set, for NumPy and PyTorch alike ----------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


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


# ---- the same GPT in PyTorch eager --------------------------------------------------------------

def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_torch_gpt(params, config):
    """A GPT-2 in PyTorch eager holding a float32 copy of numpygpt's params (nn.Linear
    layout: numpygpt's x @ W becomes F.linear(x, W^T))."""
    import torch
    import torch.nn.functional as F

    class TorchGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            p = {}
            for name, value in params.items():
                a = np.asarray(value, dtype=np.float32)
                if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                    a = a.T                                   # (Cin,Cout) -> (Cout,Cin)
                p[name.replace(".", "_")] = torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a)))
            self.p = torch.nn.ParameterDict(p)

        def forward(self, ids, labels):
            P, cfg = self.p, config
            B, T = ids.shape
            C, H = cfg.n_embd, cfg.n_head
            x = P["wte_weight"][ids] + P["wpe_weight"][:T]
            for i in range(cfg.n_layer):
                b = lambda k: P[f"h_{i}_{k}"]                  # noqa: E731
                h = F.layer_norm(x, (C,), b("ln_1_weight"), b("ln_1_bias"), cfg.layer_norm_epsilon)
                q, k, v = F.linear(h, b("attn_c_attn_weight"), b("attn_c_attn_bias")).split(C, dim=2)
                q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                y = y.transpose(1, 2).reshape(B, T, C)
                x = x + F.linear(y, b("attn_c_proj_weight"), b("attn_c_proj_bias"))
                h = F.layer_norm(x, (C,), b("ln_2_weight"), b("ln_2_bias"), cfg.layer_norm_epsilon)
                h = F.gelu(F.linear(h, b("mlp_c_fc_weight"), b("mlp_c_fc_bias")), approximate="tanh")
                x = x + F.linear(h, b("mlp_c_proj_weight"), b("mlp_c_proj_bias"))
            x = F.layer_norm(x, (C,), P["ln_f_weight"], P["ln_f_bias"], cfg.layer_norm_epsilon)
            logits = F.linear(x, P["wte_weight"])              # tied lm_head: (B,T,C) -> (B,T,V)
            return F.cross_entropy(logits.view(-1, cfg.vocab_size), labels.view(-1),
                                   ignore_index=-100)

    if config.pos_encoding != "learned" or not config.tie_word_embeddings:
        raise ValueError("the PyTorch reference is GPT-2: learned positions, tied lm_head")
    return TorchGPT()


def torch_step_fn(model, ids, labels):
    import torch
    ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(ids_t, labels_t)
        loss.backward()
        return float(loss.detach())
    step.reset = lambda: model.zero_grad(set_to_none=True)    # numpygpt's grads die with its step
    return step


# ---- one configuration ----------------------------------------------------------------------

def summarise(times, flops, tokens):
    t = np.asarray(times)
    med = float(np.median(t))
    return {"median_s": med, "min_s": float(t.min()), "max_s": float(t.max()),
            "spread": float((t.max() - t.min()) / med), "times_s": t.tolist(),
            "tokens_per_s": tokens / med, "gflops_per_s": flops / med / 1e9}


def bench_config(name, repeats=3, warmup=1, mask_fraction=0.0, use_torch=True,
                 attn_impl="naive", seed=0, progress=None):
    """Time, FLOP/s and memory of one configuration; a JSON-able dict."""
    config, B, T = make_config(name, attn_impl)
    ids, labels = make_batch(config, B, T, mask_fraction, seed)
    n_counted = int(np.count_nonzero(labels != -100))
    flops = step_flops(config, B, T, n_counted)
    model = GPT(config, seed=seed, dtype=np.float32)
    say = progress.update if progress is not None else (lambda text, force=False: None)

    steps = {"numpygpt": lambda: model.loss_and_grads(ids, labels)[0]}
    if mask_fraction > 0:
        unmasked = make_batch(config, B, T, 0.0, seed)[1]
        steps["numpygpt_unmasked"] = lambda: model.loss_and_grads(ids, unmasked)[0]
    result = {"config": config.to_dict(), "name": name, "batch_size": B, "seq_len": T,
              "tokens": B * T, "mask_fraction": mask_fraction, "counted_positions": n_counted,
              "flops": flops, "flops_formula": FLOPS_FORMULA}
    if mask_fraction == 0:
        result["flops_dataflow"] = dataflow_flops(config, B, T)
    if use_torch:
        import torch
        torch.manual_seed(seed)
        tmodel = build_torch_gpt(model.params, config)
        steps["torch"] = torch_step_fn(tmodel, ids, labels)

    say(f"{name}: matmul GFLOP/s", force=True)
    gflops_before = matmul_gflops()
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

    # interleaved: every repeat runs each step once, in a rotating order
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(repeats):
        for k in order[r % len(order):] + order[:r % len(order)]:
            say(f"{name}: repeat {r + 1}/{repeats} {k}")
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    gflops_after = matmul_gflops()
    matmul = (gflops_before + gflops_after) / 2
    result["matmul_gflops"] = matmul
    result["matmul_gflops_before_after"] = [gflops_before, gflops_after]

    say(f"{name}: peak memory", force=True)
    for k, fn in steps.items():
        s = summarise(times[k], flops if k != "numpygpt_unmasked" else step_flops(config, B, T),
                      B * T)
        s["matmul_ratio"] = s["gflops_per_s"] / matmul
        if k != "numpygpt_unmasked":
            s["peak_rss_bytes"] = peak_rss_growth(fn, getattr(fn, "reset", None))
        if k == "numpygpt":
            s["peak_tracemalloc_bytes"] = peak_memory(fn)
        result[k] = s
    if use_torch:
        result["ratio_vs_torch"] = result["numpygpt"]["median_s"] / result["torch"]["median_s"]
        paired = np.array(times["numpygpt"]) / np.array(times["torch"])
        result["ratio_vs_torch_paired_median"] = float(np.median(paired))
        result["torch_threads"] = torch.get_num_threads()
    if mask_fraction > 0:
        result["ratio_masked_vs_unmasked"] = (result["numpygpt"]["median_s"]
                                              / result["numpygpt_unmasked"]["median_s"])
    return result


# ---- the loss step alone: fused against unfused ----------------------------------------------

def bench_loss(vocab_size=50257, n_embd=768, rows=1024, chunk_sizes=(None, 256, 512), repeats=3,
               seed=0, progress=None):
    """lm_head + cross-entropy, forward and backward, float32: the unfused textbook path
    (numpygpt.model.lm_head_loss) against the fused one at several chunk sizes, timed
    interleaved; peak memory by tracemalloc (dweight included: every path returns it)."""
    from .fused_loss import lm_head_cross_entropy, default_chunk_size
    from .model import lm_head_loss
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, rows, n_embd)).astype(np.float32)
    W = (0.02 * rng.standard_normal((vocab_size, n_embd))).astype(np.float32)
    labels = rng.integers(0, vocab_size, (1, rows))
    fns = {"unfused": lambda: lm_head_loss(x, W, labels)}
    for cs in chunk_sizes:
        rows_per_chunk = min(rows, cs or default_chunk_size(vocab_size))
        fns[f"fused chunk_size={rows_per_chunk}"] = (
            lambda cs=cs: lm_head_cross_entropy(x, W, labels, chunk_size=cs))
    say = progress.update if progress is not None else (lambda text, force=False: None)
    times = {k: [] for k in fns}
    for k, fn in fns.items():
        say(f"loss: warm-up {k}", force=True)
        fn()
    for r in range(repeats):
        for k, fn in fns.items():
            say(f"loss: repeat {r + 1}/{repeats} {k}")
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    out = {"vocab_size": vocab_size, "n_embd": n_embd, "rows": rows, "runs": {}}
    for k, fn in fns.items():
        say(f"loss: peak memory {k}", force=True)
        out["runs"][k] = {"median_s": float(np.median(times[k])), "times_s": times[k],
                          "peak_tracemalloc_bytes": peak_memory(fn)}
    base = out["runs"]["unfused"]["peak_tracemalloc_bytes"]
    for r in out["runs"].values():
        r["memory_ratio_vs_unfused"] = base / r["peak_tracemalloc_bytes"]
    return out


def format_loss(result):
    lines = [f"loss step (lm_head + cross-entropy, forward + backward) at B*T={result['rows']}, "
             f"C={result['n_embd']}, V={result['vocab_size']}, float32"]
    for k, r in result["runs"].items():
        lines.append(f"  {k:24s} peak {r['peak_tracemalloc_bytes'] / 2 ** 20:6.0f} MiB "
                     f"({r['memory_ratio_vs_unfused']:3.1f}x below unfused)  "
                     f"median {r['median_s'] * 1e3:6.0f} ms")
    return lines


# ---- report ---------------------------------------------------------------------------------

def _mb(n):
    return "-" if n is None else f"{n / 2 ** 20:.0f}"


def format_table(results):
    """Markdown table, one row per configuration."""
    head = ("| config | B x T | numpygpt ms (min-max) | tokens/s | GFLOP/s | % of matmul "
            "| peak MiB (RSS / tracemalloc) | PyTorch ms (min-max) | PyTorch peak MiB | numpygpt/PyTorch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        n, t = r["numpygpt"], r.get("torch")
        row = [f"{r['name']}" + (f" (mask {r['mask_fraction']:.0%})" if r["mask_fraction"] else ""),
               f"{r['batch_size']} x {r['seq_len']}",
               f"{n['median_s'] * 1e3:.0f} ({n['min_s'] * 1e3:.0f}-{n['max_s'] * 1e3:.0f})",
               f"{n['tokens_per_s']:.0f}", f"{n['gflops_per_s']:.1f}",
               f"{100 * n['matmul_ratio']:.0f}% of {r['matmul_gflops']:.0f}",
               f"{_mb(n.get('peak_rss_bytes'))} / {_mb(n.get('peak_tracemalloc_bytes'))}"]
        if t is not None:
            row += [f"{t['median_s'] * 1e3:.0f} ({t['min_s'] * 1e3:.0f}-{t['max_s'] * 1e3:.0f})",
                    _mb(t.get("peak_rss_bytes")), f"{r['ratio_vs_torch']:.2f}x"]
        else:
            row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    for r in results:
        if "ratio_masked_vs_unmasked" in r:
            u = r["numpygpt_unmasked"]
            lines.append(f"\n{r['name']}: {r['mask_fraction']:.0%} of positions -100: "
                         f"{r['numpygpt']['median_s'] * 1e3:.0f} ms against "
                         f"{u['median_s'] * 1e3:.0f} ms unmasked = {r['ratio_masked_vs_unmasked']:.2f}x")
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


# ---- CLI ------------------------------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--configs", default="tiny,small,gpt2,gpt2-1k",
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: all four)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--mask-fraction", type=float, default=0.0,
                        help="fraction of label positions set to -100, e.g. 0.75 for an SFT batch")
    parser.add_argument("--attn-impl", choices=["naive", "tiled"], default="naive",
                        help="numpygpt attention core (default naive)")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-memory", action="store_true",
                        help="also time and measure the loss step alone, fused against unfused "
                             "(V=50257, C=768, B*T=1024)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/bench_step.json")


def run(args):
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if not names or bad:
        print(f"bench-step: error: --configs={args.configs!r}: unknown {bad or 'empty'}; "
              f"known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    for opt, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 1)):
        if value < low:
            print(f"bench-step: error: {opt}={value} must be >= {low}", file=sys.stderr)
            return 2
    if not (0.0 <= args.mask_fraction < 1.0) or math.isnan(args.mask_fraction):
        print(f"bench-step: error: --mask-fraction={args.mask_fraction} must be in [0, 1)",
              file=sys.stderr)
        return 2
    use_torch = not args.no_torch and torch_available()
    if not args.no_torch and not use_torch:
        print("bench-step: note: PyTorch is not installed; timing numpygpt only", file=sys.stderr)
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            print(f"bench-step: error: --out={args.out!r}: {e}", file=sys.stderr)
            return 2

    progress = Progress()
    results = []
    for name in names:
        results.append(bench_config(name, args.repeats, args.warmup, args.mask_fraction, use_torch,
                                    args.attn_impl, args.seed, progress))
    loss = bench_loss(repeats=args.repeats, seed=args.seed, progress=progress) if args.loss_memory else None
    progress.done()
    report = {"benchmark": "bench-step", "machine": machine_info(), "repeats": args.repeats,
              "warmup": args.warmup, "attn_impl": args.attn_impl, "results": results}
    for line in format_table(results):
        print(line)
    if loss is not None:
        report["loss_step"] = loss
        print()
        for line in format_loss(loss):
            print(line)
    if args.out:
        path = os.path.join(args.out, "bench_step.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {path}")
    return 0


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="numpygpt bench-step", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
