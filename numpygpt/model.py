"""The GPT: a plain composition of the layer functions, from ids to loss and back.

    ids (B,T) --embedding--> x (B,T,C) --block x L--> (B,T,C) --ln_f--> (B,T,C)
        --lm_head--> logits (B,T,V) --cross_entropy(labels)--> loss

`gpt_forward` / `gpt_backward` are pure functions of (params, config); the GPT class
only holds the params dict and validates inputs. Parameter names and layouts are
GPT-2's, as HuggingFace's GPT2Model state dict has them, weights applied as x @ W.
"""
import numpy as np

from .block import block_forward, block_backward
from .checks import as_int_array, check_range, check_attention_mask, check_reduction
from .config import GPTConfig
from .cross_entropy import cross_entropy, check_labels
from .embedding import embedding_forward, embedding_backward
from .fused_loss import lm_head_cross_entropy
from .layernorm import layernorm_forward, layernorm_backward
from .lm_head import lm_head_forward, lm_head_backward
from .rope import rope_cos_sin

BLOCK_PARAM_SHAPES = {   # block-local name -> shape as a function of C
    "ln_1.weight": lambda C: (C,), "ln_1.bias": lambda C: (C,),
    "attn.c_attn.weight": lambda C: (C, 3 * C), "attn.c_attn.bias": lambda C: (3 * C,),
    "attn.c_proj.weight": lambda C: (C, C), "attn.c_proj.bias": lambda C: (C,),
    "ln_2.weight": lambda C: (C,), "ln_2.bias": lambda C: (C,),
    "mlp.c_fc.weight": lambda C: (C, 4 * C), "mlp.c_fc.bias": lambda C: (4 * C,),
    "mlp.c_proj.weight": lambda C: (4 * C, C), "mlp.c_proj.bias": lambda C: (C,),
}


def param_shapes(config):
    """name -> shape, in GPT-2's order."""
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C)}
    if config.pos_encoding == "learned":
        shapes["wpe.weight"] = (config.n_positions, C)
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{k}": f(C) for k, f in BLOCK_PARAM_SHAPES.items()})
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def init_params(config, seed=0, dtype=np.float32):
    """GPT-2 initialisation: weights normal(0, 0.02), the two residual projections
    (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer), biases 0, LayerNorm weights 1.
    Drawn in float64 and cast, so float32 and float64 models of one seed agree."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            p = np.zeros(shape)
        elif "ln_" in name:
            p = np.ones(shape)
        else:
            std = 0.02
            if name.endswith("c_proj.weight"):
                std /= np.sqrt(2 * config.n_layer)
            p = rng.normal(0.0, std, size=shape)
        params[name] = p.astype(dtype)
    return params


def block_params(params, i):
    prefix = f"h.{i}."
    return {k: params[prefix + k] for k in BLOCK_PARAM_SHAPES}


def lm_head_weight(params):
    """The (V,C) output matrix: its own, or wte when tied."""
    return params.get("lm_head.weight", params["wte.weight"])


def gpt_forward(params, config, input_ids, key_mask=None, position_ids=None):
    """input_ids (B,T) -> final hidden states after ln_f (B,T,C), and the caches."""
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    rope = None
    if config.pos_encoding == "rope":
        rope = rope_cos_sin(position_ids, config.head_dim, config.rope_base, params["wte.weight"].dtype)
    x, emb_cache = embedding_forward(input_ids, params["wte.weight"], params.get("wpe.weight"),
                                     position_ids)                          # (B,T) -> (B,T,C)
    block_caches = []
    for i in range(config.n_layer):
        x, cache = block_forward(x, block_params(params, i), config.n_head,
                                 config.layer_norm_epsilon, key_mask, rope,
                                 config.attn_impl, config.attn_block_size)  # (B,T,C) -> (B,T,C)
        block_caches.append(cache)
    x, lnf_cache = layernorm_forward(x, params["ln_f.weight"], params["ln_f.bias"],
                                     config.layer_norm_epsilon)             # (B,T,C)
    return x, (emb_cache, block_caches, lnf_cache)


def gpt_backward(dx, cache, dwte=None):
    """dx (B,T,C), gradient at the output of ln_f -> grads of every transformer parameter
    (the lm_head's own gradient is added by the caller, or passed in as dwte when the
    lm_head is tied to wte: the embedding's gradient is then added into it in place)."""
    emb_cache, block_caches, lnf_cache = cache
    grads = {}
    dx, g = layernorm_backward(dx, lnf_cache)
    grads["ln_f.weight"], grads["ln_f.bias"] = g["weight"], g["bias"]
    for i in reversed(range(len(block_caches))):
        dx, g = block_backward(dx, block_caches[i])
        grads.update({f"h.{i}.{k}": v for k, v in g.items()})
    g = embedding_backward(dx, emb_cache, dwte)
    grads["wte.weight"] = g["wte"]
    if "wpe" in g:
        grads["wpe.weight"] = g["wpe"]
    return grads


def lm_head_loss(x, weight, labels, reduction="mean", num_items=None):
    """x (B,T,C) -> loss, dx (B,T,C), dweight (V,C): lm_head then cross-entropy."""
    logits, head_cache = lm_head_forward(x, weight)                         # (B,T,C) -> (B,T,V)
    loss, dlogits = cross_entropy(logits, labels, reduction=reduction, num_items=num_items)
    dx, dweight = lm_head_backward(dlogits, head_cache)
    return loss, dx, dweight


class GPT:
    """A GPT-2 style model holding its parameters in `self.params` (name -> ndarray)."""

    def __init__(self, config: GPTConfig, seed=0, dtype=np.float32, params=None):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        if params is None:
            params = init_params(config, seed, dtype)
        else:
            params = check_params(config, params, dtype)
        self.params = params

    # ---- inputs -----------------------------------------------------------------
    def check_inputs(self, input_ids, attention_mask=None, position_ids=None):
        """Validate and normalise: ids (B,T) int in [0,V); mask (B,T) 0/1 -> bool;
        position ids (B,T) (or (T,)) in [0, n_positions) where the token is real."""
        cfg = self.config
        ids = as_int_array("input_ids", input_ids, ndim=2)
        B, T = ids.shape
        if T == 0:
            raise ValueError("input_ids has length T=0")
        check_range("input_ids", ids, 0, cfg.vocab_size, what=f"[0, vocab_size={cfg.vocab_size})")
        key_mask = check_attention_mask(attention_mask, ids.shape)
        if position_ids is None:
            if cfg.pos_encoding == "learned" and T > cfg.n_positions:
                raise ValueError(f"input_ids has length T={T} > n_positions={cfg.n_positions} "
                                 f"(learned absolute positions; use pos_encoding='rope' for any length)")
            return ids, key_mask, None
        pos = as_int_array("position_ids", position_ids, ndim=(1, 2))
        if pos.ndim == 1:
            pos = pos[None]
        if pos.shape[1:] != (T,) or pos.shape[0] not in (1, B):
            raise ValueError(f"position_ids has shape {np.shape(position_ids)}, which does not "
                             f"match input_ids shape {ids.shape}")
        pos = np.broadcast_to(pos, (B, T))
        if key_mask is not None:                 # padding positions are never looked at
            pos = np.where(key_mask, pos, 0)
        high = cfg.n_positions if cfg.pos_encoding == "learned" else np.iinfo(np.int64).max
        check_range("position_ids", pos, 0, high,
                    what=f"[0, n_positions={cfg.n_positions})" if cfg.pos_encoding == "learned"
                    else "[0, inf)")
        return ids, key_mask, pos

    # ---- forward / backward -----------------------------------------------------
    def logits(self, input_ids, attention_mask=None, position_ids=None):
        """(B,T) ids -> (B,T,V) logits."""
        ids, key_mask, pos = self.check_inputs(input_ids, attention_mask, position_ids)
        x, _ = gpt_forward(self.params, self.config, ids, key_mask, pos)     # (B,T,C)
        logits, _ = lm_head_forward(x, lm_head_weight(self.params))         # (B,T,V)
        return logits

    def loss(self, input_ids, labels, attention_mask=None, position_ids=None,
             reduction="mean", num_items=None):
        """Forward only: the loss on aligned labels."""
        check_reduction(reduction)
        ids, key_mask, pos = self.check_inputs(input_ids, attention_mask, position_ids)
        labels = check_labels(labels, ids.shape, self.config.vocab_size)
        x, _ = gpt_forward(self.params, self.config, ids, key_mask, pos)
        loss, _, _ = lm_head_cross_entropy(x, lm_head_weight(self.params), labels,
                                           reduction=reduction, num_items=num_items,
                                           need_grads=False)
        return loss

    def loss_and_grads(self, input_ids, labels, attention_mask=None, position_ids=None,
                       reduction="mean", num_items=None):
        """Aligned labels (B,T) -> loss, grads (dict with exactly the keys of params).
        With reduction="none" the grads are those of the summed per-position losses."""
        check_reduction(reduction)
        ids, key_mask, pos = self.check_inputs(input_ids, attention_mask, position_ids)
        labels = check_labels(labels, ids.shape, self.config.vocab_size)
        x, cache = gpt_forward(self.params, self.config, ids, key_mask, pos)   # (B,T,C)
        W = lm_head_weight(self.params)
        # = lm_head_loss(x, W, labels, reduction, num_items), chunk by chunk (numpygpt.fused_loss):
        # the (B,T,V) logits never exist at once, and -100 positions cost nothing
        loss, dx, dW = lm_head_cross_entropy(x, W, labels, reduction=reduction,
                                             num_items=num_items)         # dx (B,T,C), dW (V,C)
        if self.config.tie_word_embeddings:
            # wte is used twice, embedding and lm_head: the embedding's gradient is added into dW
            grads = gpt_backward(dx, cache, dwte=dW)
        else:
            grads = gpt_backward(dx, cache)
            grads["lm_head.weight"] = dW
        return loss, {name: grads[name] for name in self.params}

    def num_params(self):
        return sum(p.size for p in self.params.values())

    # ---- HuggingFace GPT-2 directories (numpygpt.pretrained) -----------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        from .pretrained import load_pretrained
        return load_pretrained(path, dtype=dtype)

    def save_pretrained(self, path):
        from .pretrained import save_pretrained
        save_pretrained(self, path)


def check_params(config, params, dtype):
    """A params dict must have exactly the expected names and shapes; cast to dtype."""
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    if missing or unexpected:
        raise ValueError(f"params do not match the config: missing {missing}, unexpected {unexpected}")
    out = {}
    for name, shape in expected.items():
        p = np.asarray(params[name])
        if p.shape != shape:
            raise ValueError(f"params[{name!r}] has shape {p.shape}, expected {shape}")
        out[name] = np.ascontiguousarray(p, dtype=dtype)
    return out
