"""Every layer keeps the one convention (numpygpt/layers/__init__.py):

    out, cache = name_forward(x, p, *options)      p: the layer's parameters by their own names
    dx, grads  = name_backward(dout, cache)        grads has exactly p's keys, p's shapes and dtypes

dx has x's shape (a tuple (dq, dk, dv) for the attention core's three inputs; None for integer
token ids); float32 in gives float32 out and float32 gradients (no silent float64 upcast). A loss
has no backward: loss, dx, grads = forward(x, p). The forward and backward are pure: they change
neither x nor p. Each layer is taken from numpygpt.gradcheck.layer_problem, the problems the
gradient checker runs, for every name in numpygpt.gradcheck.LAYERS.
"""
import dataclasses
import inspect
import sys

import numpy as np
import pytest

import numpygpt.layers
from numpygpt.config import Execution
from numpygpt.gradcheck import LAYERS, CHECK_CONFIG, CHECK_EXECUTION, layer_problem

LOSSES = ("cross_entropy", "chunked_loss")
# the options a layer's problem depends on; every other layer is the same under each
USES_POSITIONS = ("embedding", "attention", "block")
USES_ATTENTION = ("attention", "block")


def cases():
    for name in LAYERS:
        for pos in (("learned", "rope") if name in USES_POSITIONS else ("learned",)):
            for attention in (("standard", "tiled") if name in USES_ATTENTION else ("standard",)):
                for dtype in ("float64", "float32"):
                    yield pytest.param(name, pos, attention, dtype,
                                       id=f"{name}-{pos}-{attention}-{dtype}")


def problem(name, pos, attention, dtype):
    config = dataclasses.replace(CHECK_CONFIG, pos_encoding=pos)
    execution = dataclasses.replace(CHECK_EXECUTION, attention=attention)
    return layer_problem(name, config, batch_size=2, seq_len=5, dtype=np.dtype(dtype),
                         execution=execution, seed=3)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def snapshot(x, p):
    return [a.copy() for a in as_tuple(x)], {k: v.copy() for k, v in p.items()}


def assert_unchanged(before, x, p):
    xs, ps = before
    for a, b in zip(as_tuple(x), xs):
        np.testing.assert_array_equal(a, b)
    assert set(p) == set(ps)
    for k in p:
        np.testing.assert_array_equal(p[k], ps[k], err_msg=k)


def assert_grads_like_params(grads, p, dtype):
    assert isinstance(grads, dict)
    assert set(grads) == set(p), (sorted(grads), sorted(p))
    for k, g in grads.items():
        assert isinstance(g, np.ndarray), k
        assert g.shape == p[k].shape, (k, g.shape, p[k].shape)
        assert g.dtype == p[k].dtype == dtype, (k, g.dtype, p[k].dtype)


def assert_dx_like_x(dx, x, dtype):
    if isinstance(x, tuple):                                       # several inputs: one dx each
        assert isinstance(dx, tuple) and len(dx) == len(x)
        for d, a in zip(dx, x):
            assert isinstance(d, np.ndarray) and d.shape == a.shape and d.dtype == dtype
    elif np.issubdtype(np.asarray(x).dtype, np.integer):           # token ids: no gradient
        assert dx is None
    else:
        assert isinstance(dx, np.ndarray), type(dx)
        assert dx.shape == x.shape and dx.dtype == dtype, (dx.shape, dx.dtype, x.shape)


@pytest.mark.parametrize("name, pos, attention, dtype", list(cases()))
def test_layer_keeps_the_convention(name, pos, attention, dtype):
    dtype = np.dtype(dtype)
    forward, backward, x, p, input_names = problem(name, pos, attention, dtype)
    for a in as_tuple(x):
        if np.issubdtype(a.dtype, np.floating):
            assert a.dtype == dtype
    assert all(v.dtype == dtype for v in p.values())
    if input_names is not None:
        assert len(input_names) == len(as_tuple(x))
    before = snapshot(x, p)

    if name in LOSSES:
        assert backward is None
        result = forward(x, p)
        assert isinstance(result, tuple) and len(result) == 3      # loss, dx, grads
        loss, dx, grads = result
        assert np.ndim(loss) == 0 and np.isfinite(loss)
        assert_dx_like_x(dx, x, dtype)
        assert_grads_like_params(grads, p, dtype)
        assert_unchanged(before, x, p)
        return

    assert backward is not None
    result = forward(x, p)
    assert isinstance(result, tuple) and len(result) == 2          # out, cache
    out, cache = result
    assert isinstance(out, np.ndarray) and out.dtype == dtype, (type(out), getattr(out, "dtype", None))
    if name not in ("rope", "attention_core", "tiled_attention"):
        assert out.shape[:2] == (2, 5)                             # (B,T,...) in, (B,T,...) out
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(dtype)
    dout_before = dout.copy()
    result = backward(dout, cache)
    assert isinstance(result, tuple) and len(result) == 2          # dx, grads
    dx, grads = result
    assert_dx_like_x(dx, x, dtype)
    assert_grads_like_params(grads, p, dtype)
    np.testing.assert_array_equal(dout, dout_before)               # the upstream gradient is read only
    assert_unchanged(before, x, p)


def test_every_layer_and_option_is_covered():
    """LAYERS names each layer the convention test walks: one per forward/backward pair, and
    the two losses."""
    assert len(LAYERS) == len(set(LAYERS))
    assert set(LOSSES) <= set(LAYERS)
    assert set(USES_POSITIONS) | set(USES_ATTENTION) <= set(LAYERS)
    with pytest.raises(ValueError, match="not one of"):
        layer_problem("softmax")


def exported_forwards():
    return sorted(name for name in dir(numpygpt.layers)
                  if name.endswith("_forward") and not name.startswith("_")
                  and callable(getattr(numpygpt.layers, name)))


def test_every_exported_forward_has_its_backward_beside_it():
    forwards = exported_forwards()
    assert len(forwards) >= 10
    for name in forwards:
        fwd = getattr(numpygpt.layers, name)
        back_name = name[:-len("_forward")] + "_backward"
        module = sys.modules[fwd.__module__]
        assert module.__name__.startswith("numpygpt.layers."), (name, module.__name__)
        assert getattr(module, name) is fwd
        assert hasattr(module, back_name), f"{module.__name__} has {name} but no {back_name}"
        # and the package exports the pair together
        assert getattr(numpygpt.layers, back_name, None) is getattr(module, back_name), back_name
        # the backward takes (dout, cache)
        params = list(inspect.signature(getattr(module, back_name)).parameters)
        assert len(params) == 2, (back_name, params)


def test_every_exported_backward_has_its_forward():
    backwards = [n for n in dir(numpygpt.layers) if n.endswith("_backward") and not n.startswith("_")]
    assert {n[:-len("_backward")] + "_forward" for n in backwards} == set(exported_forwards())


def test_layer_problem_covers_every_forward_backward_pair():
    """Each pair numpygpt.layers exports is the pair of one of LAYERS' problems."""
    pairs = {}
    for name in LAYERS:
        forward, backward, *_ = layer_problem(name)
        if backward is not None:
            pairs[backward.__name__] = name
    for fwd in exported_forwards():
        back = fwd[:-len("_forward")] + "_backward"
        assert back in pairs, f"no problem in gradcheck.LAYERS uses {back}"


def test_the_check_execution_spans_several_tiles():
    assert CHECK_EXECUTION.q_tile < 5 and CHECK_EXECUTION.k_tile < 5
    assert isinstance(CHECK_EXECUTION, Execution)
