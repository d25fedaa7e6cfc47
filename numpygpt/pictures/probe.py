"""One forward and backward pass of the textbook, with the tensors a picture needs kept.

The pictures read what the model computes inside: each block's attention and MLP outputs,
the GELU between the MLP's two linears, the attention probabilities P, and the gradient of
the loss with respect to each of them. `probe` computes them with the textbook's own
functions (model.py's gpt_forward, the layers' backwards), whatever engine the model trains
with, and changes none of them: the backward is walked here block by block, the way
model.block_backward walks it, so that the gradients flowing between the layers can be kept.

    block i:  a = attn(ln_1(x));  x = x + a;  m = mlp(ln_2(x));  out = x + m
    backward: d_m = d_out                              (the residual passes d_out to m)
              d_a = d_out + ln_2'(mlp'(d_out))         (the residual, and the MLP's share)
              d_y = split_heads(d_a @ W_proj^T)        the gradient at the attention core's output

Checked by tests/pictures/test_probe.py: the sums of d_a and d_m over the rows equal the
textbook's gradients of the two c_proj biases (b is added to every row), and the first
block's gradient equals the embedding's.
"""
import numpy as np

from ..checks import check_model_inputs
from ..config import Execution
from ..layers import (attention_backward, layernorm_backward, linear_backward, lm_head_backward,
                      mlp_backward, split_heads, gelu_backward)
from ..layers.cross_entropy import check_loss_arguments
from ..model import gpt_forward


def probe(model, input_ids, labels, attention_mask=None, position_ids=None):
    """A GPT and one batch (aligned labels, -100 not counted) -> {"loss": float,
    "key_mask": (B,T) bool (True: a real token), "labels": (B,T), "blocks": one dict per
    block with
        "attn_out" (B,T,C)  a, the attention's output         "d_attn_out" (B,T,C)  dloss/da
        "gelu_in"  (B,T,4C) the MLP's hidden pre-activation   "gelu_out" (B,T,4C) its GELU
        "d_gelu_out" (B,T,4C) dloss/d gelu_out                 "gelu_slope" (B,T,4C) gelu'(gelu_in)
        "mlp_out"  (B,T,C)  m, the MLP's output               "d_mlp_out" (B,T,C)  dloss/dm
        "attn_core" (q, k, v, P): the attention core's cache, each (B,H,T,D) and P (B,H,T,T)
        "d_core_out" (B,H,T,D) dloss/dy, the gradient at the core's output y = P @ v}.
    The mean loss over the counted targets, computed in the model's dtype by the textbook."""
    config, params = model.config, model.params
    ids, key_mask, pos = check_model_inputs(config, input_ids, attention_mask, position_ids)
    labels, _ = check_loss_arguments(labels, ids.shape, config.vocab_size, -100, "mean", None)
    loss, cache = gpt_forward(ids, params, config, labels=labels, key_mask=key_mask,
                              position_ids=pos, execution=Execution())   # textbook, standard
    top, ln_f_cache, block_caches, _, _ = cache
    _, dlogits, head_cache = top
    dx, _ = lm_head_backward(dlogits, head_cache)                # (B,T,V) -> (B,T,C)
    dx, _ = layernorm_backward(dx, ln_f_cache)                   # d_out of the last block
    blocks = [None] * config.n_layer
    for i in reversed(range(config.n_layer)):
        ln_1_cache, attn_cache, ln_2_cache, mlp_cache = block_caches[i]
        _, gelu_cache, proj_cache = mlp_cache
        _, _, _, core_cache, c_proj_cache, n_head, _ = attn_cache    # the last: n_kv_head
        d_mlp_out = dx                                           # out = x + m
        d_gelu_out, _ = linear_backward(d_mlp_out, proj_cache)   # m = gelu_out @ W + b
        dh, _ = mlp_backward(d_mlp_out, mlp_cache)
        dx, _ = layernorm_backward(dh, ln_2_cache)
        d_attn_out = dx + d_mlp_out                              # x = x_in + a
        dy, _ = linear_backward(d_attn_out, c_proj_cache)        # a = merge(y) @ W + b
        dh, _ = attention_backward(d_attn_out, attn_cache)
        dx, _ = layernorm_backward(dh, ln_1_cache)
        dx = dx + d_attn_out                                     # d_out of block i - 1
        (gelu_in,) = gelu_cache
        gelu_out, w_proj = proj_cache
        slope, _ = gelu_backward(np.ones_like(gelu_in), gelu_cache)
        blocks[i] = {
            "attn_out": c_proj_cache[0] @ c_proj_cache[1] + params[f"h.{i}.attn.c_proj.bias"],
            "d_attn_out": d_attn_out,
            "gelu_in": gelu_in, "gelu_out": gelu_out, "gelu_slope": slope,
            "d_gelu_out": d_gelu_out,
            "mlp_out": gelu_out @ w_proj + params[f"h.{i}.mlp.c_proj.bias"],
            "d_mlp_out": d_mlp_out,
            "attn_core": core_cache, "d_core_out": split_heads(dy, n_head),
        }
    B, T = ids.shape
    return {"loss": float(loss), "labels": labels, "blocks": blocks, "d_embedding": dx,
            "key_mask": np.ones((B, T), bool) if key_mask is None else key_mask}
