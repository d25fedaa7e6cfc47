"""LayerNorm over the last axis (eps 1e-5, biased variance, as GPT-2 / PyTorch).

    mean = x.mean(-1);  var = ((x - mean)**2).mean(-1);  rstd = 1/sqrt(var + eps)
    xhat = (x - mean) * rstd
    out  = xhat * weight + bias

Backward, with g = dout * weight and N = C:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
"""
import numpy as np


def layernorm_forward(x, weight, bias, eps=1e-5):
    """x (...,C), weight (C,), bias (C,) -> out (...,C)."""
    mean = x.mean(axis=-1, keepdims=True)                    # (...,C) -> (...,1)
    xc = x - mean                                            # (...,C)
    var = (xc * xc).mean(axis=-1, keepdims=True)             # (...,1), biased
    rstd = 1.0 / np.sqrt(var + eps)                          # (...,1)
    xhat = xc * rstd                                         # (...,C)
    out = xhat * weight + bias                               # (...,C)
    return out, (xhat, rstd, weight)


def layernorm_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    # out = xhat * weight + bias
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbias = dout.reshape(-1, C).sum(axis=0)
    g = dout * weight                                        # d loss / d xhat
    # xhat = (x - mean) * rstd, with mean and rstd functions of x
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, {"weight": dweight, "bias": dbias}
