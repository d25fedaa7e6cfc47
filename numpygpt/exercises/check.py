"""Checking a learner's backward: load their file, run their function on the exercise's
problem, compare each tensor it returns (and each named intermediate) with the textbook's.

    exact   bit for bit the textbook's number
    close   relative error <= CLOSE (the same math, rounded in another order)
    wrong   anything else: another value, another shape, missing, not finite

The learner's file is their own Python: it is imported (importlib, from its path, under a
name outside numpygpt) and run, and whatever it raises is caught and told in their terms:
the line of their file where it happened and the shapes of the arrays on that line. A
NotImplementedError is the stub: "not started".
"""
import importlib.util
import linecache
import os
import re
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..gradcheck import relative_error
from .course import ReturnShapeError

CLOSE = 1e-8
TIME_LIMIT = 20.0          # seconds a learner's file may take to load or run (the problems take ms)


@dataclass
class TensorResult:
    name: str
    verdict: str               # "exact", "close", "wrong", "missing", "not named" (intermediate)
    error: float | None = None
    note: str = ""             # what is wrong with it: its shape, an extra name, ...
    intermediate: bool = False


@dataclass
class Outcome:
    exercise: object
    status: str                # "passed", "wrong", "not started", "crashed", "no file"
    tensors: list = field(default_factory=list)   # [TensorResult]
    message: list = field(default_factory=list)   # lines: the crash, or what was returned
    got: dict = field(default_factory=dict)       # the learner's tensors, for the diagnosis
    problem: object = None

    @property
    def passed(self):
        return self.status == "passed"


# ---- loading and calling the learner's code ------------------------------------------------

class LearnerError(Exception):
    """The learner's code failed: lines that say where, in their terms."""

    def __init__(self, lines, stub=False):
        super().__init__(lines[0])
        self.lines, self.stub = lines, stub


class TimeLimit(BaseException):
    """Raised into the learner's code when it runs too long (a BaseException: an `except
    Exception` of theirs does not swallow it)."""


@contextmanager
def time_limit(seconds):
    """Interrupt the block after `seconds` (where the system has timers and this is the main
    thread; elsewhere the block runs unlimited)."""
    main = threading.current_thread() is threading.main_thread()
    if not hasattr(signal, "setitimer") or not main:
        yield
        return

    def stop(signum, frame):
        raise TimeLimit(f"still running after {seconds:g} s (an endless loop?)")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load(path, function):
    """The learner's function `function` from the file at `path` (imported fresh each time)."""
    name = "numpygpt_exercise_" + re.sub(r"\W", "_", os.path.basename(path)[:-3])
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        linecache.checkcache(path)
        with time_limit(TIME_LIMIT):
            spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except SyntaxError as e:
        where = f"line {e.lineno}" if e.lineno else "somewhere"
        text = (e.text or "").rstrip("\n")
        raise LearnerError([f"{os.path.basename(path)} does not parse: {e.msg} at {where}"]
                           + ([f"    {text.strip()}"] if text.strip() else [])) from None
    except BaseException as e:            # SystemExit too: it is their file
        raise LearnerError(crash_lines(e, path, "importing the file")) from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise LearnerError([f"{os.path.basename(path)} defines no function {function}"])
    return fn


def call(fn, args, path, names=(), function=None):
    """fn(*args) -> (its value, {name: value of that local variable when fn returned}); with
    `function`, when the function of that name (the one fn calls) returned."""
    seen = {}
    code = getattr(fn, "__code__", None)
    mine = (lambda c: c is code) if function is None else (lambda c: c.co_name == function)

    def profile(frame, event, arg):
        if event == "return" and mine(frame.f_code):
            seen.update({k: v for k, v in frame.f_locals.items() if k in names})
    old = sys.getprofile()
    sys.setprofile(profile if names else old)
    try:
        with time_limit(TIME_LIMIT):
            value = fn(*args)
    except KeyboardInterrupt:
        raise
    except NotImplementedError as e:
        raise LearnerError([f"{fn.__name__} raises NotImplementedError"
                            + (f": {e}" if str(e) else "")], stub=True) from None
    except BaseException as e:
        doing = f"running {getattr(fn, '__name__', 'it')}"
        raise LearnerError(crash_lines(e, path, doing)) from None
    finally:
        sys.setprofile(old)
    return value, seen


def crash_lines(error, path, doing):
    """What went wrong, said at the learner's last line in the traceback (never numpygpt's
    inside): the exception, the line, and the shapes of the arrays named on it."""
    what = f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(": ")
    frames = [f for f, _ in traceback.walk_tb(error.__traceback__)
              if os.path.abspath(f.f_code.co_filename) == os.path.abspath(path)]
    if not frames:
        return [f"{what} ({doing})"]
    frame = frames[-1]
    lineno = frame.f_lineno if frame is not frames[-1] else _tb_line(error, path)
    text = linecache.getline(path, lineno).strip()
    lines = [what, f"at {os.path.basename(path)} line {lineno}, in {frame.f_code.co_name}:",
             f"    {text}"]
    shapes = []
    for name in dict.fromkeys(re.findall(r"[A-Za-z_]\w*", text)):
        value = frame.f_locals.get(name)
        if isinstance(value, np.ndarray):
            shapes.append(f"{name} {value.shape}")
        elif isinstance(value, tuple) and value and all(isinstance(v, np.ndarray) for v in value):
            shapes.append(f"{name} ({', '.join(str(v.shape) for v in value)})")
    if shapes:
        lines.append("    where " + ", ".join(shapes))
    return lines


def _tb_line(error, path):
    """The line number of the last traceback entry in the learner's file."""
    lineno = 0
    tb = error.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return lineno


# ---- comparing ------------------------------------------------------------------------------

def compare(name, got, want, intermediate=False):
    """One tensor of the learner's against the textbook's -> TensorResult."""
    if got is None:
        return TensorResult(name, "missing", note="None", intermediate=intermediate)
    dtype = getattr(got, "dtype", None)
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return TensorResult(name, "wrong", note=f"not an array of numbers "
                            f"({type(got).__name__})", intermediate=intermediate)
    if got.shape != want.shape:
        return TensorResult(name, "wrong", note=f"shape {got.shape}, expected {want.shape}",
                            intermediate=intermediate)
    if not np.all(np.isfinite(got)):
        return TensorResult(name, "wrong", note="holds nan or inf", intermediate=intermediate)
    if np.array_equal(got, want):
        return TensorResult(name, "exact", 0.0, intermediate=intermediate)
    err = relative_error(got, want)
    rounded = dtype is not None and dtype != np.float64 and err <= 1e-2
    return TensorResult(name, "close" if err <= CLOSE else "wrong", err,
                        f"{dtype}, relative error {err:.1e}: the problem is float64, keep it so"
                        if rounded else "", intermediate=intermediate)


def run_reference(exercise, seed=0):
    """-> (problem, {name: the textbook's tensor}), intermediates included."""
    problem = exercise.build(seed)
    names = tuple(t for _, t in exercise.intermediates)
    value, seen = call(exercise.reference, problem.args, "", names, exercise.function)
    want = exercise.read(value)
    for mine, textbook in exercise.intermediates:
        want[mine] = seen[textbook]
    return problem, want


def ordered(exercise, names):
    first = [n for n in exercise.order if n in names]
    return first + [n for n in names if n not in first]


def check_file(exercise, path, seed=0):
    """Run the learner's backward in `path` -> Outcome (never raises for their mistakes)."""
    if not os.path.isfile(path):
        return Outcome(exercise, "no file", message=[f"{path} does not exist"])
    problem, want = run_reference(exercise, seed)
    learner_names = tuple(n for pair in exercise.intermediates for n in pair)
    try:
        fn = load(path, exercise.function)
        value, seen = call(fn, exercise.build(seed).args, path, learner_names)
        got = exercise.read(value)
    except LearnerError as e:
        return Outcome(exercise, "not started" if e.stub else "crashed", message=e.lines,
                       problem=problem)
    except ReturnShapeError as e:
        return Outcome(exercise, "wrong", message=[f"{exercise.function} {e}"], problem=problem)
    results, extra = [], [n for n in got if n not in want]
    for name in ordered(exercise, list(want)):
        mine = next((m for m, t in exercise.intermediates if m == name), None)
        if mine is not None:        # an intermediate: its name, or the textbook's for an array
            value = seen.get(mine)
            if value is None and isinstance(seen.get(dict(exercise.intermediates)[mine]),
                                            np.ndarray):
                value = seen[dict(exercise.intermediates)[mine]]
            results.append(TensorResult(name, "not named", note=f"name a local variable {name} "
                                        f"to have it checked", intermediate=True)
                           if value is None else compare(name, value, want[name], True))
            if value is not None:
                got[name] = value
        else:
            results.append(compare(name, got.get(name), want[name]))
    message = [f"{exercise.function} returned {', '.join(extra)}, which the textbook does not"
               ] if extra else []
    bad = [r for r in results if r.verdict in ("wrong", "missing")]
    return Outcome(exercise, "wrong" if bad or extra else "passed", results, message, got, problem)
