"""Counting a GPT: shapes, parameters, FLOPs and the activation memory the backward keeps.

Notation: B batch, T sequence length, C = n_embd, H = n_head, D = C/H, V = vocab_size,
L = n_layer, P = n_positions, N = B*T tokens, s = bytes per float (4 for float32),
K = the key/value heads (H unless grouped-query attention), E = K*D their width.

Parameters (exact; the names and shapes of config.param_shapes):
    wte V*C, wpe P*C (learned positions only), per block 12*C^2 + 13*C, ln_f 2*C,
    lm_head V*C only when not tied to wte.          GPT-2 124M: 124,439,808.
    With K < H, c_attn is (C+1)*(C+2E) in place of (C+1)*3C.

FLOPs count matrix multiplications only, 2*m*n*k for an (m,k) @ (k,n) product;
element-wise work (LayerNorm, GELU, softmax, residual adds) is O(N*C) or O(B*H*T^2)
and left out, as is usual (Kaplan et al. 2020, PaLM's MFU).
    per block:  c_attn 6*N*C^2 (2*N*C*(C+2E) with K < H), c_proj 2*N*C^2, c_fc 8*N*C^2,
                mlp c_proj 8*N*C^2
                attention core (q @ k^T and P @ v):
                    all pairs 4*B*T^2*C       every (query, key) pair (causal=False)
                    causal    2*B*T*(T+1)*C   only the T(T+1)/2 pairs the causal mask allows
                    window W  4*B*C*pairs     query t scores min(t+1, W) keys (attended_pairs):
                              pairs = T(T+1)/2 for T <= W, W(W+1)/2 + (T-W)*W after, O(T*W)
                (every query head scores its keys, so K does not change the core's FLOPs)
    lm_head:    2*n*C*V, n = N with the standard loss; the chunked loss skips the rows whose
                label is -100 before its matmul, so there n = the counted targets
    backward:   2 x forward: every matmul out = a @ b needs da = dout @ b^T and db = a^T @ dout,
                each the size of the forward one (the embedding's backward is a scatter-add).
    training step (forward + backward) = 3 x forward.

Activation memory: the bytes of the arrays our forward caches hold for the backward
(see each layer's *_forward), per block
    ln_1 xhat N*C + rstd N,  attn: ln_1 output N*C (c_attn input), qkv 3*N*C (q, k, v are
    views of it), merged heads N*C (c_proj input), and the attention core's own:
        standard           the probabilities P, B*H*T^2            <- the O(T^2) part
        tiled              the log-sum-exp B*H*T (P is recomputed; its output y is
                           the c_proj input, merge_heads(y) being a view)
    ln_2 xhat N*C + rstd N,  mlp: ln_2 output N*C, h 4*N*C, gelu(h) 4*N*C (the GELU backward
    recomputes tanh(h))
    = (16*N*C + 2*N + B*H*T^2) * s standard, (16*N*C + 2*N + B*H*T) * s tiled
    (+ 2*N*C * s with rope: the rotated q and k are new arrays)
    With K < H the textbook keeps repeat_kv's copies of k and v (2*N*C) and qkv N*(C+2E),
    or with rope the rotated q N*C in place of qkv (the rotated k lives on in its copy).
plus the ids and position ids (int64), rope's cos and sin (2*N*D, shared by all layers),
ln_f (N*C + N), and the loss's: the standard loss keeps the lm_head input N*C and the
logits' gradient softmax - onehot, N*V (<- the largest array at GPT-2's V = 50257); the
chunked loss (layers/chunked_loss.py) computes the loss and its gradients chunk by chunk in the
forward, so what waits for the backward is dx N*C and the lm_head's gradient V*C.
The tiled backward recomputes the scores: one more matmul per tile, not counted above
(the FLOPs are those of the math, the usual convention for FLOP/s and MFU).

The KV cache of decoding keeps each token's key and value in every layer, K heads of D:
    2 * L * K * D * s bytes a token (kv_cache_bytes)      GPT-2 124M float32: 73,728 bytes
With a sliding window W the n-th decoded token reads min(n, W) tokens of the KV cache,
however long the text (kv_cache_tokens); its rolling buffer (decode/kv_cache.py) allocates at
most 2W slots, so that it moves the kept keys once every W + 1 tokens, not at every token.
"""
import math

import numpy as np

from .config import GPTConfig, Execution, block_param_count, param_count, param_shapes  # param_count: re-exported

INT_BYTES = 8      # ids and position ids are int64


def _numel(shape):
    return math.prod(shape)                  # Python integers: no int64 wrap-around


def attention_core_flops(config, batch_size, seq_len, causal=True):
    """q @ k^T and P @ v of every layer's core, forward (core_flops)."""
    return core_flops(batch_size, config.n_head, config.head_dim, seq_len, causal,
                      config.sliding_window)


def attended_pairs(seq_len, causal=True, window=None):
    """The (query, key) pairs one head scores over T positions: T^2 in full, T(T+1)/2
    causal, and with a window W the sum over t of min(t+1, W) keys:
    T(T+1)/2 while T <= W, then W(W+1)/2 + (T-W)*W (W keys for each query from W on)."""
    T = seq_len
    if not causal:
        return T * T
    if window is None or T <= window:
        return T * (T + 1) // 2
    return window * (window + 1) // 2 + (T - window) * window


def core_flops(batch_size, n_head, head_dim, seq_len, causal=True, window=None):
    """The attention core's forward: two matmuls, 2*D FLOPs each per (query, key) pair;
    B*H*T^2 pairs in full, B*H*T(T+1)/2 with the causal mask (2*B*T*(T+1)*C in all),
    fewer with a window (attended_pairs)."""
    return 4 * head_dim * batch_size * n_head * attended_pairs(seq_len, causal, window)


def kv_cache_tokens(config, n_tokens):
    """The keys the newest of n_tokens tokens attends to (itself included), the KV cache it
    reads: all n_tokens, or the last W with a sliding window W (decode/kv_cache.py)."""
    window = config.sliding_window
    return n_tokens if window is None else min(n_tokens, window)


def block_forward_flops(config, batch_size, seq_len, causal=True):
    """c_attn 2*N*C*(C+2E), c_proj 2*N*C^2, the MLP 16*N*C^2 (24*N*C^2 when K = H), the core."""
    N, C, E = batch_size * seq_len, config.n_embd, kv_width(config)
    return (2 * N * C * (C + 2 * E) + 18 * N * C * C
            + attention_core_flops(config, batch_size, seq_len, causal))


def kv_width(config):
    """E = K*D: the width of the keys (and of the values) c_attn makes."""
    return config.kv_heads * config.head_dim


def kv_cache_bytes(config, n_tokens, itemsize=4):
    """The bytes of the KV cache the newest of n_tokens tokens reads: every layer's key and
    value, K heads of D each, 2 * n_layer * K * D * itemsize a token (a factor H/K below
    GPT-2's), for kv_cache_tokens(config, n_tokens) tokens (min(n_tokens, W) with a window)."""
    return 2 * config.n_layer * kv_width(config) * itemsize * kv_cache_tokens(config, n_tokens)


def lm_head_forward_flops(config, n_rows):
    """2 n C V for n rows of logits."""
    return 2 * n_rows * config.n_embd * config.vocab_size


def forward_flops(config, batch_size, seq_len, causal=True, n_counted=None):
    """Matmul FLOPs of one forward pass from ids to the loss; n_counted: the lm_head's rows
    when the chunked loss skips -100 labels (default: all B*T)."""
    n = batch_size * seq_len if n_counted is None else n_counted
    return (config.n_layer * block_forward_flops(config, batch_size, seq_len, causal)
            + lm_head_forward_flops(config, n))


def training_flops(config, batch_size, seq_len, causal=True, n_counted=None):
    """Forward + backward matmul FLOPs of one training step (backward = 2 x forward):
    3 * (L * (24*B*T*C^2 + attention core) + 2*n*C*V)."""
    return 3 * forward_flops(config, batch_size, seq_len, causal, n_counted)


def block_activation_bytes(config, batch_size, seq_len, itemsize=4, execution=Execution()):
    """Bytes one block's forward cache holds (see the module docstring)."""
    B, T, C, H = batch_size, seq_len, config.n_embd, config.n_head
    N = B * T
    ln = N * C + N                                   # xhat, rstd
    attn = N * C + qkv_bytes(config, N, 1) + N * C   # c_attn input, q k v (and their copies), c_proj input
    if execution.attention == "tiled":
        # the row log-sum-exp; the output y is the c_proj input itself (y = empty_like(q) has
        # q's (B,T,H,D) memory layout, so merge_heads(y) is a view of it)
        attn += B * H * T
    else:
        attn += B * H * T * T                         # the probabilities P
    mlp = N * C + 2 * 4 * N * C                       # c_fc input; h, gelu(h)
    return (2 * ln + attn + mlp) * itemsize


def qkv_bytes(config, n_tokens, itemsize=4):
    """What the textbook keeps of q, k and v for n_tokens tokens. K = H: qkv 3*N*C (q, k, v
    are views of it), + 2*N*C with rope (the rotated q and k are new arrays). K < H: the
    (B,H,T,D) copies of k and v repeat_kv makes, 2*N*C, and qkv N*(C+2E) (q is a view of it),
    or with rope the rotated q N*C instead (nothing kept is a view of qkv then)."""
    N, C, E = n_tokens, config.n_embd, kv_width(config)
    rope = config.pos_encoding == "rope"
    if config.kv_heads == config.n_head:
        return (3 * N * C + (2 * N * C if rope else 0)) * itemsize
    return (2 * N * C + (N * C if rope else N * (C + 2 * E))) * itemsize


def stages(config, batch_size, seq_len, itemsize=4, causal=True, execution=Execution()):
    """One row per stage of the data flow, as a dict: name, shape, params,
    fwd_flops (causal as asked), fwd_flops_full, bwd_flops, act_bytes."""
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.pos_encoding == "learned" and seq_len > config.n_positions:
        raise ValueError(f"seq_len={seq_len} > n_positions={config.n_positions} "
                         f"(learned absolute positions)")
    B, T, C, V = batch_size, seq_len, config.n_embd, config.vocab_size
    N = B * T
    shapes = param_shapes(config)
    rows = []

    def row(name, shape, params=0, fwd=0, fwd_full=None, act=0):
        rows.append({"name": name, "shape": tuple(shape), "params": int(params),
                     "fwd_flops": int(fwd), "fwd_flops_full": int(fwd if fwd_full is None else fwd_full),
                     "bwd_flops": 2 * int(fwd), "act_bytes": int(act)})

    emb_params = _numel(shapes["wte.weight"]) + _numel(shapes.get("wpe.weight", (0,)))
    pos_bytes = INT_BYTES * T             # the cache keeps position ids: a broadcast arange(T)
    row("ids", (B, T), act=INT_BYTES * N)
    row("embedding" + (" wte+wpe" if config.pos_encoding == "learned" else " wte"), (B, T, C),
        emb_params, act=pos_bytes)
    if config.pos_encoding == "rope":     # cos, sin (B,1,T,D): made once, shared by every layer
        row("rope cos, sin", (B, 1, T, config.head_dim), act=rope_bytes(config, B, T, itemsize))
    for i in range(config.n_layer):
        row(f"h.{i}", (B, T, C), block_param_count(config),
            block_forward_flops(config, B, T, causal), block_forward_flops(config, B, T, False),
            block_activation_bytes(config, B, T, itemsize, execution))
    row("ln_f", (B, T, C), 2 * C, act=(N * C + N) * itemsize)
    head = "lm_head" + (" (tied to wte)" if config.tie_word_embeddings else "")
    head_params = 0 if config.tie_word_embeddings else V * C
    if execution.loss == "standard":      # keeps x for the lm_head, and dlogits (N,V)
        row(head, (B, T, V), head_params, lm_head_forward_flops(config, N), act=N * C * itemsize)
        row("cross_entropy", (), 0, act=loss_bytes(config, B, T, itemsize, execution) - N * C * itemsize)
    else:                                 # keeps dx (N,C) and the lm_head's gradient (V,C)
        row("lm_head + loss (chunked" + (", tied)" if config.tie_word_embeddings else ")"), (),
            head_params, lm_head_forward_flops(config, N),
            act=loss_bytes(config, B, T, itemsize, execution))
    return rows


def rope_bytes(config, batch_size, seq_len, itemsize=4):
    """RoPE's cos and sin, (B,1,T,D) each, made once and shared by every layer."""
    return 2 * batch_size * seq_len * config.head_dim * itemsize if config.pos_encoding == "rope" else 0


def loss_bytes(config, batch_size, seq_len, itemsize=4, execution=Execution()):
    """What the lm_head and the loss keep for the backward: the standard path its input x
    (N,C) and dlogits (N,V); the chunked path dx (N,C) and the lm_head's gradient (V,C)."""
    N, C, V = batch_size * seq_len, config.n_embd, config.vocab_size
    return (N * C + (N * V if execution.loss == "standard" else V * C)) * itemsize


def activation_bytes(config, batch_size, seq_len, itemsize=4, execution=Execution()):
    """Every byte the forward keeps for the backward (the sum of stages()'s act_bytes),
    without a row per layer: ids and positions (int64), RoPE's tables, L blocks, ln_f, the loss."""
    B, T, N, C = batch_size, seq_len, batch_size * seq_len, config.n_embd
    return (INT_BYTES * (N + T) + rope_bytes(config, B, T, itemsize)
            + config.n_layer * block_activation_bytes(config, B, T, itemsize, execution)
            + (N * C + N) * itemsize + loss_bytes(config, B, T, itemsize, execution))


def block_stages(config, batch_size, seq_len, itemsize=4, causal=True, execution=Execution()):
    """The inside of one block: (name, output shape, params, fwd FLOPs, act bytes)."""
    B, T, C, H = batch_size, seq_len, config.n_embd, config.n_head
    D, N, s, E = C // H, B * T, itemsize, kv_width(config)
    attn_core = attention_core_flops(config, B, T, causal) // 2     # each of q @ k^T and P @ v
    rope = config.pos_encoding == "rope"
    grouped = config.kv_heads < H
    if execution.attention == "tiled":
        core = [("tiled: S, P one tile at a time", (B, H, T, D), 0, 2 * attn_core, 0),
                ("  keeps the log-sum-exp", (B, H, T, 1), 0, 0, B * H * T * s)]
    else:
        core = [("scores q @ k^T / sqrt(D)", (B, H, T, T), 0, attn_core, 0),
                ("softmax (causal mask" + (f", window {config.sliding_window})"
                                           if config.sliding_window else ")"),
                 (B, H, T, T), 0, 0, B * H * T * T * s),
                ("P @ v", (B, H, T, D), 0, attn_core, 0)]
    return [
        ("ln_1", (B, T, C), 2 * C, 0, (N * C + N) * s),
        ("attn.c_attn  x @ W + b", (B, T, C + 2 * E), (C + 1) * (C + 2 * E),
         2 * N * C * (C + 2 * E), N * C * s),
        ("split heads q, k, v" + (" + rope" if rope else "") + (" + repeat_kv" if grouped else ""),
         (B, H, T, D), 0, 0, qkv_bytes(config, N, s)),
        *core,
        ("attn.c_proj  merge @ W + b", (B, T, C), C * C + C, 2 * N * C * C, N * C * s),
        ("residual x + attn", (B, T, C), 0, 0, 0),
        ("ln_2", (B, T, C), 2 * C, 0, (N * C + N) * s),
        ("mlp.c_fc", (B, T, 4 * C), 4 * C * C + 4 * C, 8 * N * C * C, N * C * s),
        ("gelu", (B, T, 4 * C), 0, 0, 4 * N * C * s),
        ("mlp.c_proj", (B, T, C), 4 * C * C + C, 8 * N * C * C, 4 * N * C * s),
        ("residual x + mlp", (B, T, C), 0, 0, 0),
    ]


def totals(rows):
    keys = ("params", "fwd_flops", "fwd_flops_full", "bwd_flops", "act_bytes")
    return {k: sum(r[k] for r in rows) for k in keys}


# ---- decoding: what one decoded token reads (numpygpt bench-decode) --------------------------
# A decoded token is one row through the whole network: every weight matrix multiplies one
# vector, so each of its numbers is read once for 2 FLOPs (a multiply and an add), and each
# layer's query heads score every cached key and sum every cached value, 4*D FLOPs per key
# and query head for 2*D numbers read per key and key/value head. Intensity in float32:
# weights 2 / 4 = 0.5 FLOP/byte, the cache 4*H*D / (2*K*D*4) = H/(2K) FLOP/byte.

def decode_weight_bytes(config, itemsize=4):
    """The parameters a decoded token reads: all but the position table (learned: one row
    read) and an untied wte (one row); a tied wte is read whole by the lm_head."""
    C = config.n_embd
    unread = (config.n_positions * C if config.pos_encoding == "learned" else 0) \
        + (0 if config.tie_word_embeddings else config.vocab_size * C)
    return (param_count(config) - unread) * itemsize


def decode_token_bytes(config, n_context, itemsize=4):
    """Bytes the n_context-th token of one sequence must read: the weights and the KV cache
    it attends to, 2 * n_layer * K * D * itemsize * min(n_context, W) (kv_cache_bytes)."""
    return decode_weight_bytes(config, itemsize) + kv_cache_bytes(config, n_context, itemsize)


def decode_token_flops(config, n_context):
    """Matmul FLOPs of that token: 2 per weight of c_attn, c_proj, the MLP and the lm_head,
    and 4*C per key attended (q k and P v over H heads of D) in each layer."""
    C, E = config.n_embd, kv_width(config)
    per_layer = 2 * C * (C + 2 * E) + 18 * C * C + 4 * C * kv_cache_tokens(config, n_context)
    return config.n_layer * per_layer + lm_head_forward_flops(config, 1)
