"""Gradient checking against central finite differences, for your own experiments.

    numeric_i = (f(p + eps e_i) - f(p - eps e_i)) / (2 eps)          per coordinate
    <grad, v> ~ (f(p + eps v) - f(p - eps v)) / (2 eps)               per random direction v

Relative error of a tensor, over the coordinates checked (analytic a, numeric n):
    err = max_i |a_i - n_i| / max(max_j max(|a_j|, |n_j|),  floor * G)
i.e. the worst error relative to the tensor's largest gradient (a norm-wise relative
error), where G is the largest gradient of *any* tensor checked for the same f and
floor = 1e-3. A per-coordinate |a_i - n_i| / |a_i| blows up near zero: there the central
difference is all rounding, about 1e-16 |f| / eps ~ 1e-10 in float64 with eps = 1e-5,
while the truncation error is ~eps^2 |f'''| ~ 1e-10 too. The floor does the same for a
whole tensor whose gradient is tiny next to the others': e.g. the query gradient of a query
that sees a single key is exactly 0, and a float computation of it ~1e-17; against the floor
it must still be right to 1e-9 of the largest gradient. A function whose gradients are all
exactly zero (e.g. every target ignored) has err 0 only if the numeric ones are zero too.

Use float64: in float32 the rounding term alone is ~6e-8 |f| / eps, so float32 checks need a
larger step and a looser tolerance (TOLERANCES).

`f` is a function of no arguments that reads the arrays in `params` (which the
checker perturbs in place and restores) and returns the scalar loss.
"""
from dataclasses import dataclass

import numpy as np

EPS = 1e-5
FLOOR = 1e-3     # see the module docstring
# dtype -> (eps, tol). float32 keeps ~7 digits: every f() is rounded by ~6e-8 |f|, so the
# central difference carries ~6e-8 |f| / eps of pure rounding. A larger eps (1e-3) trades it
# against the truncation error ~eps^2 |f'''|; what is left is ~1e-4 relative, hence 1e-2.
TOLERANCES = {"float64": (1e-5, 1e-6), "float32": (1e-3, 1e-2)}


@dataclass
class TensorCheck:
    name: str
    shape: tuple
    max_rel_error: float
    n_checked: int
    passed: bool
    tol: float = None        # the tolerance it was held to


@dataclass
class DirectionCheck:
    analytic: float      # <grad, v>
    numeric: float       # (f(p + eps v) - f(p - eps v)) / (2 eps)
    rel_error: float
    passed: bool
    tol: float = None


def grad_scale(analytic, numeric):
    """max_j max(|a_j|, |n_j|): the size of a tensor's gradient."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    return float(max(np.abs(a).max(), np.abs(n).max())) if a.size else 0.0


def relative_error(analytic, numeric, floor=0.0):
    """max_i |a_i - n_i| / max(max_j max(|a_j|, |n_j|), floor); 0 when both are all zero."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    scale = max(grad_scale(a, n), floor)
    if scale == 0:
        return 0.0
    return float(np.abs(a - n).max() / scale)


def numeric_gradient(f, x, indices, eps=EPS):
    """Central differences of f() w.r.t. x at the given flat indices (x perturbed in place)."""
    flat = x.reshape(-1)                 # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("numeric_gradient needs a contiguous array to perturb in place")
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        f_plus = float(f())
        flat[i] = old - eps
        f_minus = float(f())
        flat[i] = old
        out[j] = (f_plus - f_minus) / (2 * eps)
    return out


def sample_indices(size, max_coords, rng):
    if max_coords is None or size <= max_coords:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_coords, replace=False))


def check_gradients(f, params, grads, eps=EPS, tol=1e-6, max_coords=64, seed=0, names=None,
                    floor=FLOOR, float32_ok=False, on_tensor=None):
    """Per tensor: analytic grads[name] against central differences of f() w.r.t. params[name],
    on all coordinates or a random subset of max_coords of them. Returns [TensorCheck].
    float32_ok: allow float32 tensors (then use a larger eps and tol); on_tensor(j, name, shape)
    is called before each tensor (progress)."""
    rng = np.random.default_rng(seed)
    names = names or list(params)
    checked = []
    for j, name in enumerate(names):
        p, g = params[name], np.asarray(grads[name])
        if on_tensor is not None:
            on_tensor(j, name, p.shape)
        if p.dtype != np.float64 and not (float32_ok and p.dtype == np.float32):
            raise ValueError(f"params[{name!r}] is {p.dtype}; finite differences need float64")
        if g.shape != p.shape:
            raise ValueError(f"grads[{name!r}] has shape {g.shape}, params has {p.shape}")
        idx = sample_indices(p.size, max_coords, rng)
        checked.append((name, p.shape, g.reshape(-1)[idx], numeric_gradient(f, p, idx, eps)))
    largest = max((grad_scale(a, n) for _, _, a, n in checked), default=0.0)   # G
    results = []
    for name, shape, a, n in checked:
        err = relative_error(a, n, floor * largest)
        results.append(TensorCheck(name, shape, err, len(a), bool(err <= tol), tol))
    return results


def check_directional(f, params, grads, eps=EPS, tol=1e-6, n_directions=2, seed=0):
    """Whole-model check in two forward passes per direction: for random unit v over every
    parameter at once, compare <grad, v> with the central difference of f along v."""
    rng = np.random.default_rng(seed)
    names = list(params)
    results = []
    for _ in range(n_directions):
        v = {k: rng.standard_normal(params[k].shape) for k in names}
        norm = np.sqrt(sum(float((d * d).sum()) for d in v.values()))
        v = {k: d / norm for k, d in v.items()}
        analytic = sum(float((np.asarray(grads[k], dtype=np.float64) * v[k]).sum()) for k in names)
        originals = {k: params[k].copy() for k in names}
        for k in names:
            params[k][...] = originals[k] + eps * v[k]
        f_plus = float(f())
        for k in names:
            params[k][...] = originals[k] - eps * v[k]
        f_minus = float(f())
        for k in names:
            params[k][...] = originals[k]
        numeric = (f_plus - f_minus) / (2 * eps)
        err = relative_error([analytic], [numeric])
        results.append(DirectionCheck(analytic, numeric, err, bool(err <= tol), tol))
    return results


def format_report(results, tol=None):
    """Lines of the per-tensor (or per-direction) table and a verdict -> (lines, all_passed).
    tol: the tolerance named in the verdict (default: the one the checks were held to)."""
    tol = results[0].tol if tol is None and results else tol
    lines = []
    if results and isinstance(results[0], DirectionCheck):
        lines.append(f"{'direction':>9}  {'<grad, v>':>16}  {'finite difference':>18}  "
                     f"{'rel error':>10}  result")
        for i, r in enumerate(results):
            lines.append(f"{i:>9}  {r.analytic:>16.10g}  {r.numeric:>18.10g}  {r.rel_error:>10.2e}  "
                         f"{'pass' if r.passed else 'FAIL'}")
        worst = max(r.rel_error for r in results)
        what = "directions"
    else:
        width = max([len("tensor")] + [len(r.name) for r in results])
        lines.append(f"{'tensor':<{width}}  {'shape':<16}{'checked':>8}  {'max rel error':>13}  result")
        for r in results:
            lines.append(f"{r.name:<{width}}  {str(tuple(r.shape)):<16}{r.n_checked:>8}  "
                         f"{r.max_rel_error:>13.2e}  {'pass' if r.passed else 'FAIL'}")
        worst = max(r.max_rel_error for r in results)
        what = "tensors"
    failed = [r for r in results if not r.passed]
    if failed:
        lines.append(f"FAILED: {len(failed)} of {len(results)} {what} above tolerance {tol:g} "
                     f"(worst {worst:.2e})")
    else:
        verdict = f"all {len(results)} {what} pass" if len(results) > 1 else f"the 1 {what[:-1]} passes"
        lines.append(f"{verdict}: worst relative error {worst:.2e} <= {tol:g}")
    return lines, not failed
