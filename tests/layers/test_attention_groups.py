"""Grouped-query attention (layers/attention.py with n_kv_head = K): the layer's backward against
central differences in float64 for K = 1, K = H and in between, with padding, rope, T = 1 and
both cores; K = H is GPT-2's attention bit for bit; a GQA layer is an MHA layer whose key and
value weights repeat each key/value head's columns, and its gradients are that MHA's summed
over each group."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt.layers.attention import repeat_kv, repeat_kv_backward
from helpers import assert_grads_match


def scalar_loss(out, R):
    return float((out * R).sum())


def random_key_mask(rng, B, T):
    mask = rng.random((B, T)) < 0.7
    mask[0, :] = True
    if B > 1 and T > 1:
        mask[1, 0] = False            # left padding: query row 0 of sequence 1 sees no key
    return mask


@st.composite
def group_dims(draw):
    """H query heads and K key/value heads, K dividing H: K = 1, K = H and in between."""
    H = draw(st.sampled_from([1, 2, 4, 6]))
    K = draw(st.sampled_from([k for k in range(1, H + 1) if H % k == 0]))
    return {"B": draw(st.integers(1, 2)), "T": draw(st.integers(1, 6)), "H": H, "K": K,
            "D": draw(st.sampled_from([2, 4])), "seed": draw(st.integers(0, 2**16))}


def layer_params(rng, C, K, D, scale=1.0):
    width = C + 2 * K * D                                     # q, then K key heads, then K values
    return {"c_attn.weight": scale * rng.standard_normal((C, width)),
            "c_attn.bias": rng.standard_normal(width),
            "c_proj.weight": scale * rng.standard_normal((C, C)), "c_proj.bias": rng.standard_normal(C)}


@given(group_dims(), st.booleans(), st.booleans(), st.sampled_from(["standard", "tiled"]))
def test_grouped_attention_layer_backward(d, use_mask, use_rope, attention):
    rng = np.random.default_rng(d["seed"])
    B, T, H, K, D = d["B"], d["T"], d["H"], d["K"], d["D"]
    C = H * D
    p = layer_params(rng, C, K, D)
    a = {"x": rng.standard_normal((B, T, C)), **p}
    key_mask = random_key_mask(rng, B, T) if use_mask else None
    rope = ng.rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), D, dtype=np.float64) if use_rope else None
    R = rng.standard_normal((B, T, C))
    run = lambda: ng.attention_forward(a["x"], p, H, key_mask=key_mask, rope=rope,
                                       attention=attention, q_tile=2, k_tile=3, n_kv_head=K)
    out, cache = run()
    assert out.shape == (B, T, C)
    dx, g = ng.attention_backward(R, cache)
    assert set(g) == set(p) and all(g[k].shape == p[k].shape for k in p)
    assert_grads_match(lambda: scalar_loss(run()[0], R), a, {"x": dx, **g})


def mha_twin(p, H, K, D):
    """The MHA layer a GQA layer is: c_attn's key and value columns repeated, head j's for each
    of its H/K query heads (the columns of head h are those of key/value head h // (H/K))."""
    C = H * D
    heads = np.arange(H) // (H // K)                                     # the key/value head of h
    cols = (heads[:, None] * D + np.arange(D)).ravel()                  # (H*D,) into a K*D block
    index = np.concatenate([np.arange(C), C + cols, C + K * D + cols])  # (3C,)
    return {**p, "c_attn.weight": p["c_attn.weight"][:, index], "c_attn.bias": p["c_attn.bias"][index]}, index


@given(group_dims(), st.booleans(), st.booleans(), st.sampled_from(["standard", "tiled"]))
def test_gqa_is_mha_with_repeated_key_value_columns(d, use_mask, use_rope, attention):
    """Forward: the same outputs. Backward: dx the same; GQA's c_attn gradient is the MHA twin's
    with the repeated columns summed back (np.add.at over the column index)."""
    rng = np.random.default_rng(d["seed"])
    B, T, H, K, D = d["B"], d["T"], d["H"], d["K"], d["D"]
    C = H * D
    p = layer_params(rng, C, K, D, scale=C ** -0.5)
    twin, index = mha_twin(p, H, K, D)
    x, R = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    key_mask = random_key_mask(rng, B, T) if use_mask else None
    rope = ng.rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), D, dtype=np.float64) if use_rope else None
    kw = dict(key_mask=key_mask, rope=rope, attention=attention, q_tile=2, k_tile=3)
    out, cache = ng.attention_forward(x, p, H, n_kv_head=K, **kw)
    out_mha, cache_mha = ng.attention_forward(x, twin, H, **kw)
    np.testing.assert_allclose(out, out_mha, rtol=1e-12, atol=1e-13)
    dx, g = ng.attention_backward(R, cache)
    dx_mha, g_mha = ng.attention_backward(R, cache_mha)
    np.testing.assert_allclose(dx, dx_mha, rtol=1e-12, atol=1e-12)
    for name in ("c_attn.weight", "c_attn.bias"):
        summed = np.zeros_like(p[name])
        np.add.at(summed.T, index, g_mha[name].T)                       # columns summed back
        np.testing.assert_allclose(g[name], summed, rtol=1e-12, atol=1e-12)
    for name in ("c_proj.weight", "c_proj.bias"):
        np.testing.assert_allclose(g[name], g_mha[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attention", ["standard", "tiled"])
def test_k_equal_h_is_gpt2_attention_bit_for_bit(attention):
    """n_kv_head = H runs no repeat and no sum: the very arrays of the n_kv_head = None path."""
    rng = np.random.default_rng(5)
    B, T, H, D = 2, 5, 3, 4
    C = H * D
    p = layer_params(rng, C, H, D, scale=C ** -0.5)
    x, R = rng.standard_normal((B, T, C)).astype(np.float32), rng.standard_normal((B, T, C))
    p = {k: v.astype(np.float32) for k, v in p.items()}
    runs = []
    for K in (None, H):
        out, cache = ng.attention_forward(x, p, H, attention=attention, q_tile=2, k_tile=3,
                                          n_kv_head=K)
        runs.append((out, *ng.attention_backward(R.astype(np.float32), cache)))
    (o1, dx1, g1), (o2, dx2, g2) = runs
    assert o1.tobytes() == o2.tobytes() and dx1.tobytes() == dx2.tobytes()
    assert all(g1[k].tobytes() == g2[k].tobytes() for k in g1)
    k = rng.standard_normal((1, 2, 3, 4))
    assert repeat_kv(k, 1) is k and repeat_kv_backward(k, 1) is k


def test_repeat_kv_is_huggingfaces_and_its_backward_is_the_group_sum():
    """Head h reads key/value head h // n_rep; the backward of a copy is the sum of the copies'
    gradients, written here as a loop from that definition."""
    rng = np.random.default_rng(0)
    B, K, n_rep, Tk, D = 2, 3, 2, 4, 5
    kv = rng.standard_normal((B, K, Tk, D))
    rep = repeat_kv(kv, n_rep)
    assert rep.shape == (B, K * n_rep, Tk, D)
    for h in range(K * n_rep):
        np.testing.assert_array_equal(rep[:, h], kv[:, h // n_rep])
    d = rng.standard_normal(rep.shape)
    expected = np.zeros_like(kv)
    for h in range(K * n_rep):
        expected[:, h // n_rep] += d[:, h]
    np.testing.assert_allclose(repeat_kv_backward(d, n_rep), expected, rtol=1e-15)


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_grouped_gpt_gradients_against_finite_differences(K, pos):
    """The whole GPT, float64, K = 1 (multi-query), 2 and H = 4, left padding."""
    cfg = ng.GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=4, n_layer=2, n_kv_head=K,
                       pos_encoding=pos)
    model = ng.GPT(cfg, seed=1, dtype=np.float64)
    ng.gradcheck.layers.unit_scale_params(model.params, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    ids, labels = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    mask = np.ones((2, 6), int)
    mask[1, :2] = 0
    labels[mask == 0] = -100
    _, grads = model.loss_and_grads(ids, labels, mask)
    assert model.params["h.0.attn.c_attn.weight"].shape == (8, 8 + 2 * K * 2)
    assert_grads_match(lambda: model.loss(ids, labels, mask), model.params, grads, max_coords=20)


def test_n_kv_head_must_divide_n_head():
    with pytest.raises(ValueError, match=r"GPTConfig.n_kv_head=3 does not divide n_head=4"):
        ng.GPTConfig(n_embd=8, n_head=4, n_kv_head=3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="GPTConfig.n_kv_head must be a positive integer"):
            ng.GPTConfig(n_embd=8, n_head=4, n_kv_head=bad)
    assert ng.GPTConfig(n_embd=8, n_head=4, n_kv_head=4) == ng.GPTConfig(n_embd=8, n_head=4)
    assert ng.GPTConfig(n_embd=8, n_head=4, n_kv_head=2).kv_heads == 2
