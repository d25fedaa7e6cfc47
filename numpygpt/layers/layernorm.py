"""LayerNorm over the last axis (biased variance, as GPT-2 and PyTorch).

    mean = mean(x);  var = mean((x - mean)^2);  rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) rstd
    out  = xhat weight + bias

Backward, with g = dout weight (the gradient at xhat):
    dx = rstd (g - mean(g) - xhat mean(g xhat))
the two means being the gradient through `mean` and through `rstd`, which depend on x too.
"""
import numpy as np


def layernorm_forward(x, p, eps=1e-5):
    """x (...,C), p {"weight": (C,), "bias": (C,)} -> out (...,C)."""
    mean = x.mean(axis=-1, keepdims=True)                   # (...,1)
    xc = x - mean                                           # (...,C)
    var = (xc ** 2).mean(axis=-1, keepdims=True)            # (...,1) biased
    rstd = 1.0 / np.sqrt(var + eps)                         # (...,1)
    xhat = xc * rstd                                        # (...,C)
    out = xhat * p["weight"] + p["bias"]                    # (...,C)
    return out, (xhat, rstd, p["weight"])


def layernorm_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    # out = xhat * weight + bias
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)      # (C,)
    dbias = dout.reshape(-1, C).sum(axis=0)                 # (C,)
    g = dout * weight                                       # (...,C) d loss / d xhat
    # xhat = (x - mean) * rstd, mean and rstd being functions of x
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))   # (...,C)
    return dx, {"weight": dweight, "bias": dbias}
