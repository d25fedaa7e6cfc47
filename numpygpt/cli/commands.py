"""The `numpygpt` command: argparse wiring, one subcommand per job, one way to fail.

User errors (a bad option, a ValueError from the library) print one line,
`numpygpt <command>: error: ...`, to stderr and exit 2 before any work is done; a failed
check (gradcheck) or a training run that diverged exits 1; Ctrl-C exits 130 and SIGTERM 143
(train and sft first save the step they are in; elsewhere nothing is half-written); a
closed stdout ends the command quietly (exit 141, as a shell reports SIGPIPE).
"""
import os
import signal
import sys
import threading

from .. import __version__
from ..checks import NonFiniteError
from ..train.distributed import ReplicaDrift, launched_rank
from . import bench, dataflow, exercise, generate, gradcheck, labels, tour, train
from .common import PROG, ArgumentParser, eprint, one_line, seed_int

COMMANDS = [   # name, help, add_arguments(parser), run(args) -> exit code
    ("tour", "the lesson on real numbers: data flow, labels, loss, gradient check, training",
     tour.add_arguments, tour.run),
    ("dataflow", "shapes, parameters, FLOPs and activation memory of a configuration",
     dataflow.add_arguments, dataflow.run),
    ("labels", "the label table of a pre-training (PROMPT) or SFT (PROMPT ANSWER) example",
     labels.add_arguments, labels.run),
    ("gradcheck", "check a layer's or the model's backward against finite differences",
     gradcheck.add_arguments, gradcheck.run),
    ("exercise", "a course through the backward passes: start DIR, check DIR [NAME...], list DIR",
     exercise.add_arguments, exercise.run),
    ("bench-attention", "attention time and memory against sequence length",
     bench.add_attention_arguments, bench.run_attention),
    ("bench-decode", "per-token decoding time and bytes against context length, beside the "
     "measured memory bandwidth", bench.add_decode_arguments, bench.run_decode),
    ("bench-step", "training-step time, FLOP/s and memory (against PyTorch if installed)",
     bench.add_step_arguments, bench.run_step),
    ("train", "pre-train a small GPT on a text file", train.add_train_arguments, train.run_train),
    ("sft", "supervised fine-tuning with the prompt masked by -100",
     train.add_sft_arguments, train.run_sft),
    ("generate", "sample text from a checkpoint with a KV cache",
     generate.add_arguments, generate.run),
]

DATA_PARALLEL = ("train", "sft")   # every rank of mpiexec takes part; in the others rank 0 alone


def build_parser():
    """The parser, and each subcommand's own parser by name."""
    parser = ArgumentParser(prog=PROG, description="numpygpt: a GPT in pure NumPy with hand-written, "
                            "gradient-checked backward passes. Start with: numpygpt tour")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    subparsers = {}
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=seed_int, default=None,
                       help="random seed (0 to 4294967295, default 0)")
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
    if args.command not in DATA_PARALLEL and launched_rank() != 0:
        return 0                      # mpiexec -n 3 numpygpt generate: one run, one output
    args.seed_given = args.seed is not None           # --resume must know what was asked for
    args.seed = 0 if args.seed is None else args.seed
    prefix = f"{PROG} {args.command}"
    try:
        with TermAsInterrupt():
            code = int(args.run(args) or 0)
            sys.stdout.flush()        # a closed pipe shows here, not at the interpreter's exit
            return code
    except (NonFiniteError, ReplicaDrift) as e:   # a run that failed: not the user's input
        if launched_rank() == 0:          # under mpiexec every rank says the same: one does
            eprint(f"{prefix}: error: {one_line(e)}")
        return 1
    except ValueError as e:
        if launched_rank() == 0:
            eprint(f"{prefix}: error: {one_line(e)}")
        return 2
    except KeyboardInterrupt as e:    # Ctrl-C (SIGINT) or SIGTERM outside a training loop
        name = getattr(e, "signal_name", "SIGINT")
        eprint(f"{prefix}: interrupted ({name})" + (f": {one_line(e)}" if str(e) else ""))
        return 143 if name == "SIGTERM" else 130
    except BrokenPipeError:           # the reader went away (| head): stop quietly
        silence_stdout()
        return 141
    except MemoryError as e:          # an allocation no estimate foresaw: say so in one line
        eprint(f"{prefix}: error: out of memory ({one_line(e) or 'MemoryError'}); "
               f"choose smaller sizes")
        return 1
    except OSError as e:              # the system failed us mid-work (disk full, a file gone)
        eprint(f"{prefix}: error: {one_line(e)}")
        return 1


def silence_stdout():
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still
    buffered for a closed pipe is silent (no 'Exception ignored' message)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):        # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same code stops the same way (exit 143)."""
    signal_name = "SIGTERM"


class TermAsInterrupt:
    """While a command runs, SIGTERM raises Terminated (the training loop installs its own
    handlers for both signals while it runs). Only the main thread can install handlers."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Terminated()

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False
