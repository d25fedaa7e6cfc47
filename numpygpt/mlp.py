"""MLP of a GPT-2 block: Linear (C -> 4C), GELU (tanh approximation), Linear (4C -> C).

    gelu(x) = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))),   s = sqrt(2/pi)
    gelu'(x) = 0.5 * (1 + th) + 0.5 * x * (1 - th^2) * s * (1 + 3 * 0.044715 x^2)
"""
import math

import numpy as np

GELU_SCALE = math.sqrt(2.0 / math.pi)   # Python floats keep float32 arrays float32
GELU_COEF = 0.044715


def gelu_forward(x):
    th = np.tanh(GELU_SCALE * (x + GELU_COEF * x ** 3))
    return 0.5 * x * (1.0 + th), (x, th)


def gelu_backward(dout, cache):
    x, th = cache
    dinner = GELU_SCALE * (1.0 + 3.0 * GELU_COEF * x * x)
    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dinner)


def linear_forward(x, weight, bias):
    """x (...,Cin) @ weight (Cin,Cout) + bias (Cout,) -> (...,Cout). GPT-2's Conv1D layout."""
    return x @ weight + bias, (x, weight)


def linear_backward(dout, cache):
    """dout (...,Cout) -> dx (...,Cin), {"weight": (Cin,Cout), "bias": (Cout,)}."""
    x, weight = cache
    Cin, Cout = weight.shape
    dx = dout @ weight.T                                          # (...,Cout) -> (...,Cin)
    dweight = x.reshape(-1, Cin).T @ dout.reshape(-1, Cout)      # (Cin,N) @ (N,Cout)
    dbias = dout.reshape(-1, Cout).sum(axis=0)
    return dx, {"weight": dweight, "bias": dbias}


def mlp_forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """x (B,T,C) -> (B,T,C)."""
    h, fc_cache = linear_forward(x, c_fc_w, c_fc_b)              # (B,T,C) -> (B,T,4C)
    a, gelu_cache = gelu_forward(h)                              # (B,T,4C)
    out, proj_cache = linear_forward(a, c_proj_w, c_proj_b)      # (B,T,4C) -> (B,T,C)
    return out, (fc_cache, gelu_cache, proj_cache)


def mlp_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), {"c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"}."""
    fc_cache, gelu_cache, proj_cache = cache
    da, g_proj = linear_backward(dout, proj_cache)               # out = a @ W_proj + b
    dh = gelu_backward(da, gelu_cache)                           # a = gelu(h)
    dx, g_fc = linear_backward(dh, fc_cache)                     # h = x @ W_fc + b
    return dx, {"c_fc.weight": g_fc["weight"], "c_fc.bias": g_fc["bias"],
                "c_proj.weight": g_proj["weight"], "c_proj.bias": g_proj["bias"]}
