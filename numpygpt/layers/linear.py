"""Linear layer, in GPT-2's Conv1D layout (weight (Cin,Cout), applied as x @ W).

    out = x @ W + b                     (...,Cin) @ (Cin,Cout) + (Cout,) -> (...,Cout)

Backward, with N = the rows of x flattened:
    dx = dout @ W^T                     (...,Cout) @ (Cout,Cin)
    dW = x^T @ dout                     (Cin,N) @ (N,Cout): summed over every row
    db = sum of dout over the rows
"""


def linear_forward(x, p):
    """x (...,Cin), p {"weight": (Cin,Cout), "bias": (Cout,)} -> out (...,Cout)."""
    out = x @ p["weight"] + p["bias"]                              # (...,Cin) @ (Cin,Cout) + (Cout,)
    return out, (x, p["weight"])


def linear_backward(dout, cache):
    """dout (...,Cout) -> dx (...,Cin), {"weight": (Cin,Cout), "bias": (Cout,)}."""
    x, weight = cache
    Cin, Cout = weight.shape
    dx = dout @ weight.T                                           # (...,Cout) @ (Cout,Cin)
    dweight = x.reshape(-1, Cin).T @ dout.reshape(-1, Cout)       # (Cin,N) @ (N,Cout)
    dbias = dout.reshape(-1, Cout).sum(axis=0)                     # (Cout,)
    return dx, {"weight": dweight, "bias": dbias}
