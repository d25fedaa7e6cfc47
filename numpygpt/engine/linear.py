"""The linear layer in the engine. Textbook twin: numpygpt/layers/linear.py (linear_forward,
linear_backward).

Devices: every result written into the workspace (engine/workspace.py), no fresh array; the
rows of (B,T,C) flattened to one (N,C) matrix, so each product is one BLAS call.
"""
import numpy as np

from .workspace import FRESH


def linear_forward_fast(x, p, ws=FRESH, name="linear"):
    """x (...,Cin), p {"weight": (Cin,Cout), "bias": (Cout,)} -> out (...,Cout), cache as the twin's."""
    weight, bias = p["weight"], p["bias"]
    Cin, Cout = weight.shape
    out = ws(name + ".out", x.shape[:-1] + (Cout,), np.result_type(x, weight, bias))
    np.matmul(x.reshape(-1, Cin), weight, out=out.reshape(-1, Cout))    # (N,Cin) @ (Cin,Cout)
    out += bias
    return out, (x, weight)


def linear_backward_fast(dout, cache, ws=FRESH, name="linear"):
    """dout (...,Cout) -> dx (...,Cin), {"weight": (Cin,Cout), "bias": (Cout,)}."""
    x, weight = cache
    Cin, Cout = weight.shape
    d = dout.reshape(-1, Cout)                                           # (N,Cout)
    dx = ws(name + ".dx", x.shape, np.result_type(dout, weight))
    np.matmul(d, weight.T, out=dx.reshape(-1, Cin))                      # (N,Cout) @ (Cout,Cin)
    dweight = ws(name + ".dweight", weight.shape, np.result_type(x, dout))
    np.matmul(x.reshape(-1, Cin).T, d, out=dweight)                      # (Cin,N) @ (N,Cout)
    dbias = ws(name + ".dbias", (Cout,), dout.dtype)
    np.sum(d, axis=0, out=dbias)
    return dx, {"weight": dweight, "bias": dbias}
