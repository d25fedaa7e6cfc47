"""Whole-model gradients against finite differences, and the properties that must hold."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.gradcheck import check_model, check_directional
from numpygpt.layers import sub
from helpers import tiny_config

RNG = np.random.default_rng


def batch(cfg, B, T, seed, ignore_frac=0.3):
    rng = RNG(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    labels = ng.causal_lm_labels(ids)
    labels[rng.random((B, T)) < ignore_frac] = -100
    return ids, labels


@settings(max_examples=6)
@given(tie=st.booleans(), pos=st.sampled_from(["learned", "rope"]), B=st.integers(1, 2),
       T=st.integers(1, 5), H=st.sampled_from([1, 2]), seed=st.integers(0, 999), pad=st.booleans(),
       attention=st.sampled_from(["standard", "tiled"]), loss=st.sampled_from(["chunked", "standard"]))
def test_model_gradients_match_finite_differences(tie, pos, B, T, H, seed, pad, attention, loss):
    cfg = tiny_config(tie_word_embeddings=tie, pos_encoding=pos, n_head=H, vocab_size=7)  # small V: repeats
    execution = ng.Execution(attention=attention, loss=loss, q_tile=2, k_tile=2)
    model = ng.GPT(cfg, seed=seed, dtype=np.float64, execution=execution)
    ids, labels = batch(cfg, B, T, seed)
    mask = None
    if pad and T > 1:
        mask = np.ones((B, T), dtype=int)
        mask[-1, T // 2 + 1:] = 0                           # right padding
        labels = np.where(ng.causal_lm_labels(ids, mask) == -100, -100, labels)
    results = check_model(model, ids, labels, attention_mask=mask, max_coords=12, seed=seed)
    assert {r.name for r in results} == set(model.params)
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, bad


def test_directional_check_of_whole_model():
    cfg = tiny_config(n_layer=3)
    model = ng.GPT(cfg, seed=3, dtype=np.float64)
    ids, labels = batch(cfg, 2, 9, 3)
    loss, grads = model.loss_and_grads(ids, labels)
    res = check_directional(lambda: model.loss(ids, labels), model.params, grads, n_directions=3)
    assert all(r.passed for r in res), res


def test_gradcheck_catches_a_wrong_gradient():
    """The checker itself can fail: a gradient off by 1% in one tensor is reported."""
    cfg = tiny_config()
    model = ng.GPT(cfg, seed=0, dtype=np.float64)
    ids, labels = batch(cfg, 1, 5, 0)
    _, grads = model.loss_and_grads(ids, labels)
    grads["h.0.mlp.c_fc.weight"] = grads["h.0.mlp.c_fc.weight"] * 1.01
    res = ng.gradcheck.check_gradients(lambda: model.loss(ids, labels), model.params, grads)
    failed = {r.name for r in res if not r.passed}
    assert failed == {"h.0.mlp.c_fc.weight"}
    assert not all(r.passed for r in check_directional(lambda: model.loss(ids, labels), model.params,
                                                        {**grads, "wte.weight": 0 * grads["wte.weight"]}))


@pytest.mark.parametrize("loss_impl", ["chunked", "standard"])
def test_all_targets_ignored_gives_zero_loss_and_zero_grads(loss_impl):
    cfg = tiny_config()
    model = ng.GPT(cfg, seed=0, dtype=np.float64, execution=ng.Execution(loss=loss_impl))
    ids = RNG(0).integers(0, cfg.vocab_size, size=(2, 4))
    labels = np.full((2, 4), -100)
    loss, grads = model.loss_and_grads(ids, labels)
    assert loss == 0.0 and ng.count_targets(labels) == 0
    assert all(np.all(g == 0) for g in grads.values())
    res = check_model(model, ids, labels, max_coords=8)     # exactly zero numerically as well
    assert all(r.max_rel_error == 0 for r in res)


@given(T=st.integers(2, 8), t=st.integers(0, 7), seed=st.integers(0, 999))
def test_causality(T, t, seed):
    """Changing tokens after position t changes no logit at or before t."""
    t = t % (T - 1)
    cfg = tiny_config(pos_encoding="learned" if seed % 2 else "rope")
    model = ng.GPT(cfg, seed=seed, dtype=np.float64)
    rng = RNG(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(1, T))
    changed = ids.copy()
    changed[0, t + 1:] = (ids[0, t + 1:] + 1 + rng.integers(0, cfg.vocab_size - 1, T - t - 1)) % cfg.vocab_size
    a, b = model.logits(ids), model.logits(changed)
    np.testing.assert_array_equal(a[0, :t + 1], b[0, :t + 1])
    assert not np.allclose(a[0, t + 1:], b[0, t + 1:])


def test_ignored_position_contributes_nothing():
    rng = RNG(1)
    logits = rng.standard_normal((2, 5, 11))
    labels = rng.integers(0, 11, size=(2, 5))
    labels[0, 2] = labels[1, 4] = -100
    loss, d = ng.cross_entropy(logits, labels)
    assert np.all(d[0, 2] == 0) and np.all(d[1, 4] == 0)
    # whatever the logits there, nothing changes
    other = logits.copy()
    other[0, 2] = 1e3 * rng.standard_normal(11)
    loss2, d2 = ng.cross_entropy(other, labels)
    assert loss2 == loss and np.array_equal(d2, d)
    # the stored ignore value itself is a choice: -1 with ignore_index=-1 gives the same
    loss3, d3 = ng.cross_entropy(logits, np.where(labels == -100, -1, labels), ignore_index=-1)
    assert loss3 == loss and np.array_equal(d3, d)


@given(seed=st.integers(0, 999), frac=st.floats(0, 0.9))
def test_sum_equals_mean_times_count(seed, frac):
    rng = RNG(seed)
    logits = rng.standard_normal((3, 4, 6))
    labels = rng.integers(0, 6, size=(3, 4))
    labels[rng.random((3, 4)) < frac] = -100
    n = ng.count_targets(labels)
    mean, dmean = ng.cross_entropy(logits, labels, reduction="mean")
    total, dsum = ng.cross_entropy(logits, labels, reduction="sum")
    none, dnone = ng.cross_entropy(logits, labels, reduction="none")
    assert np.isclose(total, mean * n, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dsum, dmean * max(n, 1), rtol=1e-12, atol=1e-15)
    assert np.isclose(none.sum(), total, rtol=1e-12) and np.all(none[labels == -100] == 0)
    np.testing.assert_array_equal(dnone, dsum)


@given(seed=st.integers(0, 999), shift=st.floats(-1e4, 1e4))
def test_cross_entropy_shift_invariant_and_matches_definition(seed, shift):
    rng = RNG(seed)
    logits = rng.standard_normal((2, 3, 5))
    labels = rng.integers(0, 5, size=(2, 3))
    loss, d = ng.cross_entropy(logits, labels)
    shifted = logits + shift * rng.standard_normal((2, 3, 1))        # a constant per row
    loss2, d2 = ng.cross_entropy(shifted, labels)
    assert np.isclose(loss, loss2, rtol=1e-9) and np.allclose(d, d2, atol=1e-9)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.log(np.take_along_axis(p, labels[..., None], -1)).mean()
    assert np.isclose(loss, expected, rtol=1e-12)
    # the gradient in closed form, (softmax - onehot) / count, at any magnitude of the logits
    big = 50.0 * logits
    q = np.exp(big - big.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(ng.cross_entropy(big, labels)[1], (q - onehot) / labels.size,
                               rtol=1e-9, atol=1e-15)


def test_cross_entropy_huge_logits_stay_finite():
    logits = np.array([[[1e30, -1e30, 0.0], [3e38, 3e38, -3e38]]], dtype=np.float32)
    loss, d = ng.cross_entropy(logits, np.array([[1, 0]]), reduction="sum")
    assert np.isfinite(d).all()
    assert np.isclose(loss, 2e30, rtol=1e-6)       # -log softmax = 1e30 - (-1e30); then log 2 ~ 0.69
    _, d2 = ng.cross_entropy(logits[:, 1:], np.array([[0]]))
    np.testing.assert_allclose(d2[0, 0], [-0.5, 0.5, 0.0], atol=1e-7)


@given(seed=st.integers(0, 999))
def test_gradient_accumulation_with_num_items_equals_full_batch(seed):
    """Micro-batches with *different* numbers of counted targets: dividing each micro-batch's
    sum by the global count makes the accumulated gradient the full batch's, exactly."""
    cfg = tiny_config()
    model = ng.GPT(cfg, seed=seed, dtype=np.float64)
    rng = RNG(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(4, 6))
    labels = ng.causal_lm_labels(ids)
    labels[0, :4] = -100                                 # micro-batch 1 counts fewer targets
    labels[3, rng.random(6) < 0.5] = -100
    full_loss, full = model.loss_and_grads(ids, labels)
    n = ng.count_targets(labels)
    acc_loss, acc = 0.0, {k: 0 for k in full}
    for sl in (slice(0, 1), slice(1, 4)):
        loss, g = model.loss_and_grads(ids[sl], labels[sl], num_items=n)
        acc_loss += loss
        acc = {k: acc[k] + g[k] for k in g}
    assert np.isclose(acc_loss, full_loss, rtol=1e-12)
    for k in full:
        np.testing.assert_allclose(acc[k], full[k], rtol=1e-10, atol=1e-15, err_msg=k)
    # the naive way (mean per micro-batch, then average) is *not* the full-batch gradient
    l1, _ = model.loss_and_grads(ids[:1], labels[:1])
    l2, _ = model.loss_and_grads(ids[1:], labels[1:])
    assert not np.isclose((l1 + l2) / 2, full_loss, rtol=1e-6)


@given(seed=st.integers(0, 999), pos=st.sampled_from(["learned", "rope"]))
def test_right_padding_equals_unpadded(seed, pos):
    cfg = tiny_config(pos_encoding=pos)
    model = ng.GPT(cfg, seed=seed, dtype=np.float64)
    rng = RNG(seed)
    seqs = [rng.integers(0, cfg.vocab_size, size=n) for n in (7, 4, 2)]
    # unpadded: one sequence at a time, summed and divided by the total count
    n_total = sum(len(s) - 1 for s in seqs)
    ref_loss, ref = 0.0, None
    for s in seqs:
        loss, g = model.loss_and_grads(s[None], ng.causal_lm_labels(s[None]), num_items=n_total)
        ref_loss += loss
        ref = g if ref is None else {k: ref[k] + g[k] for k in g}
    ids, mask = ng.pad_sequences(seqs, pad_value=cfg.vocab_size - 1, side="right")
    loss, grads = model.loss_and_grads(ids, ng.causal_lm_labels(ids, mask), attention_mask=mask)
    assert ng.count_targets(ng.causal_lm_labels(ids, mask)) == n_total
    assert np.isclose(loss, ref_loss, rtol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-14, err_msg=k)
    logits = model.logits(ids, attention_mask=mask)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(logits[i, :len(s)], model.logits(s[None])[0], rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 999), pos=st.sampled_from(["learned", "rope"]))
def test_left_padding_with_position_ids_equals_unpadded(seed, pos):
    cfg = tiny_config(pos_encoding=pos)
    model = ng.GPT(cfg, seed=seed, dtype=np.float64)
    rng = RNG(seed)
    seqs = [rng.integers(0, cfg.vocab_size, size=n) for n in (3, 6)]
    ids, mask = ng.pad_sequences(seqs, pad_value=0, side="left")
    labels = ng.causal_lm_labels(ids, mask)
    position_ids = np.cumsum(mask, axis=-1) - 1           # as a caller would pass it: -1 on padding
    loss, grads = model.loss_and_grads(ids, labels, attention_mask=mask, position_ids=position_ids)
    n_total = ng.count_targets(labels)
    ref_loss, ref = 0.0, None
    for s in seqs:
        l, g = model.loss_and_grads(s[None], ng.causal_lm_labels(s[None]), num_items=n_total)
        ref_loss += l
        ref = g if ref is None else {k: ref[k] + g[k] for k in g}
    assert np.isclose(loss, ref_loss, rtol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-14, err_msg=k)
    assert np.isfinite(model.logits(ids, mask, position_ids)).all()


def test_hf_form_and_aligned_form_give_identical_loss_and_grads():
    cfg = tiny_config()
    model = ng.GPT(cfg, seed=5, dtype=np.float64)
    prompt, answer = np.array([3, 1, 4]), np.array([1, 5, 9])
    input_ids, aligned = ng.sft_labels(prompt, answer)
    _, hf = ng.sft_labels_hf(prompt, answer)
    np.testing.assert_array_equal(hf, [-100, -100, -100, 1, 5, 9])
    np.testing.assert_array_equal(ng.labels_from_hf(hf), aligned)
    l1, g1 = model.loss_and_grads(input_ids[None], aligned[None])
    l2, g2 = model.loss_and_grads(input_ids[None], ng.labels_from_hf(hf[None]))
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    # HF's own recipe: drop the last logits row and the first label, then the same loss
    logits = model.logits(input_ids[None])
    l3, _ = ng.cross_entropy(logits[:, :-1], hf[None, 1:])
    assert np.isclose(l1, l3, rtol=1e-12)


@given(V=st.sampled_from([16, 50, 257]), seed=st.integers(0, 999))
def test_fresh_model_loss_is_close_to_ln_vocab(V, seed):
    cfg = tiny_config(vocab_size=V, n_embd=16)
    model = ng.GPT(cfg, seed=seed)
    ids = RNG(seed).integers(0, V, size=(4, 12))
    loss = model.loss(ids, ng.causal_lm_labels(ids))
    assert abs(loss - np.log(V)) < 0.05 * np.log(V)


def test_parameters_are_gpt2_named_shaped_and_initialised():
    cfg = ng.GPTConfig(vocab_size=100, n_positions=32, n_embd=64, n_head=4, n_layer=3)
    model = ng.GPT(cfg, seed=0)
    p = model.params
    assert p["wte.weight"].shape == (100, 64) and p["wpe.weight"].shape == (32, 64)
    assert p["h.2.attn.c_attn.weight"].shape == (64, 192) and p["h.2.attn.c_attn.bias"].shape == (192,)
    assert p["h.0.mlp.c_fc.weight"].shape == (64, 256) and p["h.0.mlp.c_proj.weight"].shape == (256, 64)
    assert "lm_head.weight" not in p and all(v.dtype == np.float32 for v in p.values())
    assert np.isclose(p["h.0.mlp.c_fc.weight"].std(), 0.02, rtol=0.05)
    assert np.isclose(p["h.0.attn.c_proj.weight"].std(), 0.02 / np.sqrt(6), rtol=0.05)
    assert np.all(p["h.1.ln_2.weight"] == 1) and np.all(p["h.1.attn.c_attn.bias"] == 0)
    untied = ng.GPT(ng.GPTConfig(**{**cfg.to_dict(), "tie_word_embeddings": False}), seed=0)
    assert untied.params["lm_head.weight"].shape == (100, 64)
    assert len(p) == 2 + 12 * 3 + 2


def test_same_seed_same_numbers_and_dtypes_agree():
    cfg = tiny_config()
    a, b, c = ng.GPT(cfg, seed=7), ng.GPT(cfg, seed=7), ng.GPT(cfg, seed=8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["wte.weight"], c.params["wte.weight"])
    d = ng.GPT(cfg, seed=7, dtype=np.float64)
    assert all(np.array_equal(a.params[k], d.params[k].astype(np.float32)) for k in a.params)
    ids = RNG(0).integers(0, cfg.vocab_size, size=(2, 6))
    la, ga = a.loss_and_grads(ids, ng.causal_lm_labels(ids))
    lb, gb = b.loss_and_grads(ids, ng.causal_lm_labels(ids))
    assert la == lb and all(np.array_equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("attention, loss_impl, pos", [
    ("standard", "chunked", "learned"), ("tiled", "standard", "learned"), ("tiled", "chunked", "rope"),
    ("standard", "standard", "rope")])
def test_float32_model_stays_float32(attention, loss_impl, pos):
    cfg = tiny_config(pos_encoding=pos)
    execution = ng.Execution(attention=attention, loss=loss_impl, q_tile=4, k_tile=4)
    model = ng.GPT(cfg, seed=0, execution=execution)
    ids = RNG(0).integers(0, cfg.vocab_size, size=(2, 6))
    assert model.logits(ids).dtype == np.float32
    _, grads = model.loss_and_grads(ids, ng.causal_lm_labels(ids))
    assert all(g.dtype == np.float32 for g in grads.values())
    ref = ng.GPT(cfg, seed=0, dtype=np.float64)
    np.testing.assert_allclose(model.logits(ids), ref.logits(ids), rtol=1e-4, atol=1e-5)


def test_lesson_data_flow_shapes():
    """The lesson's example: (1, 10) ids -> (1, 10, 768) -> every block (1, 10, 768) -> (1, 10, 50000)."""
    cfg = ng.GPTConfig(vocab_size=50000, n_positions=16, n_embd=768, n_head=12, n_layer=1)
    model = ng.GPT(cfg, seed=0)
    ids = RNG(0).integers(0, 50000, size=(1, 10))
    p = model.params
    emb_out, _ = ng.embedding_forward(ids, {k: p[k] for k in ("wte.weight", "wpe.weight")})
    assert emb_out.shape == (1, 10, 768)
    block_out, _ = ng.block_forward(emb_out, sub(p, "h.0"), cfg)
    assert block_out.shape == (1, 10, 768)
    logits, cache = ng.gpt_forward(ids, p, cfg)                 # no labels: logits, no cache
    assert cache is None and logits.shape == (1, 10, 50000)
    assert model.logits(ids).shape == (1, 10, 50000)
    # with labels, the cache the backward starts from: every stage at (1, 10, 768)
    _, cache = ng.gpt_forward(ids, p, cfg, labels=ng.causal_lm_labels(ids))
    top, ln_f_cache, block_caches, emb_cache, tied = cache
    assert top[0] == "standard" and tied and len(block_caches) == 1
    assert top[1].shape == (1, 10, 50000)                        # dlogits, one row per position
    _, cache = ng.gpt_forward(ids, p, cfg, labels=ng.causal_lm_labels(ids),
                              execution=ng.Execution(loss="chunked"))
    (loss, dx, g_head), *_ = cache
    assert loss == "chunked" and dx.shape == (1, 10, 768)      # chunked: dx at ln_f's output
    assert g_head["weight"].shape == (50000, 768)                # and the lm_head's gradient


def test_rope_model_runs_beyond_n_positions_but_learned_does_not():
    ids = RNG(0).integers(0, 23, size=(1, 20))
    assert ng.GPT(tiny_config(pos_encoding="rope"), seed=0).logits(ids).shape == (1, 20, 23)
    assert "wpe.weight" not in ng.GPT(tiny_config(pos_encoding="rope")).params
    with pytest.raises(ValueError, match="n_positions"):
        ng.GPT(tiny_config(), seed=0).logits(ids)
