"""LayerNorm in the engine. Textbook twin: numpygpt/layers/layernorm.py (layernorm_forward,
layernorm_backward).

Devices: every array in the workspace (engine/workspace.py) and every pass in place, x - mean
written straight into xhat's buffer; the row sums as einsum (no (N,C) temporary); the forward's
rows shared among the cores (engine/parallel.py).
"""
import numpy as np

from . import parallel
from .workspace import FRESH


def layernorm_forward_fast(x, p, eps=1e-5, ws=FRESH, name="ln"):
    """x (...,C), p {"weight": (C,), "bias": (C,)} -> out (...,C), cache as the twin's."""
    C = x.shape[-1]
    xs = x.reshape(-1, C)                                    # (N,C): the rows, normalised apart
    N = xs.shape[0]
    xhat = ws(name + ".xhat", (N, C), x.dtype)
    rstd = ws(name + ".rstd", (N, 1), x.dtype)
    out = ws(name + ".out", (N, C), np.result_type(x, p["weight"], p["bias"]))

    def part(lo, hi):                                        # the rows lo:hi
        xc, r = xhat[lo:hi], rstd[lo:hi]
        np.subtract(xs[lo:hi], xs[lo:hi].mean(axis=-1, keepdims=True), out=xc)   # x - mean
        np.einsum("nc,nc->n", xc, xc, out=r[:, 0])           # sum (x - mean)^2
        r *= 1.0 / C                                         # var, biased
        r += eps
        np.sqrt(r, out=r)
        np.divide(1.0, r, out=r)                             # rstd = 1 / sqrt(var + eps)
        xc *= r                                              # xhat
        np.multiply(xc, p["weight"], out=out[lo:hi])
        out[lo:hi] += p["bias"]                              # xhat * weight + bias

    parallel.rows(N, part, size=xs.size, blas=False)         # = part(0, N), on every core
    return out.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)),
                                  p["weight"])


def layernorm_backward_fast(dout, cache, ws=FRESH, name="ln"):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    d, xh, r = dout.reshape(-1, C), xhat.reshape(-1, C), rstd.reshape(-1, 1)   # (N,C), (N,C), (N,1)
    N = d.shape[0]
    dweight = ws(name + ".dweight", (C,), dout.dtype)
    np.einsum("nc,nc->c", d, xh, out=dweight)                # sum over rows of dout * xhat
    dbias = ws(name + ".dbias", (C,), dout.dtype)
    np.sum(d, axis=0, out=dbias)
    g = ws(name + ".g", (N, C), np.result_type(dout, weight))
    np.multiply(d, weight, out=g)                            # d loss / d xhat
    g_mean = g.mean(axis=-1, keepdims=True)                  # (N,1)
    gx_mean = np.einsum("nc,nc->n", g, xh)[:, None] / C      # (N,1) mean(g xhat)
    dx = ws(name + ".dx", (N, C), g.dtype)
    np.multiply(xh, gx_mean, out=dx)
    np.subtract(g, dx, out=dx)
    dx -= g_mean
    dx *= r                                                  # rstd (g - mean(g) - xhat mean(g xhat))
    return dx.reshape(dout.shape), {"weight": dweight, "bias": dbias}
