"""The diagnosis of a wrong backward: which mistake it is, when the bug zoo knows it; else
what can be seen in the numbers.

1. The zoo: each of the exercise's bugs (gradcheck/bugs.py) is swapped in and the textbook's
   backward run on the learner's own inputs. When every tensor the learner returned equals
   what the bug gives, the bug is named, with its one-line explanation.
2. Otherwise each wrong tensor is compared with the answer for simple relations: a flipped
   sign, a constant factor (named when it is one of the problem's sizes: 1/sqrt(D), B, ...),
   a transpose, a missing sum over the batch (only one example's share, or a leading axis
   left unsummed), gradient where the answer is exactly 0 (a wrong mask) or none where it
   is not, or the rows where it is wrong.
"""
import numpy as np

from ..gradcheck import BUGS, swapped, relative_error
from .check import CLOSE, run_reference

MATCH = 1e-6                # "equal" for a relation: far below any real mistake, above rounding


def diagnose(outcome, seed=0):
    """-> lines for a wrong Outcome (empty when there is nothing to say)."""
    ex, got = outcome.exercise, outcome.got
    outputs = {r.name: r for r in outcome.tensors if not r.intermediate}
    if not got or not outputs:
        return []
    bug = zoo_match(ex, got, seed)
    wrong = [r for r in outcome.tensors if r.verdict in ("wrong", "missing")]
    right = [r.name for r in outcome.tensors if r.verdict in ("exact", "close")]
    lines = []
    if bug is not None:
        lines.append(f"the zoo knows this one: {bug.name}: {bug.description}")
        lines.append(f"(numpygpt gradcheck --bug {bug.name} shows the wrong line beside the "
                     f"right one)")
        return lines
    if wrong:
        lines.append(f"wrong: {', '.join(r.name for r in wrong)}"
                     + (f"; right: {', '.join(right)}" if right else ""))
        first = wrong[0]
        if ex.order and first.name in ex.order and len(wrong) < len(outcome.tensors):
            lines.append(f"the first wrong in the order the backward computes them: {first.name}")
    _, want = run_reference(ex, seed)
    for r in wrong:
        if r.name in want and got.get(r.name) is not None:
            lines.append(f"{r.name}: {relation(ex, r.name, got[r.name], want, seed)}")
    return lines


def zoo_match(ex, got, seed):
    """The first of the exercise's bugs whose tensors are the learner's, or None."""
    for name in ex.bugs:
        bug = BUGS[name]
        try:
            with swapped(*bug.swaps):
                theirs = ex.read(ex.reference(*ex.build(seed).args))
        except Exception:                  # a bug that cannot run on this problem: not this one
            continue
        if theirs and all(same(got.get(k), v) for k, v in theirs.items()):
            return bug
    return None


def same(a, b, tol=CLOSE):
    if a is None or b is None:
        return a is None and b is None
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and relative_error(a, b) <= tol


def relation(ex, name, got, want, seed):
    """What the learner's tensor `name` is, seen against the answer -> one phrase."""
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return "not an array of numbers"
    w = want[name]
    sizes = ex.build(seed).sizes
    if g.shape != w.shape:
        return shape_relation(g, w)
    if not np.all(np.isfinite(g)):
        return "holds nan or inf"
    if same(g, -w, MATCH):
        return "the answer with its sign flipped"
    dot = float((w * w).sum())
    if dot > 0:
        c = float((g * w).sum()) / dot
        if abs(c - 1) > MATCH and same(g, c * w, MATCH):
            return f"a constant factor off: {c:.4g} x the answer{named_factor(c, sizes)}"
    if w.ndim >= 2 and w.shape[-1] == w.shape[-2] and same(g, w.swapaxes(-1, -2), MATCH):
        return "the answer transposed (its last two axes swapped)"
    share = batch_share(ex, name, g, seed)
    if share is not None:
        return share
    zero, bad = w == 0, ~np.isclose(g, w, rtol=MATCH, atol=MATCH * max(np.abs(w).max(), 1e-300))
    if zero.any() and (bad & zero).any():
        ok_elsewhere = not (bad & ~zero).any()
        return (f"gradient at {int((bad & zero).sum())} entries where the answer is exactly 0 "
                f"(masked or ignored positions): a wrong mask"
                + ("; right everywhere else" if ok_elsewhere else ""))
    if ((g == 0) & bad).any() and not (bad & (g != 0)).any():
        return (f"0 at {int(((g == 0) & bad).sum())} entries where the answer is not: too much "
                f"masked or a term left out; right everywhere else")
    return where_wrong(bad, g, w)


def shape_relation(g, w):
    if g.ndim == w.ndim == 2 and g.shape == w.shape[::-1] and same(g.T, w, MATCH):
        return f"shape {g.shape}, expected {w.shape}: transposed, it is the answer"
    k = g.ndim - w.ndim
    if k > 0 and g.shape[k:] == w.shape:
        right = same(g.sum(axis=tuple(range(k))), w, MATCH)
        return (f"shape {g.shape}, expected {w.shape}: a missing sum over the leading axes "
                f"(the batch and positions)" + ("; summed, it is the answer" if right else ""))
    if g.size == w.size and same(g.reshape(w.shape), w, MATCH):
        return f"shape {g.shape}, expected {w.shape}: the right numbers, reshape them"
    return f"shape {g.shape}, expected {w.shape}"


def named_factor(c, sizes):
    """' (= 1/sqrt(D))' when c is one of the problem's sizes or its inverse; else ''."""
    for name, v in sizes.items():
        for value, text in ((v, name), (1 / v, f"1/{name}"), (-v, f"-{name}"),
                            (-1 / v, f"-1/{name}")):
            if abs(c - value) <= 1e-6 * abs(value):
                return f" (= {text})"
    return ""


def batch_share(ex, name, g, seed):
    """When g is one batch row's share of the answer (the upstream gradient of the others set
    to 0): 'only batch row b: a missing sum over the batch'; else None."""
    problem = ex.build(seed)
    dout = problem.args[0]
    B = problem.sizes.get("B")
    if not isinstance(dout, np.ndarray) or len(problem.args) < 2 or B is None or B < 2 \
            or dout.shape[0] != B:
        return None
    for b in range(B):
        args = ex.build(seed).args
        keep = np.zeros_like(args[0])
        keep[b] = args[0][b]
        part = ex.read(ex.reference(keep, *args[1:])).get(name)
        if part is not None and same(g, part, MATCH):
            return (f"only batch row {b}'s share of the answer: a missing sum over the "
                    f"batch (its {B} rows)")
    return None


def where_wrong(bad, g, w):
    n, total = int(bad.sum()), bad.size
    err = relative_error(g, w)
    text = f"wrong at {n} of {total} entries (relative error {err:.1e})"
    if w.ndim >= 2 and n < total:
        rows = np.flatnonzero(bad.reshape(w.shape[0], -1).any(axis=1))
        if len(rows) < w.shape[0]:
            shown = ", ".join(map(str, rows[:6])) + (", ..." if len(rows) > 6 else "")
            text += f", only in rows {shown} of its first axis ({w.shape[0]})"
    return text
