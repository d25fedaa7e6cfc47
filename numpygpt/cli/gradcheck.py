"""`numpygpt gradcheck`: a layer's or the whole model's backward against finite differences,
and experiments with the checks themselves: the bug zoo (--bug NAME, --bugs) and the step-size
sweep (--sweep-eps). A shell over numpygpt.gradcheck, which Python code can call the same way."""
import os

import numpy as np

from ..config import Execution
from ..gradcheck import (BUGS, LAYERS, TOLERANCES, CHECK_CONFIG, check_layer, check_model,
                         format_report, unit_scale_params, run_bug, run_zoo, format_bug,
                         format_zoo, torch_version, sweep_eps, format_sweep, plot_sweep)
from ..gradcheck.sweep import SWEEP_CONFIG
from ..labels import causal_lm_labels
from ..model import GPT
from .common import (add_model_size_arguments, model_from_arguments, positive_float,
                     positive_int, eprint, check_output_dir, check_memory, training_bytes)
from .progress import Progress

DEFAULT_BATCH, DEFAULT_SEQ_LEN = 2, 5
DEFAULT_MAX_COORDS, SWEEP_MAX_COORDS = 32, 8
SWEEP_OUT = os.path.join("bench_results", "gradcheck")


def add_arguments(p):
    what = p.add_mutually_exclusive_group()
    what.add_argument("--layer", choices=LAYERS, help="check one layer: loss = sum(out * R), R random")
    what.add_argument("--model", action="store_true", help="check the whole model (the default)")
    add_model_size_arguments(p, "layer or model")
    p.add_argument("--attention", choices=["standard", "tiled"], default="standard",
                   help="the attention core (default standard: holds the T x T probabilities)")
    p.add_argument("--q-tile", type=positive_int, default=4,
                   help="tiled attention's queries per tile (>= 1, default 4: a small T spans several tiles)")
    p.add_argument("--k-tile", type=positive_int, default=4,
                   help="tiled attention's keys per tile (>= 1, default 4)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="float64 (default, tolerance 1e-6) or float32 (eps 1e-3, tolerance 1e-2: "
                        "float32 rounding alone puts ~6e-8 |f| / eps into each central difference)")
    p.add_argument("--eps", type=positive_float, help="finite-difference step (> 0; default 1e-5, "
                                                      "1e-3 in float32)")
    p.add_argument("--tol", type=positive_float, help="max relative error (> 0; default 1e-6, "
                                                      "1e-2 in float32)")
    p.add_argument("--max-coords", type=positive_int,
                   help=f"coordinates checked per tensor, sampled at random (>= 1, default "
                        f"{DEFAULT_MAX_COORDS}; {SWEEP_MAX_COORDS} with --sweep-eps)")
    p.add_argument("--directional", action="store_true",
                   help="instead of coordinates: compare <grad, v> with (f(p+eps v) - f(p-eps v)) / 2eps "
                        "for random directions v over all tensors at once (2 forward passes each; "
                        "for big models)")
    p.add_argument("--directions", type=positive_int, default=3, help="random directions (>= 1, default 3)")
    p.add_argument("--init", choices=["unit", "gpt2"], default="unit",
                   help="--model weights: unit scale (default; a stricter, better conditioned check) "
                        "or GPT-2's initialisation (std 0.02)")
    experiment = p.add_mutually_exclusive_group()
    experiment.add_argument("--bug", choices=list(BUGS), metavar="NAME",
                            help="swap one bug of the zoo in and run every check on it: which "
                                 "catch it, with what error, and why the others miss it. "
                                 "NAME: " + ", ".join(BUGS))
    experiment.add_argument("--bugs", action="store_true",
                            help="the whole bug zoo as a table: each bug against the coordinate "
                                 "and directional gradchecks, the properties and the PyTorch "
                                 "oracle; exit 1 unless every row is as declared")
    experiment.add_argument("--sweep-eps", action="store_true",
                            help="relative error against the step eps (1e-1 .. 1e-12) in float64 "
                                 "and float32: a table and a log-log PNG (the model, or --layer)")
    p.add_argument("--out", metavar="DIR",
                   help=f"--sweep-eps: the directory of the PNG (default {SWEEP_OUT})")


def run(args):
    if args.bug or args.bugs:
        return run_zoo_command(args)
    if args.sweep_eps:
        return run_sweep(args)
    if args.out is not None:
        raise ValueError("--out is only used with --sweep-eps")
    args.max_coords = args.max_coords or DEFAULT_MAX_COORDS
    eps, tol = (args.eps or TOLERANCES[args.dtype][0]), (args.tol or TOLERANCES[args.dtype][1])
    config, B, T = model_from_arguments(args, CHECK_CONFIG, DEFAULT_BATCH, DEFAULT_SEQ_LEN)
    check_memory("this gradient check", training_bytes(config, B, T, np.dtype(args.dtype).itemsize),
                 [f"--{n.replace('_', '-')} {getattr(args, n)}" for n in
                  ("n_layer", "n_embd", "vocab_size", "n_positions", "seq_len", "batch_size")
                  if getattr(args, n) is not None])
    execution = Execution(attention=args.attention, q_tile=args.q_tile, k_tile=args.k_tile)
    if args.layer is None and T < 2:
        raise ValueError(f"--seq-len {T}: the whole-model check needs T >= 2 (one token has no "
                         f"next token, so nothing would be checked)")
    what = f"--layer {args.layer}" if args.layer else f"--model (n_layer={config.n_layer})"
    tiles = f" (tiles {args.q_tile} x {args.k_tile})"
    how = ""                                  # the options the checked layers depend on
    if args.layer in (None, "attention", "block"):
        how = (f", attention {args.attention}{tiles if args.attention == 'tiled' else ''}, "
               f"pos {config.pos_encoding}")
    elif args.layer == "tiled_attention":
        how = tiles
    print(f"numpygpt gradcheck {what}: B={B} T={T} C={config.n_embd} H={config.n_head} "
          f"V={config.vocab_size}, {args.dtype}{how}")
    if args.directional:
        print(f"directional: {args.directions} random unit directions v over all tensors, "
              f"eps {eps:g}, tolerance {tol:g}")
    else:
        print(f"central differences (f(p+eps) - f(p-eps)) / 2eps, eps {eps:g}, on up to "
              f"{args.max_coords} random coordinates per tensor; tolerance {tol:g} on "
              f"max|a-n| / max(|a|,|n|)")
    if args.dtype == "float32":
        print("float32: each f() is rounded by ~6e-8 |f|, so a central difference carries "
              "~6e-8 |f| / eps of rounding; hence the larger eps and tolerance")
    if args.layer in ("cross_entropy", "chunked_loss"):
        print("loss = mean cross-entropy over the counted labels (about 25% are -100)")
    elif args.layer:
        print("loss = sum(out * R), R ~ N(0, 1): a fixed random upstream gradient dL/dout")
    else:
        print(f"loss = mean cross-entropy of the model ({args.init} init) on random ids, "
              f"next-token labels with ~20% set to -100")
    progress = Progress()
    check = dict(eps=eps, tol=tol, max_coords=args.max_coords, directional=args.directional,
                 n_directions=args.directions,
                 on_tensor=lambda j, name, shape: progress.update(f"gradcheck: tensor {j + 1} {name} {shape}"))
    dtype = np.dtype(args.dtype)
    if args.layer:
        results = check_layer(args.layer, config, B, T, dtype, execution, args.seed, **check)
    else:
        results = model_check(config, B, T, dtype, execution, args, progress, check)
    progress.done()
    print()
    lines, ok = format_report(results, tol)
    print("\n".join(lines))
    return 0 if ok else 1


def model_check(config, B, T, dtype, execution, args, progress, check):
    rng = np.random.default_rng(args.seed)
    progress.update(f"gradcheck: building the model ({config.n_layer} layers)", force=True)
    model = GPT(config, seed=args.seed, dtype=dtype, execution=execution)
    if args.init == "unit":
        unit_scale_params(model.params, rng)
    ids = rng.integers(0, config.vocab_size, size=(B, T))
    labels = causal_lm_labels(ids)
    labels[rng.random((B, T)) < 0.2] = -100           # some masked targets, as in SFT
    labels[0, 0] = ids[0, 1]                          # at least one counted
    if not args.directional and model.num_params() > 10_000_000:
        n_passes = 2 * sum(min(p.size, args.max_coords) for p in model.params.values())
        eprint(f"note: {n_passes:,} forward passes of a {model.num_params():,}-parameter model; "
               f"--directional needs 2 per direction")
    if args.directional:
        progress.update(f"gradcheck: {args.directions} directions, 2 forward passes each", force=True)
    return check_model(model, ids, labels, seed=args.seed, **check)


# ---- experiments with the checks themselves -------------------------------------------------

SIZE_OPTIONS = ("preset", "n_layer", "n_head", "n_embd", "vocab_size", "n_positions", "seq_len",
                "batch_size")


def refuse(args, what, names, defaults=None):
    """Options the experiment `what` does not use: given, they are an error, not ignored."""
    defaults = defaults or {}
    given = [n for n in names if getattr(args, n) not in (None, False, defaults.get(n))]
    if given:
        raise ValueError(f"{what} does not use " + ", ".join(
            "--" + n.replace("_", "-") for n in given))


def run_zoo_command(args):
    what = f"--bug {args.bug}" if args.bug else "--bugs"
    refuse(args, what, ("layer", "model", "eps", "tol", "directional", "max_coords", "init",
                        "dtype", "attention", "pos_encoding", "untied", "out") + SIZE_OPTIONS,
           {"init": "unit", "dtype": "float64", "attention": "standard", "pos_encoding": "learned"})
    oracle = f"torch {torch_version()}" if torch_version() else "n/a: torch is not installed"
    eps, tol = TOLERANCES["float64"]
    print(f"numpygpt gradcheck {what}: each bug swapped in for the right function, on tiny "
          f"float64 problems\nchecks: coordinate and directional gradchecks (eps {eps:g}, "
          f"tolerance {tol:g}), properties, the PyTorch oracle ({oracle})")
    progress = Progress()
    if args.bug:
        results = run_bug(args.bug, seed=args.seed)
        progress.done()
        print()
        lines, ok = format_bug(args.bug, results)
        print("\n".join(lines))
        return 0 if ok else 1
    rows = run_zoo(seed=args.seed, on_bug=lambda name: progress.update(f"zoo: {name}"))
    progress.done()
    print("a check catches a bug when it reports a failure; each cell: the outcome and the error "
          "the check reports\n(relative error, or the first failing property's difference); "
          "'!' marks a cell not as the bug declares\n")
    print("\n".join(format_zoo(rows)))
    return 0 if all(r.ok for r in rows) else 1


def run_sweep(args):
    refuse(args, "--sweep-eps", ("eps", "tol", "directional", "dtype", "init"),
           {"dtype": "float64", "init": "unit"})
    out = check_output_dir("--out", args.out or SWEEP_OUT)
    config, B, T = model_from_arguments(args, SWEEP_CONFIG, DEFAULT_BATCH, DEFAULT_SEQ_LEN)
    execution = Execution(attention=args.attention, q_tile=args.q_tile, k_tile=args.k_tile)
    max_coords = args.max_coords or SWEEP_MAX_COORDS
    what = f"--layer {args.layer}" if args.layer else f"the model (n_layer={config.n_layer})"
    print(f"numpygpt gradcheck --sweep-eps, {what}: central differences at eps 1e-1 .. 1e-12 "
          f"(half decades), float64 and float32 on the same weights, up to {max_coords} "
          f"coordinates per tensor")
    progress = Progress()
    sweep = sweep_eps(args.layer, config, B, T, max_coords=max_coords, seed=args.seed,
                      execution=execution, progress=lambda text: progress.update(text, force=True))
    progress.done()
    print()
    print("\n".join(format_sweep(sweep)))
    os.makedirs(out, exist_ok=True)
    name = f"eps_sweep_{args.layer}.png" if args.layer else "eps_sweep.png"
    path = plot_sweep(sweep, os.path.join(out, name))
    print(f"\nwrote {path}" if path else
          "\nno plot: matplotlib is not installed (pip install -e '.[plot]')")
    return 0 if all(sweep.shape_holds(dt) for dt in sweep.errors) else 1
