"""MLP of a GPT-2 block: Linear (C -> 4C), GELU (tanh approximation), Linear (4C -> C).

    gelu(x) = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))),   s = sqrt(2/pi)
    gelu'(x) = 0.5 * (1 + th) + 0.5 * x * (1 - th^2) * s * (1 + 3 * 0.044715 x^2)
"""
import math

import numpy as np

GELU_SCALE = math.sqrt(2.0 / math.pi)   # Python floats keep float32 arrays float32
GELU_COEF = 0.044715


def gelu_forward(x):
    """x (...) -> gelu(x). In place on two buffers, x^3 as x*x*x: `x ** 3` is a slow pow()
    in float32, and every fresh temporary of a (B,T,4C) array costs a pass and page faults.
    Caches x only: the backward recomputes tanh (cheap) rather than keep a (B,T,4C) array."""
    x = np.asarray(x)
    th = _tanh_inner(x)
    out = np.add(th, 1.0, out=th)
    out *= x
    out *= 0.5                                               # 0.5 * x * (1 + th)
    return out, (x,)


def _tanh_inner(x):
    """th = tanh(s * (x + k x^3)), in one new buffer."""
    th = np.multiply(x, x, out=np.empty_like(x))             # x^2 (an array even when 0-d)
    th *= GELU_COEF * GELU_SCALE
    th += GELU_SCALE
    th *= x                                                  # s * (x + k x^3)
    return np.tanh(th, out=th)


def gelu_backward(dout, cache):
    """dout (...) -> dx = dout * gelu'(x), in place on two buffers (see the module docstring)."""
    (x,) = cache
    th = _tanh_inner(x)
    t = x * x
    t *= 3.0 * GELU_COEF * GELU_SCALE
    t += GELU_SCALE
    t *= x                                                   # x * s * (1 + 3 k x^2)
    dx = np.multiply(th, th, out=np.empty_like(th))
    np.subtract(1.0, dx, out=dx)                             # 1 - th^2
    dx *= t
    dx += th
    dx += 1.0
    dx *= 0.5                                                # 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3k x^2)
    dx *= dout
    return dx


def linear_forward(x, weight, bias):
    """x (...,Cin) @ weight (Cin,Cout) + bias (Cout,) -> (...,Cout). GPT-2's Conv1D layout."""
    out = x @ weight                                              # (...,Cin) @ (Cin,Cout)
    out += bias                                                   # in place: no second (...,Cout) array
    return out, (x, weight)


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
