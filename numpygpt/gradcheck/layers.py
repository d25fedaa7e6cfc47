"""Gradient checks of layers and of the whole model, callable from Python and the command.

Any pair that keeps the layer convention (numpygpt/layers/__init__.py) can be checked:

    out, cache = forward(x, p);  dx, grads = backward(dout, cache)

check_pair draws a fixed random R shaped like `out` and checks the gradients of
loss = sum(out * R) w.r.t. x and every tensor of p: dloss/dout = R, a generic upstream
gradient. A loss (forward returns loss, dx, grads; no backward) is checked as it is.
check_layer builds such a problem for each of numpygpt's layers (LAYERS).

Inputs are drawn at unit scale (matrices N(0, 1/fan_in)), not GPT-2's 0.02: with tiny
weights softmax is nearly uniform and GELU nearly linear, and many gradients are so small
that rounding is a large part of them; at unit scale the check is stricter and better
conditioned.
"""
import numpy as np

from ..config import GPTConfig, Execution, block_param_shapes, param_kind
from ..layers import (linear_forward, linear_backward, embedding_forward, embedding_backward,
                      layernorm_forward, layernorm_backward, gelu_forward, gelu_backward,
                      mlp_forward, mlp_backward, rope_cos_sin, rope_forward, rope_backward,
                      causal_attention_forward, causal_attention_backward,
                      tiled_attention_forward, tiled_attention_backward, attention_forward,
                      attention_backward, lm_head_forward, lm_head_backward, cross_entropy,
                      lm_head_cross_entropy)
from ..model import block_forward, block_backward
from .core import TOLERANCES, check_gradients, check_directional

LAYERS = ("linear", "embedding", "layernorm", "gelu", "mlp", "rope", "attention_core",
          "tiled_attention", "attention", "block", "lm_head", "cross_entropy", "chunked_loss")
# the layer checks' model: small enough that every coordinate is cheap to perturb
CHECK_CONFIG = GPTConfig(vocab_size=11, n_positions=16, n_embd=8, n_head=2, n_layer=2)
CHECK_EXECUTION = Execution(q_tile=4, k_tile=4)      # so a short T spans several tiles


def check_pair(forward, backward, x, p=None, eps=None, tol=None, max_coords=32, seed=0,
               directional=False, n_directions=3, input_names=None, on_tensor=None):
    """Check a forward/backward pair: the gradients w.r.t. x (an array, or a tuple of arrays
    for several inputs; an integer array has none) and every tensor of p, against central
    differences of sum(forward(x, p)[0] * R). backward=None: forward is a loss,
    (x, p) -> (loss, dx, grads), checked as it is. Returns [TensorCheck] (or [DirectionCheck]).
    eps, tol: by dtype (gradcheck.TOLERANCES) unless given."""
    p = {} if p is None else p
    xs = x if isinstance(x, tuple) else (x,)
    names = input_names or (("x",) if len(xs) == 1 else tuple(f"x[{i}]" for i in range(len(xs))))
    inputs = {n: a for n, a in zip(names, xs) if np.issubdtype(np.asarray(a).dtype, np.floating)}
    tensors = {**inputs, **p}
    dtype = np.result_type(*tensors.values())
    default_eps, default_tol = TOLERANCES[np.dtype(dtype).name]
    eps = default_eps if eps is None else eps
    tol = default_tol if tol is None else tol
    rng = np.random.default_rng(seed)
    call = lambda: forward(x, p)                              # reads the arrays the check perturbs

    if backward is None:                                      # a loss: f is the loss itself
        f = lambda: float(np.sum(call()[0], dtype=np.float64))
        _, dx, grads = call()
    else:
        out, cache = call()
        R = rng.standard_normal(np.shape(out)).astype(dtype)  # the upstream gradient dL/dout
        f = lambda: float(np.sum(call()[0] * R, dtype=np.float64))
        dx, grads = backward(R, cache)
    dxs = dx if isinstance(dx, tuple) else (dx,)
    analytic = {**{n: d for n, d in zip(names, dxs) if n in inputs}, **grads}
    if set(analytic) != set(tensors):
        raise ValueError(f"the backward returned gradients for {sorted(analytic)}, expected "
                         f"{sorted(tensors)} (the layer convention: grads has p's keys)")
    if directional:
        return check_directional(f, tensors, analytic, eps, tol, n_directions, seed)
    return check_gradients(f, tensors, analytic, eps, tol, max_coords, seed,
                           float32_ok=True, on_tensor=on_tensor)


def layer_problem(layer, config=CHECK_CONFIG, batch_size=2, seq_len=5, dtype=np.float64,
                  execution=CHECK_EXECUTION, seed=0):
    """-> (forward, backward, x, p, input_names): numpygpt's layer `layer` on random inputs,
    its options bound. backward is None for the losses."""
    if layer not in LAYERS:
        raise ValueError(f"layer={layer!r} is not one of {', '.join(LAYERS)}")
    rng = np.random.default_rng(seed)
    B, T, C, H, V = batch_size, seq_len, config.n_embd, config.n_head, config.vocab_size
    D, eps_ln = config.head_dim, config.layer_norm_epsilon
    draw = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)
    w = lambda cin, cout: draw(cin, cout, scale=1.0 / np.sqrt(cin))
    x = draw(B, T, C)
    rope = None
    if config.pos_encoding == "rope":
        rope = rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), D, config.rope_base, dtype)
    labels = rng.integers(0, V, size=(B, T))
    labels[rng.random((B, T)) < 0.25] = -100                    # some ignored positions
    labels[0, 0] = 0                                            # at least one counted

    if layer == "linear":
        return linear_forward, linear_backward, x, {"weight": w(C, 3), "bias": draw(3, scale=0.1)}, None
    if layer == "embedding":
        ids = rng.integers(0, V, size=(B, T))
        ids[0, -1] = ids[0, 0]                    # a repeated id: its gradient rows must add
        p = {"wte.weight": draw(V, C, scale=C ** -0.5)}
        if config.pos_encoding == "learned":
            p["wpe.weight"] = draw(max(T, config.n_positions), C, scale=C ** -0.5)
        return embedding_forward, embedding_backward, ids, p, None
    if layer == "layernorm":
        p = {"weight": 1 + draw(C, scale=0.1), "bias": draw(C, scale=0.1)}
        return (lambda x, p: layernorm_forward(x, p, eps_ln)), layernorm_backward, x, p, None
    if layer == "gelu":
        return (lambda x, p: gelu_forward(x)), gelu_backward, draw(B, T, 4 * C, scale=2.0), {}, None
    if layer == "mlp":
        p = {"c_fc.weight": w(C, 4 * C), "c_fc.bias": draw(4 * C, scale=0.1),
             "c_proj.weight": w(4 * C, C), "c_proj.bias": draw(C, scale=0.1)}
        return mlp_forward, mlp_backward, x, p, None
    if layer == "rope":
        cos, sin = rope_cos_sin(np.broadcast_to(np.arange(T), (B, T)), D, config.rope_base, dtype)
        return (lambda x, p: rope_forward(x, cos, sin)), rope_backward, draw(B, H, T, D), {}, None
    if layer in ("attention_core", "tiled_attention"):
        qkv = tuple(draw(B, H, T, D) for _ in range(3))
        if layer == "attention_core":
            fwd = lambda x, p: causal_attention_forward(*x, None, config.sliding_window)
            return fwd, causal_attention_backward, qkv, {}, ("q", "k", "v")
        fwd = lambda x, p: tiled_attention_forward(*x, None, execution.q_tile, execution.k_tile,
                                                   config.sliding_window)
        return fwd, tiled_attention_backward, qkv, {}, ("q", "k", "v")
    if layer == "attention":            # c_attn (C, C+2KD): K = config.kv_heads
        width = C + 2 * config.kv_heads * D
        p = {"c_attn.weight": w(C, width), "c_attn.bias": draw(width, scale=0.1),
             "c_proj.weight": w(C, C), "c_proj.bias": draw(C, scale=0.1)}
        fwd = lambda x, p: attention_forward(x, p, H, rope=rope, attention=execution.attention,
                                             q_tile=execution.q_tile, k_tile=execution.k_tile,
                                             n_kv_head=config.kv_heads,
                                             window=config.sliding_window)
        return fwd, attention_backward, x, p, None
    if layer == "block":
        p = {name: draw(*shape) for name, shape in block_param_shapes(config).items()}
        unit_scale_params(p, rng)
        fwd = lambda x, p: block_forward(x, p, config, rope=rope, execution=execution)
        return fwd, block_backward, x, p, None
    if layer == "lm_head":
        return lm_head_forward, lm_head_backward, x, {"weight": w(V, C)}, None
    if layer == "cross_entropy":
        fwd = lambda x, p: (*cross_entropy(x, labels), {})
        return fwd, None, draw(B, T, V, scale=2.0), {}, ("logits",)
    fwd = lambda x, p: lm_head_cross_entropy(x, p, labels, chunk_rows=3)   # "chunked_loss"
    return fwd, None, x, {"weight": w(V, C)}, None


def check_layer(layer, config=CHECK_CONFIG, batch_size=2, seq_len=5, dtype=np.float64,
                execution=CHECK_EXECUTION, seed=0, **check):
    """One of numpygpt's layers (LAYERS) on random inputs of the given sizes, against finite
    differences: a per-tensor report ([TensorCheck]). `check`: check_pair's options (eps,
    tol, max_coords, directional, n_directions, on_tensor)."""
    forward, backward, x, p, names = layer_problem(layer, config, batch_size, seq_len, dtype,
                                                   execution, seed)
    return check_pair(forward, backward, x, p, seed=seed, input_names=names, **check)


def check_model(model, input_ids, labels, attention_mask=None, position_ids=None,
                eps=None, tol=None, max_coords=32, seed=0, directional=False, n_directions=3,
                on_tensor=None):
    """Every parameter tensor of a GPT (float64; float32 with its looser eps and tol):
    loss_and_grads against finite differences of loss."""
    default_eps, default_tol = TOLERANCES[model.dtype.name]
    eps = default_eps if eps is None else eps
    tol = default_tol if tol is None else tol
    _, grads = model.loss_and_grads(input_ids, labels, attention_mask, position_ids)
    f = lambda: model.loss(input_ids, labels, attention_mask, position_ids)
    if directional:
        return check_directional(f, model.params, grads, eps, tol, n_directions, seed)
    return check_gradients(f, model.params, grads, eps, tol, max_coords, seed,
                           float32_ok=True, on_tensor=on_tensor)


def unit_scale_params(params, rng):
    """Redraw parameters in place at unit scale, by param_kind: matrices N(0, 1/fan_in)
    (embeddings N(0, 1/C)), biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.1^2)."""
    for name, p in params.items():
        kind = param_kind(name)
        if kind == "bias":
            p[...] = 0.1 * rng.standard_normal(p.shape)
        elif kind == "norm":
            p[...] = 1 + 0.1 * rng.standard_normal(p.shape)
        else:
            fan_in = p.shape[1] if kind == "embedding" or name == "lm_head.weight" else p.shape[0]
            p[...] = rng.standard_normal(p.shape) / np.sqrt(fan_in)
    return params
