"""Every engine kernel equals its textbook twin (float64: relative 1e-12 of the largest value;
float32: to rounding, 1e-5), on shapes hypothesis chooses, with padding and a KV cache's
extra keys and sliding windows, at 1, 2 and 3 threads; and 2 threads give the same bits twice. The whole model:
the Engine against gpt_forward/gpt_backward, tied and untied, learned and rotary positions,
standard and tiled attention, standard and chunked loss."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from helpers import cut_into
from numpygpt.engine import Engine
from numpygpt.engine.adamw import CHUNK
from numpygpt.engine.attention import (causal_attention_forward_fast, causal_attention_backward_fast,
                                       attention_forward_fast, attention_backward_fast)
from numpygpt.engine.chunked_loss import lm_head_cross_entropy_fast
from numpygpt.engine.gelu import gelu_forward_fast, gelu_backward_fast
from numpygpt.engine.layernorm import layernorm_forward_fast, layernorm_backward_fast
from numpygpt.engine.tiled_attention import tiled_attention_forward_fast, tiled_attention_backward_fast
from numpygpt.layers import (gelu_forward, gelu_backward, layernorm_forward, layernorm_backward,
                             causal_attention_forward, causal_attention_backward,
                             tiled_attention_forward, tiled_attention_backward, attention_forward,
                             attention_backward, lm_head_cross_entropy, rope_cos_sin)
from numpygpt.model import gpt_forward, gpt_backward
from numpygpt.train.optim import AdamW

DTYPES = [np.float64, np.float32]
THREADS = st.sampled_from([1, 2, 3])
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def assert_twins(fast, textbook, what="", terms=0.0, computed_in=None):
    """Equal to rounding: max |fast - textbook| <= tol * max |textbook| (tol by dtype), and
    the same shape and dtype. terms: the size of the terms summed into the result, when they
    can cancel to far less than themselves (rounding is relative to them, not to the sum).
    computed_in: the dtype the value was computed in, when it is returned as another (a
    float32 model's mean loss is a Python float)."""
    fast, textbook = np.asarray(fast), np.asarray(textbook)
    assert fast.shape == textbook.shape and fast.dtype == textbook.dtype, what
    scale = max(float(np.abs(textbook).max(initial=0.0)), terms, 1e-30)
    err = float(np.abs(fast.astype(np.float64) - textbook).max(initial=0.0))
    tol = TOL[np.dtype(computed_in or textbook.dtype)]
    assert err <= tol * scale, f"{what}: {err:.3g} > {tol:g} x {scale:.3g}"


def twice_the_same(run):
    """run() at 2 threads twice: the same bits (the pieces are cut and summed the same way)."""
    with cut_into(2):
        a, b = run(), run()
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


def draw(rng, *shape, dtype=np.float64, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def padding(rng, B, Tk, kind):
    """None, or a (B,Tk) key mask: left padding in some rows, or every key of row 0 masked."""
    if kind == "none":
        return None
    mask = np.ones((B, Tk), bool)
    if kind == "left":
        mask[0, :rng.integers(0, Tk)] = False
    else:
        mask[0] = False                          # a row with no key at all: output 0
    return mask


# ---- element-wise layers ---------------------------------------------------------------------

@given(st.sampled_from(DTYPES), st.integers(1, 3), st.integers(1, 40), st.integers(1, 24),
       THREADS, st.integers(0, 2**16))
def test_gelu(dtype, B, T, C, n_threads, seed):
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, B, T, C, dtype=dtype, scale=3.0), draw(rng, B, T, C, dtype=dtype)

    def run():
        out, cache = gelu_forward_fast(x)
        return out, gelu_backward_fast(dout, cache)[0]
    with cut_into(n_threads):
        out, dx = run()
    out_t, cache_t = gelu_forward(x)
    assert_twins(out, out_t, "gelu")
    assert_twins(dx, gelu_backward(dout, cache_t)[0], "gelu dx")
    twice_the_same(run)


@given(st.sampled_from(DTYPES), st.integers(1, 3), st.integers(1, 40), st.integers(1, 24),
       THREADS, st.integers(0, 2**16))
def test_layernorm(dtype, B, T, C, n_threads, seed):
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, B, T, C, dtype=dtype), draw(rng, B, T, C, dtype=dtype)
    p = {"weight": 1 + draw(rng, C, dtype=dtype, scale=0.1), "bias": draw(rng, C, dtype=dtype)}

    def run():
        out, cache = layernorm_forward_fast(x, p)
        dx, g = layernorm_backward_fast(dout, cache)
        return out, dx, g["weight"], g["bias"]
    with cut_into(n_threads):
        fast = run()
    out, cache = layernorm_forward(x, p)
    dx, g = layernorm_backward(dout, cache)
    # dx = rstd (g - mean(g) - xhat mean(g xhat)) cancels to ~eps when C is 1 or 2
    terms = float(np.abs(cache[1] * dout * p["weight"]).max())
    for a, b, what in zip(fast, (out, dx, g["weight"], g["bias"]), ("out", "dx", "dw", "db")):
        assert_twins(a, b, what, terms if what == "dx" else 0.0)
    twice_the_same(run)


# ---- the attention cores ------------------------------------------------------------------

cores = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES), "B": st.integers(1, 3), "H": st.integers(1, 3),
    "T": st.integers(1, 40), "extra": st.sampled_from([0, 0, 1, 7]), "D": st.integers(1, 8),
    "mask": st.sampled_from(["none", "left", "empty row"]), "q_tile": st.integers(1, 16),
    "k_tile": st.integers(1, 48), "window": st.sampled_from([None, None, 1, 2, 5, 17]),
    "seed": st.integers(0, 2**16)})


def core_inputs(c):
    """q (B,H,T,D) and k, v (B,H,Tk,D), Tk = T + extra (a KV cache's earlier keys), dy, mask."""
    rng = np.random.default_rng(c["seed"])
    B, H, T, D = c["B"], c["H"], c["T"], c["D"]
    Tk = T + c["extra"]
    q, dy = draw(rng, B, H, T, D, dtype=c["dtype"]), draw(rng, B, H, T, D, dtype=c["dtype"])
    k, v = draw(rng, B, H, Tk, D, dtype=c["dtype"]), draw(rng, B, H, Tk, D, dtype=c["dtype"])
    return q, k, v, dy, padding(rng, B, Tk, c["mask"])


@given(cores, THREADS)
def test_standard_attention_core(c, n_threads):
    q, k, v, dy, mask = core_inputs(c)

    def run():
        y, cache = causal_attention_forward_fast(q, k, v, mask, window=c["window"])
        return (y, *causal_attention_backward_fast(dy, cache)[0])
    with cut_into(n_threads):
        fast = run()
    y, cache = causal_attention_forward(q, k, v, mask, window=c["window"])
    textbook = (y, *causal_attention_backward(dy, cache)[0])
    for a, b, what in zip(fast, textbook, ("y", "dq", "dk", "dv")):
        assert_twins(a, b, what)
    twice_the_same(run)


@given(cores, st.sampled_from([1, 2, 3, 4]), THREADS)
def test_standard_attention_core_grouped(c, g, n_threads):
    """group=g (grouped-query attention): the g query heads of each of H key/value heads as the
    rows of one array, position-major, each key read once for them; equal to the textbook core
    on the keys and values repeated g times (query head h uses key head h // g), with dk and dv
    summed over each group."""
    rng = np.random.default_rng(c["seed"])
    B, K, T, D, dt = c["B"], c["H"], c["T"], c["D"], c["dtype"]
    Tk = T + c["extra"]
    q, dy = draw(rng, B, K * g, T, D, dtype=dt), draw(rng, B, K * g, T, D, dtype=dt)
    k, v = draw(rng, B, K, Tk, D, dtype=dt), draw(rng, B, K, Tk, D, dtype=dt)
    mask = padding(rng, B, Tk, c["mask"])
    as_rows = lambda a: a.reshape(B, K, g, T, D).transpose(0, 1, 3, 2, 4).reshape(B, K, T * g, D)
    as_heads = lambda a: a.reshape(B, K, T, g, D).transpose(0, 1, 3, 2, 4).reshape(B, K * g, T, D)

    def run():
        y, cache = causal_attention_forward_fast(as_rows(q), k, v, mask, window=c["window"], group=g)
        dq, dk, dv = causal_attention_backward_fast(as_rows(dy), cache)[0]
        return as_heads(y), as_heads(dq), dk, dv
    with cut_into(n_threads):
        fast = run()
    y, cache = causal_attention_forward(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), mask,
                                        window=c["window"])
    dq, dk, dv = causal_attention_backward(dy, cache)[0]
    summed = lambda a: a.reshape(B, K, g, Tk, D).sum(axis=2)          # repeat_kv's backward
    terms = {"dk": float(np.abs(dk).max(initial=0.0)), "dv": float(np.abs(dv).max(initial=0.0))}
    for a, b, what in zip(fast, (y, dq, summed(dk), summed(dv)), ("y", "dq", "dk", "dv")):
        assert_twins(a, b, what, terms.get(what, 0.0))      # the summed terms' size: they can cancel
    twice_the_same(run)


def test_decoding_rows_against_keys_chunk_by_chunk(monkeypatch):
    """Few query rows (decoding's case): the scores as k q^T and P v summed over key chunks;
    with chunks of 3 keys a 20-key cache is 7 of them, the last one short."""
    import numpygpt.engine.attention as engine_attention
    monkeypatch.setattr(engine_attention, "KEY_CHUNK", 3)
    rng = np.random.default_rng(0)
    for g, T in ((1, 1), (4, 1), (3, 2)):
        q = draw(rng, 2, 2 * g, T, 5)
        k, v = draw(rng, 2, 2, 20, 5), draw(rng, 2, 2, 20, 5)
        mask = padding(rng, 2, 20, "left")
        rows = q.reshape(2, 2, g, T, 5).transpose(0, 1, 3, 2, 4).reshape(2, 2, T * g, 5)
        y, _ = causal_attention_forward_fast(rows, k, v, mask, window=7, group=g)
        y_t, _ = causal_attention_forward(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1),
                                          mask, window=7)
        assert_twins(y.reshape(2, 2, T, g, 5).transpose(0, 1, 3, 2, 4).reshape(2, 2 * g, T, 5),
                     y_t, f"y g={g} T={T}")


@given(cores, THREADS)
def test_tiled_attention_core(c, n_threads):
    q, k, v, dy, mask = core_inputs(c)
    tiles = (c["q_tile"], c["k_tile"])

    def run():
        y, cache = tiled_attention_forward_fast(q, k, v, mask, *tiles, window=c["window"])
        return (y, *tiled_attention_backward_fast(dy, cache)[0])
    with cut_into(n_threads):
        fast = run()
    y, cache = tiled_attention_forward(q, k, v, mask, *tiles, window=c["window"])
    textbook = (y, *tiled_attention_backward(dy, cache)[0])
    for a, b, what in zip(fast, textbook, ("y", "dq", "dk", "dv")):
        assert_twins(a, b, what)
    twice_the_same(run)


@given(st.sampled_from(DTYPES), st.integers(1, 2), st.integers(1, 12), st.sampled_from([1, 2, 4]),
       st.booleans(), st.sampled_from(["standard", "tiled"]), st.sampled_from([0, 3]), THREADS,
       st.sampled_from([None, 1, 4]), st.integers(0, 2**16), st.sampled_from([1, 2, 4]),
       st.sampled_from(["none", "left", "empty row"]))
def test_attention_layer(dtype, B, T, H, rope, attention, cached, n_threads, window, seed, K,
                         padded):
    """The layer around the cores: projections, heads, rotary positions, a KV cache's keys,
    a sliding window, padding, K key/value heads (grouped-query attention; K = H is GPT-2's)."""
    rng = np.random.default_rng(seed)
    C = 4 * H
    K = min(K, H)                                  # 1, 2 or 4 divides H in [1, 2, 4]
    W = C + 2 * K * 4
    x, dout = draw(rng, B, T, C, dtype=dtype), draw(rng, B, T, C, dtype=dtype)
    p = {"c_attn.weight": draw(rng, C, W, dtype=dtype, scale=C ** -0.5),
         "c_attn.bias": draw(rng, W, dtype=dtype, scale=0.1),
         "c_proj.weight": draw(rng, C, C, dtype=dtype, scale=C ** -0.5),
         "c_proj.bias": draw(rng, C, dtype=dtype, scale=0.1)}
    pos = np.broadcast_to(np.arange(cached, cached + T), (B, T))
    cos_sin = rope_cos_sin(pos, 4, dtype=dtype) if rope else None
    earlier = draw(rng, 2, B, K, cached + T, 4, dtype=dtype)       # a cache's k and v buffers
    key_mask = padding(rng, B, cached + T, padded)

    def layer(forward, backward):
        past = (earlier[0].copy(), earlier[1].copy(), cached) if cached else None
        out, cache = forward(x, p, H, key_mask, cos_sin, past, attention, 3, 5, K, window=window)
        if cached:                                   # decoding: no backward
            return (out,)
        dx, g = backward(dout, cache)
        return (out, dx, *(g[k] for k in sorted(g)))
    with cut_into(n_threads):
        fast = layer(attention_forward_fast, attention_backward_fast)
    for i, (a, b) in enumerate(zip(fast, layer(attention_forward, attention_backward), strict=True)):
        assert_twins(a, b, f"output {i}")


# ---- the chunked loss -----------------------------------------------------------------------

@given(st.sampled_from(DTYPES), st.integers(1, 3), st.integers(1, 30), st.integers(1, 12),
       st.integers(2, 300), st.sampled_from(["mean", "sum", "none"]), st.floats(0, 1),
       st.integers(1, 40), st.booleans(), THREADS, st.integers(0, 2**16))
def test_chunked_loss(dtype, B, T, C, V, reduction, ignored, chunk_rows, need_grads, n_threads,
                      seed):
    rng = np.random.default_rng(seed)
    x = draw(rng, B, T, C, dtype=dtype)
    p = {"weight": draw(rng, V, C, dtype=dtype)}
    labels = rng.integers(0, V, (B, T))
    labels[rng.random((B, T)) < ignored] = -100          # up to every one ignored
    kw = dict(reduction=reduction, chunk_rows=chunk_rows, need_grads=need_grads)
    with cut_into(n_threads):
        fast = lm_head_cross_entropy_fast(x, p, labels, **kw)
    textbook = lm_head_cross_entropy(x, p, labels, **kw)
    if reduction == "none":
        assert_twins(fast[0], textbook[0], "losses")
    else:
        assert abs(fast[0] - textbook[0]) <= TOL[np.dtype(dtype)] * max(abs(textbook[0]), 1e-30)
    if need_grads:
        assert_twins(fast[1], textbook[1], "dx")
        assert_twins(fast[2]["weight"], textbook[2]["weight"], "dW")
    else:
        assert fast[1:] == textbook[1:] == (None, None)


def test_chunked_loss_over_several_vocabulary_slices(threads):
    """dW accumulated slice by slice when V*C does not fit one slice (SLICE_BYTES): V = 40000,
    C = 128 in float32 is 19.5 MiB, so the later chunks add into two slices."""
    from numpygpt.engine.chunked_loss import SLICE_BYTES
    rng = np.random.default_rng(0)
    V, C = 40000, 128
    assert V * C * 4 > SLICE_BYTES
    x, p = draw(rng, 1, 50, C, dtype=np.float32), {"weight": draw(rng, V, C, dtype=np.float32)}
    labels = rng.integers(0, V, (1, 50))
    labels[0, ::3] = -100
    threads(2)
    _, dx, g = lm_head_cross_entropy_fast(x, p, labels, chunk_rows=7)
    _, dx_t, g_t = lm_head_cross_entropy(x, p, labels, chunk_rows=7)
    assert_twins(dx, dx_t, "dx")
    assert_twins(g["weight"], g_t["weight"], "dW")


# ---- the whole model ----------------------------------------------------------------------

models = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES), "tied": st.booleans(),
    "pos_encoding": st.sampled_from(["learned", "rope"]),
    "attention": st.sampled_from(["standard", "tiled"]), "loss": st.sampled_from(["standard", "chunked"]),
    "B": st.integers(1, 3), "T": st.integers(1, 12), "padded": st.booleans(),
    "reduction": st.sampled_from(["mean", "sum", "none"]),
    "window": st.sampled_from([None, None, 1, 4]), "seed": st.integers(0, 2**16)})


@given(models, THREADS)
def test_engine_equals_gpt_forward_and_backward(m, n_threads):
    cfg = ng.GPTConfig(vocab_size=29, n_positions=16, n_embd=8, n_head=2, n_layer=2,
                       tie_word_embeddings=m["tied"], pos_encoding=m["pos_encoding"],
                       sliding_window=m["window"])
    execution = ng.Execution(engine="fast", attention=m["attention"], loss=m["loss"], q_tile=3,
                             k_tile=5, loss_chunk=4)
    rng = np.random.default_rng(m["seed"])
    params = ng.init_params(cfg, m["seed"], m["dtype"])
    B, T = m["B"], m["T"]
    ids, labels = rng.integers(0, 29, (B, T)), rng.integers(0, 29, (B, T))
    labels[rng.random((B, T)) < 0.3] = -100
    mask = None
    if m["padded"]:
        mask = np.ones((B, T), bool)
        mask[0, :rng.integers(0, T)] = False              # left padding
        labels[~mask] = -100
    kw = dict(labels=labels, key_mask=mask, reduction=m["reduction"])
    with cut_into(n_threads):
        engine = Engine(cfg, execution)
        loss, cache = engine.forward(ids, params, **kw)
        grads = {k: g.copy() for k, g in engine.backward(cache).items()}
        logits, _ = engine.forward(ids, params, key_mask=mask)
    loss_t, cache_t = gpt_forward(ids, params, cfg, execution=execution, **kw)
    grads_t = gpt_backward(cache_t)
    logits_t, _ = gpt_forward(ids, params, cfg, key_mask=mask, execution=execution)
    assert_twins(loss, loss_t, "loss", computed_in=m["dtype"])
    assert_twins(logits, logits_t, "logits")
    assert sorted(grads) == sorted(grads_t) == sorted(params)
    for k in params:
        assert_twins(grads[k], grads_t[k], k)


def test_gpt_with_the_engine_is_the_same_model(threads):
    """ng.GPT(execution=Execution(engine="fast")) against the default (textbook) GPT: every
    method, the same numbers; and its grads are the engine's buffers (overwritten next call)."""
    cfg = ng.GPTConfig(vocab_size=40, n_positions=24, n_embd=16, n_head=2, n_layer=2)
    textbook = ng.GPT(cfg, seed=1, dtype=np.float64)
    fast = ng.GPT(cfg, dtype=np.float64, params=textbook.params,
                  execution=ng.Execution(engine="fast", loss="chunked"))
    rng = np.random.default_rng(0)
    ids, labels = rng.integers(0, 40, (2, 20)), rng.integers(0, 40, (2, 20))
    threads(2)
    assert_twins(fast.logits(ids), textbook.logits(ids), "logits")
    assert abs(fast.loss(ids, labels) - textbook.loss(ids, labels)) < 1e-12
    loss, grads = fast.loss_and_grads(ids, labels)
    loss_t, grads_t = textbook.loss_and_grads(ids, labels)
    assert abs(loss - loss_t) < 1e-12
    for k in grads_t:
        assert_twins(grads[k], grads_t[k], k)
    prompt = [np.array([1, 2, 3]), np.array([4])]
    assert all(np.array_equal(a, b) for a, b in
               zip(ng.generate(fast, prompt, 5), ng.generate(textbook, prompt, 5)))


# ---- AdamW --------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw(dtype, n_threads, threads):
    """The engine's in-place, chunked update against the textbook's formulas, three steps on
    parameters of several chunks and of one, decayed and not."""
    cfg = ng.GPTConfig(vocab_size=3000, n_positions=64, n_embd=32, n_head=2, n_layer=1)
    rng = np.random.default_rng(0)
    params = ng.init_params(cfg, dtype=dtype)
    assert params["wte.weight"].size > 2 * CHUNK / 3
    grads = [{k: rng.standard_normal(p.shape).astype(dtype) for k, p in params.items()}
             for _ in range(3)]
    runs = {}
    for engine in ("textbook", "fast"):
        ps = {k: p.copy() for k, p in params.items()}
        opt = AdamW(ps, lr=1e-2, weight_decay=0.1, engine=engine)
        threads(n_threads)
        for g in grads:
            opt.step(ps, g)
        runs[engine] = ps, opt.m, opt.v
    for k in params:
        for fast, textbook in zip(runs["fast"], runs["textbook"]):
            assert_twins(fast[k], textbook[k], k)


def test_adamw_makes_no_parameter_sized_temporary(threads):
    """The chunked update allocates chunk-sized scratch, not arrays the size of the parameters
    (a parameter of many chunks: 4.8M elements, 37 chunks)."""
    import tracemalloc
    threads(2)
    shape = (8000, 600)
    assert shape[0] * shape[1] > 16 * CHUNK
    params = {"h.0.mlp.c_fc.weight": np.ones(shape, np.float32)}
    grads = {"h.0.mlp.c_fc.weight": np.full(shape, 0.5, np.float32)}
    opt = AdamW(params, engine="fast")
    opt.step(params, grads)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        opt.step(params, grads)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < params["h.0.mlp.c_fc.weight"].nbytes / 4, peak


def test_adamw_updates_a_strided_parameter_in_place(threads):
    """A parameter that is a view (a transposed matrix) is updated where it lives."""
    threads(2)
    base = np.ones((6, 40000))
    name = "h.0.mlp.c_fc.weight"
    params, grads = {name: base.T}, {name: np.full((40000, 6), 0.5)}
    expect = {name: np.ones((40000, 6))}
    AdamW(params, engine="fast").step(params, grads)
    AdamW(expect).step(expect, grads)
    assert_twins(base.T, expect[name])
    assert not np.array_equal(base, np.ones((6, 40000)))
