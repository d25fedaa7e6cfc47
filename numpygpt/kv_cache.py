"""Decoding with a key/value cache: each new token attends to the cached keys and values of
every earlier token, so the prefix is never recomputed.

In a causal GPT, the hidden state of token t depends only on tokens <= t, so its key and
value in every layer never change once computed. The cache keeps them, per layer:

    k, v     (L, B, H, max_len, D)     preallocated; slots [0, length) are filled
    key_mask (B, max_len)              False for left-padding slots (never attended to)

A forward step on n new tokens (n = prompt length for the prefill, then 1 per token):
    x = wte[ids] + wpe[pos]                          (B,n,C)   (RoPE: no wpe, rotate q and k)
    per layer:  q, k, v = split(ln_1(x) @ W_attn + b)
                cache.k[:, :, length:length+n] = k   (likewise v)
                y = softmax(q @ cache.k[:length+n]^T / sqrt(D), masked) @ cache.v[:length+n]
                x = x + y @ W_proj + b;   x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T                         (B,n,V)
Query i of the step sits at slot length+i and may see slots s <= length+i whose key_mask is set.

The result equals the full forward pass position by position (tests check float64 to 1e-10):
the same layer functions (numpygpt.layernorm, mlp, attention.split_heads and the textbook
core causal_attention_forward, whose causal mask places the n queries at the last n slots, rope)
compose here.
"""
import numpy as np

from .attention import causal_attention_forward, split_heads, merge_heads
from .embedding import embedding_forward
from .layernorm import layernorm_forward
from .lm_head import lm_head_forward
from .mlp import linear_forward, mlp_forward
from .model import block_params, lm_head_weight
from .rope import rope_cos_sin, rope_forward


class KVCache:
    def __init__(self, config, batch_size, max_len, dtype=np.float32):
        if config.pos_encoding == "learned" and max_len > config.n_positions:
            raise ValueError(f"KVCache max_len={max_len} > n_positions={config.n_positions} "
                             f"(learned absolute positions)")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)                       # (L,B,H,max_len,D)
        self.v = np.zeros(shape, dtype=dtype)
        self.key_mask = np.zeros((batch_size, max_len), dtype=bool)  # (B,max_len)
        self.next_pos = np.zeros(batch_size, dtype=np.int64)         # next position id per row
        self.length = 0
        self.max_len = max_len


def gpt_forward_with_cache(params, config, input_ids, cache, attention_mask=None):
    """input_ids (B,n) new tokens (attention_mask (B,n), 0 = left padding, prefill only)
    -> logits (B,n,V); their keys and values are appended to the cache."""
    B, n = input_ids.shape
    t0, t1 = cache.length, cache.length + n
    if t1 > cache.max_len:
        raise ValueError(f"KV cache is full: {cache.length} + {n} tokens > max_len={cache.max_len}")
    mask = np.ones((B, n), dtype=bool) if attention_mask is None else np.asarray(attention_mask, bool)
    # positions count real tokens only, so a left-padded row starts at 0 like an unpadded one
    pos = cache.next_pos[:, None] + np.cumsum(mask, axis=1) - 1
    pos = np.where(mask, pos, 0)                                          # (B,n)
    cache.next_pos += mask.sum(axis=1)
    cache.key_mask[:, t0:t1] = mask
    key_mask = cache.key_mask[:, :t1]

    dtype = params["wte.weight"].dtype
    rope = None
    if config.pos_encoding == "rope":
        rope = rope_cos_sin(pos, config.head_dim, config.rope_base, dtype)  # (B,1,n,D) each
    x, _ = embedding_forward(input_ids, params["wte.weight"], params.get("wpe.weight"), pos)  # (B,n,C)
    eps = config.layer_norm_epsilon
    for i in range(config.n_layer):
        p = block_params(params, i)
        h, _ = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"], eps)
        qkv, _ = linear_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"])  # (B,n,3C)
        q, k, v = (split_heads(t, config.n_head) for t in np.split(qkv, 3, axis=-1))  # (B,H,n,D)
        if rope is not None:
            q, k = rope_forward(q, *rope), rope_forward(k, *rope)
        cache.k[i, :, :, t0:t1] = k
        cache.v[i, :, :, t0:t1] = v
        # the new queries are the last n of the t1 cached positions: the core's causal mask
        y, _ = causal_attention_forward(q, cache.k[i, :, :, :t1], cache.v[i, :, :, :t1], key_mask)
        a, _ = linear_forward(merge_heads(y), p["attn.c_proj.weight"], p["attn.c_proj.bias"])
        x = x + a                                                          # residual
        h, _ = layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"], eps)
        m, _ = mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                           p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
        x = x + m                                                          # residual
    cache.length = t1
    x, _ = layernorm_forward(x, params["ln_f.weight"], params["ln_f.bias"], eps)
    logits, _ = lm_head_forward(x, lm_head_weight(params))                # (B,n,V)
    return logits
