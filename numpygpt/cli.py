"""The `numpygpt` command: argparse subcommands, one function per subcommand.

    numpygpt tour          the seed's story on real numbers (numpygpt.tour)
    numpygpt dataflow      shapes, parameters, FLOPs, activation memory of any config
    numpygpt labels        the label table of a pre-training or SFT example
    numpygpt gradcheck     one layer or the whole model against finite differences
    numpygpt bench-attention | bench-step | train | sft | generate
                           in their own modules, imported only when asked for, so that
                           one of them failing to import cannot break the others

User errors (bad arguments, a ValueError from the library) print one line to stderr
and exit 2; a failed gradient check exits 1.
"""
import argparse
import importlib
import sys

import numpy as np

PROG = "numpygpt"

# Subcommands implemented in other modules: (name, module, help). Each module exposes
# add_arguments(parser) and run(args) -> int.
EXTERNAL = [
    ("bench-attention", "numpygpt.bench_attention", "attention time and memory against sequence length"),
    ("bench-step", "numpygpt.bench_step", "training-step time, FLOP/s and memory (against PyTorch if installed)"),
    ("train", "numpygpt.train", "pre-train a small GPT on a text file"),
    ("sft", "numpygpt.sft", "supervised fine-tuning with the prompt masked by -100"),
    ("generate", "numpygpt.generate", "sample text from a checkpoint with a KV cache"),
]

LAYERS = ("embedding", "layernorm", "attention", "mlp", "lm_head", "cross_entropy", "block")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def eprint(*lines):
    for line in lines:
        print(line, file=sys.stderr)


# ---- dataflow ---------------------------------------------------------------------------

# `--preset gpt2` is GPT-2 124M; without a preset, a tiny byte-level model. Explicit options win.
DATAFLOW_DEFAULTS = {"vocab_size": 257, "n_positions": 1024, "n_embd": 128, "n_head": 4,
                     "n_layer": 2, "seq_len": 128, "batch_size": 8}
GPT2_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_head": 12,
                 "n_layer": 12, "seq_len": 1024, "batch_size": 1}


def add_model_size_arguments(p, what="model"):
    g = p.add_argument_group(f"{what} size (override the preset)")
    g.add_argument("--preset", choices=["gpt2"], help="gpt2 = GPT-2 124M (V=50257, C=768, H=12, L=12)")
    g.add_argument("--n-layer", type=positive_int)
    g.add_argument("--n-head", type=positive_int)
    g.add_argument("--n-embd", type=positive_int)
    g.add_argument("--vocab-size", type=positive_int)
    g.add_argument("--n-positions", type=positive_int, help="size of the learned position table")
    g.add_argument("--seq-len", type=positive_int, help="T")
    g.add_argument("--batch-size", type=positive_int, help="B")
    g.add_argument("--pos-encoding", choices=["learned", "rope"], default="learned")
    g.add_argument("--untied", action="store_true", help="a separate lm_head matrix (not tied to wte)")


def resolve_sizes(args, defaults):
    """Preset (or the given defaults), overridden by options given explicitly."""
    base = dict(GPT2_DEFAULTS if args.preset == "gpt2" else defaults)
    for key in base:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    return base


def make_config(sizes, args, **extra):
    from .config import GPTConfig
    n_positions = sizes["n_positions"]
    if args.pos_encoding == "learned" and sizes["seq_len"] > n_positions:
        if args.n_positions is not None:
            raise ValueError(f"--seq-len {sizes['seq_len']} > --n-positions {n_positions} "
                             f"(a learned position table has n_positions rows)")
        n_positions = sizes["seq_len"]
    return GPTConfig(vocab_size=sizes["vocab_size"], n_positions=n_positions, n_embd=sizes["n_embd"],
                     n_head=sizes["n_head"], n_layer=sizes["n_layer"],
                     tie_word_embeddings=not args.untied, pos_encoding=args.pos_encoding, **extra)


def add_dataflow_arguments(p):
    add_model_size_arguments(p)
    p.add_argument("--attn-impl", choices=["naive", "tiled"], default="naive",
                   help="textbook attention (keeps the T x T probabilities) or tiled")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="bytes per activation (default float32)")
    p.add_argument("--full", action="store_true",
                   help="count attention FLOPs over all T^2 pairs, not only the causal ones")
    p.add_argument("--json", action="store_true", help="print the per-stage rows as JSON")


def run_dataflow(args):
    import json
    from . import dataflow
    sizes = resolve_sizes(args, DATAFLOW_DEFAULTS)
    config = make_config(sizes, args, attn_impl=args.attn_impl)
    itemsize = np.dtype(args.dtype).itemsize
    B, T = sizes["batch_size"], sizes["seq_len"]
    if args.json:
        rows = dataflow.stages(config, B, T, itemsize, causal=not args.full)
        print(json.dumps({"config": config.to_dict(), "batch_size": B, "seq_len": T,
                          "dtype": args.dtype, "causal": not args.full, "stages": rows,
                          "totals": dataflow.totals(rows),
                          "training_flops": dataflow.training_flops(config, B, T, not args.full)},
                         indent=1))
        return 0
    title = f"numpygpt dataflow{' --preset gpt2 (GPT-2 124M)' if args.preset else ''}"
    print(dataflow.format_report(config, B, T, itemsize, causal=not args.full, title=title))
    return 0


# ---- labels -----------------------------------------------------------------------------

def add_labels_arguments(p):
    p.add_argument("prompt", metavar="PROMPT", help="text; alone it is a pre-training example")
    p.add_argument("answer", metavar="ANSWER", nargs="?",
                   help="with an answer: an SFT example (PROMPT masked with -100)")
    p.add_argument("--eot", action="store_true",
                   help="append the end-of-text token (<|eot|>, id 256) so it is a target too")


def run_labels(args):
    from .labels_table import make_example, table_lines
    ids, aligned, hf, n_prompt = make_example(args.prompt, args.answer, eot=args.eot)
    kind = "pre-training" if args.answer is None else "SFT"
    print(f"{kind} example, byte-level tokens (ByteTokenizer: 256 bytes + <|eot|> 256)")
    if args.answer is None:
        print("aligned: label t = input t+1 (the next token); the last position has none (-100)")
        print("HF:      labels = the inputs; the model shifts them by one itself")
    else:
        print("aligned: label t = input t+1 where that is an answer token; the last prompt position "
              "predicts the first answer token and counts")
        print("HF:      labels = the inputs with the prompt set to -100; the model shifts them itself")
    print()
    for line in table_lines(ids, aligned, hf, n_prompt):
        print(line)
    return 0


# ---- gradcheck --------------------------------------------------------------------------

GRADCHECK_DEFAULTS = {"vocab_size": 11, "n_positions": 16, "n_embd": 8, "n_head": 2,
                      "n_layer": 2, "seq_len": 5, "batch_size": 2}
# float32 keeps ~7 digits: every f() is rounded by ~6e-8 |f|, so the central difference
# (f+ - f-) / 2eps carries ~6e-8 |f| / eps of pure rounding. A larger eps (1e-3) trades it
# against the truncation error ~eps^2 |f'''|; what is left is ~1e-4 relative, hence 1e-2.
TOLERANCES = {"float64": (1e-5, 1e-6), "float32": (1e-3, 1e-2)}   # dtype -> (eps, tol)


def add_gradcheck_arguments(p):
    what = p.add_mutually_exclusive_group()
    what.add_argument("--layer", choices=LAYERS, help="check one layer: loss = sum(out * R), R random")
    what.add_argument("--model", action="store_true", help="check the whole model (the default)")
    add_model_size_arguments(p, "layer or model")
    p.add_argument("--attn-impl", choices=["naive", "tiled"], default="naive")
    p.add_argument("--attn-block-size", type=positive_int, default=4,
                   help="tiled attention's block size (default 4, so a small T spans several tiles)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="float64 (default, tolerance 1e-6) or float32 (eps 1e-3, tolerance 1e-2: "
                        "float32 rounding alone puts ~6e-8 |f| / eps into each central difference)")
    p.add_argument("--eps", type=positive_float, help="finite-difference step (default 1e-5; 1e-3 in float32)")
    p.add_argument("--tol", type=positive_float, help="max relative error (default 1e-6; 1e-2 in float32)")
    p.add_argument("--max-coords", type=positive_int, default=32,
                   help="coordinates checked per tensor, sampled at random (default 32)")
    p.add_argument("--directional", action="store_true",
                   help="instead of coordinates: compare <grad, v> with (f(p+eps v) - f(p-eps v)) / 2eps "
                        "for random directions v over all tensors at once (2 forward passes each; "
                        "for big models)")
    p.add_argument("--directions", type=positive_int, default=3, help="random directions (default 3)")
    p.add_argument("--init", choices=["unit", "gpt2"], default="unit",
                   help="--model weights: unit scale (default; a stricter, better conditioned check) "
                        "or GPT-2's initialisation (std 0.02)")


def _weights(rng, shape, dtype, scale):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def layer_problem(layer, sizes, config, dtype, rng):
    """-> (tensors, forward, backward): forward(tensors) -> (out, cache); backward(dout, cache)
    -> {name: grad}. The checked loss is sum(out * R) (cross_entropy: the mean loss itself).
    Weights are drawn larger than GPT-2's 0.02 so that softmax and GELU are far from linear."""
    import numpygpt as ng
    B, T, C, H, V = (sizes[k] for k in ("batch_size", "seq_len", "n_embd", "n_head", "vocab_size"))
    w = lambda *shape: _weights(rng, shape, dtype, 1.0 / np.sqrt(shape[0]))
    b = lambda n: _weights(rng, (n,), dtype, 0.1)
    x = _weights(rng, (B, T, C), dtype, 1.0)
    rope = None
    if config.pos_encoding == "rope" and layer in ("attention", "block"):
        rope = ng.rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), C // H, config.rope_base, dtype)
    impl = config.attn_impl

    if layer == "embedding":
        ids = rng.integers(0, V, size=(B, T))
        ids[0, -1] = ids[0, 0]                        # a repeated id: its gradient rows must add
        tensors = {"wte": w(V, C), "wpe": w(max(T, config.n_positions), C)}
        if config.pos_encoding == "rope":
            del tensors["wpe"]
        fwd = lambda t: ng.embedding_forward(ids, t["wte"], t.get("wpe"))
        bwd = lambda d, cache: ng.embedding_backward(d, cache)
    elif layer == "layernorm":
        tensors = {"x": x, "weight": (1 + b(C)).astype(dtype), "bias": b(C)}
        fwd = lambda t: ng.layernorm_forward(t["x"], t["weight"], t["bias"], config.layer_norm_epsilon)
        bwd = lambda d, cache: _with_dx(*ng.layernorm_backward(d, cache))
    elif layer == "attention":
        tensors = {"x": x, "c_attn.weight": w(C, 3 * C), "c_attn.bias": b(3 * C),
                   "c_proj.weight": w(C, C), "c_proj.bias": b(C)}
        fwd = lambda t: ng.attention_forward(t["x"], t["c_attn.weight"], t["c_attn.bias"],
                                             t["c_proj.weight"], t["c_proj.bias"], H,
                                             rope=rope, impl=impl, block_size=config.attn_block_size)
        bwd = lambda d, cache: _with_dx(*ng.attention_backward(d, cache))
    elif layer == "mlp":
        tensors = {"x": x, "c_fc.weight": w(C, 4 * C), "c_fc.bias": b(4 * C),
                   "c_proj.weight": w(4 * C, C), "c_proj.bias": b(C)}
        fwd = lambda t: ng.mlp_forward(t["x"], t["c_fc.weight"], t["c_fc.bias"],
                                       t["c_proj.weight"], t["c_proj.bias"])
        bwd = lambda d, cache: _with_dx(*ng.mlp_backward(d, cache))
    elif layer == "lm_head":
        tensors = {"x": x, "weight": w(V, C)}
        fwd = lambda t: ng.lm_head_forward(t["x"], t["weight"])
        bwd = lambda d, cache: dict(zip(("x", "weight"), ng.lm_head_backward(d, cache)))
    elif layer == "cross_entropy":
        labels = rng.integers(0, V, size=(B, T))
        labels[rng.random((B, T)) < 0.25] = -100      # some ignored positions
        labels[0, 0] = 0                              # at least one counted
        tensors = {"logits": _weights(rng, (B, T, V), dtype, 2.0)}
        fwd = lambda t: ng.cross_entropy(t["logits"], labels)
        bwd = lambda d, dlogits: {"logits": dlogits}
    elif layer == "block":
        C4 = 4 * C
        tensors = {"x": x, "ln_1.weight": (1 + b(C)).astype(dtype), "ln_1.bias": b(C),
                   "attn.c_attn.weight": w(C, 3 * C), "attn.c_attn.bias": b(3 * C),
                   "attn.c_proj.weight": w(C, C), "attn.c_proj.bias": b(C),
                   "ln_2.weight": (1 + b(C)).astype(dtype), "ln_2.bias": b(C),
                   "mlp.c_fc.weight": w(C, C4), "mlp.c_fc.bias": b(C4),
                   "mlp.c_proj.weight": w(C4, C), "mlp.c_proj.bias": b(C)}
        fwd = lambda t: ng.block_forward(t["x"], t, H, config.layer_norm_epsilon, rope=rope,
                                         impl=impl, block_size=config.attn_block_size)
        bwd = lambda d, cache: _with_dx(*ng.block_backward(d, cache))
    else:
        raise ValueError(f"--layer {layer!r} is not one of {', '.join(LAYERS)}")
    return tensors, fwd, bwd


def _with_dx(dx, grads):
    return {"x": dx, **grads}


def check_layer(layer, sizes, config, dtype, rng, args, eps, tol, progress):
    """Per-tensor (or directional) check of one layer function pair."""
    from . import gradcheck
    tensors, fwd, bwd = layer_problem(layer, sizes, config, dtype, rng)
    if layer == "cross_entropy":
        f = lambda: float(fwd(tensors)[0])
        grads = bwd(None, fwd(tensors)[1])
    else:
        out, cache = fwd(tensors)
        R = rng.standard_normal(out.shape).astype(dtype)       # the upstream gradient dL/dout
        f = lambda: float(np.sum(fwd(tensors)[0] * R, dtype=np.float64))
        grads = bwd(R, cache)
    grads = {k: grads[k] for k in tensors}
    if args.directional:
        return gradcheck.check_directional(f, tensors, grads, eps, tol, args.directions, args.seed)
    return check_tensors(f, tensors, grads, eps, tol, args.max_coords, args.seed, progress)


def check_tensors(f, tensors, grads, eps, tol, max_coords, seed, progress):
    """gradcheck.check_gradients for float64 or float32 arrays, one progress line per tensor."""
    from . import gradcheck

    def on_tensor(j, name, shape):
        progress.update(f"gradcheck: tensor {j + 1}/{len(tensors)} {name} {shape}")
    return gradcheck.check_gradients(f, tensors, grads, eps, tol, max_coords, seed,
                                     float32_ok=True, on_tensor=on_tensor)


def unit_scale_params(params, rng):
    """Redraw a model's parameters in place at unit scale: matrices N(0, 1/fan_in) (embeddings
    N(0, 1/C)), biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.1^2). GPT-2's 0.02 makes
    softmax nearly uniform and many gradients tiny, so rounding (~1e-16 |f| / eps) would be a
    large part of them; at unit scale the check is both stricter and better conditioned."""
    for name, p in params.items():
        if name.endswith(".bias"):
            p[...] = 0.1 * rng.standard_normal(p.shape)
        elif "ln_" in name:
            p[...] = 1 + 0.1 * rng.standard_normal(p.shape)
        else:
            fan_in = p.shape[1] if name.startswith(("wte", "wpe", "lm_head")) else p.shape[0]
            p[...] = rng.standard_normal(p.shape) / np.sqrt(fan_in)
    return params


def check_whole_model(sizes, config, dtype, rng, args, eps, tol, progress):
    import numpygpt as ng
    B, T, V = sizes["batch_size"], sizes["seq_len"], config.vocab_size
    if T < 2:
        raise ValueError(f"--seq-len {T}: the whole-model check needs T >= 2 (one token has no "
                         f"next token, so nothing would be checked)")
    progress.update(f"gradcheck: building the model ({config.n_layer} layers)", force=True)
    model = ng.GPT(config, seed=args.seed, dtype=dtype)
    if args.init == "unit":
        unit_scale_params(model.params, rng)
    ids = rng.integers(0, V, size=(B, T))
    labels = ng.causal_lm_labels(ids)
    labels[rng.random((B, T)) < 0.2] = -100           # some masked targets, as in SFT
    labels[0, 0] = ids[0, 1]                          # at least one counted
    _, grads = model.loss_and_grads(ids, labels)
    f = lambda: model.loss(ids, labels)
    if not args.directional and model.num_params() > 10_000_000:
        n_passes = 2 * sum(min(p.size, args.max_coords) for p in model.params.values())
        eprint(f"note: {n_passes:,} forward passes of a {model.num_params():,}-parameter model; "
               f"--directional needs 2 per direction")
    if args.directional:
        progress.update(f"gradcheck: {args.directions} directions, 2 forward passes each", force=True)
        return ng.gradcheck.check_directional(f, model.params, grads, eps, tol, args.directions, args.seed)
    return check_tensors(f, model.params, grads, eps, tol, args.max_coords, args.seed, progress)


def gradcheck_table(results, tol):
    """Lines of the per-tensor table and a verdict; returns (lines, all_passed)."""
    from .gradcheck import DirectionCheck
    lines = []
    if results and isinstance(results[0], DirectionCheck):
        lines.append(f"{'direction':>9}  {'<grad, v>':>16}  {'finite difference':>18}  {'rel error':>10}  result")
        for i, r in enumerate(results):
            lines.append(f"{i:>9}  {r.analytic:>16.10g}  {r.numeric:>18.10g}  {r.rel_error:>10.2e}  "
                         f"{'pass' if r.passed else 'FAIL'}")
        worst = max(r.rel_error for r in results)
        what = "directions"
    else:
        width = max([len("tensor")] + [len(r.name) for r in results])
        lines.append(f"{'tensor':<{width}}  {'shape':<16}{'checked':>8}  {'max rel error':>13}  result")
        for r in results:
            lines.append(f"{r.name:<{width}}  {str(tuple(r.shape)):<16}{r.n_checked:>8}  "
                         f"{r.max_rel_error:>13.2e}  {'pass' if r.passed else 'FAIL'}")
        worst = max(r.max_rel_error for r in results)
        what = "tensors"
    failed = [r for r in results if not r.passed]
    if failed:
        lines.append(f"FAILED: {len(failed)} of {len(results)} {what} above tolerance {tol:g} "
                     f"(worst {worst:.2e})")
    else:
        verdict = f"all {len(results)} {what} pass" if len(results) > 1 else f"the 1 {what[:-1]} passes"
        lines.append(f"{verdict}: worst relative error {worst:.2e} <= {tol:g}")
    return lines, not failed


def run_gradcheck(args):
    import importlib.util
    from .progress import Progress
    dtype = np.dtype(args.dtype)
    eps = args.eps if args.eps is not None else TOLERANCES[args.dtype][0]
    tol = args.tol if args.tol is not None else TOLERANCES[args.dtype][1]
    if args.attn_impl == "tiled" and importlib.util.find_spec("numpygpt.tiled_attention") is None:
        raise ValueError("--attn-impl tiled needs numpygpt.tiled_attention, which this install lacks")
    sizes = resolve_sizes(args, GRADCHECK_DEFAULTS)
    config = make_config(sizes, args, attn_impl=args.attn_impl, attn_block_size=args.attn_block_size)
    rng = np.random.default_rng(args.seed)
    B, T, C, H, V = (sizes[k] for k in ("batch_size", "seq_len", "n_embd", "n_head", "vocab_size"))
    what = f"--layer {args.layer}" if args.layer else f"--model (n_layer={config.n_layer})"
    tiles = f" (block size {args.attn_block_size})" if args.attn_impl == "tiled" else ""
    print(f"numpygpt gradcheck {what}: B={B} T={T} C={C} H={H} V={V}, {args.dtype}, "
          f"attn {args.attn_impl}{tiles}, pos {args.pos_encoding}")
    if args.directional:
        print(f"directional: {args.directions} random unit directions v over all tensors, eps {eps:g}, "
              f"tolerance {tol:g}")
    else:
        print(f"central differences (f(p+eps) - f(p-eps)) / 2eps, eps {eps:g}, on up to "
              f"{args.max_coords} random coordinates per tensor; tolerance {tol:g} on "
              f"max|a-n| / max(|a|,|n|)")
    if args.dtype == "float32":
        print("float32: each f() is rounded by ~6e-8 |f|, so a central difference carries "
              "~6e-8 |f| / eps of rounding; hence the larger eps and tolerance")
    if args.layer and args.layer != "cross_entropy":
        print("loss = sum(out * R), R ~ N(0, 1): a fixed random upstream gradient dL/dout")
    elif args.layer == "cross_entropy":
        print("loss = mean cross-entropy over the counted labels (about 25% are -100)")
    else:
        print(f"loss = mean cross-entropy of the model ({args.init} init) on random ids, "
              f"next-token labels with ~20% set to -100")
    progress = Progress()
    if args.layer:
        results = check_layer(args.layer, sizes, config, dtype, rng, args, eps, tol, progress)
    else:
        results = check_whole_model(sizes, config, dtype, rng, args, eps, tol, progress)
    progress.done()
    print()
    lines, ok = gradcheck_table(results, tol)
    print("\n".join(lines))
    return 0 if ok else 1


# ---- tour -------------------------------------------------------------------------------

def add_tour_arguments(p):
    from .tour import SECTIONS
    p.add_argument("--seed-sizes", action="store_true",
                   help="data flow at the seed's sizes: batch 1, length 10, width 768, vocabulary 50,000")
    p.add_argument("--skip-gradcheck", action="store_true", help="leave out the whole-model gradient check")
    p.add_argument("--sections", metavar="NAME[,NAME]",
                   help=f"only these sections, comma-separated, from: {', '.join(SECTIONS)}")


def run_tour(args):
    from .tour import SECTIONS, tour
    sections = list(SECTIONS)
    if args.sections:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown or not sections:
            raise ValueError(f"--sections {args.sections!r}: unknown section(s) {unknown}; "
                             f"choose from {', '.join(SECTIONS)}")
    if args.skip_gradcheck and "gradcheck" in sections:
        sections.remove("gradcheck")
    return tour(print, seed=args.seed, seed_sizes=args.seed_sizes, sections=sections)


# ---- wiring -----------------------------------------------------------------------------

BUILTIN = [
    ("tour", "the seed's story on real numbers: data flow, labels, loss, gradient check",
     add_tour_arguments, run_tour),
    ("dataflow", "shapes, parameters, FLOPs and activation memory of a configuration",
     add_dataflow_arguments, run_dataflow),
    ("labels", "the label table of a pre-training (PROMPT) or SFT (PROMPT ANSWER) example",
     add_labels_arguments, run_labels),
    ("gradcheck", "check a layer's or the model's backward against finite differences",
     add_gradcheck_arguments, run_gradcheck),
]


def _subcommand_in(argv):
    names = {n for n, *_ in BUILTIN} | {n for n, *_ in EXTERNAL}
    return next((a for a in argv if a in names), None)


def build_parser(argv=()):
    """The parser. An external subcommand's module is imported only when argv selects it.
    Returns (parser, import_error) where import_error names a module that failed."""
    from . import __version__
    parser = ArgumentParser(prog=PROG, description="numpygpt: a GPT in pure NumPy with hand-written, "
                            "gradient-checked backward passes. Start with: numpygpt tour")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    selected = _subcommand_in(argv)
    for name, help_text, add_arguments, run in BUILTIN:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        if name == selected:          # only the chosen one's arguments are built (tour's imports)
            add_arguments(p)
        p.set_defaults(run=run)
    import_error = None
    for name, module_name, help_text in EXTERNAL:
        # conflict_handler="resolve": the module may define --seed itself
        p = sub.add_parser(name, help=help_text, description=help_text, conflict_handler="resolve")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        if name == selected:
            try:
                module = importlib.import_module(module_name)
                module.add_arguments(p)
                p.set_defaults(run=module.run)
            except Exception as e:    # a module still being written must not break the others
                import_error = (f"{PROG} {name}: not available: importing {module_name} "
                                f"failed ({type(e).__name__}: {e})")
    return parser, import_error


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, import_error = build_parser(argv)
    if import_error:
        eprint(import_error)
        return 1
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:           # --help, --version, usage errors: argparse has printed
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ValueError as e:
        eprint(f"{PROG}: error: {e}")
        return 2
    except KeyboardInterrupt:
        eprint(f"{PROG}: interrupted")
        return 130
