"""The MLP of a GPT-2 block: Linear (C -> 4C), GELU, Linear (4C -> C).

    h   = x @ W_fc + b_fc              (B,T,C) -> (B,T,4C)
    a   = gelu(h)                      (B,T,4C)
    out = a @ W_proj + b_proj          (B,T,4C) -> (B,T,C)
"""
from .gelu import gelu_forward, gelu_backward
from .linear import linear_forward, linear_backward
from .params import sub, prefixed


def mlp_forward(x, p):
    """x (B,T,C), p {"c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"} -> (B,T,C)."""
    h, fc_cache = linear_forward(x, sub(p, "c_fc"))              # (B,T,C) -> (B,T,4C)
    a, gelu_cache = gelu_forward(h)                              # (B,T,4C)
    out, proj_cache = linear_forward(a, sub(p, "c_proj"))        # (B,T,4C) -> (B,T,C)
    return out, (fc_cache, gelu_cache, proj_cache)


def mlp_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    fc_cache, gelu_cache, proj_cache = cache
    da, g_proj = linear_backward(dout, proj_cache)               # out = a @ W_proj + b
    dh, _ = gelu_backward(da, gelu_cache)                        # a = gelu(h)
    dx, g_fc = linear_backward(dh, fc_cache)                     # h = x @ W_fc + b
    return dx, {**prefixed("c_fc", g_fc), **prefixed("c_proj", g_proj)}
