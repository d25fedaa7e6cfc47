"""The step-size experiment: a gradient check's relative error against its step eps.

A central difference (f(p + eps) - f(p - eps)) / (2 eps) carries two errors:
    truncation   ~ eps^2 |f'''| / 6          falls as eps shrinks (slope 2 on a log-log plot)
    rounding     ~ u |f| / eps               rises as eps shrinks (slope -1)
where u is the unit roundoff of the dtype f is computed in (2^-53 ~ 1.1e-16 in float64,
2^-24 ~ 6.0e-8 in float32). Their sum is smallest near eps ~ u^(1/3) (times a factor
(3 |f| / |f'''|)^(1/3) of order 1 for unit-scale problems): ~5e-6 in float64, ~4e-3 in float32.
There the error is of order u^(2/3) (~2e-11 in float64, ~1.5e-5 in float32) times the problem's
constants: float32 checks need a larger eps and a looser tolerance (core.TOLERANCES).

sweep_eps() measures the relative error (core.relative_error, per checked tensor) of a tiny
GPT (or one layer) on a grid of eps from 1e-1 to 1e-12, in float64 and float32, on the same
weights; format_sweep() prints the table; plot_sweep() writes the log-log PNG (matplotlib, the
optional `plot` extra).
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..labels import causal_lm_labels
from ..model import GPT
from .core import TOLERANCES
from .layers import CHECK_CONFIG, CHECK_EXECUTION, check_model, check_pair, layer_problem, unit_scale_params

EPS_GRID = tuple(float(10.0 ** (-k / 2)) for k in range(2, 25))    # 1e-1, 10^-1.5, ... 1e-12
SWEEP_CONFIG = dataclasses.replace(CHECK_CONFIG, n_layer=1)
DTYPES = ("float64", "float32")


def unit_roundoff(dtype):
    """u: the largest relative error of rounding to the dtype (2^-53 for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def predicted_best_eps(dtype):
    """u^(1/3): where eps^2 (truncation) meets u / eps (rounding)."""
    return unit_roundoff(dtype) ** (1.0 / 3.0)


@dataclass
class Sweep:
    what: str                 # "model (...)" or "layer NAME"
    eps: tuple                # the grid, largest first
    tensors: tuple            # the checked tensors' names
    errors: dict              # dtype -> (len(eps), len(tensors)) relative errors

    def worst(self, dtype):
        """The largest error over the tensors at each eps: what a check reports."""
        return self.errors[dtype].max(axis=1)

    def at(self, dtype, eps):
        """The worst error at the grid point nearest eps (in log scale)."""
        i = int(np.argmin(np.abs(np.log10(self.eps) - np.log10(eps))))
        return self.eps[i], float(self.worst(dtype)[i])

    def best(self, dtype):
        i = int(np.argmin(self.worst(dtype)))
        return self.eps[i], float(self.worst(dtype)[i])

    def shape_holds(self, dtype):
        """The V: the error at the predicted best step below the error at both ends."""
        _, mid = self.at(dtype, predicted_best_eps(dtype))
        return bool(mid < self.worst(dtype)[0] and mid < self.worst(dtype)[-1])


def sweep_eps(layer=None, config=SWEEP_CONFIG, batch_size=2, seq_len=5, dtypes=DTYPES,
              eps_grid=EPS_GRID, max_coords=8, seed=0, execution=CHECK_EXECUTION, progress=None):
    """Relative error of every checked tensor at each eps, per dtype -> Sweep.
    layer=None: the whole model (unit-scale weights, next-token labels, ~20% -100), whose every
    tensor reaches the loss through a nonlinearity; else one of gradcheck.LAYERS (loss =
    sum(out * R)). The same weights and coordinates in every dtype. progress(text) is called
    before each dtype."""
    eps_grid = tuple(sorted((float(e) for e in eps_grid), reverse=True))
    if not eps_grid or min(eps_grid) <= 0:
        raise ValueError(f"eps_grid must hold positive steps, got {eps_grid!r}")
    errors, names = {}, None
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if progress is not None:
            progress(f"sweep: {dtype.name}, {len(eps_grid)} steps")
        check = problem(layer, config, batch_size, seq_len, dtype, execution, seed, max_coords)
        rows = []
        for eps in eps_grid:
            results = check(eps)
            names = tuple(r.name for r in results)
            rows.append([r.max_rel_error for r in results])
        errors[dtype.name] = np.array(rows)
    what = f"layer {layer}" if layer else (
        f"model (V={config.vocab_size}, C={config.n_embd}, H={config.n_head}, "
        f"L={config.n_layer}, B={batch_size}, T={seq_len})")
    return Sweep(what, eps_grid, names, errors)


def problem(layer, config, B, T, dtype, execution, seed, max_coords):
    """-> check(eps) -> [TensorCheck]: the same problem (weights drawn in float64) in dtype."""
    if layer is not None:
        forward, backward, x, p, names = layer_problem(layer, config, B, T, np.float64,
                                                       execution, seed)
        cast = lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
        x = tuple(cast(a) for a in x) if isinstance(x, tuple) else cast(x)
        p = {k: cast(v) for k, v in p.items()}
        return lambda eps: check_pair(forward, backward, x, p, eps=eps, tol=1.0,
                                      max_coords=max_coords, seed=seed, input_names=names)
    if T < 2:
        raise ValueError(f"seq_len={T}: the model sweep needs T >= 2")
    rng = np.random.default_rng(seed)
    weights = unit_scale_params(GPT(config, seed=seed, dtype=np.float64).params, rng)
    model = GPT(config, dtype=dtype, execution=execution,
                params={k: v.astype(dtype) for k, v in weights.items()})
    ids = rng.integers(0, config.vocab_size, size=(B, T))
    labels = causal_lm_labels(ids)
    labels[rng.random((B, T)) < 0.2] = -100
    labels[0, 0] = ids[0, 1]                                 # at least one counted
    return lambda eps: check_model(model, ids, labels, eps=eps, tol=1.0, max_coords=max_coords,
                                   seed=seed)


def format_sweep(sweep):
    """The table (worst tensor per eps and dtype) and a summary per dtype -> lines."""
    dts = list(sweep.errors)
    marks = {dt: {"best": sweep.best(dt)[0], "u^(1/3)": sweep.at(dt, predicted_best_eps(dt))[0],
                  "default": sweep.at(dt, TOLERANCES[dt][0])[0]} for dt in dts}
    width = max(len(n) for n in sweep.tensors)
    lines = [f"relative error of the worst of {len(sweep.tensors)} tensors, {sweep.what}",
             f"{'eps':>8}  " + "  ".join(f"{dt + ' (worst tensor)':<{10 + width}}" for dt in dts)
             + "  marks"]
    for i, eps in enumerate(sweep.eps):
        cells, tags = [], []
        for dt in dts:
            j = int(np.argmax(sweep.errors[dt][i]))
            cells.append(f"{sweep.errors[dt][i, j]:.2e} {sweep.tensors[j]:<{width}}")
            tags += [f"{dt} {m}" for m, e in marks[dt].items() if e == eps]
        lines.append((f"{eps:>8.1e}  " + "  ".join(cells)
                      + ("  <- " + ", ".join(tags) if tags else "")).rstrip())
    lines.append("")
    for dt in dts:
        best_eps, best_err = sweep.best(dt)
        pred = predicted_best_eps(dt)
        d_eps, d_tol = TOLERANCES[dt]
        lines.append(f"{dt}: best eps {best_eps:.1e} (error {best_err:.1e}); predicted u^(1/3) = "
                     f"{pred:.1e} (u = {unit_roundoff(dt):.1e}), error there "
                     f"{sweep.at(dt, pred)[1]:.1e}")
        lines.append(f"{'':9}default eps {d_eps:g}: error {sweep.at(dt, d_eps)[1]:.1e} against "
                     f"the default tolerance {d_tol:g}")
        lines.append(f"{'':9}eps 1e-1 (truncation): {sweep.worst(dt)[0]:.1e}; eps "
                     f"{sweep.eps[-1]:.0e} (rounding): {sweep.worst(dt)[-1]:.1e}; the V "
                     + ("holds" if sweep.shape_holds(dt) else "DOES NOT HOLD"))
    return lines


def plot_sweep(sweep, path):
    """The log-log plot, one panel per dtype -> path, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    dts = list(sweep.errors)
    fig = Figure(figsize=(5.2 * len(dts), 4.4), layout="constrained")
    axes = fig.subplots(1, len(dts), sharey=True, squeeze=False)[0]
    eps = np.array(sweep.eps)
    for ax, dt in zip(axes, dts):
        errs, worst, u = sweep.errors[dt], sweep.worst(dt), unit_roundoff(dt)
        for j in range(errs.shape[1]):
            ax.loglog(eps, np.maximum(errs[:, j], 1e-17), color="0.75", lw=0.8,
                      label="each tensor" if j == 0 else None)
        ax.loglog(eps, np.maximum(worst, 1e-17), "o-", color="C0", lw=2, ms=4,
                  label="worst tensor (what the check reports)")
        ax.loglog(eps, worst[0] * (eps / eps[0]) ** 2, "--", color="C1",
                  label=r"truncation $\propto \varepsilon^2$")
        fit = [i for i in range(len(eps)) if eps[i] < predicted_best_eps(dt) / 10 and worst[i] < 0.1]
        anchor = fit[-1] if fit else len(eps) - 1
        ax.loglog(eps, worst[anchor] * eps[anchor] / eps, "--", color="C2",
                  label=r"rounding $\propto u/\varepsilon$")
        ax.axvline(predicted_best_eps(dt), color="C3", lw=1.5,
                   label=rf"predicted best $u^{{1/3}}$ = {predicted_best_eps(dt):.0e}")
        if worst[-1] >= 0.99:                                    # the step below p's resolution
            ax.text(eps[-1], 2.0, "p + eps rounds to p: numeric 0, error 1", ha="right",
                    fontsize=7, color="C0")
        d_eps, d_tol = TOLERANCES[dt]
        ax.axvline(d_eps, color="k", ls=":", lw=1, label=f"default eps {d_eps:g}")
        ax.axhline(d_tol, color="k", ls="-.", lw=1, label=f"default tolerance {d_tol:g}")
        ax.set_xlim(eps.max() * 2, eps.min() / 2)                # the step shrinks to the right
        ax.set_ylim(1e-13, 10)
        ax.set_xlabel("step eps")
        ax.set_title(f"{dt} (u = {u:.1e})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("max relative error")
    fig.suptitle(f"Central-difference gradient check against its step: {sweep.what}", fontsize=10)
    fig.savefig(path, dpi=120)
    return path
