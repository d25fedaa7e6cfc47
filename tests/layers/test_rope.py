"""RoPE (rotary position embedding, rotate-half layout as HuggingFace / GPT-NeoX):
gradient-checked; equal to the explicit per-pair rotation; the backward is the inverse
rotation; scores depend on relative offsets only, so shifting every position id by a
constant leaves a whole model's logits unchanged; the model runs at T > n_positions."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.gradcheck import check_model
from numpygpt.layers.rope import rope_cos_sin, rope_forward as rope_layer_forward, rope_backward as rope_layer_backward
from helpers import assert_grads_match, tiny_config



def rope_forward(x, cos, sin):
    """The rotated x alone (the layer returns (out, cache))."""
    return rope_layer_forward(x, cos, sin)[0]


def rope_backward(dout, x, cos, sin):
    """dx alone, through the cache of the forward at x; a rotation has no parameters."""
    _, cache = rope_layer_forward(x, cos, sin)
    dx, grads = rope_layer_backward(dout, cache)
    assert grads == {}
    return dx


shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 3), "T": st.integers(1, 7),
    "D": st.sampled_from([2, 4, 8]), "offset": st.integers(0, 5000), "seed": st.integers(0, 2**16)})


def draw(d):
    rng = np.random.default_rng(d["seed"])
    B, H, T, D = d["B"], d["H"], d["T"], d["D"]
    pos = d["offset"] + rng.integers(0, 50, size=(B, T))
    return rng, rng.standard_normal((B, H, T, D)), pos


@given(shapes)
def test_rope_backward_gradcheck(d):
    rng, x, pos = draw(d)
    cos, sin = rope_cos_sin(pos, d["D"], dtype=np.float64)
    R = rng.standard_normal(x.shape)
    a = {"x": x}
    dx = rope_backward(R, x, cos, sin)
    assert_grads_match(lambda: float((rope_forward(a["x"], cos, sin) * R).sum()), a, {"x": dx})


@given(shapes)
def test_rope_is_the_rotate_half_rotation(d):
    """Pair i is (x[i], x[i + D/2]) (rotate-half, not GPT-J's interleaved (x[2i], x[2i+1])),
    rotated by the angle pos * base^(-2i/D)."""
    _, x, pos = draw(d)
    D, half = d["D"], d["D"] // 2
    out = rope_forward(x, *rope_cos_sin(pos, D, dtype=np.float64))
    expected = np.empty_like(x)
    for i in range(half):
        theta = pos[:, None, :] * 10000.0 ** (-2 * i / D)           # (B,1,T)
        a, b = x[..., i], x[..., i + half]
        expected[..., i] = a * np.cos(theta) - b * np.sin(theta)
        expected[..., i + half] = b * np.cos(theta) + a * np.sin(theta)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@given(shapes)
def test_rope_backward_is_the_inverse_rotation(d):
    _, x, pos = draw(d)
    cos, sin = rope_cos_sin(pos, d["D"], dtype=np.float64)
    y = rope_forward(x, cos, sin)
    np.testing.assert_allclose(rope_backward(y, x, cos, sin), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rope_forward(rope_backward(x, x, cos, sin), cos, sin), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


@given(shapes, st.integers(-3000, 3000))
def test_scores_depend_on_relative_offset_only(d, shift):
    rng, q, pos = draw(d)
    k = rng.standard_normal(q.shape)
    shifted = pos + shift + 3000                               # still >= 0

    def scores(p):
        cos, sin = rope_cos_sin(p, d["D"], dtype=np.float64)
        return rope_forward(q, cos, sin) @ rope_forward(k, cos, sin).swapaxes(-1, -2)

    np.testing.assert_allclose(scores(shifted), scores(pos), rtol=1e-9, atol=1e-9)


def test_position_zero_is_identity_and_dtype_is_kept():
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    cos, sin = rope_cos_sin(np.zeros((1, 3), dtype=int), 4)
    assert cos.dtype == np.float32 and rope_forward(x, cos, sin).dtype == np.float32
    np.testing.assert_array_equal(rope_forward(x, cos, sin), x)


def test_matches_huggingface_rotate_half():
    """The same numbers as HuggingFace's own rotate_half / apply_rotary_pos_emb (Llama, NeoX)."""
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((2, 1, 3, 5, 8))
    pos = rng.integers(0, 100, size=(1, 5))
    cos, sin = rope_cos_sin(pos, 8, dtype=np.float64)          # (B,1,T,D)
    q_hf, k_hf = llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k),
                                            torch.from_numpy(cos[:, 0]), torch.from_numpy(sin[:, 0]))
    np.testing.assert_allclose(rope_forward(q, cos, sin), q_hf.numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(rope_forward(k, cos, sin), k_hf.numpy(), rtol=1e-14, atol=1e-14)


# ---- whole model ---------------------------------------------------------------------------

@settings(max_examples=4)
@given(st.integers(1, 6), st.sampled_from(["standard", "tiled"]), st.integers(0, 2**16))
def test_model_with_rope_gradcheck(T, attention, seed):
    cfg = tiny_config(pos_encoding="rope")
    model = ng.GPT(cfg, seed=seed % 7, dtype=np.float64,
                   execution=ng.Execution(attention=attention, q_tile=2, k_tile=2))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 23, size=(2, T))
    labels = rng.integers(0, 23, size=(2, T))
    results = check_model(model, ids, labels, max_coords=10, seed=seed)
    assert "wpe.weight" not in model.params
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, bad


@settings(max_examples=8)
@given(st.integers(1, 8), st.integers(1, 10_000), st.sampled_from(["standard", "tiled"]),
       st.booleans(), st.integers(0, 2**16))
def test_shifting_positions_leaves_logits_unchanged(T, shift, attention, padded, seed):
    model = ng.GPT(tiny_config(pos_encoding="rope"), seed=1, dtype=np.float64,
                   execution=ng.Execution(attention=attention, q_tile=3, k_tile=3))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 23, size=(2, T))
    mask = None
    if padded:
        mask = np.ones((2, T), dtype=int)
        mask[1, :rng.integers(0, T)] = 0                       # left padding, never all of it
    pos = np.broadcast_to(np.arange(T), (2, T))
    base = model.logits(ids, mask, pos)
    moved = model.logits(ids, mask, pos + shift)
    real = np.ones((2, T), bool) if mask is None else mask.astype(bool)
    np.testing.assert_allclose(moved[real], base[real], rtol=1e-9, atol=1e-10)


def test_learned_positions_are_not_shift_invariant():
    """The property is RoPE's, not a tautology: with a learned table the logits do move."""
    model = ng.GPT(tiny_config(pos_encoding="learned"), seed=1, dtype=np.float64)
    ids = np.array([[3, 1, 4, 1, 5]])
    pos = np.arange(5)[None]
    assert np.abs(model.logits(ids, None, pos + 2) - model.logits(ids, None, pos)).max() > 1e-6


@pytest.mark.parametrize("attention", ["standard", "tiled"])
def test_rope_model_runs_beyond_n_positions(attention):
    cfg = tiny_config(pos_encoding="rope")                                      # n_positions=12
    model = ng.GPT(cfg, seed=0, dtype=np.float64,
                   execution=ng.Execution(attention=attention, q_tile=8, k_tile=8))
    T = 3 * cfg.n_positions + 1
    ids = np.random.default_rng(0).integers(0, 23, size=(1, T))
    loss, grads = model.loss_and_grads(ids, ng.causal_lm_labels(ids))
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    with pytest.raises(ValueError, match="n_positions"):
        ng.GPT(tiny_config(pos_encoding="learned"), seed=0).logits(ids)
