"""Parameter names across layers: a layer sees its own names, its parent prefixes them.

    sub({"c_fc.weight": W, "c_fc.bias": b, ...}, "c_fc")   -> {"weight": W, "bias": b}
    prefixed("c_fc", {"weight": dW, "bias": db})          -> {"c_fc.weight": dW, "c_fc.bias": db}
"""


def sub(params, prefix):
    """The parameters named `prefix.<name>`, keyed by <name>."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in params.items() if name.startswith(prefix + ".")}


def prefixed(prefix, grads):
    """The inverse of sub: every name gets `prefix.` in front."""
    return {f"{prefix}.{name}": value for name, value in grads.items()}
