"""The linear layer in the engine. Textbook twin: numpygpt/layers/linear.py (linear_forward,
linear_backward).

Devices: every result written into the workspace (engine/workspace.py), no fresh array; the
rows of (B,T,C) flattened to one (N,C) matrix; each product cut into pieces of channels (its
output's columns: OpenBLAS runs such a piece at nearly the whole product's rate) run on the
cores (engine/parallel.py) with BLAS held to one thread in each, not left to BLAS's own
threads: a piece's bits depend only on the fixed cut, so the sections can run on fewer
threads when other processes hold the cores (the same numbers, busy or idle). The exception:
a forward of fewer than MATVEC_ROWS rows (decoding a token), one BLAS call.
"""
import numpy as np

from . import parallel
from .workspace import FRESH

MATVEC_ROWS = 8     # fewer rows: a matrix-vector product, one BLAS call with its threads


def linear_forward_fast(x, p, ws=FRESH, name="linear"):
    """x (...,Cin), p {"weight": (Cin,Cout), "bias": (Cout,)} -> out (...,Cout), cache as the twin's."""
    weight, bias = p["weight"], p["bias"]
    Cin, Cout = weight.shape
    out = ws(name + ".out", x.shape[:-1] + (Cout,), np.result_type(x, weight, bias))
    x2, out2 = x.reshape(-1, Cin), out.reshape(-1, Cout)                # (N,Cin), (N,Cout)

    def part(lo, hi):                                                    # output channels lo:hi
        np.matmul(x2, weight[:, lo:hi], out=out2[:, lo:hi])              # (N,Cin) @ (Cin,c)
        out2[:, lo:hi] += bias[lo:hi]

    if x2.shape[0] < MATVEC_ROWS:      # a decoded token: its time is reading the weight, which
        part(0, Cout)                  # BLAS's own threads do with less overhead than a section
    else:
        parallel.rows(Cout, part, size=out.size + weight.size)           # = part(0, Cout)
    return out, (x, weight)


def linear_backward_fast(dout, cache, ws=FRESH, name="linear"):
    """dout (...,Cout) -> dx (...,Cin), {"weight": (Cin,Cout), "bias": (Cout,)}."""
    x, weight = cache
    Cin, Cout = weight.shape
    d = dout.reshape(-1, Cout)                                           # (N,Cout)
    x2 = x.reshape(-1, Cin)                                              # (N,Cin)
    dx = ws(name + ".dx", x.shape, np.result_type(dout, weight))
    dx2 = dx.reshape(-1, Cin)
    dweight = ws(name + ".dweight", weight.shape, np.result_type(x, dout))
    dbias = ws(name + ".dbias", (Cout,), dout.dtype)

    def part(lo, hi):                                                    # input channels lo:hi
        np.matmul(d, weight[lo:hi].T, out=dx2[:, lo:hi])                 # (N,Cout) @ (Cout,c)
        np.matmul(x2[:, lo:hi].T, d, out=dweight[lo:hi])                 # (c,N) @ (N,Cout)

    parallel.rows(Cin, part, size=dx.size + x.size + weight.size)        # = part(0, Cin)
    np.sum(d, axis=0, out=dbias)
    return dx, {"weight": dweight, "bias": dbias}
