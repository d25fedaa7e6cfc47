"""The KV cache with a sliding window: a rolling buffer. Decoding with it equals the full
forward pass position by position, far beyond W tokens, whatever the chunks (a prefill longer
than W included), in both tiers and both cores; it holds at most 2W slots between calls, and
each new token reads min(t + 1, W) keys."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt import decode as gen
from numpygpt.decode import KVCache, kv_cache
from numpygpt.gradcheck import swapped
from numpygpt.gradcheck.attention_bugs import move_to_front_one_slot_late


def windowed_model(window, pos_encoding="rope", engine="textbook", attention="standard", seed=0,
                   n_positions=64):
    cfg = ng.GPTConfig(vocab_size=19, n_positions=n_positions, n_embd=8, n_head=2, n_layer=2,
                       pos_encoding=pos_encoding, sliding_window=window)
    return ng.GPT(cfg, seed=seed, dtype=np.float64,
                  execution=ng.Execution(engine=engine, attention=attention, q_tile=2, k_tile=3))


def decode_in_chunks(model, ids, chunks, mask=None, initial=None):
    """ids (B,T) fed to one cache in pieces of the given sizes -> logits (B,T,V), the cache."""
    B, T = ids.shape
    cache = KVCache(model.config, B, T, model.dtype, initial=initial)
    out, t = [], 0
    for n in chunks:
        m = None if mask is None else mask[:, t:t + n]
        logits, _ = model.forward(ids[:, t:t + n], model.params, key_mask=m, kv_cache=cache)
        out.append(logits.copy())
        t += n
    assert cache.length == T
    return np.concatenate(out, axis=1), cache


def cut(T, sizes):
    """T cut into the drawn sizes (the last piece what is left)."""
    chunks, left = [], T
    for n in sizes:
        if left == 0:
            break
        chunks.append(min(n, left))
        left -= chunks[-1]
    return chunks + ([left] if left else [])


@given(st.integers(1, 5), st.integers(1, 24), st.lists(st.integers(1, 9), min_size=1, max_size=8),
       st.sampled_from(["learned", "rope"]), st.sampled_from(["textbook", "fast"]),
       st.sampled_from(["standard", "tiled"]), st.integers(1, 3), st.integers(0, 3))
def test_decoding_with_a_window_equals_the_full_forward(window, T, sizes, pos_encoding, engine,
                                                        attention, initial, seed):
    model = windowed_model(window, pos_encoding, engine, attention, seed)
    ids = np.random.default_rng(seed).integers(0, 19, (2, T))
    full = model.logits(ids).copy()
    inc, _ = decode_in_chunks(model, ids, cut(T, sizes), initial=initial)
    np.testing.assert_allclose(inc, full, rtol=0, atol=1e-10 * np.abs(full).max())


@given(st.integers(1, 4), st.lists(st.integers(1, 7), min_size=2, max_size=3),
       st.sampled_from(["learned", "rope"]))
def test_left_padded_rows_decode_as_alone_with_a_window(window, lengths, pos_encoding):
    model = windowed_model(window, pos_encoding)
    rng = np.random.default_rng(len(lengths))
    rows = [rng.integers(0, 19, n) for n in lengths]
    ids, mask = ng.pad_sequences(rows, side="left")
    extra = rng.integers(0, 19, (len(rows), 9))                  # decoded after, past W
    full_ids = np.concatenate([ids, extra], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(extra)], axis=1).astype(bool)
    inc, _ = decode_in_chunks(model, full_ids, [ids.shape[1]] + [1] * 9, full_mask)
    for b, row in enumerate(rows):
        alone = model.logits(np.concatenate([row, extra[b]])[None])[0]
        np.testing.assert_allclose(inc[b][full_mask[b]], alone, rtol=0,
                                   atol=1e-10 * np.abs(alone).max())


def test_the_rolling_buffer_holds_o_of_w_slots_and_a_token_reads_w_keys():
    W = 4
    model = windowed_model(W)
    cache = KVCache(model.config, 1, 10_000, model.dtype)
    assert cache.capacity == 2 * W                       # min(max_len, 2W), not max_len
    ids = np.random.default_rng(0).integers(0, 19, (1, 300))
    model.forward(ids[:, :20], model.params, kv_cache=cache)      # a prefill of 20 > 2W tokens
    assert cache.capacity == 20                         # grown for that call
    for t in range(20, 300):
        model.forward(ids[:, t:t + 1], model.params, kv_cache=cache)
        first, new = cache.seen                        # the slots token t saw, and its own
        assert new - first + 1 == W                    # its window: W keys, itself included
        assert cache.capacity == 2 * W                 # the first slide shrank it back
        assert cache.k.shape[3] == cache.key_mask.shape[1] == 2 * W


def test_without_a_window_the_cache_keeps_every_token():
    model = windowed_model(None)
    cache = KVCache(model.config, 1, 50, model.dtype, initial=4)
    model.forward(np.zeros((1, 30), int), model.params, kv_cache=cache)
    model.forward(np.zeros((1, 1), int), model.params, kv_cache=cache)
    assert cache.seen == (0, 30) and cache.start == 0 and cache.capacity == 50


@pytest.mark.parametrize("engine", ["textbook", "fast"])
def test_greedy_generation_with_a_window_equals_recomputing_everything(engine):
    """Rotary positions: generation goes on far past W with the rolling cache."""
    model = windowed_model(3, engine=engine, seed=2)
    prompts = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([8])]
    outs = gen.generate(model, prompts, 12)
    for p, out in zip(prompts, outs):
        ids = list(p)
        for _ in range(12):
            ids.append(int(model.logits(np.array([ids]))[0, -1].argmax()))
        assert out.tolist() == ids[len(p):]


def test_a_rolling_cache_writing_the_wrong_slot_is_caught_by_decode_equality():
    """The zoo's rolling-cache-wrong-slot (gradcheck/attention_bugs.py): the kept keys and
    values moved one slot late. Decoding has no backward, so what catches it is decode
    equality, the cached logits against the full forward, from the buffer's first slide on."""
    model = windowed_model(3)
    ids = np.random.default_rng(0).integers(0, 19, (2, 20))
    full = model.logits(ids).copy()
    right, _ = decode_in_chunks(model, ids, [5] + [1] * 15)
    np.testing.assert_allclose(right, full, rtol=0, atol=1e-10 * np.abs(full).max())
    with swapped((kv_cache.move_to_front, move_to_front_one_slot_late)):
        wrong, _ = decode_in_chunks(model, ids, [5] + [1] * 15)
    np.testing.assert_allclose(wrong[:, :6], full[:, :6], rtol=0, atol=1e-10)   # 2W slots: no slide
    assert np.abs(wrong - full).max() > 1e-3                                   # after it
