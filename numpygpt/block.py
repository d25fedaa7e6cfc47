"""A pre-LN transformer block, as GPT-2, with residual connections.

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Parameters are passed as a dict with the block-local GPT-2 names
("ln_1.weight", "attn.c_attn.weight", "mlp.c_fc.weight", ...); the model adds
the "h.{i}." prefix. The backward returns grads under the same names.
"""
from .attention import attention_forward, attention_backward
from .layernorm import layernorm_forward, layernorm_backward
from .mlp import mlp_forward, mlp_backward


def block_forward(x, p, n_head, eps=1e-5, key_mask=None, rope=None, impl="naive", block_size=128):
    """x (B,T,C) -> (B,T,C)."""
    h1, ln1_cache = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"], eps)     # (B,T,C)
    a, attn_cache = attention_forward(h1, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                                      p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head,
                                      key_mask=key_mask, rope=rope, impl=impl,
                                      block_size=block_size)                       # (B,T,C)
    x = x + a                                                                       # residual
    h2, ln2_cache = layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"], eps)     # (B,T,C)
    m, mlp_cache = mlp_forward(h2, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                               p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])         # (B,T,C)
    out = x + m                                                                     # residual
    return out, (ln1_cache, attn_cache, ln2_cache, mlp_cache)


def block_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with block-local names."""
    ln1_cache, attn_cache, ln2_cache, mlp_cache = cache
    grads = {}
    # out = x + mlp(ln_2(x)): the residual passes dout through unchanged
    dh2, g = mlp_backward(dout, mlp_cache)
    grads.update({"mlp." + k: v for k, v in g.items()})
    dx_ln2, g = layernorm_backward(dh2, ln2_cache)
    grads.update({"ln_2." + k: v for k, v in g.items()})
    dx = dout + dx_ln2
    # x = x + attn(ln_1(x))
    dh1, g = attention_backward(dx, attn_cache)
    grads.update({"attn." + k: v for k, v in g.items()})
    dx_ln1, g = layernorm_backward(dh1, ln1_cache)
    grads.update({"ln_1." + k: v for k, v in g.items()})
    return dx + dx_ln1, grads
