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


@pytest.mark.parametrize("name", EXPECTED)
def test_py_and_ipynb_hold_the_same_cells(name):
    jupytext = pytest.importorskip("jupytext", reason="the notebooks extra is not installed")
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
    py = cells(jupytext.read(NOTEBOOKS / f"{name}.py"))
    ipynb = cells(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4))
    assert py == ipynb, (f"notebooks/{name}.py and {name}.ipynb differ: edit the .py and run "
                         f"`jupytext --sync notebooks/{name}.py`")


def test_the_pair_check_can_fail(tmp_path):
    jupytext = pytest.importorskip("jupytext", reason="the notebooks extra is not installed")
    nb = jupytext.read(NOTEBOOKS / "the_lesson.py")
    changed = jupytext.reads(jupytext.writes(nb, "py:percent").replace("T=", "N=", 1), "py:percent")
    assert cells(changed) != cells(nb)


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
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(ROOT), prepend=":")
    return "python3"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_end_to_end(name, python3_kernel):
    nbclient = pytest.importorskip("nbclient", reason="the notebooks extra is not installed")
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()                 # raises CellExecutionError, with the cell, on any failure
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
