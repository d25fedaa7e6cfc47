"""The attention core's bytes moved to and from memory, beside its FLOPs (dataflow.core_flops),
and their ratio, the arithmetic intensity: what decides whether a core is limited by the
machine's arithmetic or by its memory bandwidth (the roofline).

Notation: B batch, H query heads, K key/value heads (K divides H; K = H is GPT-2's
attention, K = 1 multi-query), D head size, T query positions = key positions (self-attention),
W the sliding window, s bytes per number (4 for float32), b = q_tile, the queries of a block.
Sizes in numbers: Q = B*H*T*D (q, y, dy, dq), KV = B*K*T*D (k, v, dk, dv),
R = B*H*T (one number per query row: lse, delta), M = B*H*T*T (one T x T matrix per head).

The counting model. Every matmul reads its two operands and writes its product once; every
element-wise step is one pass that reads its inputs and writes its output once (the mask is
made from positions, not read). What fits in the cache within one step (a row, a tile) is not
counted again. A key/value head is read once for the whole group of H/K query heads that share
it (a grouped kernel; K = H: once per head; numpygpt's cores run a group's heads one after
another, so they may read it up to H/K times). Bytes = s x the numbers counted.

standard core (layers/attention.py): materialises the whole (B,H,T,T) S and P, masked or not
    forward     S = q k^T        read q Q, k KV, write S M
                P = softmax(S)   read S M, write P M     (mask, max, exp, sum fused)
                y = P v          read P M, v KV, write y Q
                = 2Q + 2KV + 4M
    backward    dv = P^T dy      read P M, dy Q, write dv KV
                dP = dy v^T      read dy Q, v KV, write dP M
                dS = P (dP - rowsum(dP P))   read P M, dP M, write dS M
                dq = dS k        read dS M, k KV, write dq Q
                dk = dS^T q      read dS M, q Q, write dk KV
                = 4Q + 4KV + 6M
    The T x T terms dominate: a window W saves FLOPs, not these bytes (the matrix is whole).

tiled core (layers/tiled_attention.py, engine/tiled_attention.py): the queries in blocks of b;
a block reads the keys [lo, hi) it can see, hi = its last query + 1 (causal; T without the
mask) and lo = max(0, first query - W + 1) with a window (0 without), in key tiles that stay
in the cache with the block's scores (k_tile does not change the count). Summed over the
blocks these are keys_read(T, b, W) keys, n = keys_read * B*K*D numbers of k (and of v).
    forward     read q Q, k n, v n, write y Q, lse R
                = 2Q + R + 2n
    backward    delta = rowsum(dy y)   read dy Q, y Q, write delta R
                dk, dv set to zero     write 2KV
                per block: read q, dy (2Q in all), lse, delta (2R), write dq (Q); for its
                keys read k, v (2n) and read and write the dk, dv it adds to (4n)
                = 5Q + 3R + 2KV + 6n
Causal, no window: keys_read ~ T^2 / (2b), so n ~ (K/H) (D/2b) M: at D = 64, b = 256 and K = H
forward+backward moves 8n ~ one T x T matrix where the standard core moves ten, the source of
the tiled core's higher intensity (GQA divides it by H/K). With a window, keys_read
~ T (W + b) / b: bytes and FLOPs both grow as T W, so the intensity stops growing with T.

FLOPs (dataflow.core_flops): forward 4*D per attended (query, key) pair, forward+backward
3 x that. Intensity = FLOPs / bytes, in FLOP per byte.
"""
from .dataflow import core_flops

CORES = ("standard", "tiled")


def keys_read(seq_len, q_tile, causal=True, window=None):
    """The keys the tiled core reads, summed over its query blocks [i0, i1) of q_tile queries:
    i1 - lo keys each with the causal mask (lo = max(0, i0 - W + 1) with a window W, else 0),
    all seq_len without it."""
    check_sizes(seq_len=seq_len, q_tile=q_tile)
    check_window(causal, window)
    total = 0
    for i0 in range(0, seq_len, q_tile):
        i1 = min(i0 + q_tile, seq_len)
        hi = i1 if causal else seq_len
        lo = 0 if window is None else max(0, i0 - window + 1)
        total += hi - lo
    return total


def attention_core_bytes(batch_size, n_head, head_dim, seq_len, core="standard", backward=False,
                         n_kv_head=None, window=None, causal=True, q_tile=256, itemsize=4):
    """Bytes the attention core moves (the module docstring's model): the forward, or with
    backward=True the forward and the backward together."""
    K = check_core(core, n_head, n_kv_head)
    check_sizes(batch_size=batch_size, n_head=n_head, head_dim=head_dim, seq_len=seq_len,
                q_tile=q_tile, itemsize=itemsize)
    check_window(causal, window)
    B, H, D, T = batch_size, n_head, head_dim, seq_len
    Q, KV, R, M = B * H * T * D, B * K * T * D, B * H * T, B * H * T * T
    if core == "standard":
        numbers = 2 * Q + 2 * KV + 4 * M
        if backward:
            numbers += 4 * Q + 4 * KV + 6 * M
    else:
        n = keys_read(T, q_tile, causal, window) * B * K * D
        numbers = 2 * Q + R + 2 * n
        if backward:
            numbers += 5 * Q + 3 * R + 2 * KV + 6 * n
    return numbers * itemsize


def attention_core_cost(batch_size, n_head, head_dim, seq_len, core="standard", backward=False,
                        n_kv_head=None, window=None, causal=True, q_tile=256, itemsize=4):
    """{"flops", "bytes", "intensity"}: the core's FLOPs (dataflow.core_flops, x3 with the
    backward), its bytes (attention_core_bytes) and FLOPs / bytes."""
    moved = attention_core_bytes(batch_size, n_head, head_dim, seq_len, core, backward,
                                 n_kv_head, window, causal, q_tile, itemsize)
    flops = core_flops(batch_size, n_head, head_dim, seq_len, causal, window)
    flops *= 3 if backward else 1
    return {"flops": flops, "bytes": moved, "intensity": flops / moved}


def check_core(core, n_head, n_kv_head):
    """-> K, after checking core and that K divides H."""
    if core not in CORES:
        raise ValueError(f"core must be one of {', '.join(CORES)}, got {core!r}")
    K = n_head if n_kv_head is None else n_kv_head
    check_sizes(n_kv_head=K)
    if n_head % K:
        raise ValueError(f"n_kv_head={K} must divide n_head={n_head}")
    return K


def check_sizes(**sizes):
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_window(causal, window):
    if window is None:
        return
    check_sizes(window=window)
    if not causal:
        raise ValueError(f"window={window} needs causal=True (a window is a causal band)")
