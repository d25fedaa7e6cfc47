"""LayerNorm in the engine. Textbook twin: numpygpt/layers/layernorm.py.

Devices: the forward normalises its rows in pieces shared among the cores
(engine/parallel.py), writing xhat, rstd and the output into buffers made once.
The backward is the textbook's (a few passes over a (B,T,C) array).
"""
import numpy as np

from ..layers.layernorm import layernorm_backward
from . import parallel

layernorm_backward_fast = layernorm_backward


def layernorm_forward_fast(x, p, eps=1e-5):
    """x (...,C), p {"weight": (C,), "bias": (C,)} -> out (...,C), cache as the twin's."""
    C = x.shape[-1]
    xs = x.reshape(-1, C)                                    # (N,C): the rows, normalised apart
    xhat = np.empty_like(xs)
    rstd = np.empty_like(xs, shape=(xs.shape[0], 1))
    out = np.empty_like(xs, dtype=np.result_type(x, p["weight"], p["bias"]))

    def part(lo, hi):                                        # the rows lo:hi
        xr = xs[lo:hi]                                       # (n,C)
        mean = xr.mean(axis=-1, keepdims=True)               # (n,1)
        xc = xr - mean                                       # (n,C)
        var = (xc * xc).mean(axis=-1, keepdims=True)         # (n,1), biased
        np.divide(1.0, np.sqrt(var + eps), out=rstd[lo:hi])  # rstd = 1 / sqrt(var + eps)
        np.multiply(xc, rstd[lo:hi], out=xhat[lo:hi])        # xhat = xc * rstd
        np.add(xhat[lo:hi] * p["weight"], p["bias"], out=out[lo:hi])   # xhat * weight + bias

    parallel.rows(xs.shape[0], part, size=xs.size)           # = part(0, N), on every core
    return out.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)),
                                  p["weight"])
