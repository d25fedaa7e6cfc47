"""The learner's files: one per exercise, written once and never overwritten.

Each file holds: what to do and where the solution is, the imports, the forward (a copy of
the textbook's, for reading: the checker builds the cache with the textbook's own), and the
backward as a stub that raises NotImplementedError, its docstring saying what to compute.
"""
import inspect
import os

from .course import COURSE
from .stubs import STUBS

HEADER = '''"""Exercise {number} of {total}: {title}.

Write {function} below: replace the `raise NotImplementedError` with the backward.
The forward is given (a copy of the textbook's, for reading); its cache is what your
backward receives. Check your work (small float64 problems, every tensor compared):

    numpygpt exercise check {directory} {name}

The solution is the textbook tier: {solution}.
Try first: the checker tells you which tensor is wrong, and names the mistake when the
bug zoo knows it.
"""
'''


def file_text(exercise, directory="DIR"):
    """The file `numpygpt exercise start` writes for `exercise`."""
    imports, signature, doc = STUBS[exercise.name]
    header = HEADER.format(number=exercise.number, total=len(COURSE), title=exercise.title,
                           function=exercise.function, directory=directory, name=exercise.name,
                           solution=exercise.solution)
    forward = inspect.getsource(exercise.forward).rstrip("\n")
    stub = (f"def {signature}:\n    \"\"\"{doc.lstrip()}\n    \"\"\"\n"
            f"    raise NotImplementedError(\"exercise {exercise.number}: write "
            f"{exercise.function}\")\n")
    return (f"{header}{imports}\n\n\n# ---- given: the forward ----\n\n{forward}\n\n\n"
            f"# ---- yours: the backward ----\n\n{stub}")


def write_course(directory):
    """Write every exercise's file into `directory` (created if missing); a file that exists
    is the learner's and is left as it is -> [(filename, "wrote" or "kept")]."""
    os.makedirs(directory, exist_ok=True)
    done = []
    for e in COURSE:
        path = os.path.join(directory, e.filename)
        try:
            with open(path, "x", encoding="utf-8") as f:     # "x": fails if it exists
                f.write(file_text(e, directory))
        except FileExistsError:
            done.append((e.filename, "kept"))
            continue
        done.append((e.filename, "wrote"))
    return done
