"""LayerNorm over the last axis (biased variance, as GPT-2 and PyTorch).

    mean = x.mean(-1);  var = ((x - mean)**2).mean(-1);  rstd = 1/sqrt(var + eps)
    xhat = (x - mean) * rstd
    out  = xhat * weight + bias

Backward, with g = dout * weight (the gradient at xhat):
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
the two means being the gradient through `mean` and through `rstd`, which depend on x too.
Every row is normalised on its own: the forward shares the rows among the cores
(numpygpt/parallel.py). The backward, a few passes over a (B,T,C) array, stays serial.
"""
import numpy as np

from .. import parallel


def layernorm_forward(x, p, eps=1e-5):
    """x (...,C), p {"weight": (C,), "bias": (C,)} -> out (...,C)."""
    C = x.shape[-1]
    xs = x.reshape(-1, C)                                    # (N,C): the rows, normalised apart
    xhat = np.empty_like(xs)
    rstd = np.empty_like(xs, shape=(xs.shape[0], 1))
    out = np.empty_like(xs, dtype=np.result_type(x, p["weight"], p["bias"]))

    def rows(lo, hi):                                        # the rows lo:hi of every line
        x = xs[lo:hi]                                        # (n,C)
        mean = x.mean(axis=-1, keepdims=True)                # (n,C) -> (n,1)
        xc = x - mean                                        # (n,C)
        var = (xc * xc).mean(axis=-1, keepdims=True)         # (n,1), biased
        np.divide(1.0, np.sqrt(var + eps), out=rstd[lo:hi])  # rstd = 1 / sqrt(var + eps)
        np.multiply(xc, rstd[lo:hi], out=xhat[lo:hi])        # xhat = xc * rstd
        np.add(xhat[lo:hi] * p["weight"], p["bias"], out=out[lo:hi])   # xhat * weight + bias

    parallel.rows(xs.shape[0], rows, size=xs.size)           # = rows(0, N), on every core
    return out.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)),
                                  p["weight"])


def layernorm_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    # out = xhat * weight + bias
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)       # (C,)
    dbias = dout.reshape(-1, C).sum(axis=0)                  # (C,)
    g = dout * weight                                        # (...,C) d loss / d xhat
    # xhat = (x - mean) * rstd, mean and rstd being functions of x
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, {"weight": dweight, "bias": dbias}
