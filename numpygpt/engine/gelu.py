"""GELU in the engine. Textbook twin: numpygpt/layers/gelu.py (gelu_forward, gelu_backward).

Devices: the forward's output in the workspace (engine/workspace.py), the backward's in dout's
own buffer when asked (out=dout); both directions work in place on two buffers and write x^3
as x*x*x (in float32 `x ** 3` is a slow pow(), and every fresh temporary of a (B,T,4C) array
costs a pass and page faults); the passes run a tile of TILE elements at a time, the tiles
shared among the cores (engine/parallel.py), so each (B,T,4C) array is read and written once
and the other passes stay in the core's cache.
"""
import numpy as np

from ..layers.gelu import GELU_SCALE, GELU_COEF
from . import parallel
from .workspace import FRESH

TILE = 1 << 15                          # elements per tile: its ~4 buffers stay in a core's L2


def gelu_forward_fast(x, ws=FRESH, name="gelu"):
    """x (...) -> gelu(x) (...); the cache is (x,) as the twin's."""
    x = np.ascontiguousarray(x)
    out = ws(name + ".out", x.shape, x.dtype)
    xs, outs = x.reshape(-1), out.reshape(-1)

    def part(lo, hi):                                        # elements lo:hi
        th = _tanh_inner(xs[lo:hi])
        th += 1.0
        th *= xs[lo:hi]
        np.multiply(th, 0.5, out=outs[lo:hi])                # 0.5 * x * (1 + th)

    parallel.rows(xs.size, part, size=xs.size, grain=TILE, blas=False)   # = part(0, x.size), by tiles
    return out, (x,)


def gelu_backward_fast(dout, cache, out=None):
    """dout (...) -> dx = dout * gelu'(x) (...), {}; into `out` when given (it may be dout)."""
    (x,) = cache
    dx = np.empty_like(x) if out is None else out
    xs, douts, dxs = x.reshape(-1), np.ascontiguousarray(dout).reshape(-1), dx.reshape(-1)

    def part(lo, hi):                                        # elements lo:hi
        xp = xs[lo:hi]
        th = _tanh_inner(xp)
        t = xp * xp
        t *= 3.0 * GELU_COEF * GELU_SCALE
        t += GELU_SCALE
        t *= xp                                              # x * s * (1 + 3 k x^2)
        u = np.multiply(th, th)
        np.subtract(1.0, u, out=u)                           # 1 - th^2
        u *= t
        u += th
        u += 1.0
        u *= 0.5                                             # 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3k x^2)
        np.multiply(u, douts[lo:hi], out=dxs[lo:hi])

    parallel.rows(xs.size, part, size=xs.size, grain=TILE, blas=False)   # = part(0, x.size), by tiles
    return dx, {}


def _tanh_inner(x):
    """th = tanh(s * (x + k x^3)), in one new buffer."""
    th = np.multiply(x, x)                                   # x^2 (an array even when 0-d)
    th *= GELU_COEF * GELU_SCALE
    th += GELU_SCALE
    th *= x                                                  # s * (x + k x^3)
    return np.tanh(th, out=th)
