"""GELU, GPT-2's tanh approximation ("gelu_new").

    gelu(x)  = 0.5 * x * (1 + th),        th = tanh(s * (x + k x^3)),  s = sqrt(2/pi), k = 0.044715
    gelu'(x) = 0.5 * (1 + th) + 0.5 * x * (1 - th^2) * s * (1 + 3 k x^2)

Both directions work in place on two buffers and write x^3 as x*x*x: in float32 `x ** 3` is
a slow pow(), and every fresh temporary of a (B,T,4C) array costs a pass and page faults.
The cache keeps x only; the backward recomputes th (cheap) rather than keep another (B,T,4C).
The passes run a tile of TILE elements at a time (numpygpt/parallel.py shares the tiles
among the cores): each (B,T,4C) array is then read and written once, the other passes stay
in the cache.
"""
import math

import numpy as np

from .. import parallel

GELU_SCALE = math.sqrt(2.0 / math.pi)   # Python floats keep float32 arrays float32
GELU_COEF = 0.044715
TILE = 1 << 15                          # elements per tile: its ~4 buffers stay in a core's L2


def gelu_forward(x):
    """x (...) -> gelu(x) (...)."""
    x = np.asarray(x)
    out = np.empty_like(x, order="C")
    xs, outs = x.reshape(-1), out.reshape(-1)                # flat views (a copy of x if strided)

    def part(lo, hi):                                        # elements lo:hi of every line
        x = xs[lo:hi]
        th = _tanh_inner(x)
        th += 1.0
        th *= x
        np.multiply(th, 0.5, out=outs[lo:hi])                # 0.5 * x * (1 + th)

    parallel.rows(xs.size, part, size=xs.size, grain=TILE)   # = part(0, x.size), a tile at a time
    return out, (x,)


def gelu_backward(dout, cache):
    """dout (...) -> dx = dout * gelu'(x) (...), {}."""
    (x,) = cache
    dx = np.empty_like(x, order="C")
    xs, douts, dxs = x.reshape(-1), np.broadcast_to(dout, x.shape).reshape(-1), dx.reshape(-1)

    def part(lo, hi):                                        # elements lo:hi of every line
        x, dx = xs[lo:hi], dxs[lo:hi]
        th = _tanh_inner(x)
        t = x * x
        t *= 3.0 * GELU_COEF * GELU_SCALE
        t += GELU_SCALE
        t *= x                                               # x * s * (1 + 3 k x^2)
        np.multiply(th, th, out=dx)
        np.subtract(1.0, dx, out=dx)                         # 1 - th^2
        dx *= t
        dx += th
        dx += 1.0
        dx *= 0.5                                            # 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3k x^2)
        dx *= douts[lo:hi]

    parallel.rows(xs.size, part, size=xs.size, grain=TILE)   # = part(0, x.size), a tile at a time
    return dx, {}


def _tanh_inner(x):
    """th = tanh(s * (x + k x^3)), in one new buffer."""
    th = np.multiply(x, x, out=np.empty_like(x))             # x^2 (an array even when 0-d)
    th *= GELU_COEF * GELU_SCALE
    th += GELU_SCALE
    th *= x                                                  # s * (x + k x^3)
    return np.tanh(th, out=th)
