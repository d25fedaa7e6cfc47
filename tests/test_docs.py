"""The documentation shows what the commands print now.

Every fast block of README.md and docs/*.md (see docs/make_outputs.py) is run again and
compared with the text shown: a change in a command's output, or a Python example that no
longer runs, fails here until `python docs/make_outputs.py` is run. Numbers that are rounding
noise (scientific notation below 1e-6) need only stay below 1e-6. The slow blocks (timings,
training) are not run. Also: every relative link points to a file and heading that exist, and
the README stays a guide (at most 400 lines)."""
import difflib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_outputs", ROOT / "docs" / "make_outputs.py")
make_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_outputs)

DOCS = make_outputs.doc_files()
README_MAX_LINES = 400


def _id(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_fast_blocks_show_what_the_commands_print(path):
    problems = []
    for r in make_outputs.run_file(path, slow=False):
        if r.status == "failed":
            problems.append(f"{r.block.where}: {r.block.title()}\n  FAILED: {r.error}")
        elif r.status == "differs":
            diff = difflib.unified_diff(r.block.body, r.new, "shown", "printed now", lineterm="")
            problems.append(f"{r.block.where}: {r.block.title()}\n" + "\n".join(diff))
    assert not problems, ("outputs shown in the docs are out of date; run "
                          "`python docs/make_outputs.py`:\n\n" + "\n\n".join(problems))


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_slow_blocks_are_generated_or_marked_so(path):
    assert make_outputs.check_slow_placeholders(path) == []


def test_readme_is_a_guide_not_a_notebook():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


# ---- links ----------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(text):
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path):
    """The targets of the Markdown links and images outside code."""
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            yield target


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_relative_links_point_to_files_and_headings_that_exist(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{_id(path)}: broken links:\n  " + "\n  ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    pages = [p for p in DOCS if p.parent.name == "docs"]
    assert [p.name for p in pages if p.resolve() not in linked] == []


# ---- the comparison and the markers themselves ----------------------------------------------

def test_rounding_noise_may_differ_and_nothing_else():
    same = make_outputs.same_text
    assert same("worst relative error 4.49e-09 <= 1e-06", "worst relative error 7.12e-10 <= 1e-06")
    assert same("|difference| = 0.0e+00", "|difference| = 4.4e-16")
    assert not same("error 4.49e-09", "error 3.00e-06")           # not noise any more
    assert not same("tolerance 1e-06", "tolerance 1e-05")
    assert not same("loss 5.6027", "loss 5.6028")
    assert not same("pass 1.0e-09", "FAIL 1.0e-09")
    assert not same("a 1e-09", "a 1e-09 b 1e-09")


def test_markers_parse(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "```python", "print('hi')", "```",
        "<!-- python-output -->", "```text", "old", "```", "<!-- /output -->",
        "<!-- output slow: numpygpt tour ; lines :3 -2: -->",
        "```text", make_outputs.PLACEHOLDER, "```", "<!-- /output -->",
        "<!-- output: numpygpt dataflow --n-embd 10 --n-head 3 ; exit -->",
        "```text", "```", "<!-- /output -->", ""]))
    python, slow, error = make_outputs.parse(doc)
    assert python.code == "print('hi')\n" and not python.slow
    assert slow.slow and make_outputs.split_spec(slow.spec) == ("numpygpt tour", [["lines", ":3", "-2:"]])
    results = make_outputs.run_file(doc)
    assert [r.status for r in results] == ["differs", "skipped", "differs"]
    assert results[0].new == ["```text", "hi", "```"]
    assert results[2].new[1] == '$ numpygpt dataflow --n-embd 10 --n-head 3; echo "exit $?"'
    assert results[2].new[2].startswith("numpygpt dataflow: error: ")
    assert results[2].new[-2:] == ["exit 2", "```"]


def test_unclosed_marker_is_an_error(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- output: numpygpt tour -->\n```text\n```\n")
    with pytest.raises(make_outputs.MarkerError, match="not closed"):
        make_outputs.parse(doc)


def test_lines_option_marks_what_it_leaves_out():
    lines = [str(i) for i in range(10)]
    assert make_outputs.select_lines(lines, [":2", "-2:"]) == ["0", "1", "...", "8", "9"]
    assert make_outputs.select_lines(lines, ["3:5"]) == ["...", "3", "4", "..."]


def test_tables_have_no_pipe_inside_code():
    """A `|` inside a code span still splits a Markdown table's cell."""
    bad = []
    for path in DOCS:
        for line in prose_lines(path.read_text(encoding="utf-8")):
            if line.startswith("|"):
                bad += [f"{_id(path)}: {span}" for span in CODE_SPAN.findall(line) if "|" in span]
    assert bad == []


def test_only_runs_the_blocks_whose_marker_holds_a_word(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- output: numpygpt labels hi -->\n```text\n```\n<!-- /output -->\n"
                   "<!-- output: numpygpt labels ho -->\n```text\n```\n<!-- /output -->\n")
    results = make_outputs.run_file(doc, only=["ho"])
    assert [r.status for r in results] == ["skipped", "differs"]
    assert results[1].new[1] == "$ numpygpt labels ho"


def documented_defaults(section):
    """{option: value} of the `--option` (NUMBER...) pairs in a section of docs/commands.md."""
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {name.replace("-", "_"): value for name, value in
            re.findall(r"`--([a-z-]+)`\s+\((\d[\d.e+-]*)", body)}


@pytest.mark.parametrize("section, recipe", [("numpygpt train", "PRETRAIN"), ("numpygpt sft", "SFT")])
def test_commands_md_says_the_defaults_the_commands_use(section, recipe):
    import numpygpt.train as train
    defaults = getattr(train, recipe)
    shown = documented_defaults(section)
    assert {"steps", "lr", "min_lr", "warmup", "batch_size", "n_layer"} <= set(shown)
    wrong = {name: (value, getattr(defaults, name)) for name, value in shown.items()
             if hasattr(defaults, name) and float(value) != getattr(defaults, name)}
    assert wrong == {}, f"docs/commands.md, {section}: (shown, used) {wrong}"
