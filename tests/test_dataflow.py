"""numpygpt.dataflow: parameter counts, FLOPs and activation bytes, each held against
something independent of the formulas: GPT.num_params, matmuls counted while the real
forward/backward run, and the arrays the real caches hold."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt import dataflow
from numpygpt.cli import main
from numpygpt.cli.dataflow import format_report
from numpygpt.model import gpt_forward, gpt_backward

GPT2 = ng.GPT2_124M


@st.composite
def configs(draw):
    n_head = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4]))
    T = draw(st.integers(1, 6))
    cfg = ng.GPTConfig(vocab_size=draw(st.integers(2, 20)), n_positions=T + draw(st.integers(0, 3)),
                       n_embd=n_head * head_dim, n_head=n_head, n_layer=draw(st.integers(1, 2)),
                       tie_word_embeddings=draw(st.booleans()),
                       pos_encoding=draw(st.sampled_from(["learned", "rope"])),
                       n_kv_head=draw(st.sampled_from([k for k in (1, 2, 3) if n_head % k == 0])))
    tile = draw(st.integers(1, 4))
    execution = ng.Execution(attention=draw(st.sampled_from(["standard", "tiled"])),
                             loss=draw(st.sampled_from(["standard", "chunked"])),
                             q_tile=tile, k_tile=draw(st.sampled_from([tile, 1024])))
    return cfg, draw(st.integers(1, 3)), T, execution


def test_gpt2_124m_parameter_count():
    assert dataflow.param_count(GPT2) == 124_439_808
    assert ng.PRESETS["gpt2"] == GPT2
    for loss in ("chunked", "standard"):
        rows = dataflow.stages(GPT2, 1, 1024, execution=ng.Execution(loss=loss))
        assert dataflow.totals(rows)["params"] == 124_439_808
    untied = ng.GPTConfig(tie_word_embeddings=False)
    assert dataflow.param_count(untied) == 124_439_808 + 50257 * 768


@given(configs())
def test_parameter_count_equals_the_model(case):
    cfg, B, T, execution = case
    n = ng.GPT(cfg).num_params()
    assert dataflow.param_count(cfg) == n
    assert dataflow.totals(dataflow.stages(cfg, B, T, execution=execution))["params"] == n


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
    with the textbook loss (the lm_head's backward runs in gpt_backward) the backward is exactly
    twice the forward."""
    cfg, B, T, _ = case
    execution = ng.Execution(attention="standard", loss="standard")   # tiled computes whole tiles
    model = ng.GPT(cfg, dtype=np.float64)
    params = {k: v.view(CountingArray) for k, v in model.params.items()}
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
    labels = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, T))
    CountingArray.flops = 0
    _, cache = gpt_forward(ids, params, cfg, labels, execution=execution)
    fwd = CountingArray.flops
    CountingArray.flops = 0
    gpt_backward(cache)
    bwd = CountingArray.flops
    assert fwd == dataflow.forward_flops(cfg, B, T, causal=False)
    assert bwd == 2 * fwd
    assert dataflow.training_flops(cfg, B, T, causal=False) == fwd + bwd


@settings(max_examples=10)
@given(configs(), st.floats(0.0, 1.0))
def test_chunked_loss_flops_count_the_targets_only(case, ignore_frac):
    """The fused loss does the lm_head's forward and backward matmuls in the forward, on the
    rows whose label is not -100 only: forward + backward = training_flops(n_counted)."""
    cfg, B, T, _ = case
    execution = ng.Execution(attention="standard", loss="chunked", loss_chunk=2)
    model = ng.GPT(cfg, dtype=np.float64)
    params = {k: v.view(CountingArray) for k, v in model.params.items()}
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    labels = rng.integers(0, cfg.vocab_size, (B, T))
    labels[rng.random((B, T)) < ignore_frac] = -100
    n = ng.count_targets(labels)
    CountingArray.flops = 0
    _, cache = gpt_forward(ids, params, cfg, labels, execution=execution)
    gpt_backward(cache)
    assert CountingArray.flops == dataflow.training_flops(cfg, B, T, causal=False, n_counted=n)


@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 4), st.sampled_from([2, 8]))
def test_causal_flops_count_the_allowed_pairs(B, T, H, D):
    cfg = ng.GPTConfig(vocab_size=5, n_positions=64, n_embd=H * D, n_head=H, n_layer=1)
    allowed = int(np.tril(np.ones((T, T))).sum())               # pairs (t, s) with s <= t
    per_pair = 2 * D * 2                                         # q.k and p*v, 2 FLOPs per MAC
    assert dataflow.attention_core_flops(cfg, B, T, causal=True) == B * H * allowed * per_pair
    assert dataflow.attention_core_flops(cfg, B, T, causal=False) == B * H * T * T * per_pair


@given(st.integers(1, 2), st.integers(1, 40), st.integers(1, 3), st.integers(1, 45))
def test_window_flops_count_the_band(B, T, H, window):
    """The closed form against the pairs the band allows, counted from a mask built here."""
    cfg = ng.GPTConfig(vocab_size=5, n_positions=64, n_embd=H * 2, n_head=H, n_layer=1,
                       sliding_window=window)
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = int(((s <= t) & (t - s < window)).sum())
    assert dataflow.attention_core_flops(cfg, B, T) == B * H * allowed * 2 * 2 * 2
    assert dataflow.attended_pairs(T, window=window) == allowed
    if window >= T:                                       # the window holds every earlier key
        assert dataflow.attended_pairs(T, window=window) == T * (T + 1) // 2


def test_window_flops_grow_as_n_w():
    """Past W, each added query scores exactly W keys: T more queries, T*W more pairs."""
    for T in (2048, 4096, 8192):
        assert dataflow.attended_pairs(2 * T, window=512) - dataflow.attended_pairs(T, window=512) \
            == T * 512


@given(st.integers(1, 60), st.sampled_from([None, 1, 4, 16]))
def test_kv_cache_tokens_are_the_keys_a_new_token_reads(n, window):
    """The n-th token (n - 1 before it in the cache) attends to kv_cache_tokens(n) keys:
    what the rolling cache (decode/kv_cache.py) hands its attention."""
    from numpygpt.decode import KVCache
    cfg = ng.GPTConfig(vocab_size=5, n_positions=64, n_embd=4, n_head=2, n_layer=1,
                       sliding_window=window)
    model = ng.GPT(cfg)
    cache = KVCache(cfg, 1, n)
    if n > 1:
        model.forward(np.zeros((1, n - 1), int), model.params, kv_cache=cache)
    _, key_mask, _ = cache.extend(None, 1)
    assert key_mask.shape == (1, dataflow.kv_cache_tokens(cfg, n))
    assert dataflow.kv_cache_tokens(cfg, n) == (n if window is None else min(n, window))


def test_gpt2_training_flops_near_6_n_params_per_token():
    """Kaplan's rule of thumb: about 6 * parameters FLOPs per token, plus attention."""
    cfg, T = GPT2, 1024
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


@settings(max_examples=12)
@given(configs(), st.sampled_from([np.float32, np.float64]))
def test_activation_bytes_equal_what_the_caches_hold(case, dtype):
    """Byte for byte, for both attention and both loss implementations: gpt_forward's cache
    (top, ln_f_cache, block_caches, emb_cache, tied) holds exactly what stages()
    counts, stage by stage."""
    cfg, B, T, execution = case
    model = ng.GPT(cfg, dtype=dtype)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    labels = rng.integers(0, cfg.vocab_size, (B, T))
    labels[0, 0] = -100                                   # the chunked loss skips a row, keeps its dx
    loss, cache = gpt_forward(ids, model.params, cfg, labels, execution=execution)
    top, ln_f_cache, block_caches, emb_cache, tied = cache
    assert top[0] == execution.loss and tied == cfg.tie_word_embeddings
    rows = dataflow.stages(cfg, B, T, np.dtype(dtype).itemsize, execution=execution)
    act = {r["name"]: r["act_bytes"] for r in rows}
    exclude = list(model.params.values())
    # the loss: standard keeps the lm_head input (N,C) and dlogits (N,V); chunked dx (N,C), dW (V,C)
    loss_rows = [r for r in rows if r["name"].startswith(("lm_head", "cross_entropy"))]
    assert ["chunked" in r["name"] for r in loss_rows] == (
        [True] if execution.loss == "chunked" else [False, False])
    assert cache_bytes(top, exclude) == sum(r["act_bytes"] for r in loss_rows)
    assert cache_bytes(ln_f_cache, exclude) == act["ln_f"]
    # the blocks: rope's cos and sin are made once and shared by every layer (their own row),
    # so each block's cache holds its own row's bytes and those
    rope = act["rope cos, sin"] if cfg.pos_encoding == "rope" else 0
    for i, block_cache in enumerate(block_caches):
        assert cache_bytes(block_cache, exclude) == act[f"h.{i}"] + rope, i
    assert cache_bytes(block_caches, exclude) == sum(act[f"h.{i}"] for i in range(cfg.n_layer)) + rope
    emb_row = next(r for r in rows if r["name"].startswith("embedding"))
    assert cache_bytes(emb_cache, exclude) == act["ids"] + emb_row["act_bytes"]
    # and the whole cache, every array counted once
    assert cache_bytes(cache, exclude) == dataflow.totals(rows)["act_bytes"]


@given(configs())
def test_inside_one_block_adds_up_to_the_block(case):
    cfg, B, T, execution = case
    inside = dataflow.block_stages(cfg, B, T, execution=execution)
    assert sum(r[2] for r in inside) == dataflow.block_param_count(cfg)
    assert sum(r[3] for r in inside) == dataflow.block_forward_flops(cfg, B, T)
    assert sum(r[4] for r in inside) == dataflow.block_activation_bytes(cfg, B, T, execution=execution)


@given(configs(), st.sampled_from([4, 8]))
def test_closed_forms_equal_the_sum_of_the_stages(case, itemsize):
    """param_count and activation_bytes (no loop over layers: what memory estimates use) are
    the sums of the per-stage rows, which the tests above hold against the real model."""
    cfg, B, T, execution = case
    tot = dataflow.totals(dataflow.stages(cfg, B, T, itemsize, execution=execution))
    assert dataflow.param_count(cfg) == tot["params"] == sum(
        int(np.prod(s)) for s in ng.param_shapes(cfg).values())
    assert dataflow.activation_bytes(cfg, B, T, itemsize, execution) == tot["act_bytes"]


def test_stages_reject_bad_sizes():
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        dataflow.stages(GPT2, 1, 0)
    with pytest.raises(ValueError, match="seq_len=2048 > n_positions=1024"):
        dataflow.stages(GPT2, 1, 2048)
    with pytest.raises(ValueError, match="batch_size"):
        dataflow.stages(GPT2, 1.5, 8)


def test_dataflow_command_gpt2(capsys):
    assert main(["dataflow", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out
    assert "attention standard, loss chunked" in out               # the defaults
    assert "lm_head + loss (chunked, tied)" in out
    assert out.count("(1, 1,024, 768)") >= 14             # embedding, 12 blocks, ln_f
    assert "2*B*T*(T+1)*C" in out and "backward           = 2 x forward" in out
    step = dataflow.training_flops(GPT2, 1, 1024)
    assert f"{step:,} causal" in out
    assert out.rstrip("\n") == format_report(GPT2, 1, 1024, 4, True, ng.Execution(loss="chunked"),
                                              "numpygpt dataflow --preset gpt2")
    # the standard loss computes the logits
    assert main(["dataflow", "--preset", "gpt2", "--loss", "standard"]) == 0
    out = capsys.readouterr().out
    assert "(1, 1,024, 50,257)" in out                   # logits
    assert f"{step:,} causal" in out
    assert "attention standard, loss standard" in out


@pytest.mark.parametrize("attention", ["standard", "tiled"])
@pytest.mark.parametrize("loss", ["standard", "chunked"])
def test_format_report_follows_the_execution(attention, loss):
    cfg, B, T = ng.PRESETS["tiny"], 2, 64
    execution = ng.Execution(attention=attention, loss=loss)
    text = format_report(cfg, B, T, 4, True, execution, "a title")
    assert text.splitlines()[0] == "a title"
    assert f"attention {attention}, loss {loss}" in text
    rows = dataflow.stages(cfg, B, T, 4, True, execution)
    act = dataflow.totals(rows)["act_bytes"]
    assert f"activations kept:      {act:,} bytes" in text
    assert ("keeps the log-sum-exp" in text) == (attention == "tiled")
    assert ("softmax (causal mask)" in text) == (attention == "standard")
    assert ("(2, 64, 256)" in text) == (loss == "standard")                # the logits (B,T,V)
    # the tiled attention keeps no (B,H,T,T) array, the fused loss no (N,V) one
    other = ng.Execution(attention="standard" if attention == "tiled" else "tiled", loss=loss)
    diff = dataflow.totals(dataflow.stages(cfg, B, T, 4, True, other))["act_bytes"] - act
    H = cfg.n_head
    assert diff == (1 if attention == "tiled" else -1) * cfg.n_layer * B * H * T * (T - 1) * 4


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
    assert data["attention"] == "standard" and data["loss"] == "chunked"
    assert data["totals"] == dataflow.totals(dataflow.stages(cfg, 2, 12, execution=ng.Execution(loss="chunked")))
    # --attention and --loss reach the counting
    assert main(argv + ["--attention", "tiled", "--loss", "standard"]) == 0
    data = json.loads(capsys.readouterr().out)
    execution = ng.Execution(attention="tiled", loss="standard")
    assert data["attention"] == "tiled" and data["loss"] == "standard"
    assert data["totals"] == dataflow.totals(dataflow.stages(cfg, 2, 12, execution=execution))


def test_dataflow_command_options_override_the_preset(capsys):
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "256", "--n-layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "(1, 256, 768)" in out and "h.1 " not in out
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "256", "--n-layer", "1",
                 "--loss", "standard"]) == 0
    out = capsys.readouterr().out
    assert "(1, 256, 50,257)" in out and "h.1 " not in out


def test_dataflow_command_refuses_a_longer_learned_table(capsys):
    """--seq-len beyond a learned table is refused, not grown (the table is the model)."""
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "2048"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numpygpt dataflow: error: ") and "n_positions=1024" in err
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "2048", "--pos-encoding", "rope"]) == 0


def test_dataflow_command_counts_a_sliding_window(capsys):
    argv = ["dataflow", "--preset", "gpt2", "--seq-len", "1024", "--n-layer", "1", "--json"]
    assert main(argv) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(argv + ["--sliding-window", "256"]) == 0
    windowed = json.loads(capsys.readouterr().out)
    cfg = ng.GPTConfig(n_layer=1, sliding_window=256)
    core = dataflow.attention_core_flops(cfg, 1, 1024)
    assert core == 4 * 64 * 12 * (256 * 257 // 2 + (1024 - 256) * 256)
    block = lambda rows: next(r for r in rows if r["name"] == "h.0")
    assert block(windowed["stages"])["fwd_flops"] == 24 * 1024 * 768 ** 2 + core
    assert block(full["stages"])["fwd_flops"] > block(windowed["stages"])["fwd_flops"]
    assert main(["dataflow", "--sliding-window", "0"]) == 2
    assert "--sliding-window" in capsys.readouterr().err


def test_an_mqa_model_from_the_cli_counts_its_kv_heads(capsys):
    assert main(["dataflow", "--n-head", "4", "--n-kv-head", "1", "--n-embd", "16",
                "--n-layer", "1", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "n_head=4 n_layer=1 tied=True pos=learned n_kv_head=1;" in out
    c_attn = next(line for line in out.splitlines() if "attn.c_attn" in line)
    assert "(8, 8, 24)" in c_attn and " 408 " in c_attn   # C + 2*K*D = 16 + 2*1*4; 16*24 + 24


def test_decode_token_bytes_and_flops_by_hand():
    """C=8, H=4 (D=2), L=2, V=10: a block 12*64 + 13*8 = 872 parameters; wte 80, ln_f 16."""
    decode_token_bytes, decode_weight_bytes = dataflow.decode_token_bytes, dataflow.decode_weight_bytes
    decode_token_flops = dataflow.decode_token_flops
    rope = ng.GPTConfig(vocab_size=10, n_embd=8, n_head=4, n_layer=2, pos_encoding="rope")
    assert decode_weight_bytes(rope) == 4 * (80 + 2 * 872 + 16)
    assert decode_token_bytes(rope, 5) == 4 * (80 + 2 * 872 + 16) + 2 * 2 * 4 * 2 * 5 * 4
    # learned positions: the (16,8) table is not read (one row); untied: wte not read, lm_head is
    learned = ng.GPTConfig(vocab_size=10, n_positions=16, n_embd=8, n_head=4, n_layer=2,
                        tie_word_embeddings=False)
    assert decode_weight_bytes(learned) == decode_weight_bytes(rope)
    # K=1: c_attn (8+1) x (8 + 2*2) = 108 in place of 9 x 24 = 216; the cache 1/4
    mqa = ng.GPTConfig(vocab_size=10, n_embd=8, n_head=4, n_layer=2, pos_encoding="rope", n_kv_head=1)
    assert decode_token_bytes(mqa, 5, itemsize=2) == 2 * (80 + 2 * (872 - 108) + 16) + 2 * 2 * 1 * 2 * 5 * 2
    # a window W=3: the 5th token reads 3 tokens of the cache
    window = ng.GPTConfig(vocab_size=10, n_embd=8, n_head=4, n_layer=2, pos_encoding="rope",
                       sliding_window=3)
    assert decode_token_bytes(window, 5) - decode_weight_bytes(window) == 2 * 2 * 4 * 2 * 3 * 4
    # FLOPs: per layer c_attn 2*8*24, c_proj + MLP 2*(64 + 256 + 256), the core 4*8 per key
    assert decode_token_flops(rope, 5) == 2 * (384 + 1152 + 4 * 8 * 5) + 2 * 8 * 10
    assert decode_token_flops(window, 5) == 2 * (384 + 1152 + 4 * 8 * 3) + 2 * 8 * 10


def test_dataflow_command_reports_the_cores_bytes(capsys):
    """B=1, H=2, K=1, D=4, T=8, q_tile 128 (one query block reading the 8 keys), float32:
    Q = 64, KV = 32, R = 16, M = 128, n = 8 keys * K*D = 32 (numpygpt/attention_cost.py's
    model, counted here by hand)."""
    argv = ["dataflow", "--n-embd", "8", "--n-head", "2", "--n-kv-head", "1", "--n-layer", "1",
            "--batch-size", "1", "--seq-len", "8"]
    assert main(argv + ["--json"]) == 0
    rows = {(r["core"], r["pass"]): r for r in json.loads(capsys.readouterr().out)["attention_core"]}
    # standard: 2Q + 2KV + 4M = 704 numbers; with the backward 6Q + 6KV + 10M = 1856
    assert rows["standard", "forward"]["bytes"] == 704 * 4
    assert rows["standard", "forward+backward"]["bytes"] == 1856 * 4
    # tiled: 2Q + R + 2n = 128 + 16 + 64 = 208; 7Q + 4R + 2KV + 8n = 448 + 64 + 64 + 256 = 832
    assert rows["tiled", "forward"]["bytes"] == 208 * 4
    assert rows["tiled", "forward+backward"]["bytes"] == 832 * 4
    # FLOPs: 36 causal pairs a head, 2 heads, 4*D each: 1152 forward, 3456 with the backward
    assert rows["tiled", "forward"]["flops"] == 1152
    assert rows["tiled", "forward+backward"]["intensity"] == 3456 / (832 * 4)
    assert main(argv + ["--attention", "tiled"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("tiled     forward "))
    assert line.split() == ["tiled", "forward", "1.15", "K", "832", "B", "1.4", "<-", "--attention"]
