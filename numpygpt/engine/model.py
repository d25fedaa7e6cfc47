"""The GPT's forward and backward, computed by the engine. Textbook twin: numpygpt/model.py
(block_forward/backward, gpt_forward/backward): the same steps in the same order, each by
the engine's kernel, the same numbers.

Devices: one workspace (engine/workspace.py) per Engine holds every activation, gradient and
scratch array of a step under its layer's name, so a step after the first makes no large
array: what forward and backward return are its buffers, overwritten by the next step.
"""
import numpy as np

from ..config import Execution
from ..layers import (sub, prefixed, rope_cos_sin, lm_head_forward, lm_head_backward,
                      cross_entropy)
from .attention import attention_forward_fast, attention_backward_fast
from .chunked_loss import lm_head_cross_entropy_fast
from .embedding import embedding_forward_fast, embedding_backward_fast
from .gelu import gelu_forward_fast, gelu_backward_fast
from .layernorm import layernorm_forward_fast, layernorm_backward_fast
from .linear import linear_forward_fast, linear_backward_fast
from .workspace import Workspace


class Engine:
    """One model's forward and backward by the engine: forward(ids, params, labels=None, ...)
    and backward(cache), the textbook's gpt_forward and gpt_backward with config and execution
    bound. Its workspace is made at the first step and reused by every later one."""

    def __init__(self, config, execution=Execution(engine="fast")):
        self.config, self.execution = config, execution
        self.ws = Workspace()

    def forward(self, input_ids, params, labels=None, key_mask=None, position_ids=None,
                reduction="mean", num_items=None, kv_cache=None, need_grads=True):
        """Textbook twin: model.gpt_forward (its arguments, its results)."""
        config, execution = self.config, self.execution
        B, T = input_ids.shape
        if kv_cache is not None:
            position_ids, key_mask, _ = kv_cache.extend(key_mask, T)
        elif position_ids is None:
            position_ids = np.broadcast_to(np.arange(T), (B, T))
        rope = None
        if config.pos_encoding == "rope":
            rope = rope_cos_sin(position_ids, config.head_dim, config.rope_base,
                                params["wte.weight"].dtype)
        emb = {name: params[name] for name in ("wte.weight", "wpe.weight") if name in params}
        ws = self.ws
        x, emb_cache = embedding_forward_fast(input_ids, emb, position_ids, ws)  # (B,T,C)
        block_caches = []
        for i in range(config.n_layer):
            past = None if kv_cache is None else kv_cache.layer(i)
            x, cache = self._block_forward(x, sub(params, f"h.{i}"), key_mask, rope, past,
                                           f"h.{i}")
            block_caches.append(cache)
        x, ln_f_cache = layernorm_forward_fast(x, sub(params, "ln_f"), config.layer_norm_epsilon,
                                               ws, "ln_f")
        head = {"weight": params["wte.weight" if config.tie_word_embeddings else "lm_head.weight"]}
        if labels is None:
            logits, _ = lm_head_forward(x, head)
            return logits, None
        if execution.loss == "chunked":
            loss, dx, g_head = lm_head_cross_entropy_fast(x, head, labels, reduction=reduction,
                                                          num_items=num_items,
                                                          chunk_rows=execution.loss_chunk,
                                                          need_grads=need_grads, ws=ws)
            top = ("chunked", dx, g_head)
        else:
            logits, head_cache = lm_head_forward(x, head)
            loss, dlogits = cross_entropy(logits, labels, reduction=reduction, num_items=num_items)
            top = ("standard", dlogits, head_cache)
        if not need_grads:
            return loss, None
        return loss, (top, ln_f_cache, block_caches, emb_cache, config.tie_word_embeddings)

    def backward(self, cache):
        """Textbook twin: model.gpt_backward."""
        top, ln_f_cache, block_caches, emb_cache, tied = cache
        if top[0] == "standard":
            _, dlogits, head_cache = top
            dx, g_head = lm_head_backward(dlogits, head_cache)
        else:
            _, dx, g_head = top
        ws = self.ws
        dx, g_ln_f = layernorm_backward_fast(dx, ln_f_cache, ws, "ln_f")
        grads = prefixed("ln_f", g_ln_f)
        for i in reversed(range(len(block_caches))):
            dx, g = self._block_backward(dx, block_caches[i], f"h.{i}")
            grads.update(prefixed(f"h.{i}", g))
        # tied: the embedding's rows are added into the lm_head's gradient (one matrix, two uses)
        _, g_emb = embedding_backward_fast(dx, emb_cache, ws, into=g_head["weight"] if tied else None)
        grads.update(g_emb)
        if not tied:
            grads["lm_head.weight"] = g_head["weight"]
        return grads

    def _block_forward(self, x, p, key_mask, rope, past, name):
        """Textbook twin: model.block_forward."""
        config, ex, ws = self.config, self.execution, self.ws
        eps = config.layer_norm_epsilon
        h, ln_1_cache = layernorm_forward_fast(x, sub(p, "ln_1"), eps, ws, name + ".ln_1")
        a, attn_cache = attention_forward_fast(h, sub(p, "attn"), config.n_head, key_mask, rope,
                                               past, ex.attention, ex.q_tile, ex.k_tile,
                                               config.kv_heads, ws, name + ".attn",
                                               window=config.sliding_window)
        x = np.add(x, a, out=ws(name + ".res_1", x.shape, x.dtype))         # (B,T,C) residual
        h, ln_2_cache = layernorm_forward_fast(x, sub(p, "ln_2"), eps, ws, name + ".ln_2")
        h, fc_cache = linear_forward_fast(h, sub(p, "mlp.c_fc"), ws, name + ".mlp.c_fc")  # (B,T,4C)
        a, gelu_cache = gelu_forward_fast(h, ws, name + ".mlp.gelu")
        m, proj_cache = linear_forward_fast(a, sub(p, "mlp.c_proj"), ws, name + ".mlp.c_proj")
        out = np.add(x, m, out=ws(name + ".res_2", x.shape, x.dtype))       # (B,T,C) residual
        return out, (ln_1_cache, attn_cache, ln_2_cache, (fc_cache, gelu_cache, proj_cache))

    def _block_backward(self, dout, cache, name):
        """Textbook twin: model.block_backward."""
        ws = self.ws
        ln_1_cache, attn_cache, ln_2_cache, (fc_cache, gelu_cache, proj_cache) = cache
        da, g_proj = linear_backward_fast(dout, proj_cache, ws, name + ".mlp.c_proj")
        dh, _ = gelu_backward_fast(da, gelu_cache, out=da)
        dh, g_fc = linear_backward_fast(dh, fc_cache, ws, name + ".mlp.c_fc")
        dx, g_ln_2 = layernorm_backward_fast(dh, ln_2_cache, ws, name + ".ln_2")
        dx += dout
        dh, g_attn = attention_backward_fast(dx, attn_cache, ws, name + ".attn")
        dx_in, g_ln_1 = layernorm_backward_fast(dh, ln_1_cache, ws, name + ".ln_1")
        dx_in += dx
        return dx_in, {**prefixed("ln_1", g_ln_1), **prefixed("attn", g_attn),
                       **prefixed("ln_2", g_ln_2), **prefixed("mlp.c_fc", g_fc),
                       **prefixed("mlp.c_proj", g_proj)}
