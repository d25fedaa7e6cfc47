"""What the subcommands share: the parser, argument types that state their bounds, the model
size options, and output paths checked before any work is done."""
import argparse
import math
import os
import re
import sys
import tempfile

from ..checks import available_memory, human_bytes
from ..config import GPTConfig, PRESETS, SIZE_FIELDS
from ..dataflow import activation_bytes, param_count

PROG = "numpygpt"


def one_line(text):
    """A message as one line: line breaks and other control characters shown escaped (a value
    the user gave may hold them)."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in str(text))


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def int_at_least(low):
    """An argparse type: an integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_in(low, high):
    """An argparse type: an integer in [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{low:,}, {high:,}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{low:,}, {high:,}], got {value}")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


SEED_MAX = 2 ** 32 - 1            # every consumer of a seed (NumPy, PyTorch) takes this range
seed_int = int_in(0, SEED_MAX)


def float_in(low, high=math.inf, low_open=False, high_open=False):
    """An argparse type: a finite number in the interval (brackets as given)."""
    lo, hi = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    where = f"{lo}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{hi}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {where}, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and \
                 (value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {where}, got {text!r}")
        return value
    parse.__name__ = f"number in {where}"
    return parse


positive_float = float_in(0, low_open=True)


def eprint(*lines):
    for line in lines:
        print(line, file=sys.stderr)


def utf8_text(name, text):
    """A text argument that must be valid UTF-8 (argv bytes that are not arrive as lone
    surrogates): returned as is, or a ValueError naming the argument and the bad byte."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        what = (f"byte {ord(bad) - 0xDC00:#04x}" if 0xDC80 <= ord(bad) <= 0xDCFF
                else f"character {bad!r}")
        raise ValueError(f"{name} {text!r} is not valid UTF-8 text ({what} at character "
                         f"{e.start})") from None
    return text


# ---- memory -----------------------------------------------------------------------------------

def training_bytes(config, batch_size, seq_len, itemsize=4):
    """A rough upper estimate of one training step's memory -> [(label, bytes)]: the
    parameters, their gradients and AdamW's two moments (4 copies), and twice the activations
    the backward keeps (numpygpt/dataflow.py's count, default execution: the cache, plus as
    much again for the backward's temporaries)."""
    return [("parameters, gradients and AdamW moments", 4 * param_count(config) * itemsize),
            ("activations", 2 * activation_bytes(config, batch_size, seq_len, itemsize))]


def check_memory(what, parts, flags):
    """Refuse, before anything is allocated, a run whose estimate does not fit in memory.
    parts: [(label, bytes)] summed into the estimate; flags: the options that set the sizes
    (["--n-embd 1000000", ...]), named in the error."""
    need = sum(n for _, n in parts)
    have = available_memory()
    if have is None or need <= have:
        return need
    sizes = ", ".join(flags) if flags else "the default sizes"
    detail = " + ".join(f"{label} {human_bytes(n)}" for label, n in parts if n)
    raise ValueError(f"{sizes}: {what} needs about {human_bytes(need)} of memory ({detail}), "
                     f"more than the {human_bytes(have)} available; choose smaller sizes")


# ---- model sizes ----------------------------------------------------------------------------

def add_model_size_arguments(p, what="model"):
    g = p.add_argument_group(f"{what} size (override the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named model: " + "; ".join(
                       f"{name} (V={c.vocab_size}, C={c.n_embd}, H={c.n_head}, L={c.n_layer})"
                       for name, c in PRESETS.items()))
    g.add_argument("--n-layer", type=positive_int, help="(>= 1)")
    g.add_argument("--n-head", type=positive_int, help="(>= 1; must divide --n-embd)")
    g.add_argument("--n-embd", type=positive_int, help="(>= 1)")
    g.add_argument("--vocab-size", type=positive_int, help="(>= 1)")
    g.add_argument("--n-positions", type=positive_int,
                   help="rows of the learned position table (>= --seq-len)")
    g.add_argument("--seq-len", type=positive_int, help="T (>= 1)")
    g.add_argument("--batch-size", type=positive_int, help="B (>= 1)")
    g.add_argument("--pos-encoding", choices=["learned", "rope"], default="learned")
    add_attention_variant_arguments(g)
    g.add_argument("--untied", action="store_true", help="a separate lm_head matrix (not tied to wte)")


def add_attention_variant_arguments(g):
    """--sliding-window W and --n-kv-head K: the attention variants a model may have."""
    g.add_argument("--sliding-window", type=positive_int, metavar="W",
                   help="(>= 1) each query sees its last W keys only (default: every earlier one)")
    g.add_argument("--n-kv-head", type=positive_int, metavar="K",
                   help="(>= 1, divides --n-head) key/value heads: grouped-query attention, 1 "
                        "multi-query (default: --n-head, GPT-2's)")


def model_from_arguments(args, default, batch_size, seq_len):
    """-> (GPTConfig, B, T): the preset (or `default`, a GPTConfig) overridden by the options
    given; T defaults to seq_len, or to n_positions when that is None. A learned position
    table shorter than --seq-len is refused, never grown."""
    base = PRESETS[args.preset] if args.preset else default
    sizes = {name: getattr(args, name) if getattr(args, name) is not None else getattr(base, name)
             for name in SIZE_FIELDS}
    B = args.batch_size or batch_size
    T = args.seq_len or seq_len or sizes["n_positions"]
    if args.pos_encoding == "learned" and T > sizes["n_positions"]:
        raise ValueError(f"--seq-len {T} is longer than n_positions={sizes['n_positions']} "
                         f"(a learned position table); pass --n-positions {T} (a different "
                         f"model) or --pos-encoding rope")
    try:
        config = GPTConfig(**sizes, tie_word_embeddings=not args.untied,
                           pos_encoding=args.pos_encoding, sliding_window=args.sliding_window,
                           n_kv_head=args.n_kv_head)
    except ValueError as e:
        raise ValueError(size_options(e)) from None
    return config, B, T


def size_options(error):
    """A GPTConfig error in the words of the options that set the sizes:
    'GPTConfig.n_embd=10 is not divisible by n_head=3' -> '--n-embd 10 is not divisible by
    --n-head 3'."""
    text = re.sub(r"GPTConfig\.(\w+)=", lambda m: f"--{m.group(1).replace('_', '-')} ", str(error))
    text = re.sub(r"\b(" + "|".join(SIZE_FIELDS) + r")=",
                  lambda m: f"--{m.group(1).replace('_', '-')} ", text)
    return text.replace("GPTConfig: ", "")


def model_title(args, config):
    """'GPT-2 124M'-style words only when the model *is* the preset, unchanged."""
    if args.preset and config == PRESETS[args.preset]:
        return f"--preset {args.preset}"
    if args.preset:
        return f"--preset {args.preset}, changed by the options given"
    return ""


# ---- files we write -----------------------------------------------------------------------

def _can_create_in(directory):
    """Whether a file can really be created in `directory`: tried, then removed. (os.access
    says yes to root everywhere, and knows nothing of /proc, /sys or read-only mounts.)"""
    try:
        fd, probe = tempfile.mkstemp(prefix=".numpygpt-write-test-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def check_output_dir(option, path):
    """A directory we are about to write into, checked before any work: an existing directory
    we can write to, or one we can create (missing parents are created as with mkdir -p, so
    the nearest existing ancestor must be a directory we can create files in). Nothing is
    left behind by the check."""
    if path is None:
        return None
    if not path:
        raise ValueError(f"{option} is empty: give a directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} exists and is not a directory")
    ancestor, missing = os.path.abspath(path), []
    while not os.path.lexists(ancestor):
        ancestor, name = os.path.split(ancestor)
        missing.append(name)
    try:
        name_max = os.pathconf(ancestor if os.path.isdir(ancestor) else "/", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    long = [n for n in missing if len(os.fsencode(n)) > name_max]
    if long:
        raise ValueError(f"{option} {path!r}: the name {long[0][:40]!r}... is longer than the "
                         f"{name_max} bytes a file name may have here")
    if not os.path.isdir(ancestor):
        what = "a file" if os.path.exists(ancestor) else "a broken link"
        raise ValueError(f"{option} {path!r}: {ancestor!r} is {what}, not a directory")
    if not _can_create_in(ancestor):
        raise ValueError(f"{option} {path!r}: cannot create files in {ancestor!r} (not writable)")
    return path


def check_output_file(option, path):
    """A file we are about to write: not a directory, in a writable existing directory."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path!r}: its directory {parent!r} does not exist")
    if not _can_create_in(parent) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path!r} is not writable")
    return path
