"""Shared test helpers: a gradient check with the project tolerance, and a tiny config."""

from numpygpt.gradcheck import check_gradients

TOL = 1e-6


def assert_grads_match(f, arrays, grads, tol=TOL, max_coords=40, seed=0):
    """Every array in `arrays` (float64, read by f) against its analytic gradient in `grads`."""
    results = check_gradients(f, arrays, grads, tol=tol, max_coords=max_coords, seed=seed)
    bad = [(r.name, r.max_rel_error) for r in results if not r.passed]
    assert not bad, f"gradient mismatch: {bad}"
    return results


def tiny_config(**overrides):
    import numpygpt as ng
    kw = dict(vocab_size=23, n_positions=12, n_embd=8, n_head=2, n_layer=2)
    kw.update(overrides)
    return ng.GPTConfig(**kw)
