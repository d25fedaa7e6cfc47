"""GELU, GPT-2's tanh approximation ("gelu_new").

    gelu(x)  = 0.5 x (1 + th),        th = tanh(s (x + k x^3)),  s = sqrt(2/pi), k = 0.044715
    gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 k x^2)

The cache keeps x only: the backward recomputes th, which is cheaper than keeping a second
array of x's size.
"""
import math

import numpy as np

GELU_SCALE = math.sqrt(2.0 / math.pi)   # s; Python floats keep float32 arrays float32
GELU_COEF = 0.044715                    # k


def gelu_forward(x):
    """x (...) -> gelu(x) (...)."""
    th = np.tanh(GELU_SCALE * (x + GELU_COEF * x ** 3))             # (...)
    out = 0.5 * x * (1.0 + th)                                       # (...)
    return out, (x,)


def gelu_backward(dout, cache):
    """dout (...) -> dx = dout * gelu'(x) (...), {}."""
    (x,) = cache
    th = np.tanh(GELU_SCALE * (x + GELU_COEF * x ** 3))             # (...) recomputed
    dth = (1.0 - th ** 2) * GELU_SCALE * (1.0 + 3.0 * GELU_COEF * x ** 2)   # d th / dx
    dx = dout * (0.5 * (1.0 + th) + 0.5 * x * dth)                   # (...)
    return dx, {}
