"""The gradient checker users call: correct on functions with known gradients, and able to fail."""
import dataclasses

import numpy as np
import pytest

from numpygpt import gradcheck
from helpers import assert_grads_match


def test_the_tests_helper_retries_at_a_smaller_step_and_still_fails_a_wrong_gradient():
    """tests/helpers.assert_grads_match: a sharp function whose central difference misses 1e-6
    at eps 1e-5 by truncation passes at eps 1e-6; a gradient 3e-6 off fails at both steps."""
    x = np.array([0.001, -0.0007, 0.5])
    f = lambda: float(np.sum(np.sqrt(x ** 2 + 1e-6)))            # curves sharply near 0
    right = x / np.sqrt(x ** 2 + 1e-6)
    first = gradcheck.check_gradients(f, {"x": x}, {"x": right}, tol=1e-6)
    assert not first[0].passed                                     # truncation at eps 1e-5
    assert_grads_match(f, {"x": x}, {"x": right})
    with pytest.raises(AssertionError, match="gradient mismatch"):
        assert_grads_match(f, {"x": x}, {"x": right * (1 + 3e-6)})


def test_known_gradient_passes_and_wrong_one_fails():
    rng = np.random.default_rng(0)
    p = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal(3)}
    f = lambda: float(np.sum(np.sin(p["a"])) + np.sum(p["b"] ** 3))
    grads = {"a": np.cos(p["a"]), "b": 3 * p["b"] ** 2}
    res = gradcheck.check_gradients(f, p, grads)
    assert all(r.passed and r.max_rel_error < 1e-8 for r in res)
    res = gradcheck.check_gradients(f, p, {"a": grads["a"], "b": grads["b"] * (1 + 1e-4)})
    assert [r.passed for r in res] == [True, False]
    assert all(d.passed for d in gradcheck.check_directional(f, p, grads, n_directions=3))
    assert not any(d.passed for d in gradcheck.check_directional(f, p, {"a": -grads["a"], "b": grads["b"]}))


def test_params_are_restored_and_subset_is_sampled():
    p = {"w": np.linspace(-1.0, 1.0, 1000)}
    before = p["w"].copy()
    res = gradcheck.check_gradients(lambda: float((p["w"] ** 2).sum()), p, {"w": 2 * p["w"]}, max_coords=10)
    assert res[0].n_checked == 10 and res[0].passed
    np.testing.assert_array_equal(p["w"], before)
    gradcheck.check_directional(lambda: float((p["w"] ** 2).sum()), p, {"w": 2 * p["w"]})
    np.testing.assert_array_equal(p["w"], before)


def test_relative_error_does_not_blow_up_near_zero():
    assert gradcheck.relative_error([1.0, 1e-12], [1.0, 2e-12]) < 1e-11
    assert gradcheck.relative_error([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert gradcheck.relative_error([0.0], [1e-3]) == 1.0
    assert gradcheck.relative_error([1.0, -2.0], [1.0, -2.2]) == pytest.approx(0.2 / 2.2)


def test_float32_is_refused():
    p = {"w": np.ones(3, dtype=np.float32)}
    with pytest.raises(ValueError, match="float64"):
        gradcheck.check_gradients(lambda: 0.0, p, {"w": np.zeros(3)})


def test_a_tensor_at_rounding_level_is_measured_against_the_others():
    """dq of a query that sees one key is exactly 0; a float computation gives ~1e-17. Next to
    an O(1) gradient that is rounding, and passes; an error of 1e-6 of the largest gradient in
    the same small tensor does not."""
    p = {"big": np.array([0.3, -1.2]), "small": np.array([0.5, 0.7])}
    f = lambda: float(np.sum(p["big"] ** 2))                       # d/d small = 0 exactly
    grads = {"big": 2 * p["big"], "small": np.array([1e-17, -2e-17])}
    res = gradcheck.check_gradients(f, p, grads)
    assert all(r.passed for r in res)
    assert gradcheck.relative_error(grads["small"], [0.0, 0.0]) == 1.0      # alone, it would fail
    grads["small"] = np.array([2.4e-6, 0.0])
    assert [r.passed for r in gradcheck.check_gradients(f, p, grads)] == [True, False]


# ---- the layer and model checks (numpygpt.gradcheck.layers) --------------------------------------

def layer_cases():
    for name in gradcheck.LAYERS:
        options = [("learned", "standard")]
        if name in ("attention", "block"):
            options = [(pos, att) for pos in ("learned", "rope") for att in ("standard", "tiled")]
        elif name == "embedding":
            options = [("learned", "standard"), ("rope", "standard")]
        for pos, att in options:
            yield pytest.param(name, pos, att, id=f"{name}-{pos}-{att}")


@pytest.mark.parametrize("name, pos, attention", list(layer_cases()))
def test_every_layer_passes_its_gradient_check(name, pos, attention):
    config = dataclasses.replace(gradcheck.CHECK_CONFIG, pos_encoding=pos)
    execution = dataclasses.replace(gradcheck.CHECK_EXECUTION, attention=attention)
    results = gradcheck.check_layer(name, config, execution=execution)
    _, _, x, p, _ = gradcheck.layer_problem(name, config, execution=execution)
    n_inputs = sum(np.issubdtype(a.dtype, np.floating)
                   for a in (x if isinstance(x, tuple) else (x,)))
    assert len(results) == n_inputs + len(p)                   # every float input and parameter
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, bad
    assert all(r.max_rel_error <= 1e-6 for r in results)       # float64: the project tolerance


def test_check_pair_fails_a_wrong_backward_and_refuses_missing_gradients():
    from numpygpt.layers import linear_forward, linear_backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    p = {"weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(5)}
    assert all(r.passed for r in gradcheck.check_pair(linear_forward, linear_backward, x, p))

    def off_by_a_percent(dout, cache):
        dx, g = linear_backward(dout, cache)
        return dx, {**g, "bias": 1.01 * g["bias"]}

    res = gradcheck.check_pair(linear_forward, off_by_a_percent, x, p)
    assert {r.name for r in res if not r.passed} == {"bias"}

    def forgets_the_bias(dout, cache):
        dx, g = linear_backward(dout, cache)
        return dx, {"weight": g["weight"]}

    with pytest.raises(ValueError, match="layer convention"):
        gradcheck.check_pair(linear_forward, forgets_the_bias, x, p)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_check_model_takes_float32_and_float64_models(dtype):
    import numpygpt as ng
    cfg = ng.GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=1)
    model = ng.GPT(cfg, seed=0, dtype=dtype)
    gradcheck.unit_scale_params(model.params, np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 11, size=(2, 5))
    labels = ng.causal_lm_labels(ids)
    results = gradcheck.check_model(model, ids, labels, max_coords=8)
    eps, tol = gradcheck.TOLERANCES[np.dtype(dtype).name]
    assert {r.name for r in results} == set(model.params)
    assert all(r.max_rel_error <= tol for r in results), [(r.name, r.max_rel_error) for r in results]
    assert all(model.params[k].dtype == dtype for k in model.params)


@pytest.mark.parametrize("name", ["attention_core", "tiled_attention", "attention", "block"])
def test_the_attention_layers_are_checked_with_the_configs_window(name):
    """config.sliding_window reaches every attention layer's problem: its output differs from
    full attention's (seq_len 5 > W = 2), and its gradients pass."""
    windowed = dataclasses.replace(gradcheck.CHECK_CONFIG, sliding_window=2)
    outputs = []
    for config in (gradcheck.CHECK_CONFIG, windowed):
        forward, _, x, p, _ = gradcheck.layer_problem(name, config)
        outputs.append(forward(x, p)[0])
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-6
    assert all(r.passed for r in gradcheck.check_layer(name, windowed))
