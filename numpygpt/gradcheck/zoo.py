"""Running the bug zoo: each bug swapped in on its home problem, and four checks on it.

    coordinate   central differences on every coordinate of a layer's tensors (a model's:
                 MODEL_COORDS per tensor), float64, eps 1e-5, tolerance 1e-6 (TOLERANCES)
    directional  3 random directions over all tensors at once, same eps and tolerance
    property     layers: additivity (gqa_attention: and tying); models: accumulation,
                 sum=mean*n, shift, sft-rule, prefix; rolling_cache: decode (problems.py).
                 Caught when one fails; its difference is reported
    oracle       torch autograd on the same weights (oracle.py), tolerance 1e-9; "n/a (no
                 torch)" without torch. rolling_cache: the training loss and gradients, and
                 torch's full forward logits against numpygpt's cached decode

A check "catches" a bug when it reports a failure. run_bug(name) -> {check: CheckResult};
run_clean() the same checks on the right code, every home; run_zoo() -> rows, the right code
first; format_zoo(rows) -> the table's lines; format_bug(name, results) -> the details.
"""
import difflib
import inspect
import textwrap
from dataclasses import dataclass, field

import numpy as np

from .bugs import BUGS, CHECKS, rebound, swapped
from .core import TOLERANCES, check_directional, check_gradients, format_report, relative_error
from .layers import CHECK_CONFIG, check_model, check_pair
from .oracle import ORACLE_TOL, layer_oracle, model_oracle, sequence_oracle, torch_version
from .problems import (CACHE_CONFIG, EOT, GQA_CONFIG, HOMES, LABEL_PROPERTIES, LAYER_HOMES,
                       PROPERTY_TOL, ZOO_CONFIG, ZOO_WINDOW, cache_home, decode_property,
                       decoded_logits, describe_home, layer_home, layer_properties, model_batch,
                       model_objective, model_properties, zoo_examples, zoo_model)

MODEL_COORDS = 8          # coordinates per tensor of the zoo's GPT (every one of a layer's)
N_DIRECTIONS = 3
EPS, TOL = TOLERANCES["float64"]


@dataclass
class CheckResult:
    check: str
    outcome: str                 # "caught", "missed", "n/a" or "error"
    error: float | None = None   # the worst relative error / property difference
    where: str = ""              # the worst tensor or the first failing property
    lines: list = field(default_factory=list)   # the check's own report
    failing: tuple = ()          # the properties that fail, "name difference"
    raw: list = field(default_factory=list)     # [TensorCheck], [DirectionCheck], [PropertyResult]


@dataclass
class ZooRow:
    name: str                    # a bug's name, or "(right code)"
    home: str
    results: dict                # check -> CheckResult
    expected: dict               # check -> "caught" / "missed" / "n/a"

    def as_declared(self, check):
        return self.results[check].outcome == self.expected[check]

    @property
    def ok(self):
        return all(self.as_declared(c) for c in CHECKS)


# ---- the checks on one home -----------------------------------------------------------------

def _from_report(check, results, tol, name_of):
    lines, passed = format_report(results, tol)
    worst = max(results, key=lambda r: getattr(r, "max_rel_error", getattr(r, "rel_error", 0)))
    err = getattr(worst, "max_rel_error", getattr(worst, "rel_error", None))
    return CheckResult(check, "missed" if passed else "caught", err, name_of(worst), lines,
                       raw=list(results))


def _properties(results):
    failed = [r for r in results if not r.holds]
    worst = failed[0] if failed else max(results, key=lambda r: r.difference)
    lines = [f"{r.name:<13}{'holds' if r.holds else 'FAILS':<7}{r.difference:>9.1e}  {r.what}"
             for r in results]
    labels = [r.name for r in results if r.name in LABEL_PROPERTIES]
    lines.append(f"tolerance: {PROPERTY_TOL:g} relative" + (
        f"; {' and '.join(labels)} (the fraction of labels wrong) must be exact" if labels else ""))
    return CheckResult("property", "caught" if failed else "missed", worst.difference,
                       worst.name, lines, tuple(f"{r.name} {r.difference:.1e}" for r in failed),
                       list(results))


def _oracle(ours_loss, ours, theirs, theirs_loss=None):
    """Compare numpygpt's gradients (and loss) with torch's."""
    errs = {k: relative_error(ours[k], theirs[k]) for k in theirs}
    lines = [f"{k:<24}{e:>10.1e}  {'pass' if e <= ORACLE_TOL else 'FAIL'}" for k, e in errs.items()]
    if theirs_loss is not None:
        errs["loss"] = abs(ours_loss - theirs_loss) / abs(theirs_loss)
        lines.insert(0, f"{'loss':<24}{errs['loss']:>10.1e}  "
                        f"{'pass' if errs['loss'] <= ORACLE_TOL else 'FAIL'}  "
                        f"numpygpt {ours_loss:.12f}, torch {theirs_loss:.12f}")
    worst = max(errs, key=errs.get)
    lines.append(f"tolerance {ORACLE_TOL:g}; torch {torch_version()}, float64")
    caught = errs[worst] > ORACLE_TOL
    return CheckResult("oracle", "caught" if caught else "missed", errs[worst], worst, lines)


def _guard(check, run):
    try:
        return run()
    except Exception as e:          # a check that crashes is reported, never hidden
        return CheckResult(check, "error", None, type(e).__name__, [f"{type(e).__name__}: {e}"])


def run_checks(home, seed=0, oracle=True):
    """The four checks on a home problem, built now (so inside swapped(...), from the wrong
    function) -> {check: CheckResult}."""
    if home not in HOMES:
        raise ValueError(f"home={home!r} is not one of {', '.join(HOMES)}")
    has_torch = oracle and torch_version() is not None
    na = CheckResult("oracle", "n/a", None, "no torch" if oracle else "off",
                     ["n/a: torch is not importable" if oracle else "n/a: not run"])
    name_of_tensor = lambda r: getattr(r, "name", "")
    if home in LAYER_HOMES:
        forward, backward, x, p, names = layer_home(home, seed)
        xs = x if isinstance(x, tuple) else (x,)
        names = names or (("x",) if len(xs) == 1 else tuple(f"x[{i}]" for i in range(len(xs))))
        pair = dict(input_names=names, seed=seed, eps=EPS, tol=TOL)
        out = {
            "coordinate": _guard("coordinate", lambda: _from_report(
                "coordinate", check_pair(forward, backward, x, p, max_coords=None, **pair), TOL,
                name_of_tensor)),
            "directional": _guard("directional", lambda: _from_report(
                "directional", check_pair(forward, backward, x, p, directional=True,
                                          n_directions=N_DIRECTIONS, **pair), TOL, lambda r: "")),
            "property": _guard("property", lambda: _properties(
                layer_properties(home, forward, backward, x, p, seed))),
        }

        def layer_vs_torch():
            y, cache = forward(x, p)
            R = np.random.default_rng(seed + 7).standard_normal(np.shape(y))
            dx, grads = backward(R, cache)
            dxs = dx if isinstance(dx, tuple) else (dx,)
            ours = {**{n: d for n, d in zip(names, dxs) if d is not None}, **grads}
            return _oracle(None, ours, layer_oracle(home, x, p, R, names,
                                                    CHECK_CONFIG.layer_norm_epsilon, ZOO_WINDOW,
                                                    (GQA_CONFIG.n_head, GQA_CONFIG.kv_heads)))
        out["oracle"] = _guard("oracle", layer_vs_torch) if has_torch else na
        return out

    if home == "rolling_cache":              # a training loss, a decode
        model, batch = cache_home(seed)
    else:
        model, examples = zoo_model(seed), zoo_examples(seed)
        batch = model_batch(examples)

    def gradcheck(directional):
        check = dict(eps=EPS, tol=TOL, max_coords=MODEL_COORDS, seed=seed,
                     directional=directional, n_directions=N_DIRECTIONS)
        if home != "accumulation":          # the loss of one batch: check_model as it is
            results = check_model(model, **batch, **check)
        else:                               # the accumulated loss of the micro-batches
            f, (_, grads) = model_objective(home, model, examples)
            results = (check_directional(f, model.params, grads, EPS, TOL, N_DIRECTIONS, seed)
                       if directional else
                       check_gradients(f, model.params, grads, EPS, TOL, MODEL_COORDS, seed))
        name = "directional" if directional else "coordinate"
        return _from_report(name, results, TOL, lambda r: "" if directional else r.name)
    out = {
        "coordinate": _guard("coordinate", lambda: gradcheck(False)),
        "directional": _guard("directional", lambda: gradcheck(True)),
        "property": _guard("property", lambda: _properties(
            decode_property(model, batch) if home == "rolling_cache" else
            model_properties(model, examples))),
    }

    def model_vs_torch():
        if home == "rolling_cache":         # torch's full forward against our cached decode
            loss, grads = model.loss_and_grads(**batch)
            ours = {**grads, "logits": decoded_logits(model, batch["input_ids"])}
            theirs_loss, theirs = sequence_oracle(model.params, CACHE_CONFIG, batch["input_ids"])
            return _oracle(loss, ours, theirs, theirs_loss)
        _, (loss, grads) = model_objective(home, model, examples)
        theirs_loss, theirs = model_oracle(model.params, ZOO_CONFIG, examples, EOT)
        return _oracle(loss, grads, theirs, theirs_loss)
    out["oracle"] = _guard("oracle", model_vs_torch) if has_torch else na
    return out


# ---- the zoo --------------------------------------------------------------------------------

def run_bug(name, seed=0, oracle=True):
    """One bug swapped in on its home -> {check: CheckResult}."""
    if name not in BUGS:
        raise ValueError(f"bug={name!r} is not one of {', '.join(BUGS)}")
    bug = BUGS[name]
    with swapped(*bug.swaps):
        return run_checks(bug.home, seed, oracle)


def run_clean(seed=0, oracle=True):
    """The right code on every home -> {home: {check: CheckResult}}: nothing may be caught."""
    return {home: run_checks(home, seed, oracle) for home in HOMES}


def expected_outcomes(bug, oracle_available=True):
    return {c: ("n/a" if c == "oracle" and not oracle_available else bug.expected(c))
            for c in CHECKS}


def clean_row(per_home):
    """The right code's row: for each check, the worst over the homes (caught = a false alarm)."""
    merged = {}
    for c in CHECKS:
        rs = [(home, r[c]) for home, r in per_home.items()]
        order = {"error": 3, "caught": 2, "missed": 1, "n/a": 0}
        home, worst = max(rs, key=lambda hr: (order[hr[1].outcome], hr[1].error or 0.0))
        lines = [f"[{h}] {line}" for h, r in rs for line in r.lines[-1:]]
        where = worst.where if worst.outcome == "n/a" else f"{home}: {worst.where}"
        merged[c] = CheckResult(c, worst.outcome, worst.error, where, lines)
    na = merged["oracle"].outcome == "n/a"
    return ZooRow("(right code)", f"all {len(per_home)}", merged,
                  {c: "n/a" if c == "oracle" and na else "missed" for c in CHECKS})


def run_zoo(seed=0, oracle=True, names=None, on_bug=None):
    """The right code's row, then one row per bug (all of BUGS, or `names`) -> [ZooRow].
    on_bug(name) is called before each (progress)."""
    if on_bug is not None:
        on_bug("(right code)")
    rows = [clean_row(run_clean(seed, oracle))]
    available = oracle and torch_version() is not None
    for name in names or BUGS:
        if on_bug is not None:
            on_bug(name)
        results = run_bug(name, seed, oracle)
        rows.append(ZooRow(name, BUGS[name].home, results, expected_outcomes(BUGS[name], available)))
    return rows


def _cell(row, check):
    r = row.results[check]
    if r.outcome == "n/a":
        return f"n/a ({r.where})"
    if r.outcome == "error":
        text = f"ERROR {r.where}"
    else:
        word = r.outcome if row.name != "(right code)" else (
            "pass" if r.outcome == "missed" else "FAIL")
        what = f"{r.where} " if check == "property" and r.outcome == "caught" else ""
        text = f"{word} {what}{r.error:.1e}"
    return text + ("" if row.as_declared(check) else " !")


def headline(rows):
    bugs = [r for r in rows if r.name != "(right code)"]
    count = {c: sum(r.results[c].outcome == "caught" for r in bugs) for c in CHECKS}
    oracle = (f"the torch oracle {count['oracle']}" if any(
        r.results["oracle"].outcome != "n/a" for r in bugs) else "the oracle n/a (no torch)")
    return (f"{len(bugs)} bugs: the coordinate gradcheck catches {count['coordinate']}, the "
            f"directional {count['directional']}, the properties {count['property']}, {oracle}")


def format_zoo(rows, width=100):
    """The table, the headline, and why each check that misses a bug misses it -> lines."""
    heads = ("bug", "home") + CHECKS
    cells = [[r.name, r.home] + [_cell(r, c) for c in CHECKS] for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt = lambda cs: "  ".join(f"{c:<{w[i]}}" for i, c in enumerate(cs)).rstrip()
    lines = [fmt(heads)] + [fmt(c) for c in cells]
    lines += ["", headline(rows)]
    bad = [(r.name, c) for r in rows for c in CHECKS if not r.as_declared(c)]
    if bad:
        lines.append("NOT AS DECLARED (marked !): " + ", ".join(f"{n} {c}" for n, c in bad))
    else:
        lines.append("every row as declared; the right code passes every check")
    lines += ["", "each bug, the properties that fail, and why the checks that miss it miss it:"]
    for r in (r for r in rows if r.name in BUGS):
        bug = BUGS[r.name]
        missed = [c for c in CHECKS if bug.expected(c) == "missed"]
        lines.append(f"  {bug.name}: {bug.description}")
        if r.results["property"].failing:
            lines.append("      failing properties: " + ", ".join(r.results["property"].failing))
        why = f"missed by {', '.join(missed)}: " if missed else "caught by every check: "
        lines += textwrap.wrap(why + bug.why, width, initial_indent="      ",
                               subsequent_indent="      ")
    return lines


def mutation_lines(bug):
    """The wrong function as a diff against the right one, or its source."""
    lines = []
    for right, wrong in bug.swaps:
        if bug.show == "diff":
            lines += difflib.unified_diff(
                inspect.getsource(right).splitlines(), inspect.getsource(wrong).splitlines(),
                f"{right.__module__}.{right.__name__} (right)",
                f"{wrong.__module__}.{wrong.__name__} (wrong)", n=1, lineterm="")
        else:
            lines += inspect.getsource(wrong).splitlines()
    return lines


def format_bug(name, results):
    """--bug NAME: the bug, the swap, the mutation and every check's report -> (lines, ok)."""
    bug = BUGS[name]
    expected = expected_outcomes(bug, results["oracle"].outcome != "n/a")
    lines = [f"{bug.name}: {bug.description}", f"checked on: {describe_home(bug.home)}"]
    for right, wrong in bug.swaps:
        lines.append(f"swapped in: {right.__module__}.{right.__name__} -> "
                     f"{wrong.__module__}.{wrong.__name__}")
    modules = sorted({name.rsplit(".", 1)[0] for name in rebound(bug)})
    lines += textwrap.wrap("rebound in " + ", ".join(modules), 100, subsequent_indent="    ")
    lines += ["", *mutation_lines(bug), ""]
    titles = {"coordinate": f"coordinate gradcheck (eps {EPS:g}, tolerance {TOL:g})",
              "directional": f"directional gradcheck ({N_DIRECTIONS} random directions)",
              "property": "properties", "oracle": "oracle: torch autograd on the same weights"}
    for c in CHECKS:
        r = results[c]
        mark = "as declared" if r.outcome == expected[c] else f"NOT AS DECLARED: {expected[c]}"
        lines.append(f"{titles[c]}: {r.outcome.upper()} ({mark})")
        lines += ["    " + line for line in r.lines] + [""]
    lines += textwrap.wrap(f"why: {bug.why}", 100, subsequent_indent="     ")
    ok = all(results[c].outcome == expected[c] for c in CHECKS)
    caught = [c for c in CHECKS if results[c].outcome == "caught"]
    lines.append(f"caught by {', '.join(caught) or 'no check'}; "
                 + ("every check as declared" if ok else "NOT as declared"))
    return lines, ok
