"""The step-time benchmark (numpygpt.bench.step, and its command `numpygpt bench-step` run end
to end through numpygpt.cli.main) on the tiny workload (repeats 1): its JSON, its FLOP count
(numpygpt.dataflow.training_flops), its PyTorch reference model (numpygpt.bench.torch_gpt),
its arguments. No timing is asserted."""
import json

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.engine import parallel
from numpygpt.bench import step as bench_step
from numpygpt.bench import loss as bench_loss
from numpygpt.bench.step import WORKLOADS, random_batch, workload
from numpygpt.bench.torch_gpt import build_torch_gpt, torch_available
from numpygpt.cli import main
from numpygpt.dataflow import training_flops

TIMING_KEYS = {"median_s", "min_s", "max_s", "above_fastest", "times_s", "tokens_per_s", "gflops_per_s",
               "matmul_ratio", "peak_rss_bytes"}


def bench_step_cli(*argv):
    return main(["bench-step", *argv])


def test_flops_by_hand():
    # tiny: L=2, B=8, T=128, C=128, V=256, by hand:
    # blocks: 2 * (24*1024*128^2 + 2*8*128*129*128) = 2 * (402653184 + 33816576) = 872939520
    # lm_head: 2*1024*128*256 = 67108864;  step = 3 * (872939520 + 67108864) = 2820145152
    config, B, T, _ = workload("tiny")
    assert (B, T) == (8, 128)
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 128, 256)
    assert training_flops(config, B, T) == 2820145152
    assert training_flops(config, B, T, causal=True) == 2820145152
    # masked positions skip the lm_head: 24 counted positions instead of 1024
    assert training_flops(config, B, T, n_counted=24) == 3 * (872939520 + 2 * 24 * 128 * 256)


def formula_flops(config, B, T, n=None):
    """The benchmark's stated formula (bench.step.FLOPS_FORMULA), written out independently."""
    L, C, V = config.n_layer, config.n_embd, config.vocab_size
    n = B * T if n is None else n
    return 3 * (L * (24 * B * T * C ** 2 + 2 * B * T * (T + 1) * C) + 2 * n * V * C)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_flops_agree_with_dataflow(name):
    """Every workload: dataflow's count (the one the benchmark reports) is the formula the
    benchmark states, masked or not."""
    config, B, T, _ = workload(name)
    assert training_flops(config, B, T, causal=True) == formula_flops(config, B, T)
    assert training_flops(config, B, T, causal=True, n_counted=B * T // 4) == \
        formula_flops(config, B, T, B * T // 4)
    assert "3 * (L * (24*B*T*C^2 + 2*B*T*(T+1)*C) + 2*n*V*C)" in bench_step.FLOPS_FORMULA


def test_workloads_are_the_named_presets():
    assert WORKLOADS == {"tiny": ("tiny", 8, 128, "standard"), "small": ("small", 4, 256, "standard"),
                         "gpt2": ("gpt2", 1, 256, "standard"), "gpt2-1k": ("gpt2", 1, 1024, "tiled")}
    for name, (preset, B, T, attention) in WORKLOADS.items():
        assert workload(name) == (ng.PRESETS[preset], B, T, attention)


def test_make_batch_masks_exactly_the_fraction():
    config, B, T, _ = workload("tiny")
    ids, labels = random_batch(config, B, T, mask_fraction=0.75, seed=3)
    assert ids.shape == labels.shape == (8, 128)
    assert (labels == -100).sum() == 768
    assert ((labels == -100) | ((labels >= 0) & (labels < 256))).all()
    ids2, labels2 = random_batch(config, B, T, mask_fraction=0.75, seed=3)
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
    assert bench_step_cli(*argv) == 0
    report = json.loads((tmp_path / "bench_step.json").read_text())
    out = capsys.readouterr().out
    assert "| tiny" in out and "numpygpt/PyTorch" in out
    assert "AdamW), and the whole step" in out and "page faults per step" in out
    assert report["repeats"] == 1 and report["engine"] == "fast" and report["attention"] is None
    assert report["results"][0]["attention"] == "standard"            # tiny's own core
    assert out.startswith("engine: fast (numpygpt/engine/)")
    assert "numpy" in report["machine"]
    assert report["threads"]["threads"] == parallel.get_threads()
    assert report["threads"]["parallel"] == (parallel.get_threads() > 1)
    assert f"numpygpt threads {parallel.get_threads()} (parallel" in out
    [r] = report["results"]
    assert r["name"] == "tiny" and r["batch_size"] == 8 and r["seq_len"] == 128
    assert r["config"]["n_embd"] == 128 and r["config"]["vocab_size"] == 256
    assert TIMING_KEYS <= set(r["numpygpt"])
    assert len(r["numpygpt"]["times_s"]) == 1
    assert r["numpygpt"]["median_s"] > 0 and r["matmul_gflops"] > 0
    assert r["numpygpt"]["peak_tracemalloc_bytes"] > 0
    assert r["flops"] == training_flops(workload("tiny")[0], 8, 128, causal=True,
                                        n_counted=r["counted_positions"])
    assert r["flops"] == formula_flops(workload("tiny")[0], 8, 128, r["counted_positions"])
    assert np.isclose(r["numpygpt"]["gflops_per_s"], r["flops"] / r["numpygpt"]["median_s"] / 1e9)
    assert r["threads"]["threads"] == parallel.get_threads()
    # the optimiser alone and the whole step, repeat by repeat
    opt, total = r["numpygpt_optimizer"], r["numpygpt_total"]
    assert len(opt["times_s"]) == 1 and opt["median_s"] > 0
    assert np.isclose(total["times_s"][0], r["numpygpt"]["times_s"][0] + opt["times_s"][0])
    assert isinstance(r["unreliable"], list)
    if use_torch:
        assert r["torch_adamw"] in ("fused", "foreach")
        assert np.isclose(r["torch_total"]["times_s"][0],
                          r["torch"]["times_s"][0] + r["torch_optimizer"]["times_s"][0])
        assert np.isclose(r["ratio_optimizer_vs_torch"],
                          opt["median_s"] / r["torch_optimizer"]["median_s"])
        assert np.isclose(r["ratio_total_vs_torch"], total["median_s"] / r["torch_total"]["median_s"])
        assert TIMING_KEYS <= set(r["torch"])
        assert r["losses_agree"] and r["loss_rel_diff"] <= 1e-4
        assert np.isclose(r["ratio_vs_torch"], r["numpygpt"]["median_s"] / r["torch"]["median_s"])
        assert r["counted_positions"] == 512
        assert "numpygpt_unmasked" in r and r["ratio_masked_vs_unmasked"] > 0
        assert "of positions -100" in out
    else:
        assert "torch" not in r and "ratio_vs_torch" not in r


def test_threads_option_and_the_reliability_verdict(monkeypatch, tmp_path, capsys):
    """--threads 1 runs serially and is recorded; a figure judged unreliable says why."""
    import numpygpt.cli.bench
    before = parallel._state["threads"]
    monkeypatch.setattr(bench_step, "problems", lambda *a: ["median repeat 90% above the fastest"])
    monkeypatch.setattr(numpygpt.cli.bench, "load_average", lambda: 1.5)
    monkeypatch.setattr(numpygpt.cli.bench, "others_cpu_now", lambda: 0.4)
    assert bench_step_cli("--configs", "tiny", "--repeats", "1", "--no-torch", "--threads", "1",
                          "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "bench_step.json").read_text())
    assert report["threads"]["threads"] == 1 and report["threads"]["parallel"] is False
    assert "numpygpt threads 1 (parallel off)" in out
    assert "tiny: UNRELIABLE: median repeat 90% above the fastest" in out
    assert ("load average (1 min) before the run 1.50; BUSY before the run: other processes "
            "used 40% of the CPUs" in out and report["loadavg_before"] == 1.5)
    assert report["results"][0]["unreliable"] == ["median repeat 90% above the fastest"]
    assert parallel._state["threads"] == before                 # the setting restored
    monkeypatch.setattr(bench_step, "problems", lambda *a: [])
    monkeypatch.setattr(numpygpt.cli.bench, "load_average", lambda: 1.9)   # our own, earlier work
    monkeypatch.setattr(numpygpt.cli.bench, "others_cpu_now", lambda: 0.02)
    assert bench_step_cli("--configs", "tiny", "--repeats", "1", "--no-torch") == 0
    out = capsys.readouterr().out
    assert "tiny: reliable (median repeat at most" in out and "BUSY" not in out


def test_a_busy_machine_and_a_reliable_verdict_are_never_said_of_the_same_figure(capsys):
    """Busy before the run: a figure whose own share of other processes was not measured is
    UNRELIABLE, not "reliable (other processes ? of the CPUs)"; one measured quiet during its
    own repeats is reliable."""
    row = {"name": "tiny", "unreliable": [], "others_cpu": None,
           "matmul_gflops_before_after": [10.0, 10.0], "numpygpt": {"above_fastest": 0.01}}
    text = "\n".join(bench_step.verdicts([row], others_before=0.9))
    assert "tiny: UNRELIABLE: other processes used 90% of the CPUs before the run, not " \
           "measured during it: another job shared the machine" in text
    assert "reliable (" not in text and "suspect" not in text
    text = "\n".join(bench_step.verdicts([{**row, "others_cpu": 0.02}], 0.9))
    assert "tiny: reliable (" in text and "other processes 2% of the CPUs" in text


def test_run_without_torch_installed(monkeypatch, tmp_path, capsys):
    import numpygpt.cli.bench
    monkeypatch.setattr(numpygpt.cli.bench, "torch_available", lambda: False)
    monkeypatch.setattr(bench_step, "torch_available", lambda: False)
    assert bench_step_cli("--configs", "tiny", "--repeats", "1", "--out", str(tmp_path)) == 0
    assert "numpygpt bench-step: note: PyTorch is not installed" in capsys.readouterr().err
    [r] = json.loads((tmp_path / "bench_step.json").read_text())["results"]
    assert "torch" not in r


@pytest.mark.parametrize("argv, message", [
    (["--configs", "huge"], "unknown ['huge']"),
    (["--configs", ","], "unknown"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1, got 0"),
    (["--warmup", "0"], "argument --warmup: expected an integer >= 1, got 0"),
    (["--mask-fraction", "1.0"], "argument --mask-fraction: expected a number in [0, 1), got '1.0'"),
    (["--mask-fraction", "nan"], "argument --mask-fraction: expected a number in [0, 1), got 'nan'"),
])
def test_bad_arguments_exit_2(tmp_path, argv, message, capsys):
    out_dir = tmp_path / "out"
    assert bench_step_cli(*argv, "--no-torch", "--out", str(out_dir)) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert message in err and err.count("\n") == 1
    assert err.startswith("numpygpt bench-step: error: ") and captured.out == ""
    assert not out_dir.exists()                            # refused before any work


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown workload 'gpt3'"):
        workload("gpt3")


def test_bench_loss_small_sizes():
    r = bench_loss.bench_loss(vocab_size=300, n_embd=8, rows=64, chunk_sizes=(None, 16), repeats=1)
    assert set(r["runs"]) == {"standard", "chunked chunk_rows=64", "chunked chunk_rows=16"}
    assert r["runs"]["standard"]["memory_ratio_vs_standard"] == 1.0
    # 16-row chunks hold a quarter of the logits at a time: less memory than the standard path
    assert r["runs"]["chunked chunk_rows=16"]["memory_ratio_vs_standard"] > 2
    assert "chunked chunk_rows=16" in "\n".join(bench_loss.format_loss(r))


def test_threads_above_the_cpus_are_capped_with_a_message(tmp_path, capsys):
    """--threads above the CPUs this process may run on: capped to them, said on stderr
    naming the option, as NUMPYGPT_THREADS is."""
    cpus = parallel.available_cpus()
    assert bench_step_cli("--configs", "tiny", "--repeats", "1", "--no-torch", "--threads",
                          str(cpus + 998), "--out", str(tmp_path)) == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "bench_step.json").read_text())
    assert report["threads"]["threads"] == cpus
    assert (f"--threads {cpus + 998} is more than the {cpus} CPUs this process may run on: "
            f"using {cpus} threads") in err
