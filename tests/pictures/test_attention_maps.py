"""P and dS: the causal triangle, padding, prompt rows that count for nothing, rows of dS
summing to 0, and dS equal to the one the textbook's backward computes."""
import math

import numpy as np
import pytest

from numpygpt.config import GPTConfig
from numpygpt.layers import causal_attention_forward, causal_attention_backward
from numpygpt.model import GPT
from numpygpt.pictures import attention_dscores, attention_maps

# row 0: a pre-training example, every label counted but the last; row 1: an SFT example,
# prompt of 3 tokens (-100), answer of 2, then 2 padding positions
IDS = np.array([[1, 4, 2, 7, 3, 5, 8], [6, 2, 9, 1, 3, 0, 0]])
LABELS = np.array([[4, 2, 7, 3, 5, 8, -100], [-100, -100, 1, 3, -100, -100, -100]])
MASK = np.array([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])


def maps(seed=0, n_layer=2):
    cfg = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=n_layer)
    return attention_maps(GPT(cfg, seed=seed, dtype=np.float64), IDS, LABELS, MASK)


def test_shapes_and_what_counts():
    m = maps()
    assert m["probs"].shape == m["dscores"].shape == (2, 2, 2, 7, 7)
    np.testing.assert_array_equal(m["key_mask"], MASK.astype(bool))
    np.testing.assert_array_equal(m["counted"], LABELS != -100)


def test_the_causal_triangle_is_zero_above_the_diagonal():
    m = maps()
    above = np.triu(np.ones((7, 7), bool), k=1)
    assert np.all(m["probs"][..., above] == 0) and np.all(m["dscores"][..., above] == 0)
    assert np.all(m["probs"][..., ~above][:, 0] > 0)         # row 0, no padding: all allowed
    assert not np.any(m["allowed"][:, above])


def test_padding_keys_have_zero_columns_and_padding_queries_zero_gradient_rows():
    m = maps()
    pad = ~MASK[1].astype(bool)
    assert np.all(m["probs"][:, 1, :, :, pad] == 0)          # nobody attends to padding
    assert np.all(m["dscores"][:, 1, :, :, pad] == 0)
    assert np.all(m["dscores"][:, 1, :, pad, :] == 0)        # padding queries: no gradient
    assert np.all(m["probs"][:, 1, :, pad, :].sum(-1) > 0.999)   # but their P rows exist


def test_probability_rows_sum_to_one_and_gradient_rows_to_zero():
    m = maps()
    np.testing.assert_allclose(m["probs"].sum(-1), 1.0, rtol=1e-12)
    scale = np.abs(m["dscores"]).max()
    assert scale > 0
    np.testing.assert_allclose(m["dscores"].sum(-1), 0.0, atol=1e-12 * scale)


def test_rows_of_uncounted_queries_are_zero_in_the_last_block_only():
    """The SFT prompt (labels -100): nothing is learned from its own predictions, so the last
    block's dS rows are 0 there; earlier blocks' are not (the answer reads the prompt)."""
    m = maps()
    last, first = m["dscores"][-1, 1], m["dscores"][0, 1]     # (H,T,T) of the SFT row
    assert np.all(last[:, [0, 1, 4], :] == 0)                 # label -100, real tokens
    assert np.abs(last[:, 3, :]).max() > 0                    # a counted row
    assert np.abs(first[:, 1, :]).max() > 0                   # prompt row of block 0


def test_dscores_is_the_textbooks_gradient_at_the_scores():
    """dq = dS @ k / sqrt(D), by causal_attention_backward, on random inputs."""
    rng = np.random.default_rng(3)
    B, H, T, D = 2, 3, 5, 4
    q, k, v, dy = (rng.standard_normal((B, H, T, D)) for _ in range(4))
    key_mask = np.array([[True] * 5, [True, True, True, False, False]])
    y, cache = causal_attention_forward(q, k, v, key_mask)
    (dq, dk, _), _ = causal_attention_backward(dy, cache)
    ds = attention_dscores(cache, dy)
    np.testing.assert_allclose(ds @ k / math.sqrt(D), dq, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ds.swapaxes(-1, -2) @ q / math.sqrt(D), dk, rtol=1e-12, atol=1e-14)


def test_dscores_against_finite_differences_of_the_scores():
    """f(S) = sum(dy * softmax(S) @ v): its derivative at S, by central differences."""
    from numpygpt.layers.attention import softmax
    rng = np.random.default_rng(4)
    T, D = 4, 3
    q, k, v, dy = (rng.standard_normal((1, 1, T, D)) for _ in range(4))
    _, cache = causal_attention_forward(q, k, v)
    ds = attention_dscores(cache, dy)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)
    allowed = np.tril(np.ones((T, T), bool))
    eps = 1e-6
    for t in range(T):
        for s in range(t + 1):
            plus, minus = scores.copy(), scores.copy()
            plus[..., t, s] += eps
            minus[..., t, s] -= eps
            f = [np.sum(dy * (softmax(np.where(allowed, x, -np.inf)) @ v)) for x in (plus, minus)]
            assert ds[0, 0, t, s] == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-6, abs=1e-9)
