"""The step-time benchmark on the tiny configuration (repeats 1): its JSON, its FLOP count,
its PyTorch reference model, its arguments. No timing is asserted."""
import argparse
import json

import numpy as np
import pytest

import numpygpt as ng
from numpygpt import bench_step
from numpygpt.bench_step import (CONFIGS, add_arguments, build_torch_gpt, make_batch, make_config,
                                 run, step_flops, torch_available)

TIMING_KEYS = {"median_s", "min_s", "max_s", "spread", "times_s", "tokens_per_s", "gflops_per_s",
               "matmul_ratio", "peak_rss_bytes"}


def parse(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_flops_by_hand():
    # tiny: L=2, B=8, T=128, C=128, V=256, by hand:
    # blocks: 2 * (24*1024*128^2 + 2*8*128*129*128) = 2 * (402653184 + 33816576) = 872939520
    # lm_head: 2*1024*128*256 = 67108864;  step = 3 * (872939520 + 67108864) = 2820145152
    config, B, T = make_config("tiny")
    assert (B, T) == (8, 128)
    assert step_flops(config, B, T) == 2820145152
    # masked positions skip the lm_head: 24 counted positions instead of 1024
    assert step_flops(config, B, T, n_counted=24) == 3 * (872939520 + 2 * 24 * 128 * 256)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flops_agree_with_dataflow(name):
    dataflow = pytest.importorskip("numpygpt.dataflow")
    config, B, T = make_config(name)
    assert step_flops(config, B, T) == dataflow.training_flops(config, B, T, causal=True)


def test_make_batch_masks_exactly_the_fraction():
    config, B, T = make_config("tiny")
    ids, labels = make_batch(config, B, T, mask_fraction=0.75, seed=3)
    assert ids.shape == labels.shape == (8, 128)
    assert (labels == -100).sum() == 768
    assert ((labels == -100) | ((labels >= 0) & (labels < 256))).all()
    ids2, labels2 = make_batch(config, B, T, mask_fraction=0.75, seed=3)
    np.testing.assert_array_equal(labels, labels2)     # deterministic


@pytest.mark.skipif(not torch_available(), reason="PyTorch not installed")
def test_torch_reference_is_the_same_model():
    """Loss and gradients of the PyTorch GPT-2 equal numpygpt's (float32, same weights)."""
    config = ng.GPTConfig(vocab_size=50, n_positions=16, n_embd=16, n_head=2, n_layer=2)
    model = ng.GPT(config, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (2, 9))
    labels = rng.integers(0, 50, (2, 9))
    labels[0, :4] = -100
    # weights away from the init (LayerNorm 1, biases 0) so that every parameter matters
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape).astype(np.float32)
    loss, grads = model.loss_and_grads(ids, labels)
    import torch
    tmodel = build_torch_gpt(model.params, config)
    tloss = tmodel(torch.from_numpy(ids), torch.from_numpy(labels))
    tloss.backward()
    assert abs(float(tloss.detach()) - loss) < 1e-5 * max(1.0, abs(loss))
    for name, g in grads.items():
        tg = tmodel.p[name.replace(".", "_")].grad.numpy()
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tg = tg.T
        np.testing.assert_allclose(g, tg, rtol=1e-3, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("use_torch", [False, True])
def test_run_writes_json(tmp_path, capsys, use_torch):
    if use_torch and not torch_available():
        pytest.skip("PyTorch not installed")
    argv = ["--configs", "tiny", "--repeats", "1", "--out", str(tmp_path)]
    if use_torch:
        argv += ["--mask-fraction", "0.5"]
    else:
        argv += ["--no-torch"]
    assert run(parse(*argv)) == 0
    report = json.loads((tmp_path / "bench_step.json").read_text())
    out = capsys.readouterr().out
    assert "| tiny" in out and "numpygpt/PyTorch" in out
    assert report["repeats"] == 1 and report["attn_impl"] == "naive"
    assert "numpy" in report["machine"]
    [r] = report["results"]
    assert r["name"] == "tiny" and r["batch_size"] == 8 and r["seq_len"] == 128
    assert r["config"]["n_embd"] == 128 and r["config"]["vocab_size"] == 256
    assert TIMING_KEYS <= set(r["numpygpt"])
    assert len(r["numpygpt"]["times_s"]) == 1
    assert r["numpygpt"]["median_s"] > 0 and r["matmul_gflops"] > 0
    assert r["numpygpt"]["peak_tracemalloc_bytes"] > 0
    assert r["flops"] == step_flops(make_config("tiny")[0], 8, 128, r["counted_positions"])
    assert np.isclose(r["numpygpt"]["gflops_per_s"], r["flops"] / r["numpygpt"]["median_s"] / 1e9)
    if use_torch:
        assert TIMING_KEYS <= set(r["torch"])
        assert r["losses_agree"] and r["loss_rel_diff"] <= 1e-4
        assert np.isclose(r["ratio_vs_torch"], r["numpygpt"]["median_s"] / r["torch"]["median_s"])
        assert r["counted_positions"] == 512
        assert "numpygpt_unmasked" in r and r["ratio_masked_vs_unmasked"] > 0
        assert "of positions -100" in out
    else:
        assert "torch" not in r and "ratio_vs_torch" not in r


def test_run_without_torch_installed(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_step, "torch_available", lambda: False)
    assert run(parse("--configs", "tiny", "--repeats", "1", "--out", str(tmp_path))) == 0
    assert "PyTorch is not installed" in capsys.readouterr().err
    [r] = json.loads((tmp_path / "bench_step.json").read_text())["results"]
    assert "torch" not in r


@pytest.mark.parametrize("argv, message", [
    (["--configs", "huge"], "unknown ['huge']"),
    (["--configs", ","], "unknown"),
    (["--repeats", "0"], "--repeats=0"),
    (["--mask-fraction", "1.0"], "--mask-fraction=1.0"),
    (["--mask-fraction", "nan"], "--mask-fraction=nan"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert run(parse(*argv, "--no-torch")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown configuration 'gpt3'"):
        make_config("gpt3")


def test_bench_loss_small_sizes():
    r = bench_step.bench_loss(vocab_size=300, n_embd=8, rows=64, chunk_sizes=(None, 16), repeats=1)
    assert set(r["runs"]) == {"unfused", "fused chunk_size=64", "fused chunk_size=16"}
    assert r["runs"]["unfused"]["memory_ratio_vs_unfused"] == 1.0
    # 16-row chunks hold a quarter of the logits at a time: less memory than the unfused path
    assert r["runs"]["fused chunk_size=16"]["memory_ratio_vs_unfused"] > 2
    assert "fused chunk_size=16" in "\n".join(bench_step.format_loss(r))
