"""The attention benchmark (numpygpt.bench.attention, and its command `numpygpt bench-attention`
run end to end through numpygpt.cli.main) on tiny sizes (N = 16..64, one repeat): JSON
structure and values, CSV, the table, the without-matplotlib path, skipping by memory budget,
user errors. No timing is asserted (benchmarks measure speed, tests do not)."""
import builtins
import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import time

import pytest

from numpygpt.engine import parallel
from numpygpt.bench import attention as ba
from numpygpt.bench import attention_plot
from numpygpt.bench import measure
from numpygpt.cli import main
from numpygpt.cli.tour import section_attention

TORCH = ba.torch_or_none() is not None


def tiny(tmp_path, *extra):
    """argv of `numpygpt bench-attention` at tiny sizes (later options override earlier ones)."""
    return ["bench-attention", "--min-n", "16", "--max-n", "64", "--repeats", "1", "--n-head", "2",
            "--head-dim", "8", "--q-tile", "16", "--k-tile", "24", "--out", str(tmp_path), *extra]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run shared by the structure tests (with torch when it is installed), every figure
    judged reliable whatever else runs on the machine meanwhile (tests/bench: the judging)."""
    out_dir = tmp_path_factory.mktemp("bench")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        mp.setattr(ba, "problems", lambda *a, **k: [])
        code = main(tiny(out_dir))
    with open(os.path.join(out_dir, "attention_scaling.json")) as f:
        result = json.load(f)
    return code, out.getvalue(), err.getvalue(), result, out_dir


def test_sizes_and_flops():
    assert ba.geometric_sizes(128, 8192) == [128, 256, 512, 1024, 2048, 4096, 8192]
    assert ba.geometric_sizes(16, 63) == [16, 32]
    # N=2, one head, D=1: pairs (0,0), (1,0), (1,1) = 3; forward 2 matmuls x 2 FLOPs x D x 3
    assert ba.causal_flops(2, 1, 1, 1) == (12, 36)
    assert ba.causal_flops(4, 2, 3, 8) == (4 * 8 * 2 * 3 * 10, 12 * 8 * 2 * 3 * 10)
    assert ba.tt_bytes(1024, 1, 4) == 4 * 1024 * 1024 * 4
    with pytest.raises(ValueError, match="min_n"):
        ba.geometric_sizes(64, 16)


def test_json_structure_and_values(tiny_run):
    code, out, err, result, _ = tiny_run
    assert code == 0
    assert result["config"]["sizes"] == [16, 32, 64]
    assert result["config"]["q_tile"] == 16 and result["config"]["k_tile"] == 24
    assert 0 < result["matmul_gflops_min"] <= result["matmul_gflops_median"] <= result["matmul_gflops_max"]
    impls = ["standard", "tiled"] + (["torch"] if TORCH else [])
    assert result["impls"] == impls
    assert len(result["rows"]) == 3 * len(impls)
    for row in result["rows"]:
        assert row["status"] == "ok"
        assert row["fwd_s"] > 0 and row["fwd_bwd_s"] > 0
        assert len(row["fwd_times"]) == 1 and len(row["fwd_bwd_times"]) == 1
        flops_f, flops_fb = ba.causal_flops(row["n"], 1, 2, 8)
        assert row["flops_fwd"] == flops_f and row["flops_fwd_bwd"] == flops_fb
        assert math.isclose(row["gflops_fwd_bwd"], flops_fb / row["fwd_bwd_s"] / 1e9)
        assert row["matmul_gflops"] > 0           # measured at this N, before its rows
        assert math.isclose(row["pct_of_matmul_fwd_bwd"], 100 * row["gflops_fwd_bwd"] / row["matmul_gflops"])
        assert row["tt_bytes"] == 2 * row["n"] ** 2 * 4
        if row["impl"] == "torch":
            assert row["peak_bytes"] is None
        else:
            assert row["peak_bytes"] > 0
    textbook = {r["n"]: r["peak_bytes"] for r in result["rows"] if r["impl"] == "standard"}
    assert textbook[64] > ba.STANDARD_TT_ARRAYS["fast"] * 0.8 * ba.tt_bytes(64, 1, 2)   # the (B,H,N,N) arrays
    for impl in impls:                                                       # upper half: 32, 64
        s = result["slopes"][impl]
        assert s["n_range"] == [32, 64]
        assert isinstance(s["fwd_s"], float) and isinstance(s["fwd_bwd_s"], float)
        assert (s["peak_bytes"] is None) == (impl == "torch")
    assert result["slopes"]["standard"]["peak_bytes"] > 1.5           # O(N^2) memory shows already
    assert any("torch" in n for n in result["notes"]) != TORCH


def test_table_and_summary_printed(tiny_run):
    _, out, err, _, out_dir = tiny_run
    lines = out.splitlines()
    assert lines[0].startswith("engine: fast (numpygpt/engine/)")    # what is timed, said first
    assert lines[1].split()[0] == "N" and "tiled" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["16", "32", "64"]
    assert "log-log slope tiled" in out and "matmul float32" in out
    assert "N=16: matmul GFLOP/s" in err                   # progress went to stderr
    assert "UNRELIABLE" not in out and "NOT FITTED" not in out


def test_thread_settings_recorded(tiny_run):
    _, out, _, result, _ = tiny_run
    m = result["machine"]
    assert m["numpygpt_threads"] == parallel.get_threads() >= 1
    assert m["parallel"] == (m["numpygpt_threads"] > 1)
    assert m["threads"]["blas"] and "NUMPYGPT_THREADS" in m["thread_env"]
    assert f"numpygpt threads {m['numpygpt_threads']} (parallel" in out
    for row in result["rows"]:
        assert row["unreliable"] == [] and "others_cpu" in row


def test_threads_option_runs_with_that_count_and_restores_it(tmp_path):
    before = parallel._state["threads"]
    assert main(tiny(tmp_path, "--no-torch", "--max-n", "16", "--threads", "1")) == 0
    with open(tmp_path / "attention_scaling.json") as f:
        m = json.load(f)["machine"]
    assert m["numpygpt_threads"] == 1 and m["parallel"] is False
    assert parallel._state["threads"] == before


def test_unreliable_times_are_flagged_and_no_slope_is_fitted(tmp_path, monkeypatch, capsys):
    """A busy machine (here: the judge told so) must show beside the figures, and the time
    slopes are not fitted through them; memory (not timed) still is."""
    monkeypatch.setattr(ba, "problems", lambda slowed, mm, best, others: ["median repeat 80% above the fastest"])
    assert main(tiny(tmp_path, "--no-torch")) == 0
    out = capsys.readouterr().out
    assert out.count("UNRELIABLE: standard: median repeat 80% above the fastest; tiled: median repeat 80% above the fastest") == 3
    assert "UNRELIABLE at N=16, 32, 64" in out
    assert "log-log slope tiled    N=32..64: time NOT FITTED (unreliable at N=32, 64)" in out
    with open(tmp_path / "attention_scaling.json") as f:
        result = json.load(f)
    for impl in ("standard", "tiled"):
        s = result["slopes"][impl]
        assert s["fwd_s"] is None and s["fwd_bwd_s"] is None and s["unreliable"] == [32, 64]
        assert isinstance(s["peak_bytes"], float)


def test_the_judge():
    """The three signs and their limits (bench/measure.py)."""
    assert measure.problems(0.1, 100.0, 100.0, 0.0) == []
    assert measure.problems(0.5, 100.0, 100.0, 0.0) == []                  # at the limit: kept
    assert measure.problems(0.6, 100.0, 100.0, 0.0) == ["median repeat 60% above the fastest"]
    assert measure.problems(0.0, 50.0, 100.0, None) == ["matmul at 50% of its best in this run"]
    assert measure.problems(None, None, None, 0.4) == ["other processes used 40% of the CPUs"]
    assert measure.above_fastest([1.0, 2.0, 1.5]) == pytest.approx(0.5)       # (1.5 - 1) / 1
    assert measure.above_fastest([1.0, 9.0, 1.1]) == pytest.approx(0.1)       # one slow repeat: the median holds
    assert measure.above_fastest([1.0, 1.6, 1.5]) == pytest.approx(0.5)       # two slowed: the median moved
    assert measure.above_fastest([2.0]) == 0.0
    before, after = (0.0, 10.0, 4.0), (1.0, 11.5, 4.5)       # 1 s; machine 1.5 CPU s, ours 0.5
    assert measure.others_cpu(before, after, cpus=2) == pytest.approx(0.5)
    assert measure.others_cpu(before, (0.1, 10.0, 4.0)) is None          # too short to tell
    snap = measure.cpu_snapshot()
    if snap is not None:                                                 # Linux
        assert snap[1] >= snap[2] >= 0


def test_csv(tiny_run):
    _, _, _, result, out_dir = tiny_run
    with open(os.path.join(out_dir, "attention_scaling.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result["rows"])
    assert rows[0].keys() == set(ba.CSV_FIELDS)
    assert [int(r["n"]) for r in rows if r["impl"] == "tiled"] == [16, 32, 64]
    assert all(float(r["fwd_bwd_s"]) > 0 for r in rows)


def test_plot_written_when_matplotlib_is_there(tiny_run):
    pytest.importorskip("matplotlib")
    _, out, _, _, out_dir = tiny_run
    with open(os.path.join(out_dir, "attention_scaling.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "attention_scaling.png" in out


def test_without_matplotlib_says_how_to_get_the_plot(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(tiny(tmp_path, "--no-torch", "--max-n", "32")) == 0
    assert 'pip install -e ".[plot]"' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["attention_scaling.csv", "attention_scaling.json"]
    with open(tmp_path / "attention_scaling.json") as f:
        result = json.load(f)
    assert result["impls"] == ["standard", "tiled"]
    assert any("--no-torch" in n for n in result["notes"])


def test_standard_skipped_over_memory_budget(tmp_path, capsys):
    # one (1,2,64,64) float32 array is 32 KiB; 3 of them exceed 0.00005 GB = 50 kB at N=64 only
    assert main(tiny(tmp_path, "--no-torch", "--memory-budget-gb", "0.00005")) == 0
    with open(tmp_path / "attention_scaling.json") as f:
        result = json.load(f)
    status = {(r["impl"], r["n"]): r["status"] for r in result["rows"]}
    assert status[("standard", 32)] == "ok" and status[("standard", 64)] == "skipped"
    assert status[("tiled", 64)] == "ok"
    assert any("standard skipped at N=64" in n for n in result["notes"])
    assert "skipped" in capsys.readouterr().out


def one_error_line(capsys):
    """The command's stderr: one line, `numpygpt bench-attention: error: ...`; nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.err.startswith("numpygpt bench-attention: error: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""
    return captured.err


def test_user_errors_exit_2(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(tiny(out_dir, "--min-n", "64", "--max-n", "16")) == 2
    assert "--max-n 16" in one_error_line(capsys)
    assert not out_dir.exists()                            # refused before any work
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bench-attention", "--min-n", "16", "--max-n", "16", "--out", str(blocker)]) == 2
    assert "--out" in one_error_line(capsys)
    for bad, message in ((["--n-head", "0"], "argument --n-head: expected an integer >= 1, got 0"),
                         (["--memory-budget-gb", "-1"],
                          "argument --memory-budget-gb: expected a number in (0, inf), got '-1'"),
                         (["--repeats", "x"], "argument --repeats: expected an integer >= 1, got 'x'")):
        assert main(["bench-attention", *bad]) == 2
        assert message in one_error_line(capsys)


def test_tour_section_prints_table_and_slopes():
    lines = []
    section_attention(lines.append, seed=0)
    text = "\n".join(lines)
    assert "log-log slope standard" in text and "log-log slope tiled" in text
    assert any(line.split()[:1] == ["512"] for line in lines)


def test_benchmark_script_calls_the_module(tmp_path, capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "attention_scaling.py")
    spec = importlib.util.spec_from_file_location("attention_scaling", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--min-n", "8", "--max-n", "16", "--repeats", "1", "--n-head", "1", "--head-dim", "4",
            "--no-torch", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    assert (tmp_path / "attention_scaling.json").exists()
    assert "log-log slope" in capsys.readouterr().out


def test_time_call_times_several_calls_to_a_repeat_when_one_is_short():
    calls = []
    t = measure.time_call(lambda: calls.append(1), repeats=3, warmup=1)      # ~1 us a call
    assert t["number"] > 10 and len(calls) == 1 + 3 * t["number"]
    assert t["median"] < measure.MIN_REPEAT_S / 10                          # per call, not per repeat
    calls.clear()
    t = measure.time_call(lambda: (calls.append(1), time.sleep(0.02)), repeats=2, warmup=1)
    assert t["number"] == 1 and len(calls) == 3 and 0.02 <= t["median"] < 0.2


def test_the_plot_marks_unreliable_times_apart_and_labels_no_minor_ticks(tiny_run, tmp_path,
                                                                        monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    result = tiny_run[3]
    rows = [dict(r) for r in result["rows"]]
    bad = next(r for r in rows if r["impl"] == "tiled" and r["status"] == "ok")
    bad["unreliable"] = ["other processes used 50% of the CPUs"]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert attention_plot.plot({**result, "rows": rows}, str(tmp_path / "p.png")) is None
    ax_t = figures[0].axes[0]
    marked = [line for line in ax_t.get_lines() if line.get_label() == "tiled UNRELIABLE"]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [bad["n"]]
    assert all(line.get_label() != "standard UNRELIABLE" for line in ax_t.get_lines())
    scale = next(line for line in figures[0].axes[1].get_lines()
                 if line.get_label() == "one (B,H,N,N) array")      # B=1, H=2, float32: 8 N^2 bytes
    assert list(scale.get_xdata()) == [16, 32, 64]
    assert list(scale.get_ydata()) == [8 * n * n / 2**20 for n in (16, 32, 64)]
    figures[0].canvas.draw()
    for ax in figures[0].axes:
        assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())


def test_threads_above_the_cpus_are_capped_with_a_message(tmp_path, capsys):
    # (a count of its own: the message is said once per process for each count asked)
    cpus = parallel.available_cpus()
    assert main(tiny(tmp_path, "--no-torch", "--max-n", "16", "--threads", str(cpus + 997))) == 0
    with open(tmp_path / "attention_scaling.json") as f:
        assert json.load(f)["machine"]["numpygpt_threads"] == cpus
    assert f"--threads {cpus + 997} is more than the {cpus} CPUs" in capsys.readouterr().err


def test_the_estimate_is_said_before_the_table(tiny_run):
    err = tiny_run[2]
    assert "estimate: peak memory ~" in err and "at N=64" in err
    assert "estimate: N=16 took " in err and "up to N=64 ~" in err and "Ctrl-C" in err
    assert err.index("estimate: peak memory") < err.index("N=16: matmul GFLOP/s")


def test_peak_memory_over_what_is_available_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                       capsys):
    import numpygpt.cli.bench as cli_bench
    monkeypatch.setattr(cli_bench, "available_memory", lambda: 1000)
    monkeypatch.setattr(ba, "measure", lambda *a, **k: pytest.fail("measured"))
    out_dir = tmp_path / "out"
    assert main(tiny(out_dir)) == 2
    err = one_error_line(capsys)
    assert "--max-n 64" in err and "estimated at" in err and "(at N=64)" in err
    assert not out_dir.exists()


def interrupt_after(monkeypatch, k):
    """The timing raises KeyboardInterrupt (as Ctrl-C does) at its (k+1)-th call."""
    real, calls = ba.time_call, []

    def timed(*a, **kw):
        calls.append(1)
        if len(calls) > k:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(ba, "time_call", timed)
    monkeypatch.setattr(ba, "problems", lambda *a, **kw: [])


def test_ctrl_c_keeps_the_sizes_measured_before_and_exits_130(tmp_path, monkeypatch, capsys):
    """Without torch a size is 2 implementations x 2 timings: after 8 calls N=16 and 32 are
    done, and the 9th, at N=64, is interrupted."""
    interrupt_after(monkeypatch, 8)
    assert main(tiny(tmp_path, "--no-torch")) == 130
    out = capsys.readouterr().out
    with open(tmp_path / "attention_scaling.json") as f:
        result = json.load(f)
    assert result["interrupted_at"] == 64 and result["interrupted_by"] == "SIGINT"
    assert result["config"]["sizes"] == [16, 32]
    assert sorted({r["n"] for r in result["rows"]}) == [16, 32]
    with open(tmp_path / "attention_scaling.csv") as f:
        assert sorted({int(r["n"]) for r in csv.DictReader(f)}) == [16, 32]
    assert "interrupted at N=64 (SIGINT): the files hold the sizes measured before it (16, 32)" in out
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["16", "32"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "attention_scaling.png").exists()


def test_ctrl_c_during_the_first_size_saves_nothing_and_exits_130(tmp_path, monkeypatch, capsys):
    interrupt_after(monkeypatch, 1)
    assert main(tiny(tmp_path / "out", "--no-torch")) == 130
    assert "interrupted (SIGINT)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "attention_scaling.json").exists()


def test_the_roofline_panel_puts_each_point_under_the_measured_roofs(tiny_run, tmp_path,
                                                                      monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    result = tiny_run[3]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert attention_plot.plot(result, str(tmp_path / "p.png")) is None
    ax = figures[0].axes[2]
    assert "roofline" in ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    tiled = [r for r in result["rows"] if r["impl"] == "tiled"]
    assert list(lines["tiled"].get_xdata()) == [r["intensity_fwd_bwd"] for r in tiled]
    assert list(lines["tiled"].get_ydata()) == [r["gflops_fwd_bwd"] for r in tiled]
    assert "torch" not in lines                              # its bytes are not modelled
    mm, bw = result["matmul_gflops_median"], result["triad_gbps"]
    flat = lines[f"matmul {mm:.0f} GFLOP/s"]
    assert set(flat.get_ydata()) == {mm}
    slope = lines[f"triad {bw:.1f} GB/s x FLOP/byte"]
    x, y = slope.get_xdata(), slope.get_ydata()
    assert y[0] == pytest.approx(bw * x[0]) and y[1] == pytest.approx(bw * x[1])

