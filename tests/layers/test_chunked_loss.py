"""The chunked lm_head + cross-entropy against the standard path (lm_head, then
cross_entropy), finite differences, its memory, and the model using it."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.bench.measure import peak_memory
from numpygpt.layers import lm_head_forward, lm_head_backward, cross_entropy
from numpygpt.engine.chunked_loss import lm_head_cross_entropy_fast
from numpygpt.layers.chunked_loss import lm_head_cross_entropy as chunked_layer
from numpygpt.model import gpt_forward, gpt_backward

from helpers import assert_grads_match, tiny_config


def lm_head_cross_entropy(x, W, labels, **kw):
    """The chunked layer with W as its one parameter: loss, dx, dW (checks the grads' keys)."""
    loss, dx, grads = chunked_layer(x, {"weight": W}, labels, **kw)
    assert grads is None if dx is None else set(grads) == {"weight"}
    return loss, dx, None if grads is None else grads["weight"]


def lm_head_loss(x, W, labels, reduction="mean", num_items=None):
    """The standard path, layer by layer: lm_head, cross-entropy, lm_head's backward."""
    logits, head_cache = lm_head_forward(x, {"weight": W})                 # (B,T,C) -> (B,T,V)
    loss, dlogits = cross_entropy(logits, labels, reduction=reduction, num_items=num_items)
    dx, grads = lm_head_backward(dlogits, head_cache)
    return loss, dx, grads["weight"]


def assert_close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    assert float(np.abs(a - b).max(initial=0.0)) <= tol * scale


@st.composite
def problems(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 7))
    C = draw(st.integers(1, 6))
    V = draw(st.integers(1, 13))
    N = B * T
    chunk = draw(st.one_of(st.none(), st.integers(1, N + 2)))
    mask = draw(st.sampled_from(["none", "some", "all"]))
    reduction = draw(st.sampled_from(["mean", "sum", "none", "num_items"]))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C)) * draw(st.sampled_from([1.0, 10.0]))
    W = rng.standard_normal((V, C))
    labels = rng.integers(0, V, size=(B, T))
    if mask == "some":
        labels[rng.random((B, T)) < 0.5] = -100
    elif mask == "all":
        labels[:] = -100
    return x, W, labels, chunk, reduction


def call_both(x, W, labels, chunk, reduction):
    kw = dict(reduction=reduction, num_items=None)
    if reduction == "num_items":
        kw = dict(reduction="mean", num_items=int((labels != -100).sum()) + 3)
    fused = lm_head_cross_entropy(x, W, labels, chunk_rows=chunk, **kw)
    unfused = lm_head_loss(x, W, labels, **kw)
    return fused, unfused


@given(problems())
def test_equals_unfused_path_float64(p):
    (loss, dx, dW), (loss_u, dx_u, dW_u) = call_both(*p)
    assert_close(loss, loss_u)
    assert dx.shape == dx_u.shape and dW.shape == dW_u.shape
    assert_close(dx, dx_u)
    assert_close(dW, dW_u)


@settings(max_examples=8)
@given(problems())
def test_gradcheck(p):
    x, W, labels, chunk, reduction = p
    if reduction == "none":
        reduction = "sum"            # the gradients of "none" are those of the summed losses
    kw = dict(reduction=reduction) if reduction != "num_items" else dict(reduction="mean", num_items=50)
    arrays = {"x": x.copy(), "weight": W.copy()}
    p = {"weight": arrays["weight"]}
    _, dx, grads = chunked_layer(arrays["x"], p, labels, chunk_rows=chunk, **kw)
    assert set(grads) == set(p)
    f = lambda: chunked_layer(arrays["x"], p, labels, chunk_rows=chunk, need_grads=False, **kw)[0]
    assert chunked_layer(arrays["x"], p, labels, chunk_rows=chunk, need_grads=False, **kw)[1:] == (None, None)
    assert_grads_match(f, arrays, {"x": dx, **grads})



@given(st.integers(2, 12), st.integers(1, 6), st.integers(2, 40), st.data())
def test_engine_dw_over_several_vocabulary_slices_equals_the_unchunked_gradient(N, C, V, data):
    """The engine adds the later chunks' dW into the (V,C) result one vocabulary slice of
    SLICE_BYTES at a time: with slices of 1 .. V-1 rows (one that need not divide V) and
    chunks smaller than the rows that count, dW and dx equal the standard path's."""
    from numpygpt.engine import chunked_loss
    slice_rows = data.draw(st.integers(1, V - 1), "rows per slice")
    chunk = data.draw(st.integers(1, N - 1), "chunk rows")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), "seed"))
    x, W = rng.standard_normal((1, N, C)), rng.standard_normal((V, C))
    labels = rng.integers(0, V, size=(1, N))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunked_loss, "SLICE_BYTES", slice_rows * C * W.itemsize)
        loss, dx, grads = lm_head_cross_entropy_fast(x, {"weight": W}, labels, chunk_rows=chunk)
    loss_u, dx_u, dW_u = lm_head_loss(x, W, labels)
    assert_close(loss, loss_u)
    assert_close(dx, dx_u)
    assert_close(grads["weight"], dW_u)


def test_all_ignored_gives_zero_loss_and_zero_grads():
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4))
    labels = np.full((2, 3), -100)
    for reduction in ("mean", "sum"):
        loss, dx, dW = lm_head_cross_entropy(x, W, labels, reduction=reduction, chunk_rows=2)
        assert loss == 0.0
        np.testing.assert_array_equal(dx, 0.0)
        np.testing.assert_array_equal(dW, 0.0)
    loss, _, _ = lm_head_cross_entropy(x, W, labels, reduction="none")
    np.testing.assert_array_equal(loss, np.zeros((2, 3)))


def test_ignored_rows_never_reach_the_matmul():
    """NaN in the hidden state of a -100 position: the unfused path multiplies it by a zero
    dlogits row and gets NaN in dW (0 * NaN); the fused one drops the row first."""
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((1, 6, 4)), rng.standard_normal((9, 4))
    labels = np.array([[-100, 3, -100, -100, 8, -100]])
    x[labels == -100] = np.nan
    loss, dx, dW = lm_head_cross_entropy(x, W, labels, chunk_rows=1)
    assert np.isfinite(loss) and np.isfinite(dW).all()
    np.testing.assert_array_equal(dx[labels == -100], 0.0)
    assert np.isnan(lm_head_loss(x, W, labels)[2]).any()      # what the fused path avoids
    kept = labels[0] != -100
    ref = lm_head_loss(x[:, kept], W, labels[:, kept])
    assert_close(loss, ref[0])
    assert_close(dW, ref[2])
    assert_close(dx[:, kept], ref[1])


def test_float32_stays_float32_and_close_to_float64():
    rng = np.random.default_rng(2)
    x, W = rng.standard_normal((2, 5, 8)), rng.standard_normal((30, 8))
    labels = rng.integers(0, 30, (2, 5))
    loss64, dx64, dW64 = lm_head_cross_entropy(x, W, labels, chunk_rows=3)
    loss32, dx32, dW32 = lm_head_cross_entropy(x.astype(np.float32), W.astype(np.float32), labels,
                                               chunk_rows=3)
    assert dx32.dtype == np.float32 and dW32.dtype == np.float32
    assert abs(loss32 - loss64) < 1e-5 * max(1.0, abs(loss64))
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dW32, dW64, rtol=1e-4, atol=1e-6)


def test_huge_logits_are_stable():
    x = np.array([[[1.0, 0.0]]])
    W = np.array([[1e300, 0.0], [-1e300, 0.0], [0.0, 1.0]])
    labels = np.array([[0]])
    (loss, dx, dW), (loss_u, dx_u, dW_u) = call_both(x, W, labels, None, "mean")
    assert loss == loss_u == 0.0
    np.testing.assert_array_equal(dW, dW_u)


def test_logits_never_exist_at_once():
    """Peak memory of the chunked path stays below one (N,V) logits array (the engine's, with
    its one reused buffer, below half of one); the standard path's is several of them."""
    rng = np.random.default_rng(3)
    N, C, V = 512, 16, 4000
    x = rng.standard_normal((1, N, C)).astype(np.float32)
    W = rng.standard_normal((V, C)).astype(np.float32)
    labels = rng.integers(0, V, (1, N))
    logits_bytes = N * V * 4
    chunked = peak_memory(lambda: lm_head_cross_entropy(x, W, labels, chunk_rows=64))
    fast = peak_memory(lambda: lm_head_cross_entropy_fast(x, {"weight": W}, labels, chunk_rows=64))
    unchunked = peak_memory(lambda: lm_head_loss(x, W, labels))
    assert chunked < logits_bytes
    assert fast < 0.5 * logits_bytes
    assert unchunked > 2 * logits_bytes
    assert unchunked > 4 * fast


@pytest.mark.parametrize("kwargs, match", [
    (dict(reduction="avg"), "reduction"),
    (dict(reduction="sum", num_items=3), "num_items"),
])
def test_bad_arguments(kwargs, match):
    x, W = np.zeros((1, 2, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match=match):
        lm_head_cross_entropy(x, W, np.zeros((1, 2), dtype=int), **kwargs)


def test_bad_labels():
    x, W = np.zeros((1, 2, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"labels\[0, 1\] = 4"):
        lm_head_cross_entropy(x, W, np.array([[0, 4]]))
    with pytest.raises(ValueError, match="labels has shape"):
        lm_head_cross_entropy(x, W, np.array([0, 1]))


# ---- the model uses it --------------------------------------------------------------------------

def unchunked_loss_and_grads(model, ids, labels, attention_mask=None, reduction="mean", num_items=None):
    """GPT.loss_and_grads as the textbook composition: full logits, then cross-entropy
    (gpt_forward with Execution(loss="standard"): lm_head_forward, cross_entropy, lm_head_backward)."""
    key_mask = None if attention_mask is None else np.asarray(attention_mask, dtype=bool)
    textbook = ng.Execution(loss="standard")
    loss, cache = gpt_forward(ids, model.params, model.config, labels, key_mask,
                              reduction=reduction, num_items=num_items, execution=textbook)
    top = cache[0]
    assert top[0] == "standard"
    dlogits = top[1]
    assert dlogits.shape == ids.shape + (model.config.vocab_size,)   # the (B,T,V) array exists
    return loss, gpt_backward(cache)


@settings(max_examples=6)
@given(st.booleans(), st.sampled_from(["mean", "sum", "none"]), st.integers(0, 1000),
       st.sampled_from([None, 1, 5]))
def test_model_uses_the_chunked_path_with_the_same_results(tied, reduction, seed, loss_chunk):
    cfg = tiny_config(tie_word_embeddings=tied)
    model = ng.GPT(cfg, seed=seed % 7, dtype=np.float64,
                   execution=ng.Execution(loss="chunked", loss_chunk=loss_chunk))
    assert model.execution.loss == "chunked"
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (2, 6))
    labels = rng.integers(0, cfg.vocab_size, (2, 6))
    labels[rng.random((2, 6)) < 0.4] = -100
    mask = np.ones((2, 6), dtype=int)
    mask[1, :2] = 0
    labels[1, :2] = -100
    loss, grads = model.loss_and_grads(ids, labels, attention_mask=mask, reduction=reduction)
    loss_u, grads_u = unchunked_loss_and_grads(model, ids, labels, mask, reduction)
    assert_close(loss, loss_u)
    assert_close(model.loss(ids, labels, attention_mask=mask, reduction=reduction), loss_u)
    assert set(grads) == set(model.params) == set(grads_u)
    for name in grads:
        assert_close(grads[name], grads_u[name])
    # the same through the model's own switch
    textbook = ng.GPT(cfg, dtype=np.float64, params=model.params,
                      execution=ng.Execution(loss="standard"))
    loss_t, grads_t = textbook.loss_and_grads(ids, labels, attention_mask=mask, reduction=reduction)
    assert_close(loss_t, loss_u)
    assert_close(textbook.loss(ids, labels, attention_mask=mask, reduction=reduction), loss_u)
    for name in grads:
        assert_close(grads_t[name], grads_u[name])


def test_model_logits_are_still_full():
    cfg = tiny_config()
    model = ng.GPT(cfg, dtype=np.float64)
    ids = np.array([[1, 2, 3]])
    assert model.logits(ids).shape == (1, 3, cfg.vocab_size)
    logits, cache = gpt_forward(ids, model.params, cfg)           # no labels: logits, no cache
    assert cache is None
    np.testing.assert_array_equal(logits, model.logits(ids))
