"""numpygpt.dataflow: parameter counts, FLOPs and activation bytes, each held against
something independent of the formulas: GPT.num_params, matmuls counted while the real
forward/backward run, and the arrays the real caches hold."""
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt import dataflow
from numpygpt.cli import main
from numpygpt.lm_head import lm_head_forward, lm_head_backward
from numpygpt.model import gpt_forward, gpt_backward, lm_head_weight


@st.composite
def configs(draw):
    n_head = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4]))
    T = draw(st.integers(1, 6))
    cfg = ng.GPTConfig(vocab_size=draw(st.integers(2, 20)), n_positions=T + draw(st.integers(0, 3)),
                       n_embd=n_head * head_dim, n_head=n_head, n_layer=draw(st.integers(1, 2)),
                       tie_word_embeddings=draw(st.booleans()),
                       pos_encoding=draw(st.sampled_from(["learned", "rope"])),
                       attn_impl=draw(st.sampled_from(["naive", "tiled"])),
                       attn_block_size=draw(st.integers(1, 4)))
    return cfg, draw(st.integers(1, 3)), T


def test_gpt2_124m_parameter_count():
    assert dataflow.param_count(ng.GPT2_SMALL) == 124_439_808
    rows = dataflow.stages(ng.GPT2_SMALL, 1, 1024)
    assert dataflow.totals(rows)["params"] == 124_439_808
    untied = ng.GPTConfig(tie_word_embeddings=False)
    assert dataflow.param_count(untied) == 124_439_808 + 50257 * 768


@given(configs())
def test_parameter_count_equals_the_model(case):
    cfg, B, T = case
    n = ng.GPT(cfg).num_params()
    assert dataflow.param_count(cfg) == n
    assert dataflow.totals(dataflow.stages(cfg, B, T))["params"] == n


class CountingArray(np.ndarray):
    """An ndarray that adds 2*m*n*k (times the batch) to `flops` for every matmul it is in."""
    flops = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul and method == "__call__":
            a, b = inputs[0], inputs[1]
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            CountingArray.flops += 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * int(np.prod(batch))
        plain = [x.view(np.ndarray) if isinstance(x, CountingArray) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, CountingArray) else o
                                  for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        if isinstance(result, np.ndarray):
            return result.view(CountingArray)
        return result


@settings(max_examples=10)
@given(configs())
def test_flops_equal_the_matmuls_the_model_runs(case):
    """The textbook attention computes all T^2 scores, so the counted FLOPs are the 'full' ones;
    the backward is exactly twice the forward."""
    cfg, B, T = case
    cfg = dataclasses.replace(cfg, attn_impl="naive")      # tiled computes whole tiles
    model = ng.GPT(cfg, dtype=np.float64)
    params = {k: v.view(CountingArray) for k, v in model.params.items()}
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
    CountingArray.flops = 0
    x, cache = gpt_forward(params, cfg, ids)
    logits, head_cache = lm_head_forward(x, lm_head_weight(params))
    fwd = CountingArray.flops
    CountingArray.flops = 0
    dx, _ = lm_head_backward(np.ones(logits.shape).view(CountingArray), head_cache)
    gpt_backward(dx, cache)
    bwd = CountingArray.flops
    assert fwd == dataflow.forward_flops(cfg, B, T, causal=False)
    assert bwd == 2 * fwd
    assert dataflow.training_flops(cfg, B, T, causal=False) == fwd + bwd


@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 4), st.sampled_from([2, 8]))
def test_causal_flops_count_the_allowed_pairs(B, T, H, D):
    cfg = ng.GPTConfig(vocab_size=5, n_positions=64, n_embd=H * D, n_head=H, n_layer=1)
    allowed = int(np.tril(np.ones((T, T))).sum())               # pairs (t, s) with s <= t
    per_pair = 2 * D * 2                                         # q.k and p*v, 2 FLOPs per MAC
    assert dataflow.attention_core_flops(cfg, B, T, causal=True) == B * H * allowed * per_pair
    assert dataflow.attention_core_flops(cfg, B, T, causal=False) == B * H * T * T * per_pair


def test_gpt2_training_flops_near_6_n_params_per_token():
    """Kaplan's rule of thumb: about 6 * parameters FLOPs per token, plus attention."""
    cfg, T = ng.GPT2_SMALL, 1024
    six_n = 6 * T * dataflow.param_count(cfg)          # wpe is not a matmul; lm_head is (tied wte)
    assert 0.95 < dataflow.training_flops(cfg, 1, T) / six_n < 1.15


def cache_bytes(cache, exclude):
    """Bytes of the distinct memory blocks the arrays in a cache hold (views counted once),
    leaving out the parameters."""
    def owner(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a
    skip = {id(owner(p)) for p in exclude}
    seen = {}

    def walk(obj):
        if isinstance(obj, np.ndarray):
            o = owner(obj)
            if id(o) not in skip:
                seen[id(o)] = o.nbytes
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)
    walk(cache)
    return sum(seen.values())


@settings(max_examples=10)
@given(configs(), st.sampled_from([np.float32, np.float64]))
def test_activation_bytes_equal_what_the_caches_hold(case, dtype):
    cfg, B, T = case
    model = ng.GPT(cfg, dtype=dtype)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, T))
    x, cache = gpt_forward(model.params, cfg, ids)
    rows = {r["name"].split(" ")[0]: r for r in dataflow.stages(cfg, B, T, np.dtype(dtype).itemsize)}
    body = sum(r["act_bytes"] for name, r in rows.items() if name not in ("lm_head", "cross_entropy"))
    exclude = list(model.params.values())
    assert cache_bytes(cache, exclude) == body
    _, head_cache = lm_head_forward(x, lm_head_weight(model.params))
    assert cache_bytes(head_cache, exclude) == rows["lm_head"]["act_bytes"]
    # the model's loss is the fused one: it keeps no (N,V) logits or gradient for the backward
    assert rows["cross_entropy"]["act_bytes"] == 0


@given(configs())
def test_inside_one_block_adds_up_to_the_block(case):
    cfg, B, T = case
    inside = dataflow.block_stages(cfg, B, T)
    assert sum(r[2] for r in inside) == dataflow.block_param_count(cfg)
    assert sum(r[3] for r in inside) == dataflow.block_forward_flops(cfg, B, T)
    assert sum(r[4] for r in inside) == dataflow.block_activation_bytes(cfg, B, T)


def test_stages_reject_bad_sizes():
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        dataflow.stages(ng.GPT2_SMALL, 1, 0)
    with pytest.raises(ValueError, match="seq_len=2048 > n_positions=1024"):
        dataflow.stages(ng.GPT2_SMALL, 1, 2048)
    with pytest.raises(ValueError, match="batch_size"):
        dataflow.stages(ng.GPT2_SMALL, 1.5, 8)


def test_dataflow_command_gpt2(capsys):
    assert main(["dataflow", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out
    assert "(1, 1,024, 50,257)" in out                   # logits
    assert out.count("(1, 1,024, 768)") >= 14             # embedding, 12 blocks, ln_f
    assert "2*B*T*(T+1)*C" in out and "backward           = 2 x forward" in out
    step = dataflow.training_flops(ng.GPT2_SMALL, 1, 1024)
    assert f"{step:,} causal" in out


def test_dataflow_command_json(capsys):
    argv = ["dataflow", "--n-layer", "3", "--n-embd", "16", "--n-head", "2", "--vocab-size", "50",
            "--seq-len", "12", "--batch-size", "2", "--untied", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    cfg = ng.GPTConfig(vocab_size=50, n_positions=1024, n_embd=16, n_head=2, n_layer=3,
                       tie_word_embeddings=False)
    assert data["totals"]["params"] == ng.GPT(cfg).num_params()
    assert data["training_flops"] == dataflow.training_flops(cfg, 2, 12)
    assert [r["name"] for r in data["stages"]][2:5] == ["h.0", "h.1", "h.2"]
    assert data["stages"][2]["shape"] == [2, 12, 16]


def test_dataflow_command_options_override_the_preset(capsys):
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "256", "--n-layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "(1, 256, 50,257)" in out and "h.1 " not in out
