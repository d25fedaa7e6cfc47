"""Tiled (FlashAttention-style) attention: gradient-checked in float64 and equal to the
textbook layer (output and dq, dk, dv) on hypothesis-drawn shapes: T = 1, T not a multiple
of the block size, key chunks narrower or wider than the query blocks, block larger than T, one head, padding masks with fully masked rows;
a whole model with Execution(attention="tiled") equals "standard" (loss and every gradient)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.gradcheck import check_model
from numpygpt.layers.attention import causal_attention_forward, causal_attention_backward
from numpygpt.layers.tiled_attention import tiled_attention_forward, tiled_attention_backward
from helpers import assert_grads_match, tiny_config

shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 3), "T": st.integers(1, 13),
    "D": st.sampled_from([1, 2, 4]), "block": st.integers(1, 6), "key_block": st.integers(1, 8),
    "seed": st.integers(0, 2**16)})


def draw_mask(rng, B, T, kind):
    """None, random padding, or left padding (the first rows have no key at all)."""
    if kind == "none":
        return None
    if kind == "random":
        return rng.random((B, T)) < 0.6
    mask = np.ones((B, T), dtype=bool)
    mask[0, :rng.integers(1, T + 1)] = False        # row 0: a left-padded prefix, maybe all of it
    return mask


def qkv(rng, B, H, T, D, dtype=np.float64, scale=1.0):
    return [(scale * rng.standard_normal((B, H, T, D))).astype(dtype) for _ in range(3)]


@given(shapes, st.sampled_from(["none", "random", "left"]))
def test_tiled_equals_textbook(d, mask_kind):
    rng = np.random.default_rng(d["seed"])
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    q, k, v = qkv(rng, B, H, T, D, scale=3.0)       # large scores: the online max matters
    mask = draw_mask(rng, B, T, mask_kind)
    dy = rng.standard_normal((B, H, T, D))
    y_ref, c_ref = causal_attention_forward(q, k, v, mask)
    y, cache = tiled_attention_forward(q, k, v, mask, q_tile=d["block"], k_tile=d["key_block"])
    assert not np.isnan(y).any()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    grads, extra = tiled_attention_backward(dy, cache)
    grads_ref, extra_ref = causal_attention_backward(dy, c_ref)
    assert extra == extra_ref == {} and len(grads) == len(grads_ref) == 3
    for g, g_ref in zip(grads, grads_ref):
        assert not np.isnan(g).any()
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-11)


@given(shapes, st.integers(1, 9), st.sampled_from(["none", "random"]))
def test_queries_after_cached_keys_align_as_in_the_standard_core(d, extra, mask_kind):
    """With a KV cache the T queries are the last T of Tk = extra + T keys: query i sees the
    keys up to position extra + i. The tiled core visits and masks exactly those."""
    rng = np.random.default_rng(d["seed"])
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    q = qkv(rng, B, H, T, D, scale=3.0)[0]
    k, v = qkv(rng, B, H, extra + T, D, scale=3.0)[:2]
    mask = draw_mask(rng, B, extra + T, mask_kind)
    y_ref, _ = causal_attention_forward(q, k, v, mask)
    y, _ = tiled_attention_forward(q, k, v, mask, q_tile=d["block"], k_tile=d["key_block"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    if mask is None:      # the last query sees every key; the first one all but T - 1 of them
        y_all, _ = causal_attention_forward(q[:, :, -1:], k, v)
        np.testing.assert_allclose(y[:, :, -1:], y_all, rtol=1e-12, atol=1e-12)


@given(shapes, st.sampled_from(["none", "random", "left"]))
def test_tiled_backward_gradcheck(d, mask_kind):
    rng = np.random.default_rng(d["seed"])
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    a = dict(zip("qkv", qkv(rng, B, H, T, D)))
    mask = draw_mask(rng, B, T, mask_kind)
    R = rng.standard_normal((B, H, T, D))
    _, cache = tiled_attention_forward(a["q"], a["k"], a["v"], mask, q_tile=d["block"],
                                       k_tile=d["key_block"])
    (dq, dk, dv), g = tiled_attention_backward(R, cache)
    assert g == {}

    def f():
        y, _ = tiled_attention_forward(a["q"], a["k"], a["v"], mask, q_tile=d["block"],
                                       k_tile=d["key_block"])
        return float((y * R).sum())

    assert_grads_match(f, a, {"q": dq, "k": dk, "v": dv})


def test_fully_masked_rows_give_zero_output_and_gradients():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 2, 2, 9, 4)
    mask = np.ones((2, 9), dtype=bool)
    mask[0, :5] = False                   # rows 0..4 of batch 0 see no key
    mask[1, :] = False                    # batch 1: nothing at all
    y, cache = tiled_attention_forward(q, k, v, mask, q_tile=4)
    (dq, dk, dv), _ = tiled_attention_backward(np.ones_like(y), cache)
    assert np.all(y[0, :, :5] == 0) and np.all(y[1] == 0)
    assert np.all(dq[0, :, :5] == 0) and np.all(dq[1] == 0)
    assert np.all(dk[0, :, :5] == 0) and np.all(dv[0, :, :5] == 0)   # padding keys get nothing
    assert np.all(np.isfinite(y[0, :, 5:])) and np.abs(y[0, :, 5:]).sum() > 0


def test_first_row_is_its_own_value():
    """Causal: query 0 sees key 0 only, so y[0] = v[0] exactly whatever the block size."""
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, 1, 2, 7, 3)
    for block in (1, 3, 7, 64):
        y, _ = tiled_attention_forward(q, k, v, None, q_tile=block)
        np.testing.assert_allclose(y[:, :, 0], v[:, :, 0], rtol=1e-15, atol=0)


def test_float32_stays_float32_and_matches_textbook():
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, 2, 3, 70, 16, dtype=np.float32)
    dy = rng.standard_normal(q.shape).astype(np.float32)
    y, cache = tiled_attention_forward(q, k, v, None, q_tile=32)
    grads, _ = tiled_attention_backward(dy, cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    y_ref, c_ref = causal_attention_forward(q.astype(np.float64), k.astype(np.float64),
                                            v.astype(np.float64))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, causal_attention_backward(dy.astype(np.float64), c_ref)[0]):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_deterministic():
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, 1, 2, 33, 8, dtype=np.float32)
    y1, _ = tiled_attention_forward(q, k, v, None, q_tile=8)
    y2, _ = tiled_attention_forward(q, k, v, None, q_tile=8)
    np.testing.assert_array_equal(y1, y2)


@settings(max_examples=6)
@given(st.integers(1, 9), st.integers(1, 4), st.sampled_from(["learned", "rope"]),
       st.booleans(), st.integers(0, 2**16), st.sampled_from([1, 3, 1024]))
def test_model_tiled_equals_textbook(T, block, pos_encoding, padded, seed, k_tile):
    rng = np.random.default_rng(seed)
    B = 2
    ids = rng.integers(0, 23, size=(B, T))
    labels = rng.integers(0, 23, size=(B, T))
    mask = None
    if padded:
        mask = np.ones((B, T), dtype=int)
        mask[0, :rng.integers(0, T)] = 0          # left padding in row 0 (never all of it)
        labels = np.where(mask == 1, labels, -100)
    cfg = tiny_config(pos_encoding=pos_encoding)
    executions = [ng.Execution(attention=impl, q_tile=block, k_tile=k_tile)
                  for impl in ("standard", "tiled")]
    (l_ref, g_ref), (l, g) = (ng.GPT(cfg, seed=0, dtype=np.float64, execution=e)
                              .loss_and_grads(ids, labels, mask) for e in executions)
    np.testing.assert_allclose(l, l_ref, rtol=1e-12)
    assert g.keys() == g_ref.keys()
    for name in g:
        np.testing.assert_allclose(g[name], g_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("k_tile", [1024, 2])      # one key chunk per query block, or several
def test_model_tiled_gradcheck(k_tile):
    cfg = tiny_config()
    model = ng.GPT(cfg, seed=1, dtype=np.float64,
                   execution=ng.Execution(attention="tiled", q_tile=3, k_tile=k_tile))
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 23, size=(2, 8))
    labels = rng.integers(0, 23, size=(2, 8))
    mask = np.ones((2, 8), dtype=int)
    mask[1, :3] = 0
    results = check_model(model, ids, labels, mask, max_coords=12)
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, bad
