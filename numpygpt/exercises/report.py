"""What `numpygpt exercise check` and `numpygpt exercise list` print."""
import os

from .check import CLOSE, check_file
from .course import COURSE
from .diagnose import diagnose

MAX_LISTED = 10          # tensors listed one a line; beyond, the right ones are counted


def check_course(directory, exercises=COURSE, seed=0):
    """-> [(Outcome, diagnosis lines)] for the exercises' files in `directory`."""
    out = []
    for e in exercises:
        outcome = check_file(e, os.path.join(directory, e.filename), seed)
        out.append((outcome, diagnose(outcome, seed) if outcome.status == "wrong" else []))
    return out


def _verdict(r):
    if r.verdict == "close":
        return f"close  relative error {r.error:.1e}"
    if r.verdict == "wrong":
        return "wrong  " + (r.note or f"relative error {r.error:.1e}")
    if r.verdict == "missing":
        return f"wrong  missing ({r.note})"
    if r.verdict == "not named":
        return f"-      {r.note}"
    return r.verdict


def format_outcome(outcome, diagnosis=()):
    """One exercise -> lines."""
    e = outcome.exercise
    head = f"{e.number:>2} {e.name} ({e.filename}): {outcome.status}"
    if outcome.status == "passed":
        counts = {}
        for r in outcome.tensors:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        worst = max((r.error for r in outcome.tensors if r.verdict == "close"), default=None)
        said = ", ".join(f"{n} {v}" for v, n in counts.items())
        return [f"{head} ({len(outcome.tensors)} tensors: {said}"
                + (f", worst relative error {worst:.1e})" if worst is not None else ")")]
    if outcome.status in ("not started", "no file"):
        hint = (" (run: numpygpt exercise start DIR)" if outcome.status == "no file" else "")
        return [head + hint]
    lines = [head] + ["    " + m for m in outcome.message]
    tensors = outcome.tensors
    shown = tensors if len(tensors) <= MAX_LISTED else [
        r for r in tensors if r.verdict not in ("exact", "close")]
    width = max((len(r.name) for r in shown), default=0) + 2
    lines += [f"    {r.name:<{width}}{_verdict(r)}" for r in shown]
    if len(shown) < len(tensors):
        lines.append(f"    ... and {len(tensors) - len(shown)} more, exact or close")
    lines += ["    " + d for d in diagnosis]
    return lines


def summary(outcomes):
    counts = {}
    for o, _ in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    rest = "; ".join(f"{s} {n}" for s, n in counts.items() if s != "passed")
    return f"passed {counts.get('passed', 0)} of {len(outcomes)}" + (f"; {rest}" if rest else "")


def format_check(directory, outcomes):
    lines = [f"numpygpt exercise check {directory}: each backward on a small float64 problem, "
             f"each tensor against the textbook's",
             f"exact: the same bits; close: relative error <= {CLOSE:g}; wrong: anything else", ""]
    for outcome, diagnosis in outcomes:
        lines += format_outcome(outcome, diagnosis)
    lines += ["", summary(outcomes)]
    return lines


def format_list(directory, outcomes):
    """The course and what is done -> lines."""
    done = sum(o.passed for o, _ in outcomes)
    lines = [f"numpygpt exercise list {directory}: {done} of {len(outcomes)} done "
             f"(the textbook tier is each one's solution)", ""]
    w = max(len(o.exercise.filename) for o, _ in outcomes) + 2
    for o, _ in outcomes:
        e = o.exercise
        status = "done" if o.passed else o.status
        lines.append(f"{e.number:>2}  {e.filename:<{w}}{status:<13}{e.title}")
        lines.append(f"{'':<{w + 17}}solution: {e.solution}")
    nxt = next((o.exercise for o, _ in outcomes if not o.passed), None)
    lines += ["", f"next: {nxt.filename}, then numpygpt exercise check {directory} {nxt.name}"
              if nxt else "every exercise done"]
    return lines
