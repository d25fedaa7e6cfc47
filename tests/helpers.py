"""Shared test helpers: a gradient check with the project tolerance, a tiny config, and
sections cut into pieces however small."""
import contextlib

from numpygpt.gradcheck import EPS, check_gradients

TOL = 1e-6


def assert_grads_match(f, arrays, grads, tol=TOL, max_coords=40, seed=0):
    """Every array in `arrays` (float64, read by f) against its analytic gradient in `grads`.
    A tensor that misses tol at the default step is checked once more at a step 10x smaller,
    held to the same tol: a central difference's truncation error, ~eps^2 times f's third
    derivative, can exceed 1e-6 at eps = 1e-5 where f curves sharply (a LayerNorm over C = 2
    whose two inputs are close), and falls 100x with the smaller step; a wrong gradient fails
    at both steps."""
    results = check_gradients(f, arrays, grads, tol=tol, max_coords=max_coords, seed=seed)
    bad = [r.name for r in results if not r.passed]
    if bad:
        again = check_gradients(f, arrays, grads, eps=EPS / 10, tol=tol, max_coords=max_coords,
                                seed=seed, names=bad)
        bad = [(r.name, r.max_rel_error) for r in again if not r.passed]
    assert not bad, f"gradient mismatch: {bad}"
    return results


def tiny_config(**overrides):
    import numpygpt as ng
    kw = dict(vocab_size=23, n_positions=12, n_embd=8, n_head=2, n_layer=2)
    kw.update(overrides)
    return ng.GPTConfig(**kw)


@contextlib.contextmanager
def cut_into(n_threads):
    """Every parallel section of the block runs with n_threads threads, small ones too
    (sections below parallel.SMALL_WORK elements otherwise run in the calling thread, and
    hypothesis's small shapes would never be cut into pieces)."""
    from numpygpt.engine import parallel
    small = parallel.SMALL_WORK
    parallel.SMALL_WORK = 0
    try:
        with parallel.using_threads(n_threads):
            yield
    finally:
        parallel.SMALL_WORK = small
