"""The gradient checker users call: correct on functions with known gradients, and able to fail."""
import numpy as np
import pytest

from numpygpt import gradcheck


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
