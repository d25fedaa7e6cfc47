"""KV-cache decoding (gpt_forward with kv_cache=) equals the full forward pass; generation,
sampling, the `numpygpt generate` command."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt import decode as gen
from numpygpt.cli import main
from numpygpt.config import Execution
from numpygpt.decode import KVCache
from numpygpt.model import gpt_forward
from numpygpt.train import save_checkpoint

TEXTBOOK = Execution(attention="standard")


def forward_with_cache(model, ids, cache, mask=None):
    """New tokens ids (B,n) (mask (B,n) bool, False = left padding) -> logits (B,n,V);
    their keys and values are appended to the cache."""
    logits, rest = gpt_forward(ids, model.params, model.config, key_mask=mask, kv_cache=cache,
                               execution=TEXTBOOK)
    assert rest is None
    return logits


def tiny_model(pos_encoding="learned", dtype=np.float64, seed=0, vocab=19, n_positions=24):
    cfg = ng.GPTConfig(vocab_size=vocab, n_positions=n_positions, n_embd=16, n_head=2,
                       n_layer=2, pos_encoding=pos_encoding)
    return ng.GPT(cfg, seed=seed, dtype=dtype)


def decode_incrementally(model, ids, prefill, mask=None):
    """Prefill `prefill` tokens, then one token at a time -> logits (B,T,V)."""
    B, T = ids.shape
    cache = KVCache(model.config, B, T, model.dtype)
    chunks = [forward_with_cache(model, ids[:, :prefill], cache,
                                 None if mask is None else mask[:, :prefill].astype(bool))]
    for t in range(prefill, T):
        chunks.append(forward_with_cache(model, ids[:, t:t + 1], cache))
    assert cache.length == T
    return np.concatenate(chunks, axis=1)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_float32_decoding_stays_float32_and_close_to_full_forward(pos_encoding):
    model = tiny_model(pos_encoding, dtype=np.float32)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 9))
    inc = decode_incrementally(model, ids, prefill=4)
    assert inc.dtype == np.float32                       # no hidden float64 upcast on the way
    np.testing.assert_allclose(inc, model.logits(ids), rtol=1e-4, atol=1e-5)


@given(st.sampled_from(["learned", "rope"]), st.integers(1, 3), st.integers(1, 12),
       st.data())
def test_incremental_logits_equal_full_forward(pos_encoding, B, T, data):
    model = tiny_model(pos_encoding, seed=data.draw(st.integers(0, 3)))
    prefill = data.draw(st.integers(1, T))
    ids = np.random.default_rng(T).integers(0, model.config.vocab_size, (B, T))
    full = model.logits(ids)                                              # (B,T,V)
    inc = decode_incrementally(model, ids, prefill)
    assert inc.shape == full.shape
    np.testing.assert_allclose(inc, full, rtol=0, atol=1e-10 * np.abs(full).max())


@given(st.sampled_from(["learned", "rope"]), st.lists(st.integers(1, 8), min_size=2, max_size=4))
def test_left_padded_prefill_equals_full_forward_with_mask(pos_encoding, lengths):
    """Rows of different lengths, left-padded: each row's logits are those of the row alone."""
    model = tiny_model(pos_encoding)
    rng = np.random.default_rng(len(lengths))
    rows = [rng.integers(0, model.config.vocab_size, n) for n in lengths]
    ids, mask = ng.pad_sequences(rows, side="left")
    extra = rng.integers(0, model.config.vocab_size, (len(rows), 3))      # decoded after
    full_ids = np.concatenate([ids, extra], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(extra)], axis=1)
    inc = decode_incrementally(model, full_ids, ids.shape[1], full_mask)
    for b, row in enumerate(rows):
        alone = model.logits(np.concatenate([row, extra[b]])[None])[0]    # no padding at all
        np.testing.assert_allclose(inc[b][full_mask[b] == 1], alone, rtol=0,
                                   atol=1e-10 * np.abs(alone).max())


def test_cache_refuses_overflow_and_learned_positions_past_the_table():
    model = tiny_model()
    cache = KVCache(model.config, 1, 4, model.dtype)
    forward_with_cache(model, np.zeros((1, 3), int), cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        forward_with_cache(model, np.zeros((1, 2), int), cache)
    assert cache.length == 3                             # the refused step reserved nothing
    with pytest.raises(ValueError, match="n_positions"):
        KVCache(model.config, 1, 25, model.dtype)


def test_cache_shape_and_extend_reserves_slots():
    """k, v (L,B,H,max_len,D); extend hands out slots in order, positions count real tokens."""
    model = tiny_model()
    cfg = model.config
    cache = KVCache(cfg, 2, 6, np.float32)
    assert cache.k.shape == cache.v.shape == (cfg.n_layer, 2, cfg.n_head, 6, cfg.head_dim)
    assert cache.k.dtype == np.float32 and cache.length == 0 and cache.max_len == 6
    mask = np.array([[False, False, True], [True, True, True]])       # row 0 left-padded by 2
    pos, key_mask, t0 = cache.extend(mask, 3)
    assert t0 == 0 and cache.length == 3
    assert pos.tolist() == [[0, 0, 0], [0, 1, 2]]
    assert key_mask.tolist() == mask.tolist()
    pos, key_mask, t0 = cache.extend(None, 2)
    assert t0 == 3 and cache.length == 5
    assert pos.tolist() == [[1, 2], [3, 4]]
    assert key_mask.tolist() == [[False, False, True, True, True], [True] * 5]
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.extend(None, 2)


def greedy_without_cache(model, prompt, n):
    """Reference: recompute the full forward pass for every new token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model.logits(np.array([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_greedy_generation_equals_recomputing_everything(pos_encoding):
    model = tiny_model(pos_encoding, seed=3)
    prompts = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8, 9])]
    outs = gen.generate(model, prompts, 6)
    for p, out in zip(prompts, outs):
        assert out.tolist() == greedy_without_cache(model, p, 6)


def test_generation_stops_at_end_of_text():
    model = tiny_model(seed=3)
    prompt = np.array([1, 2, 3])
    free = greedy_without_cache(model, prompt, 8)
    eot = free[2]
    first = free.index(eot)
    out = gen.generate(model, [prompt], 8, eot_id=eot)[0]
    assert out.tolist() == free[:first]          # stops there, eot not included
    out = gen.generate(model, [prompt], 8, eot_id=free[0])[0]
    assert out.tolist() == []


def test_learned_positions_slide_a_window_past_n_positions():
    """Past n_positions the context restarts from its last n_positions // 2 tokens."""
    model = tiny_model(n_positions=10, seed=2)
    prompt = np.arange(7)
    out = gen.generate(model, [prompt], 30)[0]
    ctx, ref = list(prompt), []
    for _ in range(30):
        tok = int(model.logits(np.array([ctx]))[0, -1].argmax())
        ref.append(tok)
        ctx.append(tok)
        if len(ctx) > 10:
            ctx = ctx[-5:]
    assert out.tolist() == ref
    with pytest.raises(ValueError, match=r"prompts\[0\] has 11 tokens, more than n_positions=10"):
        gen.generate(model, [np.arange(11)], 5)


def test_sampling_is_seeded_and_top_k_restricts():
    model = tiny_model(dtype=np.float32, seed=1)
    prompts = [np.array([1, 2])] * 4
    a = gen.generate(model, prompts, 10, temperature=1.0, seed=5)
    b = gen.generate(model, prompts, 10, temperature=1.0, seed=5)
    c = gen.generate(model, prompts, 10, temperature=1.0, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    g = gen.generate(model, prompts[:1], 10)
    k1 = gen.generate(model, prompts[:1], 10, temperature=1.5, top_k=1)
    assert np.array_equal(g[0], k1[0])                          # top-1 sampling is greedy
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 20000))
    draws = gen.sample_next(logits, 1.0, top_k=2, rng=np.random.default_rng(0))
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).mean() - 0.625) < 0.02              # 0.5 / (0.5 + 0.3)
    draws = gen.sample_next(logits, 1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws),
                               [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_generate_rejects_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        gen.generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(model, [[1]], 3, temperature=-1)


# ---- the command: numpygpt generate, end to end through numpygpt.cli.main -----------------

def run_cli(argv):
    return main(["generate", *argv])


@pytest.fixture
def byte_checkpoint(tmp_path):
    cfg = ng.GPTConfig(vocab_size=257, n_positions=32, n_embd=16, n_head=2, n_layer=1)
    model = ng.GPT(cfg, seed=0)
    save_checkpoint(str(tmp_path / "ck"), cfg, model.params, step=0)
    return str(tmp_path / "ck"), model


def test_cli_generates_text_from_a_checkpoint(byte_checkpoint, capsys):
    path, model = byte_checkpoint
    assert run_cli(["--checkpoint", path, "--prompt", "Hi", "--max-new-tokens", "5",
                    "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    expected = gen.generate(model, [ng.ByteTokenizer().encode("Hi")], 5,
                            eot_id=256)[0]
    assert out == ng.ByteTokenizer().decode(np.concatenate([[72, 105], expected])) + "\n"
    assert run_cli(["--checkpoint", path, "--prompt-ids", "72,105", "--max-new-tokens", "3",
                    "--num-samples", "2", "--seed", "1"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a", "--prompt-ids", "1"], "exactly one of --prompt"),
    (["--prompt-ids", "1,x"], "item 1 = 'x' is not an integer"),
    (["--prompt-ids", "1,999"], "item 1 = 999 is outside"),
    (["--prompt", "a", "--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, got 0"),
])
def test_cli_user_errors(byte_checkpoint, capsys, argv, message):
    assert run_cli(["--checkpoint", byte_checkpoint[0]] + argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("numpygpt generate: error: ") and captured.out == ""


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert run_cli(["--checkpoint", str(tmp_path / "none"), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numpygpt generate: error: ") and "not a directory" in err


def test_cli_pretrained_directory(tmp_path, capsys):
    model = tiny_model(dtype=np.float32, vocab=257, n_positions=32)
    model.save_pretrained(str(tmp_path))
    # without a tokenizer: ids in, ids out
    assert run_cli(["--pretrained", str(tmp_path), "--prompt-ids", "1,2,3",
                    "--max-new-tokens", "4", "--temperature", "0"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.strip().split(",")]
    assert ids[:3] == [1, 2, 3] and ids[3:] == greedy_without_cache(model, [1, 2, 3], 4)
    assert run_cli(["--pretrained", str(tmp_path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numpygpt generate: error: ") and "use --prompt-ids" in err
    # with a byte-level BPE (no merges): text in, text out
    from numpygpt.io.bpe import bytes_to_unicode
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab["<|endoftext|>"] = 256
    with open(os.path.join(tmp_path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(tmp_path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    assert run_cli(["--pretrained", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "4",
                    "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hi")


def test_kv_cache_benchmark_runs_on_a_tiny_size(tmp_path, capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                        "generate_kv_cache.py")
    spec = importlib.util.spec_from_file_location("generate_kv_cache", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--new-tokens", "3", "5", "--repeats", "1", "--n-layer", "1",
                       "--n-embd", "8", "--n-head", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [row["new_tokens"] for row in r["rows"]] == [3, 5] and r["matmul_gflops_f32"] > 0
    for row in r["rows"]:
        assert row["kv_cache_s"] > 0 and row["recompute_s"] > 0
        assert row["speedup"] == pytest.approx(row["recompute_s"] / row["kv_cache_s"])
    assert "speedup" in capsys.readouterr().out
    assert bench.main(["--new-tokens", "0"]) == 2


@given(st.sampled_from(["learned", "rope"]), st.sampled_from([1, 2]), st.sampled_from(["textbook", "fast"]),
       st.integers(1, 8), st.data())
def test_grouped_query_decoding_equals_full_forward(pos_encoding, K, engine, T, data):
    """A cache of K key/value heads (L,B,K,capacity,D), H/K times smaller than GPT-2's."""
    cfg = ng.GPTConfig(vocab_size=19, n_positions=24, n_embd=16, n_head=4, n_layer=2,
                       n_kv_head=K, pos_encoding=pos_encoding)
    model = ng.GPT(cfg, seed=1, dtype=np.float64, execution=Execution(engine=engine))
    ids = np.random.default_rng(T).integers(0, 19, (2, T))
    prefill = data.draw(st.integers(1, T))
    cache = KVCache(cfg, 2, T, np.float64, initial=1)
    chunks = [model.forward(ids[:, :prefill], model.params, kv_cache=cache)[0]]
    chunks += [model.forward(ids[:, t:t + 1], model.params, kv_cache=cache)[0] for t in range(prefill, T)]
    full = model.logits(ids)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=0,
                               atol=1e-10 * np.abs(full).max())
    assert cache.k.shape[:3] == (2, 2, K) and cache.k.shape[4] == 4           # (L,B,K,capacity,D)
    from numpygpt.dataflow import kv_cache_bytes
    assert kv_cache_bytes(cfg, T, 8) == 2 * 2 * K * 4 * 8 * T
    full_cache = KVCache(cfg, 1, T, np.float64)
    assert full_cache.k.nbytes + full_cache.v.nbytes == kv_cache_bytes(cfg, T, 8)
