"""The layers: the textbook. One file per concept, each a pair of pure functions side by
side, straight-line NumPy that mirrors the equations in its docstring.

The convention, kept by every layer (tests/layers/test_convention.py holds each to it):

    out, cache = name_forward(x, p, *options)      x the input, p the layer's parameters
    dx, grads  = name_backward(dout, cache)        grads has exactly p's keys

- p is a dict keyed by the parameters' own names ("weight", "bias"; "c_attn.weight" ...),
  the names GPT-2 gives them below the layer. A layer without parameters takes no p and
  returns grads = {}. A layer made of layers passes each its share, sub(p, "c_fc"), and
  names the gradients back, prefixed("c_fc", g): a gradient's name says where it came from.
- A layer with several inputs takes and returns them together: the attention core is
  (dq, dk, dv), {} = causal_attention_backward(dy, cache). An integer input (token ids)
  has no gradient: dx is None.
- The cache holds what the backward needs, nothing else; the backward reads as the forward
  undone, line by line in reverse.
- A loss is the one exception (as in CS231n): loss, dlogits = cross_entropy(logits, labels),
  the gradient computed with the loss. The chunked lm_head + loss returns the lm_head's
  backward with it: loss, dx, grads = lm_head_cross_entropy(x, p, labels). The losses check
  their labels (they come from the user); the other layers take arrays as they are, checked
  where they enter numpygpt (GPT's methods, the commands, the file readers).

The letters, everywhere in numpygpt:

    B  batch             T  tokens per row (the queries)      Tk  keys per row (T, or more
    C  width, n_embd     H  heads, n_head                         with a KV cache)
    D  head width C/H    V  vocabulary                        L   blocks, n_layer
    N  rows, B*T         q_tile, k_tile  queries and keys in one tile of the tiled attention
    K  key/value heads, n_kv_head (H/K query heads share one; K = H unless grouped-query)
"""
from .params import sub, prefixed
from .linear import linear_forward, linear_backward
from .embedding import embedding_forward, embedding_backward
from .layernorm import layernorm_forward, layernorm_backward
from .gelu import gelu_forward, gelu_backward
from .mlp import mlp_forward, mlp_backward
from .rope import rope_cos_sin, rope_forward, rope_backward
from .causal_mask import allowed_keys
from .attention import (causal_attention_forward, causal_attention_backward, attention_forward,
                        attention_backward, split_heads, merge_heads)
from .tiled_attention import tiled_attention_forward, tiled_attention_backward
from .lm_head import lm_head_forward, lm_head_backward
from .cross_entropy import cross_entropy, count_targets
from .chunked_loss import lm_head_cross_entropy
