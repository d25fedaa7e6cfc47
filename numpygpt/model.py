"""The GPT: the layers composed, from token ids to the loss and back.

    ids (B,T) --embedding--> x (B,T,C) --block x L--> (B,T,C) --ln_f--> (B,T,C)
        --lm_head--> logits (B,T,V) --cross_entropy(labels)--> loss

`gpt_forward` walks down that line and `gpt_backward` walks back up it; both are pure
functions of the params dict (GPT-2's names and layouts, weights applied as x @ W). Each
call lands in a layer file of numpygpt/layers/, its forward and backward side by side.
The GPT class holds the params and checks what it is given before any work is done.
"""
from contextlib import contextmanager
from functools import partial

import numpy as np

from .checks import NonFiniteError, check_model_inputs, check_params, overflow_site
from .config import GPTConfig, Execution, param_shapes, param_kind, is_residual_projection
from .engine import Engine
from .io.hf import read_hf_directory, write_hf_directory
from .layers import (sub, prefixed, embedding_forward, embedding_backward, layernorm_forward,
                     layernorm_backward, attention_forward, attention_backward, mlp_forward,
                     mlp_backward, rope_cos_sin, lm_head_forward, lm_head_backward, cross_entropy,
                     lm_head_cross_entropy)
from .layers.cross_entropy import check_loss_arguments


def block_forward(x, p, config, key_mask=None, rope=None, past=None, execution=Execution()):
    """One pre-LN transformer block, as GPT-2: x (B,T,C) -> (B,T,C).
        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))
    p: the block's parameters ("ln_1.weight", "attn.c_attn.weight", ...; see config.py).
    past: this block's slice of a KV cache when decoding (layers/attention.py)."""
    eps = config.layer_norm_epsilon
    h, ln_1_cache = layernorm_forward(x, sub(p, "ln_1"), eps)                   # (B,T,C)
    a, attn_cache = attention_forward(h, sub(p, "attn"), config.n_head, key_mask, rope, past,
                                      execution.attention, execution.q_tile,
                                      execution.k_tile, config.kv_heads,
                                      config.sliding_window)                    # (B,T,C)
    x = x + a                                                                   # residual
    h, ln_2_cache = layernorm_forward(x, sub(p, "ln_2"), eps)                   # (B,T,C)
    m, mlp_cache = mlp_forward(h, sub(p, "mlp"))                                # (B,T,C)
    out = x + m                                                                 # residual
    return out, (ln_1_cache, attn_cache, ln_2_cache, mlp_cache)


def block_backward(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    ln_1_cache, attn_cache, ln_2_cache, mlp_cache = cache
    # out = x + mlp(ln_2(x)): the residual passes dout to x unchanged, the MLP adds its share
    dh, g_mlp = mlp_backward(dout, mlp_cache)
    dx, g_ln_2 = layernorm_backward(dh, ln_2_cache)
    dx = dx + dout
    # x = x_in + attn(ln_1(x_in))
    dh, g_attn = attention_backward(dx, attn_cache)
    dx_in, g_ln_1 = layernorm_backward(dh, ln_1_cache)
    dx_in = dx_in + dx
    return dx_in, {**prefixed("ln_1", g_ln_1), **prefixed("attn", g_attn),
                   **prefixed("ln_2", g_ln_2), **prefixed("mlp", g_mlp)}


def gpt_forward(input_ids, params, config, labels=None, key_mask=None, position_ids=None,
                reduction="mean", num_items=None, execution=Execution(), kv_cache=None,
                need_grads=True):
    """ids (B,T) -> logits (B,T,V), None when labels is None; else the loss and the cache
    gpt_backward starts from (None with need_grads=False: the loss alone).
    labels (B,T) aligned: label t is the target of logits t, -100 not counted.
    key_mask (B,T) bool: False for padding. position_ids (B,T): default 0..T-1.
    kv_cache: a numpygpt.decode.KVCache; the T new tokens continue the ones it holds, at the
    positions it counts (position_ids must then be None), key_mask marking left padding among
    the new tokens. Inputs are not checked here: GPT's methods and decode.generate check them."""
    B, T = input_ids.shape
    if kv_cache is not None:                 # decoding: positions and keys continue the cache's
        position_ids, key_mask, _ = kv_cache.extend(key_mask, T)
    elif position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    rope = None
    if config.pos_encoding == "rope":        # (cos, sin) (B,1,T,D) each, shared by every layer
        rope = rope_cos_sin(position_ids, config.head_dim, config.rope_base,
                            params["wte.weight"].dtype)
    emb = {name: params[name] for name in ("wte.weight", "wpe.weight") if name in params}
    x, emb_cache = embedding_forward(input_ids, emb, position_ids)             # (B,T) -> (B,T,C)
    block_caches = []
    for i in range(config.n_layer):
        past = None if kv_cache is None else kv_cache.layer(i)
        x, cache = block_forward(x, sub(params, f"h.{i}"), config, key_mask, rope, past,
                                 execution)                                     # (B,T,C)
        block_caches.append(cache)
    x, ln_f_cache = layernorm_forward(x, sub(params, "ln_f"), config.layer_norm_epsilon)
    head = {"weight": params["wte.weight" if config.tie_word_embeddings else "lm_head.weight"]}
    if labels is None:
        logits, _ = lm_head_forward(x, head)                                   # (B,T,C) -> (B,T,V)
        return logits, None
    # The loss comes with its gradient, as a loss layer's does. Two ways, the same numbers:
    if execution.loss == "chunked":     # lm_head + loss a chunk of rows at a time, -100 rows skipped
        loss, dx, g_head = lm_head_cross_entropy(x, head, labels, reduction=reduction,
                                                 num_items=num_items, need_grads=need_grads,
                                                 chunk_rows=execution.loss_chunk)   # dx (B,T,C)
        top = ("chunked", dx, g_head)
    else:                               # the (B,T,V) logits, then the loss
        logits, head_cache = lm_head_forward(x, head)                          # (B,T,C) -> (B,T,V)
        loss, dlogits = cross_entropy(logits, labels, reduction=reduction,
                                      num_items=num_items)                     # (B,T,V)
        top = ("standard", dlogits, head_cache)
    if not need_grads:
        return loss, None
    return loss, (top, ln_f_cache, block_caches, emb_cache, config.tie_word_embeddings)


def gpt_backward(cache):
    """The gradients of gpt_forward's loss, one per parameter (params' keys): the forward
    undone, from the loss back to the embedding."""
    top, ln_f_cache, block_caches, emb_cache, tied = cache
    if top[0] == "standard":
        _, dlogits, head_cache = top
        dx, g_head = lm_head_backward(dlogits, head_cache)                     # (B,T,V) -> (B,T,C)
    else:
        _, dx, g_head = top                                # the chunked loss did it with the loss
    dx, g_ln_f = layernorm_backward(dx, ln_f_cache)                            # (B,T,C)
    grads = prefixed("ln_f", g_ln_f)
    for i in reversed(range(len(block_caches))):
        dx, g = block_backward(dx, block_caches[i])                            # (B,T,C)
        grads.update(prefixed(f"h.{i}", g))
    _, g_emb = embedding_backward(dx, emb_cache)
    grads.update(g_emb)
    if tied:            # wte is used twice, embedding and lm_head: its gradient is the sum
        grads["wte.weight"] = grads["wte.weight"] + g_head["weight"]
    else:
        grads["lm_head.weight"] = g_head["weight"]
    return grads


@contextmanager
def range_checked(what, dtype):
    """Floating-point overflow (and inf - inf, x / 0) inside the block is an error naming the
    layer where it happened, instead of a NumPy warning and a number printed as if fine."""
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            yield
    except FloatingPointError as e:
        raise NonFiniteError(f"{what} left the floating-point range in "
                             f"{overflow_site(e.__traceback__)} ({e}); its weights or inputs "
                             f"are too large for {np.dtype(dtype).name}") from None


def init_params(config, seed=0, dtype=np.float32):
    """GPT-2's initialisation, by param_kind: matrices and embeddings normal(0, 0.02), the two
    residual projections scaled by 1/sqrt(2 n_layer), biases 0, LayerNorm weights 1.
    Drawn in float64 and cast, so float32 and float64 models of one seed agree."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        kind = param_kind(name)
        if kind == "bias":
            p = np.zeros(shape)
        elif kind == "norm":
            p = np.ones(shape)
        else:
            std = 0.02 / np.sqrt(2 * config.n_layer) if is_residual_projection(name) else 0.02
            p = rng.normal(0.0, std, size=shape)
        params[name] = p.astype(dtype)
    return params


class GPT:
    """A GPT-2 style model: `config` (what it is), `execution` (how it is computed), and its
    parameters in `params` (name -> ndarray).

    Its methods check their inputs first, then compute with floating-point overflow as an
    error: a float32 model whose activations overflow must not print a number as if fine."""

    def __init__(self, config: GPTConfig, seed=0, dtype=np.float32, params=None,
                 execution=Execution()):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        if not isinstance(execution, Execution):
            raise ValueError(f"execution must be an Execution, got {type(execution).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.config, self.dtype, self.execution = config, dtype, execution
        self.params = (init_params(config, seed, dtype) if params is None
                       else check_params(param_shapes(config), params, dtype))
        if execution.engine == "fast":      # the same numbers, by the engine (numpygpt/engine/)
            engine = Engine(config, execution)
            self.forward, self._backward = engine.forward, engine.backward
        else:                               # the textbook: the functions above
            self.forward = partial(gpt_forward, config=config, execution=execution)
            self._backward = gpt_backward

    # self.forward(ids, params, labels=None, key_mask=None, position_ids=None, ...): the
    # chosen tier's gpt_forward, on inputs checked already (decode.generate checks its own).

    def logits(self, input_ids, attention_mask=None, position_ids=None):
        """(B,T) ids -> (B,T,V) logits."""
        ids, key_mask, pos = check_model_inputs(self.config, input_ids, attention_mask, position_ids)
        with self._range_checked("logits"):
            logits, _ = self.forward(ids, self.params, key_mask=key_mask, position_ids=pos)
        return logits

    def loss(self, input_ids, labels, attention_mask=None, position_ids=None,
             reduction="mean", num_items=None):
        """The loss on aligned labels (B,T), forward only."""
        inputs = self._checked(input_ids, labels, attention_mask, position_ids, reduction,
                               num_items)
        with self._range_checked("loss"):
            loss, _ = self.forward(**inputs, reduction=reduction, num_items=num_items,
                                   need_grads=False)
        return loss

    def loss_and_grads(self, input_ids, labels, attention_mask=None, position_ids=None,
                       reduction="mean", num_items=None):
        """Aligned labels (B,T) -> loss, grads (a dict with exactly params' keys).
        reduction: "mean" over the counted targets (or / num_items), "sum", or "none"
        (per-position losses; the grads are then those of their sum).
        With engine="fast" the grads are the engine's buffers, overwritten by the next call
        (copy them to keep them)."""
        inputs = self._checked(input_ids, labels, attention_mask, position_ids, reduction,
                               num_items)
        with self._range_checked("loss and gradients"):
            loss, cache = self.forward(**inputs, reduction=reduction, num_items=num_items)
            grads = self._backward(cache)
        return loss, {name: grads[name] for name in self.params}

    def _checked(self, input_ids, labels, attention_mask, position_ids, reduction, num_items):
        """-> the inputs of self.forward, every one checked."""
        ids, key_mask, pos = check_model_inputs(self.config, input_ids, attention_mask, position_ids)
        labels, _ = check_loss_arguments(labels, ids.shape, self.config.vocab_size, -100,
                                         reduction, num_items)
        return {"input_ids": ids, "params": self.params, "labels": labels, "key_mask": key_mask,
                "position_ids": pos}

    def _range_checked(self, what):
        return range_checked(f"the {what} of this {self.dtype.name} model", self.dtype)

    def num_params(self):
        return sum(p.size for p in self.params.values())

    # HuggingFace GPT-2 directories (config.json + model.safetensors): numpygpt/io/hf.py
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, execution=Execution()):
        config, params = read_hf_directory(path, dtype)
        return cls(config, dtype=dtype, params=params, execution=execution)

    def save_pretrained(self, path):
        write_hf_directory(self.config, self.params, path)
