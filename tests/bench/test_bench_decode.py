"""The decoding benchmark (numpygpt.bench.decode, and `numpygpt bench-decode` run end to end
through numpygpt.cli.main) on the tiny preset at N = 4..16: the files and their fields, the
bytes against hand counts, the cache state it times, user errors, Ctrl-C. The triad and the
matmul yardsticks are shrunk (their own tests are in test_measure.py); no timing is asserted."""
import contextlib
import csv
import importlib.util
import io
import json

import numpy as np
import pytest

import numpygpt.cli.bench as cli_bench
from numpygpt.bench import decode as bd
from numpygpt.bench import measure
from numpygpt.cli import main
from numpygpt.config import PRESETS


def tiny(out_dir, *extra):
    return ["bench-decode", "--config", "tiny", "--min-n", "4", "--max-n", "16", "--window", "8",
            "--max-prefill-n", "8", "--repeats", "1", "--out", str(out_dir), *extra]


@pytest.fixture
def small_yardsticks(monkeypatch):
    monkeypatch.setattr(bd, "triad_bandwidth", lambda: measure.triad_bandwidth(n=1 << 16, repeats=1))
    monkeypatch.setattr(bd, "matmul_gflops", lambda seed=0: measure.matmul_gflops(n=64, repeats=1))


@pytest.fixture
def tiny_run(tmp_path, small_yardsticks):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(tiny(tmp_path))
    with open(tmp_path / "decode.json") as f:
        return code, out.getvalue(), json.load(f), tmp_path


def test_files_and_fields(tiny_run):
    code, out, result, out_dir = tiny_run
    assert code == 0
    assert result["benchmark"] == "bench-decode" and result["interrupted_at"] is None
    assert result["config"]["sizes"] == [4, 8, 16]
    assert result["config"]["variants"] == {
        "MHA": {"n_kv_head": 4, "sliding_window": None}, "GQA": {"n_kv_head": 1, "sliding_window": None},
        "MQA": {"n_kv_head": 1, "sliding_window": None}, "window": {"n_kv_head": 4, "sliding_window": 8}}
    rows = {(r["n"], r["variant"]): r for r in result["rows"]}
    assert len(rows) == 12
    # tiny: V=256, C=128, H=4 (D=32), L=2, tied, RoPE: weights 256*128 + 2*(12*128^2 + 13*128)
    # + 2*128 = 428,800 parameters; GQA's c_attn (129 x 192) in place of (129 x 384)
    mha_weights = 4 * (256 * 128 + 2 * (12 * 128 * 128 + 13 * 128) + 2 * 128)
    gqa_weights = mha_weights - 4 * 2 * 129 * (384 - 192)
    for (n, name), r in rows.items():
        K = 1 if name in ("GQA", "MQA") else 4
        keys = min(n, 8) if name == "window" else n
        assert r["kv_bytes"] == 2 * 2 * K * 32 * keys * 4
        assert r["weight_bytes"] == (gqa_weights if K == 1 else mha_weights)
        assert r["bytes"] == r["weight_bytes"] + r["kv_bytes"]
        for key in ("decode_s", "bound_s", "achieved_bytes_per_s", "fraction_of_triad",
                    "triad_bytes_per_s", "matmul_gflops"):
            assert r[key] > 0, key
        assert r["bound_s"] == pytest.approx(r["bytes"] / r["triad_bytes_per_s"])
        assert r["fraction_of_triad"] == pytest.approx(r["bytes"] / r["decode_s"] / r["triad_bytes_per_s"])
        assert (r["prefill_s"] is not None) == (n <= 8)
        assert isinstance(r["unreliable"], list)
    assert rows[16, "GQA"]["kv_bytes"] * 4 == rows[16, "MHA"]["kv_bytes"]
    assert rows[16, "window"]["kv_allocated_bytes"] == 2 * 2 * 4 * 16 * 32 * 4   # 2W = 16 slots
    with open(out_dir / "decode.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out_dir / "decode.png").stat().st_size > 0
    assert out.splitlines()[0].startswith("engine: fast")
    assert "N=16: GQA (K=1) per token" in out and "KV cache read 0.25x" in out


def test_each_n_is_judged_against_the_median_of_a_triad_before_each_row(tmp_path, monkeypatch):
    """One triad before each variant's row, their median the N's bandwidth: a lone fast pass
    (90 GB/s here) does not move it."""
    monkeypatch.setattr(bd, "matmul_gflops", lambda seed=0: 100.0)
    readings = iter([10e9, 90e9, 20e9, 30e9] * 3)                  # 4 variants at each of 3 N
    monkeypatch.setattr(bd, "triad_bandwidth", lambda: next(readings))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(tiny(tmp_path)) == 0
    with open(tmp_path / "decode.json") as f:
        result = json.load(f)
    assert {r["triad_bytes_per_s"] for r in result["rows"]} == {25e9}
    assert result["triad_bytes_per_s"] == {"median": 25e9, "max": 25e9}


def test_the_cache_it_times_holds_n_minus_1_tokens_and_the_token_sees_n():
    """The timed call is the N-th token: it sees N keys (min(N, W) with a window), at
    position N - 1, the same after every set back."""
    rng = np.random.default_rng(0)
    for config, n, seen in ((PRESETS["tiny"], 10, 10),
                            (bd.variant_configs("tiny", 4)["window"], 10, 4)):
        cache, set_back = bd.cache_before(config, n, rng)
        for _ in range(2):
            set_back()
            pos, mask, new = cache.extend(None, 1)
            assert pos.tolist() == [[n - 1]] and mask.shape == (1, seen) and mask.all()
            assert new == seen - 1                       # the new token's key: the last it sees


def test_kv_cache_bytes_are_what_the_cache_allocates():
    for name, config in bd.variant_configs("tiny", 512).items():
        cache, _ = bd.cache_before(config, 64, np.random.default_rng(0))
        assert cache.k.nbytes + cache.v.nbytes == bd.kv_cache_bytes(config, 64), name


@pytest.mark.parametrize("argv, option", [
    (["--max-n", "2"], "--max-n 2"), (["--config", "huge"], "--config 'huge'"),
    (["--window", "0"], "--window"), (["--repeats", "-1"], "--repeats")])
def test_bad_options_are_refused_in_one_line(tmp_path, capsys, argv, option):
    assert main(tiny(tmp_path / "out", *argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_sweep_over_the_memory_available_is_refused_naming_max_n(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_bench, "available_memory", lambda: 1000)
    monkeypatch.setattr(bd, "measure", lambda *a, **k: pytest.fail("measured"))
    assert main(tiny(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-n 16" in err[0] and "estimated at" in err[0]


def test_ctrl_c_keeps_the_sizes_measured_before(tmp_path, monkeypatch, small_yardsticks, capsys):
    """4 variants a size: the 9th measurement, the first at N=16, is interrupted."""
    real, calls = bd.measure, []

    def measured(*a, **k):
        calls.append(1)
        if len(calls) > 8:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(bd, "measure", measured)
    assert main(tiny(tmp_path)) == 130
    out = capsys.readouterr().out
    with open(tmp_path / "decode.json") as f:
        result = json.load(f)
    assert result["interrupted_at"] == 16 and result["config"]["sizes"] == [4, 8]
    assert sorted({r["n"] for r in result["rows"]}) == [4, 8]
    assert "interrupted at N=16 (SIGINT)" in out
