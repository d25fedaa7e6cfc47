"""The notebooks in notebooks/: each .ipynb is paired with a jupytext percent-format .py
(notebooks/README.md), the two must hold the same cells, the .ipynb is committed without
outputs, and every notebook runs end to end in a fresh kernel (its asserts are its checks).
Needs the `notebooks` extra (jupytext, nbclient, ipykernel, nbformat); skipped without it."""
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 120           # seconds per cell; the notebooks take a few seconds each
EXPECTED = ["attention_cost", "backprop_by_hand", "gradient_checks", "the_lesson"]


def stems(suffix):
    return sorted(p.stem for p in NOTEBOOKS.glob(f"*{suffix}"))


def test_every_notebook_has_its_pair():
    assert stems(".ipynb") == EXPECTED
    assert stems(".py") == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_ipynb_is_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
    assert nb["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"
    with_outputs = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
                    and (c["outputs"] or c["execution_count"] is not None)]
    assert with_outputs == [], f"{name}.ipynb: cells {with_outputs} hold outputs; clear them"


def cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def pair_differences(py_path, ipynb_path):
    """The cells (type, source) in which a .py and its .ipynb differ: [] when they agree."""
    import jupytext
    import nbformat
    py = cells(jupytext.read(py_path))
    ipynb = cells(nbformat.read(ipynb_path, as_version=4))
    diffs = [(i, a, b) for i, (a, b) in enumerate(zip(py, ipynb)) if a != b]
    if len(py) != len(ipynb):
        diffs.append((min(len(py), len(ipynb)), f"{len(py)} cells", f"{len(ipynb)} cells"))
    return diffs


@pytest.mark.parametrize("name", EXPECTED)
def test_py_and_ipynb_hold_the_same_cells(name):
    pytest.importorskip("jupytext", reason="the notebooks extra is not installed")
    pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
    diffs = pair_differences(NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb")
    assert diffs == [], (f"notebooks/{name}.py and {name}.ipynb differ (cell, .py, .ipynb): "
                         f"{diffs[:2]}; edit the .py and run `jupytext --sync notebooks/{name}.py`")


@pytest.mark.parametrize("change", ["edit a line", "add a cell"])
def test_the_pair_check_sees_a_drift(tmp_path, change):
    pytest.importorskip("jupytext", reason="the notebooks extra is not installed")
    pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
    text = (NOTEBOOKS / "the_lesson.py").read_text(encoding="utf-8")
    drifted = (text.replace("for T in (5, 10, 20):", "for T in (5, 10):", 1)
               if change == "edit a line" else text + "\n# %%\nprint('one more cell')\n")
    assert drifted != text
    (tmp_path / "the_lesson.py").write_text(drifted, encoding="utf-8")
    assert pair_differences(tmp_path / "the_lesson.py", NOTEBOOKS / "the_lesson.ipynb") != []


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A kernelspec named python3 that runs this interpreter, found first (JUPYTER_PATH);
    plots go to matplotlib's Agg backend (no display)."""
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))    # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(ROOT), prepend=":")
    return "python3"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_end_to_end(name, python3_kernel):
    nbclient = pytest.importorskip("nbclient", reason="the notebooks extra is not installed")
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
    pytest.importorskip("ipykernel", reason="the notebooks extra is not installed")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()                 # raises CellExecutionError, with the cell, on any failure
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
