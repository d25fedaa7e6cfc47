"""The workspace: one buffer per name, made once and reused; and an Engine that reuses its
workspace from step to step computes what a fresh textbook computation does, whatever the
order of batch shapes, and makes no new array once its shapes have been seen."""
import numpy as np
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt.engine import Engine
from numpygpt.engine.workspace import Workspace, FRESH
from numpygpt.model import gpt_forward, gpt_backward


def test_a_name_is_one_buffer_reused_while_it_is_big_enough():
    ws = Workspace()
    a = ws("x", (4, 6), np.float32)
    assert ws("x", (4, 6), np.float32).ctypes.data == a.ctypes.data       # the same memory
    small = ws("x", (2, 5), np.float32)                                   # fewer elements: a view
    assert small.shape == (2, 5) and np.shares_memory(small, a)
    assert ws.allocations == 1
    big = ws("x", (5, 6), np.float32)                                     # more: a new buffer
    assert not np.shares_memory(big, a) and ws.allocations == 2
    other = ws("x", (5, 6), np.float64)                                   # another dtype: new
    assert other.dtype == np.float64 and ws.allocations == 3
    assert not np.shares_memory(ws("y", (5, 6), np.float64), other)      # names never share
    z = ws.zeros("x", (3, 3), np.float64)
    assert not z.any()


def test_fresh_keeps_nothing():
    a, b = FRESH("x", (3,), np.float64), FRESH("x", (3,), np.float64)
    assert not np.shares_memory(a, b) and FRESH.buffers == {}


CFG = dict(vocab_size=23, n_positions=16, n_embd=8, n_head=2, n_layer=2)
batches = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 12), st.floats(0, 1),
                             st.booleans(), st.integers(0, 2**16)), min_size=2, max_size=4)


@given(batches, st.sampled_from(["standard", "tiled"]), st.sampled_from(["standard", "chunked"]),
       st.booleans())
def test_reused_buffers_give_each_batch_its_own_answer(shapes, attention, loss, tied):
    """Batches of growing, shrinking and equal shapes through one Engine, padded or not, some
    with every label ignored: each step equals the textbook computed afresh."""
    cfg = ng.GPTConfig(**CFG, tie_word_embeddings=tied)
    execution = ng.Execution(engine="fast", attention=attention, loss=loss, q_tile=3, k_tile=5,
                             loss_chunk=4)
    params = ng.init_params(cfg, 0, np.float64)
    engine = Engine(cfg, execution)
    for B, T, ignored, padded, seed in shapes:
        rng = np.random.default_rng(seed)
        ids, labels = rng.integers(0, 23, (B, T)), rng.integers(0, 23, (B, T))
        labels[rng.random((B, T)) < ignored] = -100
        mask = None
        if padded:
            mask = np.ones((B, T), bool)
            mask[0, :rng.integers(0, T)] = False
            labels[~mask] = -100
        loss_f, cache = engine.forward(ids, params, labels=labels, key_mask=mask)
        grads = engine.backward(cache)
        loss_t, cache_t = gpt_forward(ids, params, cfg, labels=labels, key_mask=mask,
                                      execution=execution)
        grads_t = gpt_backward(cache_t)
        assert abs(loss_f - loss_t) <= 1e-12 * max(1.0, abs(loss_t))
        for k in params:
            np.testing.assert_allclose(grads[k], grads_t[k], rtol=0, atol=1e-12, err_msg=k)


def test_a_step_after_the_first_makes_no_array_and_gives_the_same_bits():
    cfg = ng.GPTConfig(**CFG)
    for attention in ("standard", "tiled"):
        model = ng.GPT(cfg, execution=ng.Execution(engine="fast", attention=attention,
                                                   loss="chunked", q_tile=4, k_tile=4))
        rng = np.random.default_rng(1)
        ids, labels = rng.integers(0, 23, (2, 10)), rng.integers(0, 23, (2, 10))
        labels[0, :3] = -100
        workspace = model.forward.__self__.ws
        loss_1, grads = model.loss_and_grads(ids, labels)
        first = {k: g.copy() for k, g in grads.items()}
        made, size = workspace.allocations, workspace.nbytes()
        for _ in range(2):
            loss_2, grads = model.loss_and_grads(ids, labels)
            assert workspace.allocations == made and workspace.nbytes() == size
            assert loss_2 == loss_1
            assert all(np.array_equal(grads[k], first[k]) for k in first)
        model.loss_and_grads(ids[:, :6], labels[:, :6])       # a shorter batch: views, no array
        assert workspace.allocations == made
