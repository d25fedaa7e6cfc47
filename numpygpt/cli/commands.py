"""The `numpygpt` command: argparse wiring, one subcommand per job, one way to fail.

User errors (a bad option, a ValueError from the library) print one line,
`numpygpt <command>: error: ...`, to stderr and exit 2 before any work is done; a failed
check (gradcheck) or a training run that diverged exits 1; a closed stdout ends the command
quietly (exit 141, as a shell reports SIGPIPE).
"""
import os
import sys

from .. import __version__
from ..checks import NonFiniteError
from . import bench, dataflow, generate, gradcheck, labels, tour, train
from .common import PROG, ArgumentParser, eprint

COMMANDS = [   # name, help, add_arguments(parser), run(args) -> exit code
    ("tour", "the lesson on real numbers: data flow, labels, loss, gradient check, training",
     tour.add_arguments, tour.run),
    ("dataflow", "shapes, parameters, FLOPs and activation memory of a configuration",
     dataflow.add_arguments, dataflow.run),
    ("labels", "the label table of a pre-training (PROMPT) or SFT (PROMPT ANSWER) example",
     labels.add_arguments, labels.run),
    ("gradcheck", "check a layer's or the model's backward against finite differences",
     gradcheck.add_arguments, gradcheck.run),
    ("bench-attention", "attention time and memory against sequence length",
     bench.add_attention_arguments, bench.run_attention),
    ("bench-step", "training-step time, FLOP/s and memory (against PyTorch if installed)",
     bench.add_step_arguments, bench.run_step),
    ("train", "pre-train a small GPT on a text file", train.add_train_arguments, train.run_train),
    ("sft", "supervised fine-tuning with the prompt masked by -100",
     train.add_sft_arguments, train.run_sft),
    ("generate", "sample text from a checkpoint with a KV cache",
     generate.add_arguments, generate.run),
]


def build_parser():
    """The parser, and each subcommand's own parser by name."""
    parser = ArgumentParser(prog=PROG, description="numpygpt: a GPT in pure NumPy with hand-written, "
                            "gradient-checked backward passes. Start with: numpygpt tour")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    subparsers = {}
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
        add_arguments(p)
        p.set_defaults(run=run)
        subparsers[name] = p
    return parser, subparsers


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:                   # said by the command's parser, so its name is in the error
            (subparsers.get(args.command) or parser).error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:           # --help, --version, usage errors: argparse has printed
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    args.seed_given = args.seed is not None           # --resume must know what was asked for
    args.seed = 0 if args.seed is None else args.seed
    prefix = f"{PROG} {args.command}"
    try:
        return int(args.run(args) or 0)
    except NonFiniteError as e:          # a run that diverged: not the user's input
        eprint(f"{prefix}: error: {e}")
        return 1
    except ValueError as e:
        eprint(f"{prefix}: error: {e}")
        return 2
    except KeyboardInterrupt:
        eprint(f"{prefix}: interrupted")
        return 130
    except BrokenPipeError:           # the reader went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())      # so the interpreter's final flush is silent
        return 141
