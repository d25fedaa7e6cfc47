"""The step-size experiment: the error of a central difference against eps has the V the theory
predicts (truncation ~eps^2 at large steps, rounding ~u/eps at small ones, best near u^(1/3)),
in float64 and float32; the PNG is written (when matplotlib is installed) and its absence is a
note, not a traceback. The expected numbers come from the theory, not from the code."""
import os
import sys

import numpy as np
import pytest

from numpygpt import gradcheck
from numpygpt.cli import main

UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24}
DEFAULTS = {"float64": (1e-5, 1e-6), "float32": (1e-3, 1e-2)}      # eps, tolerance: the docs'


@pytest.fixture(scope="module")
def sweep():
    return gradcheck.sweep_eps(max_coords=4)


def error_at(sweep, dtype, eps):
    """The worst tensor's error at the grid point nearest eps (the grid must hold one within
    a quarter decade)."""
    i = int(np.argmin(np.abs(np.log10(sweep.eps) - np.log10(eps))))
    assert abs(np.log10(sweep.eps[i]) - np.log10(eps)) <= 0.26, (eps, sweep.eps)
    return float(sweep.errors[dtype][i].max())


def test_the_grid_runs_from_1e_1_to_1e_12_in_both_dtypes(sweep):
    assert sweep.eps[0] == pytest.approx(1e-1) and sweep.eps[-1] == pytest.approx(1e-12)
    assert len(sweep.eps) >= 12
    assert set(sweep.errors) == {"float64", "float32"}
    for errs in sweep.errors.values():
        assert errs.shape == (len(sweep.eps), len(sweep.tensors)) and len(sweep.tensors) == 16


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_error_at_the_predicted_best_step_is_below_both_ends(sweep, dtype):
    best = UNIT_ROUNDOFF[dtype] ** (1 / 3)
    mid = error_at(sweep, dtype, best)
    assert mid < error_at(sweep, dtype, 1e-1) and mid < error_at(sweep, dtype, 1e-12)
    assert gradcheck.predicted_best_eps(dtype) == pytest.approx(best)
    measured_best = sweep.eps[int(np.argmin(sweep.errors[dtype].max(axis=1)))]
    assert abs(np.log10(measured_best) - np.log10(best)) <= 1.0          # within a decade


def test_float64_shows_both_regimes(sweep):
    """Truncation: 10x smaller step, 100x smaller error. Rounding: 100x smaller step, ~100x
    larger error."""
    trunc = np.log10(error_at(sweep, "float64", 1e-1) / error_at(sweep, "float64", 1e-2))
    assert 1.7 <= trunc <= 2.3
    rounding = np.log10(error_at(sweep, "float64", 1e-12) / error_at(sweep, "float64", 1e-10)) / 2
    assert 0.7 <= rounding <= 1.3


def test_float32_needs_its_own_step_and_tolerance(sweep):
    # a step below float32's resolution of the weights is lost: p + 1e-12 == p, numeric 0
    assert error_at(sweep, "float32", 1e-12) >= 0.99
    # float64's default step fails float32's tolerance; float32's default step passes it
    assert error_at(sweep, "float32", DEFAULTS["float64"][0]) > DEFAULTS["float32"][1]
    assert error_at(sweep, "float32", DEFAULTS["float32"][0]) < DEFAULTS["float32"][1]
    assert error_at(sweep, "float64", DEFAULTS["float64"][0]) < DEFAULTS["float64"][1]
    assert gradcheck.TOLERANCES == DEFAULTS
    assert gradcheck.unit_roundoff("float32") == UNIT_ROUNDOFF["float32"]


def test_the_table_marks_the_best_and_predicted_steps(sweep):
    lines = gradcheck.format_sweep(sweep)
    text = "\n".join(lines)
    assert sum(line.lstrip().startswith(("1.0e-", "3.2e-")) for line in lines) == len(sweep.eps)
    assert "float64 u^(1/3)" in text and "float32 best" in text
    assert "predicted u^(1/3) = 4.8e-06" in text and "predicted u^(1/3) = 3.9e-03" in text
    assert text.count("the V holds") == 2


def test_the_command_writes_the_table_and_the_png(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401
        has_mpl = True
    except ImportError:                  # only the PNG is skipped: the table is still checked
        has_mpl = False
    out = tmp_path / "new" / "dir"
    assert main(["gradcheck", "--sweep-eps", "--layer", "gelu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float64: best eps" in text and "float32: best eps" in text
    png = out / "eps_sweep_gelu.png"
    assert png.exists() == has_mpl
    assert ("wrote " if has_mpl else "no plot: matplotlib is not installed") in text
    if has_mpl:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_without_matplotlib_a_note_and_no_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["gradcheck", "--sweep-eps", "--layer", "gelu", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "no plot: matplotlib is not installed (pip install -e '.[plot]')" in captured.out
    assert "Traceback" not in captured.err and os.listdir(tmp_path) == []


def test_a_bad_out_dir_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["gradcheck", "--sweep-eps", "--out", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert "exists and is not a directory" in captured.err and captured.out == ""
    assert main(["gradcheck", "--layer", "gelu", "--out", str(tmp_path)]) == 2
    assert "--out is only used with --sweep-eps" in capsys.readouterr().err
    assert main(["gradcheck", "--sweep-eps", "--eps", "1e-3"]) == 2
    assert "--sweep-eps does not use --eps" in capsys.readouterr().err
