"""The course: twelve backward passes, in the order a learner needs them, each on a small
float64 problem whose answer the textbook tier computes (numpygpt/layers/, model.py).

An Exercise says which function the learner writes, where the textbook's solution is, how
to build its problem, how to read what the backward returns into named tensors, and which
of the bug zoo's bugs (gradcheck/bugs.py) are the classic mistakes of that step.

The reference is called through this module's globals (`linear_backward(...)`, not a bound
copy), so that inside gradcheck.swapped(...) it is the zoo's wrong function: that is how the
diagnosis computes what each bug gives on the learner's own inputs.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from ..config import GPTConfig, BLOCK_PARAM_SHAPES, block_param_shapes
from ..layers import (linear_forward, linear_backward, embedding_forward, embedding_backward,
                      gelu_forward, gelu_backward, layernorm_forward, layernorm_backward,
                      cross_entropy, causal_attention_forward, causal_attention_backward,
                      attention_forward, attention_backward, mlp_forward, mlp_backward,
                      lm_head_forward, tiled_attention_forward, tiled_attention_backward)
from ..labels import causal_lm_labels
from ..model import block_forward, block_backward, gpt_forward, gpt_backward, init_params
from ..gradcheck import unit_scale_params

BLOCK_CONFIG = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=1)
GPT_CONFIG = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=2)


@dataclass(frozen=True)
class Problem:
    args: tuple               # what the backward is called with: (dout, cache) or (cache,)
    sizes: dict               # the letters of the problem (B, T, C, ...), for the diagnosis


@dataclass(frozen=True)
class Exercise:
    number: int
    name: str                 # what `exercise check DIR NAME` takes
    title: str
    function: str             # the backward the learner writes
    forward: object           # the forward whose cache it receives (copied into the file)
    solution: str             # where the textbook's answer is
    build: object             # seed -> Problem (fresh arrays each call)
    reference: object         # the textbook's backward, called as reference(*problem.args)
    read: object              # what a backward returned -> {tensor name: array or None}
    intermediates: tuple = ()  # ((the learner's local name, the textbook's), ...)
    bugs: tuple = ()          # the zoo's bugs of this step
    sizes_note: str = ""
    order: tuple = field(default=())   # the tensors in the order the backward computes them

    @property
    def filename(self):
        return f"{self.number:02d}_{self.name}.py"


class ReturnShapeError(Exception):
    """A backward returned something of the wrong form (not (dx, grads), ...)."""


# ---- reading what a backward returned -------------------------------------------------------

def _pair(value, what):
    if not isinstance(value, tuple) or len(value) != 2:
        raise ReturnShapeError(f"returned {_kind(value)}; expected a pair {what}")
    if not isinstance(value[1], dict):
        raise ReturnShapeError(f"returned ({_kind(value[0])}, {_kind(value[1])}); the second "
                               f"must be a dict of gradients, {what}")
    return value


def _kind(value):
    if isinstance(value, np.ndarray):
        return f"an array {value.shape}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"


def grads_named(grads):
    return {f"grads[{k!r}]": v for k, v in grads.items()}


def read_dx_grads(value):
    dx, grads = _pair(value, "(dx, grads)")
    return {"dx": dx, **grads_named(grads)}


def read_ids_grads(value):
    _, grads = _pair(value, "(None, grads): token ids have no gradient")
    return grads_named(grads)


def read_qkv(value):
    dqkv, grads = _pair(value, "((dq, dk, dv), {})")
    if not isinstance(dqkv, tuple) or len(dqkv) != 3:
        raise ReturnShapeError(f"returned ({_kind(dqkv)}, ...); the first must be (dq, dk, dv)")
    return dict(zip(("dq", "dk", "dv"), dqkv), **grads_named(grads))


def read_dlogits(value):
    return {"dlogits": value}


def read_grads(value):
    if not isinstance(value, dict):
        raise ReturnShapeError(f"returned {_kind(value)}; expected the dict of gradients")
    return grads_named(value)


# ---- the problems ---------------------------------------------------------------------------

def _draw(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def linear_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, C = 2, 3, 4                      # W square: a missing transpose still runs
    x = _draw(rng, B, T, C)
    p = {"weight": _draw(rng, C, C, scale=C ** -0.5), "bias": _draw(rng, C, scale=0.1)}
    out, cache = linear_forward(x, p)
    return Problem((_draw(rng, *out.shape), cache), dict(B=B, T=T, N=B * T, Cin=C, Cout=C))


def embedding_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, V, C = 2, 5, 7, 4
    ids = rng.integers(0, V, size=(B, T))
    ids[0, 3] = ids[0, 0]
    ids[1, 1] = ids[0, 0]                  # an id three times: its rows must add up
    p = {"wte.weight": _draw(rng, V, C, scale=C ** -0.5),
         "wpe.weight": _draw(rng, 8, C, scale=C ** -0.5)}
    out, cache = embedding_forward(ids, p)
    return Problem((_draw(rng, *out.shape), cache), dict(B=B, T=T, N=B * T, V=V, C=C))


def gelu_problem(seed):
    rng = np.random.default_rng(seed)
    x = _draw(rng, 2, 3, 8, scale=2.0)
    out, cache = gelu_forward(x)
    return Problem((_draw(rng, *out.shape), cache), dict(B=2, T=3, N=6))


def layernorm_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, C = 2, 3, 6
    x = _draw(rng, B, T, C)
    p = {"weight": 1 + _draw(rng, C, scale=0.1), "bias": _draw(rng, C, scale=0.1)}
    out, cache = layernorm_forward(x, p)
    return Problem((_draw(rng, *out.shape), cache), dict(B=B, T=T, N=B * T, C=C))


def cross_entropy_forward(logits, labels, ignore_index=-100):
    """logits (B,T,V), labels (B,T) aligned, ignore_index where nothing is learned ->
    the mean loss over the counted positions, cache."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                           # (N,V)
    target = labels.reshape(-1)                                         # (N,)
    counted = target != ignore_index                                    # (N,)
    shifted = z - z.max(axis=-1, keepdims=True)                         # (N,V), row max 0
    sumexp = np.exp(shifted).sum(axis=-1, keepdims=True)                # (N,1)
    picked = shifted[np.arange(len(target)), np.where(counted, target, 0)]   # (N,)
    nll = np.where(counted, np.log(sumexp[:, 0]) - picked, 0.0)         # (N,) 0 where ignored
    loss = nll.sum() / max(counted.sum(), 1)                            # mean over the counted
    return loss, (logits, labels, ignore_index)


def cross_entropy_reference(cache):
    logits, labels, ignore_index = cache
    return cross_entropy(logits, labels, ignore_index)[1]


def cross_entropy_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, V = 2, 4, 7
    logits = _draw(rng, B, T, V, scale=2.0)
    labels = rng.integers(0, V, size=(B, T))
    labels[0, 1] = labels[1, 3] = labels[1, 0] = -100    # 3 of 8 positions not counted
    _, cache = cross_entropy_forward(logits, labels)
    return Problem((cache,), dict(B=B, T=T, N=B * T, V=V, count=B * T - 3))


def attention_core_problem(seed):
    rng = np.random.default_rng(seed)
    B, H, T, D = 2, 2, 4, 3
    q, k, v = (_draw(rng, B, H, T, D) for _ in range(3))
    key_mask = np.ones((B, T), dtype=bool)
    key_mask[0, 0] = False                 # row 0 left-padded: its query 0 sees no key at all
    y, cache = causal_attention_forward(q, k, v, key_mask)
    sizes = {"B": B, "H": H, "T": T, "D": D, "sqrt(D)": math.sqrt(D)}
    return Problem((_draw(rng, *y.shape), cache), sizes)


def _layer_params(rng, shapes, C):
    p = {name: np.zeros(shape(C)) for name, shape in shapes.items()}
    return unit_scale_params(p, rng)


def attention_problem(seed):
    """K = 1 key/value head shared by the H = 2 query heads (multi-query attention)."""
    rng = np.random.default_rng(seed)
    B, T, C, H, K = 2, 4, 8, 2, 1
    config = GPTConfig(vocab_size=11, n_positions=8, n_embd=C, n_head=H, n_kv_head=K, n_layer=1)
    shapes = {k[len("attn."):]: v for k, v in block_param_shapes(config).items()
              if k.startswith("attn.")}
    p = unit_scale_params({name: np.zeros(shape) for name, shape in shapes.items()}, rng)
    out, cache = attention_forward(_draw(rng, B, T, C), p, H, n_kv_head=K)
    return Problem((_draw(rng, *out.shape), cache),
                   dict(B=B, T=T, N=B * T, C=C, H=H, K=K, D=C // H))


def mlp_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, C = 2, 3, 4
    shapes = {k[len("mlp."):]: v for k, v in BLOCK_PARAM_SHAPES.items() if k.startswith("mlp.")}
    p = _layer_params(rng, shapes, C)
    out, cache = mlp_forward(_draw(rng, B, T, C), p)
    return Problem((_draw(rng, *out.shape), cache), dict(B=B, T=T, N=B * T, C=C))


def block_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, C = 2, 4, BLOCK_CONFIG.n_embd
    p = _layer_params(rng, BLOCK_PARAM_SHAPES, C)
    out, cache = block_forward(_draw(rng, B, T, C), p, BLOCK_CONFIG)
    return Problem((_draw(rng, *out.shape), cache), dict(B=B, T=T, N=B * T, C=C))


def tied_forward(input_ids, p, eps=1e-5):
    """ids (B,T), p {"wte.weight": (V,C), "wpe.weight", "ln_f.weight", "ln_f.bias"} ->
    logits (B,T,V): the bottom and the top of a GPT with no blocks, wte used twice."""
    emb = {"wte.weight": p["wte.weight"], "wpe.weight": p["wpe.weight"]}
    x, emb_cache = embedding_forward(input_ids, emb)                        # (B,T) -> (B,T,C)
    ln_f = {"weight": p["ln_f.weight"], "bias": p["ln_f.bias"]}
    h, ln_f_cache = layernorm_forward(x, ln_f, eps)                          # (B,T,C)
    logits, head_cache = lm_head_forward(h, {"weight": p["wte.weight"]})     # (B,T,V), W = wte
    return logits, (emb_cache, ln_f_cache, head_cache)


def tied_reference(dlogits, cache):
    """The textbook's gpt_backward on a GPT of no blocks: the same lines."""
    emb_cache, ln_f_cache, head_cache = cache
    return None, gpt_backward((("standard", dlogits, head_cache), ln_f_cache, [], emb_cache, True))


def tied_problem(seed):
    rng = np.random.default_rng(seed)
    B, T, V, C = 2, 5, 7, 4
    ids = rng.integers(0, V, size=(B, T))
    ids[1, 2] = ids[0, 0]
    p = {"wte.weight": _draw(rng, V, C, scale=C ** -0.5),
         "wpe.weight": _draw(rng, 8, C, scale=C ** -0.5),
         "ln_f.weight": 1 + _draw(rng, C, scale=0.1), "ln_f.bias": _draw(rng, C, scale=0.1)}
    logits, cache = tied_forward(ids, p)
    return Problem((_draw(rng, *logits.shape), cache), dict(B=B, T=T, N=B * T, V=V, C=C))


def gpt_problem(seed):
    rng = np.random.default_rng(seed)
    B, T = 2, 5
    params = unit_scale_params(init_params(GPT_CONFIG, seed, np.float64), rng)
    ids = rng.integers(0, GPT_CONFIG.vocab_size, size=(B, T))
    labels = causal_lm_labels(ids)
    labels[0, :2] = -100                   # a prompt, not learned
    _, cache = gpt_forward(ids, params, GPT_CONFIG, labels)
    return Problem((cache,), dict(B=B, T=T, N=B * T, L=GPT_CONFIG.n_layer))


def tiled_problem(seed):
    rng = np.random.default_rng(seed)
    B, H, T, D = 2, 2, 6, 3
    q, k, v = (_draw(rng, B, H, T, D) for _ in range(3))
    key_mask = np.ones((B, T), dtype=bool)
    key_mask[0, :2] = False                # row 0 left-padded by two
    y, cache = tiled_attention_forward(q, k, v, key_mask, q_tile=2, k_tile=4)
    sizes = {"B": B, "H": H, "T": T, "D": D, "sqrt(D)": math.sqrt(D)}
    return Problem((_draw(rng, *y.shape), cache), sizes)


# the references: looked up in this module's globals at each call (see the docstring)
COURSE = (
    Exercise(1, "linear", "the linear layer", "linear_backward", linear_forward,
             "numpygpt/layers/linear.py, linear_backward", linear_problem,
             lambda *a: linear_backward(*a), read_dx_grads, bugs=("linear-dx-no-transpose",)),
    Exercise(2, "embedding", "the embedding (repeated ids add up)", "embedding_backward",
             embedding_forward, "numpygpt/layers/embedding.py, embedding_backward",
             embedding_problem, lambda *a: embedding_backward(*a), read_ids_grads,
             bugs=("embedding-assign",)),
    Exercise(3, "gelu", "GELU (GPT-2's tanh form)", "gelu_backward", gelu_forward,
             "numpygpt/layers/gelu.py, gelu_backward", gelu_problem,
             lambda *a: gelu_backward(*a), read_dx_grads, bugs=("gelu-erf-derivative",)),
    Exercise(4, "layernorm", "LayerNorm", "layernorm_backward", layernorm_forward,
             "numpygpt/layers/layernorm.py, layernorm_backward", layernorm_problem,
             lambda *a: layernorm_backward(*a), read_dx_grads, (("dxhat", "g"),),
             ("layernorm-no-mean-terms",),
             order=("grads['weight']", "grads['bias']", "dxhat", "dx")),
    Exercise(5, "cross_entropy", "cross-entropy with -100 targets", "cross_entropy_backward",
             cross_entropy_forward, "numpygpt/layers/cross_entropy.py, cross_entropy (the "
             "lines after '# d nll / d logits')", cross_entropy_problem,
             lambda *a: cross_entropy_reference(*a), read_dlogits,
             bugs=("loss-grad-ignored-rows", "loss-mean-all-positions")),
    Exercise(6, "attention_core", "the attention core (softmax backward, causal mask)",
             "causal_attention_backward", causal_attention_forward,
             "numpygpt/layers/attention.py, causal_attention_backward", attention_core_problem,
             lambda *a: causal_attention_backward(*a), read_qkv,
             (("dP", "dprobs"), ("dS", "dscores")), ("softmax-no-rowsum", "attention-no-scale"),
             order=("dv", "dP", "dS", "dq", "dk")),
    Exercise(7, "attention", "the attention layer (heads, a shared key/value head)",
             "attention_backward", attention_forward,
             "numpygpt/layers/attention.py, attention_backward", attention_problem,
             lambda *a: attention_backward(*a), read_dx_grads,
             bugs=("heads-reshaped", "gqa-dk-not-summed")),
    Exercise(8, "mlp", "the MLP", "mlp_backward", mlp_forward,
             "numpygpt/layers/mlp.py, mlp_backward", mlp_problem,
             lambda *a: mlp_backward(*a), read_dx_grads, bugs=("mlp-no-gelu",)),
    Exercise(9, "block", "a transformer block (residuals)", "block_backward", block_forward,
             "numpygpt/model.py, block_backward", block_problem,
             lambda *a: block_backward(*a), read_dx_grads, bugs=("block-no-residual",)),
    Exercise(10, "tied_lm_head", "the tied lm_head (two uses, one gradient)", "tied_backward",
             tied_forward, "numpygpt/model.py, gpt_backward (its first and last lines)",
             tied_problem, lambda *a: tied_reference(*a), read_ids_grads,
             bugs=("tied-one-use",)),
    Exercise(11, "gpt", "the whole GPT backward", "gpt_backward", gpt_forward,
             "numpygpt/model.py, gpt_backward", gpt_problem, lambda *a: gpt_backward(*a),
             read_grads, bugs=("tied-one-use", "block-no-residual")),
    Exercise(12, "tiled_attention", "the tiled attention backward (P from the saved "
             "log-sum-exp)", "tiled_attention_backward", tiled_attention_forward,
             "numpygpt/layers/tiled_attention.py, tiled_attention_backward", tiled_problem,
             lambda *a: tiled_attention_backward(*a), read_qkv, bugs=("causal-mask-grad",)),
)
BY_NAME = {e.name: e for e in COURSE}


def find(name):
    """An exercise by name, number ("1", "01") or file name ("01_linear.py")."""
    key = str(name).removesuffix(".py")
    for e in COURSE:
        if key in (e.name, str(e.number), f"{e.number:02d}", e.filename[:-3]):
            return e
    raise ValueError(f"NAME {name!r} is not an exercise; the exercises: "
                     + ", ".join(e.name for e in COURSE))
