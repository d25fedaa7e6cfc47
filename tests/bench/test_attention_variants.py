"""bench-attention's variants (numpygpt.bench.attention_variants) end to end through
numpygpt.cli.main on tiny sizes: their rows, bytes by hand, slopes and files, and the options
refused. No timing is asserted."""
import csv
import json
import math

import pytest

from numpygpt.bench import attention as ba
from numpygpt.cli import main


def tiny(tmp_path, *extra):
    """argv of `numpygpt bench-attention` at tiny sizes (later options override earlier ones)."""
    return ["bench-attention", "--min-n", "16", "--max-n", "64", "--repeats", "1", "--n-head", "2",
            "--head-dim", "8", "--q-tile", "16", "--k-tile", "24", "--out", str(tmp_path), *extra]


def test_variants_write_their_rows_bytes_and_slopes(tmp_path, monkeypatch, capsys):
    """H=4, D=8, B=1, q_tile 16, float32; the bytes counted by hand (numpygpt/attention_cost.py's
    model): at N=16 one query block reads the 16 keys."""
    monkeypatch.setattr(ba, "problems", lambda *a, **k: [])
    argv = tiny(tmp_path, "--n-head", "4", "--max-n", "32", "--no-torch", "--variants",
                "gqa,mqa,window", "--n-kv-head", "2", "--sliding-window", "4")
    assert main(argv) == 0
    with open(tmp_path / "attention_scaling.json") as f:
        result = json.load(f)
    assert result["impls"] == ["standard", "tiled", "gqa", "mqa", "window"]
    assert result["config"]["variants"] == {
        "gqa": {"core": "tiled", "n_kv_head": 2, "window": None},
        "mqa": {"core": "tiled", "n_kv_head": 1, "window": None},
        "window": {"core": "tiled", "n_kv_head": 4, "window": 4}}
    assert result["triad_gbps"] > 0
    row = {(r["impl"], r["n"]): r for r in result["rows"]}
    # mqa, N=16: Q = 4*16*8 = 512, KV = 128, R = 64, n = 16 keys * 1*8 = 128
    # forward 2Q + R + 2n = 1344 numbers; with the backward 7Q + 4R + 2KV + 8n = 5120
    assert row["mqa", 16]["bytes_fwd"] == 1344 * 4
    assert row["mqa", 16]["bytes_fwd_bwd"] == 5120 * 4
    # gqa (K=2), N=16: KV = 256, n = 256: 1024 + 64 + 512 = 1600
    assert row["gqa", 16]["bytes_fwd"] == 1600 * 4
    # window W=4, N=32: blocks [0,16) read 16 keys, [16,32) keys 13..31 (19): n = 35*4*8;
    # 2Q + R + 2n = 2048 + 128 + 2240; pairs a head 4*5/2 + 28*4 = 122: 4*8*4*122 FLOPs
    assert row["window", 32]["bytes_fwd"] == 4416 * 4
    assert row["window", 32]["flops_fwd"] == 15616
    for r in result["rows"]:
        assert r["intensity_fwd_bwd"] == r["flops_fwd_bwd"] / r["bytes_fwd_bwd"]
        assert math.isclose(r["gbps_fwd_bwd"], r["bytes_fwd_bwd"] / r["fwd_bwd_s"] / 1e9)
        assert r["peak_bytes"] > 0
    assert set(result["slopes"]) == {"standard", "tiled", "gqa", "mqa", "window"}
    assert result["slopes"]["window"]["fwd_bwd_s"] is not None
    with open(tmp_path / "attention_scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"bytes_fwd_bwd", "intensity_fwd_bwd", "gbps_fwd_bwd"} <= set(rows[0])
    out = capsys.readouterr().out
    assert "triad (at the start)" in out and "roofline mqa      N=32: fwd+bwd" in out


@pytest.mark.parametrize("extra, words", [
    (["--variants", "gqa,flash"], ["--variants 'gqa,flash'", "flash", "gqa, mqa, window"]),
    (["--variants", ","], ["--variants ','", "empty"]),
    (["--variants", "gqa", "--n-kv-head", "3"], ["--n-kv-head 3", "--n-head 2"]),
    (["--n-kv-head", "1"], ["--n-kv-head 1", "--variants gqa"]),
    (["--variants", "mqa", "--sliding-window", "8"], ["--sliding-window 8", "--variants window"]),
    (["--sliding-window", "0"], ["--sliding-window", "integer >= 1", "0"]),
])
def test_bad_variant_options_are_refused_naming_the_option(tmp_path, monkeypatch, capsys, extra, words):
    monkeypatch.setattr(ba, "measure", lambda *a, **k: pytest.fail("measured"))
    assert main(tiny(tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("numpygpt bench-attention: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()


def test_variant_functions_give_the_textbooks_gradients_one_core_call_per_kv_head(monkeypatch):
    """The fast engine's variant functions (what bench-attention times) against the textbook's
    on the same inputs, and the calls of the core as the model makes them: one per key/value
    head for GQA and MQA, one on every head when K = H (the window)."""
    from types import SimpleNamespace
    import numpy as np
    from numpygpt.bench import attention_variants as av
    calls = []
    core = av.tiled_attention_forward_fast

    def counted(q, *a, **k):
        calls.append(q.shape[1])
        return core(q, *a, **k)
    monkeypatch.setattr(av, "tiled_attention_forward_fast", counted)
    args = SimpleNamespace(n_head=4, batch_size=2, head_dim=8, q_tile=16, k_tile=24,
                           n_kv_head=2, sliding_window=5)
    for impl, heads_a_call in (("gqa", [2, 2]), ("mqa", [4]), ("window", [4])):
        q, k, v, dy = av.variant_inputs(impl, 40, args, np.random.default_rng(1))
        calls.clear()
        fast = av.variant_fns(impl, q, k, v, dy, SimpleNamespace(**vars(args), engine="fast"))[1]()
        assert calls == heads_a_call, impl
        textbook = av.variant_fns(impl, q, k, v, dy, SimpleNamespace(**vars(args), engine="textbook"))[1]()
        for i, what in enumerate(("dq", "dk", "dv")):
            joined = np.concatenate([g[i] if g[i].ndim == 4 else g[i][:, None] for g in fast], axis=1)
            np.testing.assert_allclose(joined, textbook[i], rtol=1e-4, atol=1e-5, err_msg=f"{impl} {what}")
