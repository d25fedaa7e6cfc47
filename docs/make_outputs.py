#!/usr/bin/env python3
"""Produce every command output and figure shown in README.md and docs/*.md.

Nothing shown in the documentation is typed by hand: each output sits between two markers
and this script rewrites what is between them.

    <!-- output: numpygpt labels "2+2=" "4" --eot -->
    ```text
    $ numpygpt labels "2+2=" "4" --eot
    ...what the command printed...
    ```
    <!-- /output -->

Markers (each block ends with `<!-- /output -->`):

    <!-- output: COMMAND [; OPTION]... -->   run COMMAND, show "$ COMMAND" and its stdout.
        `numpygpt ...` and `python -m numpygpt ...` run in this process, through
        numpygpt.cli.main(argv) (argv split as a shell would, with shlex); any other command
        (`python tests/test_oracle.py`, `python benchmarks/...`) runs as a subprocess.
        OPTIONs, separated by ";":
          exit           the command is meant to fail: show its messages on stderr too
                         (the lines that start with "numpygpt", not progress lines),
                         then "exit N" (the "$" line reads `COMMAND; echo "exit $?"`)
          status         show stdout only, then "exit N" (a failing check whose stderr
                         holds progress lines)
          lines S [S..]  show only these Python slices of the output lines, e.g.
                         `lines :8 -4:`; each left-out run of lines becomes "..."
          needs torch    the output shows PyTorch's results: without torch installed the
                         block is left as it is (skipped), not compared
    <!-- python-output -->                   run the ```python block just above the marker
        (a fresh namespace) and show what it printed (`<!-- python-output: needs torch -->`
        as above).
    <!-- docstring: MODULE [; lines S..] --> quote the docstring of a numpygpt module.
    <!-- figure: KIND DEST [SOURCE]... ["alt=TEXT"] -->    make a figure, write it to DEST (a path
        from the repository root) and show it as ![TEXT](DEST). KIND: `copy` (a PNG a command
        wrote), `step` (bench-step's JSON), `training` (train and sft checkpoints).

`output slow:`, `python-output slow` and `figure slow:` mark blocks that take long or whose
numbers depend on the machine (timings, float32 training); they are run only with --slow,
and until then hold the line "(not generated yet: python docs/make_outputs.py --slow)".

The blocks of one file run in order in one fresh temporary directory (with `tests`,
`benchmarks` and `docs` linked into it, so commands read as they would from the repository root):
a command may use what an earlier block of the same file wrote (runs/, results/). A fast
block must not depend on a slow one.

    python docs/make_outputs.py            rewrite the fast blocks in place
    python docs/make_outputs.py --slow     the slow blocks too (needs `.[plot]` and, for
                                           the PyTorch columns, torch)
    python docs/make_outputs.py --check    rewrite nothing; exit 1 listing the blocks whose
                                           text differs from what the commands print now
    python docs/make_outputs.py FILE...    only these files
    python docs/make_outputs.py --slow --only runs/pretrain --only sft-seeds README.md
                                           only the blocks whose marker holds one of these
                                           words (the others are left as they are)

Numbers that are rounding noise (scientific notation, magnitude below 1e-6: a gradient
check's 4.49e-09, a |difference| of 4.4e-16) may differ between CPUs and BLAS builds; a
block that differs only in such numbers counts as unchanged and is left as it is. Every
other character must match. tests/test_docs.py runs the fast blocks the same way.
"""
import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "(not generated yet: python docs/make_outputs.py --slow)"
CLOSE = "<!-- /output -->"
OPEN = re.compile(r"^<!-- (output|python-output|docstring|figure)( slow)?(?::\s*(.*?))?\s*-->\s*$")
LINKED = ("tests", "benchmarks", "docs")  # linked into each file's working directory
NOISE = re.compile(r"[-+]?\d+(?:\.\d+)?[eE][-+]?\d+")
NOISE_BELOW = 1e-6


def doc_files():
    """README.md and docs/*.md, the files whose blocks are generated."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# ---- the markers --------------------------------------------------------------------------

@dataclass
class Block:
    path: Path
    kind: str            # "output", "python-output" or "figure"
    slow: bool
    spec: str            # the text after "output:" / "figure:"; "" for python-output
    start: int           # line index of the opening marker
    end: int             # line index of the closing marker
    body: list           # the lines between them
    code: str = ""       # python-output: the code of the ```python block above
    where: str = field(init=False)

    def __post_init__(self):
        self.where = f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.start + 1}"

    def title(self):
        return {"output": self.spec, "python-output": "python block",
                "docstring": f"docstring of {self.spec}", "figure": f"figure {self.spec}"}[self.kind]


class MarkerError(ValueError):
    pass


def parse(path, lines=None):
    """The blocks of a Markdown file (lines without their newlines)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines() if lines is None else lines
    blocks, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if lines[i].strip() == CLOSE:
            raise MarkerError(f"{path}:{i + 1}: {CLOSE} without an opening marker")
        if not m:
            if lines[i].startswith(("<!-- output", "<!-- figure", "<!-- python-output",
                                    "<!-- docstring")):
                raise MarkerError(f"{path}:{i + 1}: malformed marker: {lines[i]}")
            i += 1
            continue
        kind, slow, spec = m.group(1), bool(m.group(2)), (m.group(3) or "").strip()
        if kind != "python-output" and not spec:
            raise MarkerError(f"{path}:{i + 1}: {kind} marker without a command")
        end = i + 1
        while end < len(lines) and lines[end].strip() != CLOSE:
            if OPEN.match(lines[end]):
                raise MarkerError(f"{path}:{i + 1}: marker not closed before line {end + 1}")
            end += 1
        if end == len(lines):
            raise MarkerError(f"{path}:{i + 1}: marker not closed ({CLOSE})")
        block = Block(Path(path), kind, slow, spec, i, end, lines[i + 1:end])
        if kind == "python-output":
            block.code = python_above(lines, i, path)
        blocks.append(block)
        i = end + 1
    return blocks


def python_above(lines, i, path):
    """The ```python fenced block that ends just above line i (blank lines allowed)."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or lines[j].strip() != "```":
        raise MarkerError(f"{path}:{i + 1}: python-output must follow a ```python block")
    k = j - 1
    while k >= 0 and lines[k].strip() != "```python":
        k -= 1
    if k < 0:
        raise MarkerError(f"{path}:{i + 1}: python-output must follow a ```python block")
    return "\n".join(lines[k + 1:j]) + "\n"


def split_spec(spec):
    """'CMD ; opt a ; opt b' -> ('CMD', [['opt', 'a'], ['opt', 'b']]), ';' inside quotes kept."""
    quote, cut = None, len(spec)
    for pos, ch in enumerate(spec):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            cut = pos
            break
    command = spec[:cut].strip()
    options = [shlex.split(part) for part in spec[cut + 1:].split(";")] if cut < len(spec) else []
    options = [o for o in options if o]
    for o in options:
        if o[0] not in ("exit", "status", "lines", "needs"):
            raise MarkerError(f"unknown option {' '.join(o)!r} in: {spec}")
    return command, options


def needs_missing(block):
    """The extra a block needs that is not installed (None when all are there)."""
    spec = block.spec if block.kind != "python-output" else "; " + block.spec
    needed = [o[1] for o in split_spec(spec)[1] if o[0] == "needs" and len(o) > 1] \
        if block.kind in ("output", "python-output") else []
    for module in needed:
        if importlib.util.find_spec(module) is None:
            return module
    return None


# ---- running ------------------------------------------------------------------------------

@contextlib.contextmanager
def working_dir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def file_workspace():
    """A fresh directory for one file's blocks, with tests/ and benchmarks/ linked in."""
    with tempfile.TemporaryDirectory(prefix="numpygpt-docs-") as tmp:
        for name in LINKED:
            if (ROOT / name).exists():
                os.symlink(ROOT / name, Path(tmp) / name)
        yield Path(tmp)


def run_command(command, cwd):
    """-> (exit code, stdout, stderr) of a shell-like command line."""
    argv = shlex.split(command)
    if argv[:1] == ["numpygpt"] or argv[:3] == ["python", "-m", "numpygpt"]:
        from numpygpt.cli import main
        args = argv[1:] if argv[0] == "numpygpt" else argv[3:]
        out, err = io.StringIO(), io.StringIO()
        env = {"COLUMNS": os.environ.get("COLUMNS")}
        os.environ["COLUMNS"] = "80"                   # argparse's wrapping, if ever shown
        try:
            with working_dir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(args)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
        finally:
            if env["COLUMNS"] is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = env["COLUMNS"]
        return code, out.getvalue(), err.getvalue()
    if argv[:1] == ["python"]:
        argv[0] = sys.executable
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def select_lines(lines, slices, gap_mark="..."):
    """Keep the lines in the given Python slices (e.g. [':8', '-4:']); gap_mark (unless None)
    stands for each run of lines left out."""
    keep = set()
    for text in slices:
        parts = text.split(":")
        if len(parts) != 2:
            raise MarkerError(f"lines: {text!r} is not a slice like ':8' or '-4:'")
        a, b = (int(p) if p.strip() else None for p in parts)
        keep.update(range(len(lines))[slice(a, b)])
    out, gap = [], False
    for i, line in enumerate(lines):
        if i in keep:
            out.append(line)
            gap = False
        elif not gap and gap_mark is not None:
            out.append(gap_mark)
            gap = True
    return out


def render_output(block, cwd):
    command, options = split_spec(block.spec)
    opts = {o[0]: o[1:] for o in options}
    code, out, err = run_command(command, cwd)
    lines = out.splitlines()
    if "exit" in opts:                    # its messages; progress lines would vary run to run
        lines += [line for line in err.splitlines() if line.startswith("numpygpt")]
    if "exit" in opts or "status" in opts:
        if code == 0:
            raise RuntimeError(f"expected a failure, but the command exited 0\n{err}")
    elif code != 0:
        raise RuntimeError(f"exit {code}\n{err[-2000:]}")
    if "lines" in opts:
        lines = select_lines(lines, opts["lines"])
    shown = f'{command}; echo "exit $?"' if ("exit" in opts or "status" in opts) else command
    if "exit" in opts or "status" in opts:
        lines.append(f"exit {code}")
    return ["```text", f"$ {shown}", *[line.rstrip() for line in lines], "```"]


def render_python(block, cwd):
    out = io.StringIO()
    namespace = {"__name__": "__main__"}
    with working_dir(cwd), contextlib.redirect_stdout(out):
        exec(compile(block.code, block.where, "exec"), namespace)
    return ["```text", *[line.rstrip() for line in out.getvalue().splitlines()], "```"]


def render_docstring(block, cwd):
    import importlib
    module, options = split_spec(block.spec)
    doc = importlib.import_module(module).__doc__
    if not doc:
        raise MarkerError(f"{module} has no docstring")
    lines = doc.strip("\n").splitlines()
    for option in options:
        if option[0] != "lines":
            raise MarkerError(f"docstring: only the 'lines' option applies, got {option[0]!r}")
        lines = select_lines(lines, option[1:], gap_mark=None)
    return ["```text", *[line.rstrip() for line in lines], "```"]


def render_figure(block, cwd):
    kind, dest, *sources = shlex.split(block.spec)
    if kind not in FIGURES:
        raise MarkerError(f"unknown figure kind {kind!r}; known: {', '.join(FIGURES)}")
    make, alt = FIGURES[kind]
    alts = [s for s in sources if s.startswith("alt=")]           # "alt=the figure's text"
    sources = [s for s in sources if not s.startswith("alt=")]
    alt = alts[-1][len("alt="):] if alts else alt
    target = ROOT / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    make(target, [Path(cwd) / s for s in sources])
    rel = os.path.relpath(target, block.path.resolve().parent)
    return [f"![{alt}]({rel})"]


def render(block, cwd):
    """The new lines between the markers."""
    if block.kind == "figure":
        return render_figure(block, cwd)
    render_kind = {"output": render_output, "python-output": render_python,
                   "docstring": render_docstring}[block.kind]
    lines = render_kind(block, cwd)
    while len(lines) > 2 and not lines[-2]:          # no blank lines before the closing fence
        del lines[-2]
    return lines


def placeholder(block):
    return [PLACEHOLDER] if block.kind == "figure" else ["```text", PLACEHOLDER, "```"]


# ---- the figures (slow runs only; need matplotlib) ----------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_copy(target, sources):
    (source,) = sources
    shutil.copyfile(source, target)


def figure_step(target, sources):
    """bench-step's JSON: time of one training step and its peak memory, numpygpt vs PyTorch."""
    import json
    (source,) = sources
    report = json.loads(Path(source).read_text())
    results = report["results"]
    plt = _pyplot()
    names = [r["name"] for r in results]
    x = range(len(names))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    impls = [("numpygpt", "numpygpt")] + ([("torch", "PyTorch eager")] if "torch" in results[0] else [])
    width = 0.8 / len(impls)
    for j, (key, label) in enumerate(impls):
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in x]
        ax_t.bar(xs, [r[key]["median_s"] for r in results], width, label=label,
                 yerr=[[r[key]["median_s"] - r[key]["min_s"] for r in results],
                       [r[key]["max_s"] - r[key]["median_s"] for r in results]], capsize=3)
        mem = [(r[key].get("peak_rss_bytes") or 0) / 2 ** 20 for r in results]
        ax_m.bar(xs, mem, width, label=label)
    ax_t.set_yscale("log")                           # tiny takes ms, gpt2-1k seconds
    for ax, title, unit in ((ax_t, "one training step (forward + backward)", "seconds"),
                            (ax_m, "peak memory of one step (resident set growth)", "MiB")):
        ax.set_xticks(list(x), [f"{r['name']}\nB={r['batch_size']} T={r['seq_len']}" for r in results])
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"float32, attention {report.get('attention', 'textbook')}; "
                 f"bars: median, whiskers: min and max of {report.get('repeats')} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)


def checkpoints_in(sources):
    """Each source is a checkpoint, or a directory of checkpoints (docs/sft_seeds.py's runs)."""
    from numpygpt.train.checkpoint import MANIFEST
    found = []
    for source in sources:
        inside = sorted(p for p in Path(source).iterdir() if (p / MANIFEST).is_file()) \
            if not (Path(source) / MANIFEST).is_file() else []
        found += inside or [source]
    return found


def figure_training(target, sources):
    """Checkpoints of `numpygpt train` and of `numpygpt sft` runs: the pre-training loss
    against the unigram baseline, and SFT's held-out exact match, a line per run, a colour
    per objective (prompt masked or not)."""
    from numpygpt.train import load_checkpoint
    from numpygpt.train.data import load_dataset, unigram_entropy
    plt = _pyplot()
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    sft_runs = {}                                    # label -> number of runs drawn
    for source in checkpoints_in(sources):
        ckpt = load_checkpoint(str(source))
        settings, history = ckpt["extra"]["settings"], ckpt["extra"]["history"]
        evals = [(step, metrics) for step, metrics in history["evals"]]
        if settings["task"] == "text":
            losses = history["losses"]
            ax_l.plot(range(1, len(losses) + 1), losses, lw=0.6, alpha=0.6, label="train loss")
            ax_l.plot([s for s, _ in evals], [m["val loss"] for _, m in evals], "o-", ms=3,
                      label="validation loss")
            _, val_ids = load_dataset(settings["data"], settings["val_fraction"], settings["seq_len"])
            ax_l.axhline(unigram_entropy(val_ids), color="k", ls=":", label="unigram baseline")
        else:
            label = "prompt masked (-100)" if settings["prompt_mask"] else "whole sequence (no mask)"
            ax_s.plot([0] + [s for s, _ in evals],
                      [0] + [100 * m["held-out exact match"] for _, m in evals], "o-", ms=3,
                      lw=1, alpha=0.6, color="C0" if settings["prompt_mask"] else "C1",
                      label=None if label in sft_runs else label)
            sft_runs[label] = sft_runs.get(label, 0) + 1
    ax_l.set_title("numpygpt train: pre-training on bytes", fontsize=9)
    ax_l.set_ylabel("nats per byte")
    seeds = max(sft_runs.values(), default=1)
    ax_s.set_title("numpygpt sft: held-out exact match" +
                   (f", {seeds} seeds each" if seeds > 1 else ""), fontsize=9)
    ax_s.set_ylabel("%")
    ax_s.set_ylim(-2, 102)
    for ax in (ax_l, ax_s):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)


FIGURES = {   # kind -> (make(target, sources), alt text)
    "copy": (figure_copy, "attention time and memory against sequence length"),
    "step": (figure_step, "training-step time and memory, numpygpt and PyTorch"),
    "training": (figure_training, "pre-training loss and SFT exact match against steps"),
}


# ---- comparing ----------------------------------------------------------------------------

def same_text(shown, printed):
    """Equal, except numbers in scientific notation below 1e-6 in magnitude (rounding noise),
    which need only both be below 1e-6."""
    if shown == printed:
        return True
    a, b = NOISE.findall(shown), NOISE.findall(printed)
    if len(a) != len(b) or NOISE.sub("#", shown) != NOISE.sub("#", printed):
        return False
    return all(x == y or (abs(float(x)) < NOISE_BELOW and abs(float(y)) < NOISE_BELOW)
               for x, y in zip(a, b))


@dataclass
class Result:
    block: Block
    status: str          # "same", "differs", "failed", "skipped"
    new: list = None     # the rendered lines
    error: str = ""


def run_file(path, slow=False, lines=None, only=()):
    """Run the blocks of one file in order (slow ones only if `slow`; if `only` is given, only
    those whose marker holds one of its words) -> [Result]."""
    blocks = parse(path, lines)
    results = []
    with file_workspace() as cwd:
        for block in blocks:
            left_out = only and not any(word in block.spec for word in only)
            if (block.slow and not slow) or needs_missing(block) or left_out:
                results.append(Result(block, "skipped"))
                continue
            try:
                new = render(block, cwd)
            except Exception as e:          # a failing block is reported, never written
                results.append(Result(block, "failed", error=f"{type(e).__name__}: {e}"))
                continue
            same = same_text("\n".join(block.body), "\n".join(new))
            results.append(Result(block, "same" if same else "differs", new))
    return results


def rewrite(path, results):
    """Put the rendered lines of the blocks that differ into the file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for r in sorted((r for r in results if r.status == "differs"), key=lambda r: -r.block.start):
        lines[r.block.start + 1:r.block.end] = r.new
    text = "\n".join(lines) + "\n"
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_slow_placeholders(path):
    """Slow blocks that were never generated must hold exactly the placeholder."""
    bad = []
    for block in parse(path):
        if block.slow and any(PLACEHOLDER in line for line in block.body) \
                and block.body != placeholder(block):
            bad.append(f"{block.where}: a slow block half generated: {block.title()}")
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="Markdown files (default: README.md, docs/*.md)")
    parser.add_argument("--slow", action="store_true", help="run the slow blocks too")
    parser.add_argument("--check", action="store_true",
                        help="rewrite nothing; exit 1 if a block differs from what its command prints")
    parser.add_argument("--only", action="append", default=[], metavar="WORD",
                        help="run only the blocks whose marker holds WORD (repeatable)")
    args = parser.parse_args(argv)
    files = [Path(f).resolve() for f in args.files] or doc_files()
    sys.path.insert(0, str(ROOT))
    failed = differs = 0
    for path in files:
        results = run_file(path, slow=args.slow, only=args.only)
        counts = {s: sum(r.status == s for r in results) for s in ("same", "differs", "failed", "skipped")}
        for r in results:
            if r.status == "failed":
                print(f"{r.block.where}: FAILED: {r.block.title()}\n    {r.error}", file=sys.stderr)
            elif r.status == "differs" and args.check:
                print(f"{r.block.where}: differs: {r.block.title()}")
        failed += counts["failed"]
        differs += counts["differs"]
        if counts["differs"] and not args.check:
            rewrite(path, results)
        verb = "differ" if args.check else "rewritten"
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{name}: {counts['same']} up to date, {counts['differs']} {verb}, "
              f"{counts['failed']} failed, {counts['skipped']} skipped")
    if failed or (args.check and differs):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
