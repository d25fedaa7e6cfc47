"""Check your own layer: a layer that is not in numpygpt, written here by the layer convention
(numpygpt/layers/__init__.py), checked by one call to gradcheck.check_pair. The recipe of
docs/gradient-checks.md, as a test: the right backward passes, a deliberate bug fails and the
report names the wrong tensor.

RMSNorm (as in LLaMA): no mean, no bias.
    rms  = sqrt(mean(x^2) + eps);  xhat = x / rms;  out = xhat * weight
    dx   = (g - xhat * mean(g * xhat)) / rms,   g = dout * weight
"""
import numpy as np
import pytest

from numpygpt import gradcheck


def rmsnorm_forward(x, p, eps=1e-6):
    """x (...,C), p {"weight": (C,)} -> out (...,C)."""
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)    # (...,1)
    xhat = x * rstd                                                      # (...,C)
    return xhat * p["weight"], (xhat, rstd, p["weight"])


def rmsnorm_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)                  # out = xhat * weight
    g = dout * weight                                                    # d loss / d xhat
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))     # rstd depends on x
    return dx, {"weight": dweight}


def rmsnorm_backward_rstd_constant(dout, cache):
    """The deliberate bug: rstd taken as a constant (the mean term dropped)."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)
    return rstd * (dout * weight), {"weight": dweight}


def rmsnorm_backward_weight_unnormalised(dout, cache):
    """Another: the weight's gradient summed against x instead of xhat."""
    dx, grads = rmsnorm_backward(dout, cache)
    xhat, rstd, _ = cache
    C = xhat.shape[-1]
    return dx, {"weight": (dout * xhat / rstd).reshape(-1, C).sum(axis=0)}


def problem(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 8)).astype(dtype)
    p = {"weight": (1 + 0.1 * rng.standard_normal(8)).astype(dtype)}
    return x, p


def failed(results):
    return [r.name for r in results if not r.passed]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_right_rmsnorm_passes(dtype):
    x, p = problem(dtype)
    results = gradcheck.check_pair(rmsnorm_forward, rmsnorm_backward, x, p)
    assert [r.name for r in results] == ["x", "weight"] and failed(results) == []
    eps, tol = gradcheck.TOLERANCES[np.dtype(dtype).name]
    lines, ok = gradcheck.format_report(results, tol)
    assert ok and lines[-1].startswith("all 2 tensors pass")
    assert max(r.max_rel_error for r in results) < (1e-8 if dtype == np.float64 else tol)
    assert all(d.passed for d in gradcheck.check_pair(rmsnorm_forward, rmsnorm_backward, x, p,
                                                      directional=True))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_deliberate_bug_fails_and_the_report_names_the_tensor(dtype):
    x, p = problem(dtype)
    results = gradcheck.check_pair(rmsnorm_forward, rmsnorm_backward_rstd_constant, x, p)
    assert failed(results) == ["x"]
    assert results[0].max_rel_error > 1e-2 > results[1].max_rel_error
    lines, ok = gradcheck.format_report(results, gradcheck.TOLERANCES[np.dtype(dtype).name][1])
    assert not ok and lines[-1].startswith("FAILED: 1 of 2 tensors")
    assert lines[1].split()[0] == "x" and lines[1].endswith("FAIL")
    assert lines[2].split()[0] == "weight" and lines[2].endswith("pass")
    results = gradcheck.check_pair(rmsnorm_forward, rmsnorm_backward_weight_unnormalised, x, p)
    assert failed(results) == ["weight"]
    assert not all(d.passed for d in gradcheck.check_pair(
        rmsnorm_forward, rmsnorm_backward_rstd_constant, x, p, directional=True))


def test_the_inputs_are_left_as_they_were():
    x, p = problem()
    x0, w0 = x.copy(), p["weight"].copy()
    gradcheck.check_pair(rmsnorm_forward, rmsnorm_backward, x, p)
    assert np.array_equal(x, x0) and np.array_equal(p["weight"], w0)


def test_a_backward_that_breaks_the_convention_is_refused():
    x, p = problem()
    wrong_keys = lambda dout, cache: (rmsnorm_backward(dout, cache)[0], {"scale": p["weight"]})
    with pytest.raises(ValueError, match="grads has p's keys"):
        gradcheck.check_pair(rmsnorm_forward, wrong_keys, x, p)
