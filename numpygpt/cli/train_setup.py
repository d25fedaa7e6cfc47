"""What `numpygpt train` and `numpygpt sft` check before their first step: the settings (the
defaults with the options given, or a resumed run's, refusing every option that contradicts
it), the directory they save into, --stop-at, and the memory the run needs; and what
--plots DIR draws."""
import os
from dataclasses import fields

import numpy as np

from ..engine import parallel
from ..pictures import draw_histograms, draw_update_ratios, layer_stats, ratio_series
from ..train import TrainSettings
from ..train.checkpoint import MANIFEST, claimed
from ..train.loss_curve import PLOT_EXTRA, have_matplotlib, plot_loss_curve
from ..train.resume import load_training_checkpoint
from .common import check_memory, check_output_dir, eprint, training_bytes


def given_settings(args):
    """The TrainSettings fields given on the command line (the rest are None)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings)
             if getattr(args, f.name, None) is not None and f.name != "seed"}
    if args.seed_given:
        given["seed"] = args.seed
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])
    return given


def flag(name, value):
    if name == "prompt_mask":
        return "--no-prompt-mask"
    if name == "seed":
        return f"--seed {value}"
    return f"--{name.replace('_', '-')} {value}"


def settings_from(args, defaults):
    """TrainSettings: the defaults (or the resumed checkpoint's), with the options given.
    Returns (settings, the resumed run or None, notes). Options that contradict a resumed
    run are refused, all of them named; --steps extends it (said in the notes)."""
    given = given_settings(args)
    if args.resume is None:
        values = {**defaults.to_dict(), **given}
        if values["min_lr"] > values["lr"]:
            raise ValueError(f"--min-lr {values['min_lr']} is above --lr {values['lr']} (the "
                             f"learning rate decays from --lr down to --min-lr)")
        return TrainSettings(**values), None, []
    try:
        run = load_training_checkpoint(args.resume, defaults.task)
    except ValueError as e:
        raise ValueError(f"--resume {args.resume}: {e}") from None
    saved, ckpt = run["settings"], run["checkpoint"]
    notes = []
    if given.get("n_kv_head") == given.get("n_head", saved.n_head):
        given["n_kv_head"] = None                    # K = n_head is saved as None
    contradict = [name for name, value in given.items()
                  if name != "steps" and value != getattr(saved, name)]
    if contradict:
        raise ValueError(f"{', '.join(flag(n, given[n]) for n in contradict)} "
                         f"contradict{'s' if len(contradict) == 1 else ''} the run in "
                         f"{args.resume} ({', '.join(f'{n}={getattr(saved, n)!r}' for n in contradict)}); "
                         f"leave {'it' if len(contradict) == 1 else 'them'} out to continue it")
    if "steps" in given and given["steps"] != saved.steps:
        notes.append(f"--steps {given['steps']} (the run had {saved.steps})")
        saved.steps = given["steps"]
    if ckpt["step"] >= saved.steps:
        raise ValueError(f"--resume {args.resume} is at step {ckpt['step']}, which is not below "
                         f"--steps {saved.steps}; pass a larger --steps to continue")
    return saved, run, notes


def check_paths(args, run):
    """--out (or the --resume directory we save into), and --stop-at, before any work."""
    if args.out is not None:
        check_output_dir("--out", args.out)
    elif args.resume is not None:
        check_output_dir("--resume", args.resume)
    out = args.out or args.resume
    if (args.out is not None and run is None
            and os.path.isfile(os.path.join(args.out, MANIFEST))):
        raise ValueError(f"--out {args.out} already holds a checkpoint; continue it with "
                         f"--resume {args.out}, or choose another --out")
    if args.out is not None and run is not None and not same_dir(args.out, args.resume) \
            and os.path.isfile(os.path.join(args.out, MANIFEST)):
        raise ValueError(f"--out {args.out} already holds another checkpoint; leave --out out "
                         f"to save into --resume {args.resume}, or choose another --out")
    if args.stop_at is not None:
        if out is None:
            raise ValueError(f"--stop-at {args.stop_at}: the stopped run is saved to be "
                             f"continued, which needs --out DIR")
        if run is not None and args.stop_at <= run["checkpoint"]["step"]:
            raise ValueError(f"--stop-at {args.stop_at} is not after step "
                             f"{run['checkpoint']['step']}, where --resume {args.resume} is")
    return out


def claim_out(args, out, world, claims):
    """Rank 0 (the one that saves) claims the directory it saves into until claims (an
    ExitStack) closes: a second run saving there fails at once, naming the first one's pid."""
    if out is None or world.rank != 0:
        return
    try:
        claims.enter_context(claimed(out))
    except ValueError as e:
        raise ValueError(f"{'--out' if args.out is not None else '--resume'} {out}: {e}") from None


def same_dir(a, b):
    return os.path.abspath(a) == os.path.abspath(b)


def check_run_memory(args, config, batch_size, seq_len, what, more=()):
    """The run's memory estimate (numpygpt.cli.common.training_bytes, and `more`) against
    the machine's, before the model is built; the error names the size options given."""
    names = ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "eval_batches")
    flags = [flag(n, getattr(args, n)) for n in names if getattr(args, n, None) is not None]
    check_memory(what, training_bytes(config, batch_size, seq_len) + list(more), flags)


def check_plots(args):
    """--plots DIR, before any work: a directory we can write, and matplotlib to draw."""
    if args.plots is None:
        return
    check_output_dir("--plots", args.plots)
    if not have_matplotlib():
        raise ValueError(f"--plots {args.plots}: {PLOT_EXTRA}")


class Pictures:
    """What --plots DIR draws for a run (rank 0, which holds the history): the loss curve,
    the histograms of each block's activations and gradients at the run's first and last
    step (on one batch, drawn from its own generator: the training's batches are unchanged),
    and the update-to-weight ratios the loop kept (numpygpt/pictures/)."""

    def __init__(self, args, command, model, next_batch, seed, step0, world):
        self.dir = args.plots if world.rank == 0 else None
        self.command, self.model, self.step0 = command, model, step0
        if self.dir is not None:
            self.batch = next_batch(np.random.default_rng(seed))
            self.start = layer_stats(model, **self.batch)

    def draw(self, result):
        history = result["history"]
        if self.dir is None or not history["losses"]:
            return
        os.makedirs(self.dir, exist_ok=True)
        name = f"numpygpt {self.command}"
        path = os.path.join(self.dir, f"{self.command}_loss.png")
        plot_loss_curve(history, path, f"{name}: {len(history['losses'])} steps")
        print(f"loss curve: {path}")
        path = os.path.join(self.dir, f"{self.command}_histograms.png")
        first = "initialisation" if self.step0 == 0 else f"step {self.step0}"
        draw_histograms([(first, self.start), (f"step {result['step']}",
                                               layer_stats(self.model, **self.batch))],
                        path, f"{name}: activations and gradients of each block, one batch")
        print(f"activation and gradient histograms: {path}")
        if ratio_series(history):
            path = os.path.join(self.dir, f"{self.command}_update_ratio.png")
            draw_update_ratios(history, path, f"{name}: update-to-weight ratio per weight tensor")
            print(f"update-to-weight ratios: {path}")


def engine_line(args):
    """The header line that says which code trains."""
    where = ("numpygpt/engine/; --engine textbook runs numpygpt/layers/" if args.engine == "fast"
             else "numpygpt/layers/, the textbook; --engine fast is faster")
    return f"engine: {args.engine} ({where})"


def threads_note(world):
    """One process: on stderr, how many threads and why (engine/parallel.py: on the cores other
    processes leave); the ranks of an MPI run use one each (data_parallel says so)."""
    if world.size == 1:
        eprint(parallel.describe())
