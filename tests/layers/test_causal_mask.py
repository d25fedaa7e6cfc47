"""The mask, sliding window included: allowed_keys against a band built here from the
definition (query t sees key s when 0 <= t - s < W); both attention cores and the layer
gradient-checked in float64 with windows (T below, at and above W, padding, T = 1, W = 1);
W >= T is full causal attention bit for bit; the tiled core equals the standard core with
windows, also when the queries are the last of more keys (a KV cache); a whole windowed GPT
against finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.gradcheck import check_model
from numpygpt.layers import (allowed_keys, attention_forward, attention_backward,
                             causal_attention_forward, causal_attention_backward,
                             tiled_attention_forward, tiled_attention_backward)
from helpers import assert_grads_match, tiny_config

WINDOWS = st.sampled_from([None, 1, 2, 3, 5, 8])


def band(n_query, n_key, window):
    """(n_query, n_key) bool, one (query, key) pair at a time: query i is at position
    t = n_key - n_query + i and sees key s when 0 <= t - s < window (no upper limit: None)."""
    seen = np.zeros((n_query, n_key), dtype=bool)
    for i in range(n_query):
        t = n_key - n_query + i
        for s in range(n_key):
            distance = t - s
            seen[i, s] = distance >= 0 and (window is None or distance < window)
    return seen


def qkv(rng, B, H, T, Tk, D):
    return (rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, Tk, D)),
            rng.standard_normal((B, H, Tk, D)))


def padding(rng, B, Tk, kind):
    """None; left padding in row 0 (maybe all of it: query rows with no key); random holes."""
    if kind == "none":
        return None
    mask = np.ones((B, Tk), dtype=bool)
    if kind == "left":
        mask[0, :rng.integers(1, Tk + 1)] = False
    else:
        mask = rng.random((B, Tk)) < 0.7
    return mask


@given(st.integers(1, 9), st.integers(0, 6), WINDOWS, st.integers(0, 2**16))
def test_allowed_keys_is_the_band(n_query, extra, window, seed):
    n_key = n_query + extra
    want = band(n_query, n_key, window)
    np.testing.assert_array_equal(allowed_keys(n_query, n_key, window=window), want)
    rng = np.random.default_rng(seed)
    i0 = int(rng.integers(0, n_query))
    i1 = int(rng.integers(i0 + 1, n_query + 1))
    j0 = int(rng.integers(0, n_key))
    j1 = int(rng.integers(j0 + 1, n_key + 1))
    tile = allowed_keys(n_query, n_key, queries=(i0, i1), keys=(j0, j1), window=window)
    np.testing.assert_array_equal(tile, want[i0:i1, j0:j1])          # a tile is the band's tile
    key_mask = rng.random((2, n_key)) < 0.6
    np.testing.assert_array_equal(allowed_keys(n_query, n_key, key_mask, window=window),
                                  want & key_mask[:, None, None, :])


def test_a_query_sees_its_last_w_keys():
    """The band by example: 5 positions, W = 2 (row t: keys t-1 and t)."""
    np.testing.assert_array_equal(allowed_keys(5, 5, window=2).astype(int), [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(allowed_keys(2, 5, window=2).astype(int), [   # a KV cache's
        [0, 0, 1, 1, 0],                                                    # last 2 queries
        [0, 0, 0, 1, 1]])


shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 2), "T": st.integers(1, 9),
    "extra": st.sampled_from([0, 0, 3]), "D": st.sampled_from([1, 3]),
    "window": st.integers(1, 10), "q_tile": st.integers(1, 4), "k_tile": st.integers(1, 5),
    "mask": st.sampled_from(["none", "left", "holes"]), "seed": st.integers(0, 2**16)})


def core_problem(d):
    rng = np.random.default_rng(d["seed"])
    T, Tk = d["T"], d["T"] + d["extra"]
    q, k, v = qkv(rng, d["B"], d["H"], T, Tk, d["D"])
    return {"q": q, "k": k, "v": v}, padding(rng, d["B"], Tk, d["mask"]), \
        rng.standard_normal(q.shape)


@given(shapes, st.sampled_from(["standard", "tiled"]))
def test_core_gradients_with_a_window(d, core):
    """T below, at and above W (T in 1..9, W in 1..10), padding, cached keys: both cores'
    backwards against central differences."""
    a, mask, R = core_problem(d)
    if core == "tiled":
        forward, backward = tiled_attention_forward, tiled_attention_backward
        run = lambda: forward(a["q"], a["k"], a["v"], mask, d["q_tile"], d["k_tile"], d["window"])
    else:
        forward, backward = causal_attention_forward, causal_attention_backward
        run = lambda: forward(a["q"], a["k"], a["v"], mask, d["window"])
    y, cache = run()
    assert np.isfinite(y).all()
    (dq, dk, dv), _ = backward(R, cache)
    assert_grads_match(lambda: float((run()[0] * R).sum()), a, {"q": dq, "k": dk, "v": dv})


@given(shapes)
def test_tiled_equals_standard_with_a_window(d):
    a, mask, R = core_problem(d)
    y_ref, c_ref = causal_attention_forward(a["q"], a["k"], a["v"], mask, d["window"])
    y, cache = tiled_attention_forward(a["q"], a["k"], a["v"], mask, d["q_tile"], d["k_tile"],
                                       d["window"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(tiled_attention_backward(R, cache)[0],
                        causal_attention_backward(R, c_ref)[0]):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-11)


@given(shapes, st.sampled_from(["standard", "tiled"]))
def test_a_window_of_at_least_tk_is_full_causal_attention_bit_for_bit(d, core):
    a, mask, R = core_problem(d)
    Tk = a["k"].shape[2]
    if core == "tiled":
        run = lambda w: tiled_attention_forward(a["q"], a["k"], a["v"], mask, d["q_tile"],
                                                d["k_tile"], w)
        backward = tiled_attention_backward
    else:
        run = lambda w: causal_attention_forward(a["q"], a["k"], a["v"], mask, w)
        backward = causal_attention_backward
    (y, cache), (y_full, cache_full) = run(Tk + d["window"] - 1), run(None)
    np.testing.assert_array_equal(y, y_full)
    for g, g_full in zip(backward(R, cache)[0], backward(R, cache_full)[0]):
        np.testing.assert_array_equal(g, g_full)


@given(st.integers(2, 9), st.integers(1, 8), st.integers(0, 2**16))
def test_a_query_ignores_every_key_outside_its_window(T, window, seed):
    """Changing key s and value s changes exactly the outputs of the queries t - W < s <= t."""
    rng = np.random.default_rng(seed)
    q, k, v = qkv(rng, 1, 2, T, T, 3)
    y, _ = causal_attention_forward(q, k, v, window=window)
    s = int(rng.integers(0, T))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, s] += 1.0
    v2[:, :, s] += 1.0
    y2, _ = causal_attention_forward(q, k2, v2, window=window)
    changed = np.abs(y2 - y).max(axis=(0, 1, 3)) > 0                    # (T,)
    np.testing.assert_array_equal(changed, [s <= t < s + window for t in range(T)])


@given(st.integers(1, 2), st.integers(1, 7), st.integers(1, 2), st.integers(1, 8), st.booleans(),
       st.booleans(), st.sampled_from(["standard", "tiled"]), st.integers(0, 2**16))
def test_attention_layer_gradients_with_a_window(B, T, H, window, use_mask, use_rope, core, seed):
    rng = np.random.default_rng(seed)
    D = 2
    C = H * D
    a = {"x": rng.standard_normal((B, T, C)),
         "c_attn.weight": rng.standard_normal((C, 3 * C)), "c_attn.bias": rng.standard_normal(3 * C),
         "c_proj.weight": rng.standard_normal((C, C)), "c_proj.bias": rng.standard_normal(C)}
    mask = padding(rng, B, T, "holes") if use_mask else None
    rope = ng.rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), D, dtype=np.float64) if use_rope else None
    R = rng.standard_normal((B, T, C))
    p = {k: v for k, v in a.items() if k != "x"}
    run = lambda: attention_forward(a["x"], p, H, key_mask=mask, rope=rope, attention=core,
                                    q_tile=2, k_tile=3, window=window)
    _, cache = run()
    dx, g = attention_backward(R, cache)
    assert_grads_match(lambda: float((run()[0] * R).sum()), a, {"x": dx, **g})


@settings(max_examples=4)
@pytest.mark.parametrize("T, window", [(3, 5), (5, 5), (8, 3), (1, 1), (6, 1)])
@given(st.sampled_from(["standard", "tiled"]), st.sampled_from(["learned", "rope"]),
       st.integers(0, 2**16))
def test_windowed_gpt_gradients(T, window, core, pos_encoding, seed):
    """A whole GPT with sliding_window: T below, at and above W, W = 1, T = 1, left padding."""
    cfg = tiny_config(pos_encoding=pos_encoding, sliding_window=window)
    model = ng.GPT(cfg, seed=seed, dtype=np.float64,
                   execution=ng.Execution(attention=core, q_tile=2, k_tile=3))
    rng = np.random.default_rng(seed)
    ids, labels = rng.integers(0, 23, (2, T)), rng.integers(0, 23, (2, T))
    mask = np.ones((2, T), dtype=int)
    mask[1, :T // 2] = 0
    labels[mask == 0] = -100
    results = check_model(model, ids, labels, mask, max_coords=8, seed=seed)
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, bad


def test_windowed_gpt_differs_from_full_only_past_the_window():
    """Logits at positions t < W are those of full attention (every key is in the window);
    after, they differ: the window is really applied through the model."""
    full = ng.GPT(tiny_config(), seed=0, dtype=np.float64)
    windowed = ng.GPT(tiny_config(sliding_window=3), seed=0, dtype=np.float64, params=full.params)
    ids = np.random.default_rng(0).integers(0, 23, (1, 8))
    a, b = full.logits(ids), windowed.logits(ids)
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert np.abs(a[:, 3:] - b[:, 3:]).max(axis=-1).min() > 1e-9


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_sliding_window_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=rf"GPTConfig.sliding_window .*got {bad!r}"):
        ng.GPTConfig(sliding_window=bad)


@pytest.mark.parametrize("attention", ["standard", "tiled"])
def test_a_gpt_whose_window_holds_every_position_is_the_full_gpt_bit_for_bit(attention):
    ex = ng.Execution(attention=attention, q_tile=2, k_tile=3)
    full = ng.GPT(tiny_config(), seed=0, dtype=np.float64, execution=ex)
    wide = ng.GPT(tiny_config(sliding_window=7), params=full.params, dtype=np.float64, execution=ex)
    rng = np.random.default_rng(1)
    ids, labels = rng.integers(0, 23, (2, 7)), rng.integers(0, 23, (2, 7))
    (loss_a, grads_a), (loss_b, grads_b) = (m.loss_and_grads(ids, labels) for m in (full, wide))
    assert loss_a == loss_b
    for k in grads_a:
        np.testing.assert_array_equal(grads_a[k], grads_b[k])
