"""The package's shape, held by tests: imports point down only (layers use nothing above them,
the library never imports the command), no cycles, no imports hidden inside functions, no
module over ~400 lines, and the core imports no optional extra."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "numpygpt")

# bottom to top; a unit may import from its own level or below it
LEVELS = [
    {"checks", "config"},
    {"layers"},
    {"engine"},
    {"io"},
    {"model", "labels", "dataflow", "attention_cost"},
    {"gradcheck", "decode", "pictures"},
    {"exercises"},
    {"train"},
    {"bench"},
    {"cli"},
]
LEVEL = {unit: i for i, units in enumerate(LEVELS) for unit in units}
EXTRAS = ("torch", "transformers", "safetensors", "matplotlib", "mpi4py")


def modules():
    """numpygpt's modules: dotted name -> path."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                name = "numpygpt" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))
                out[name] = os.path.join(folder, f)
    return out


def is_package(path):
    return path.endswith("__init__.py")


def imported(name, path, node):
    """The numpygpt modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "numpygpt"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "numpygpt":
            return []
    else:
        parts = name.split(".")
        package = parts if is_package(path) else parts[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    known = modules()
    # `from . import x` names a submodule x when there is one
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def unit(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None          # None: the package's __init__


def graph():
    """module -> [(imported module, line, at module level?)]."""
    edges = {}
    for name, path in modules().items():
        tree = ast.parse(open(path).read())
        top = set(map(id, tree.body))
        found = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(name, path, node):
                    found.append((target, node.lineno, id(node) in top))
        edges[name] = found
    return edges


def test_every_unit_has_a_level():
    units = {unit(m) for m in modules()} - {None, "__main__"}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LEVELS"


def test_imports_point_down():
    bad = []
    for module, targets in graph().items():
        src = unit(module)
        if src in (None, "__main__"):         # the public API / `python -m`: may import anything
            continue
        for target, line, _ in targets:
            dst = unit(target)
            if dst is None:
                if target == "numpygpt" and src == "cli":
                    continue                  # the command reads numpygpt.__version__
                bad.append(f"{module}:{line} imports the package's __init__")
            elif LEVEL[dst] > LEVEL[src]:
                bad.append(f"{module}:{line} imports {target} (level {LEVEL[dst]} > {LEVEL[src]})")
    assert not bad, "\n".join(bad)


def test_no_import_of_numpygpt_inside_a_function():
    hidden = [f"{m}:{line} imports {t}" for m, ts in graph().items() for t, line, top in ts if not top]
    assert not hidden, "\n".join(hidden)


def test_no_import_cycles():
    edges = {m: {t for t, _, _ in ts if t in modules() and t != m} for m, ts in graph().items()}
    # a package's __init__ importing its own submodules is how a package is read: not a cycle
    for m in edges:
        if is_package(modules()[m]):
            edges[m] = {t for t in edges[m] if not t.startswith(m + ".")}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in edges:
        if m not in state:
            visit(m)


def test_modules_stay_short():
    long = {name: n for name, path in modules().items() if (n := len(open(path).readlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


@pytest.mark.parametrize("module", sorted(m for m in modules() if m != "numpygpt.__main__"))
def test_each_module_imports_alone_without_the_extras(module):
    """In a fresh interpreter where the optional extras cannot be imported."""
    block = "".join(f"sys.modules[{e!r}] = None\n" for e in EXTRAS)
    code = f"import sys\n{block}import importlib\nimportlib.import_module({module!r})\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.join(ROOT, ".."))
    assert r.returncode == 0, r.stderr
