"""What `numpygpt bench-attention` times besides its two cores (the attention variants of
--variants, PyTorch's SDPA), and the bytes every measured core moves (numpygpt/attention_cost.py's
closed forms) beside its FLOPs, with the roofline summary.

    gqa      grouped-query attention: K = --n-kv-head key/value heads (default H/4)
    mqa      multi-query attention: K = 1
    window   a sliding window: each query sees its last W = --sliding-window keys (default 512)

Each runs the tiled core, as the model runs it (both engines, --engine): the fast engine calls
the core once on every head when K = H (the window), else once per key/value head j on its
H/K query heads and a broadcast (stride 0) view of head j's keys and values, then sums each
group's dk, dv (engine/attention.py); the textbook
copies each key/value head for its query heads (repeat_kv) and sums the copies' gradients
(repeat_kv_backward), as layers/attention.py. A window's tiled core skips the key tiles
outside the band, so its time should grow as N W, not N^2: its log-log slope near 1 at N >> W.
"""
import numpy as np

from ..attention_cost import attention_core_cost
from ..engine.tiled_attention import tiled_attention_forward_fast, tiled_attention_backward_fast
from ..layers import tiled_attention_forward, tiled_attention_backward
from ..layers.attention import repeat_kv, repeat_kv_backward

VARIANTS = ("gqa", "mqa", "window")
DEFAULT_WINDOW = 512


def parse_variants(text, n_head, n_kv_head):
    """--variants "gqa,mqa,window" -> the list, after checking the names and that the GQA
    variant's K divides H (ValueError naming the option otherwise)."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if not names or bad:
        raise ValueError(f"--variants {text!r}: unknown {bad or 'empty'}; known: {', '.join(VARIANTS)}")
    if "gqa" in names:
        K = gqa_heads(n_head, n_kv_head)
        if n_head % K:
            raise ValueError(f"--n-kv-head {K} does not divide --n-head {n_head}")
    return list(dict.fromkeys(names))


def gqa_heads(n_head, n_kv_head):
    """The GQA variant's K: --n-kv-head, or H/4 (at least 1)."""
    return n_kv_head if n_kv_head is not None else max(1, n_head // 4)


def shape_of(impl, args):
    """(core, K, W) of an implementation: the core the closed forms count, the key/value heads,
    the window (None: full causal)."""
    H = args.n_head
    window = getattr(args, "sliding_window", None) or DEFAULT_WINDOW
    return {"standard": ("standard", H, None), "tiled": ("tiled", H, None),
            "gqa": ("tiled", gqa_heads(H, getattr(args, "n_kv_head", None)), None),
            "mqa": ("tiled", 1, None), "window": ("tiled", H, window)}.get(impl)


def cost_fields(impl, n, args):
    """The row's FLOPs, bytes and intensity (FLOP/byte), forward and forward+backward, by the
    closed forms; torch's kernel is not modelled (bytes None), its FLOPs are causal attention's."""
    core, K, window = shape_of(impl, args) or ("tiled", args.n_head, None)
    out = {}
    for key, backward in (("fwd", False), ("fwd_bwd", True)):
        cost = attention_core_cost(args.batch_size, args.n_head, args.head_dim, n, core, backward,
                                   K, window, True, args.q_tile)
        out[f"flops_{key}"] = cost["flops"]
        modelled = impl != "torch"
        out[f"bytes_{key}"] = cost["bytes"] if modelled else None
        out[f"intensity_{key}"] = cost["intensity"] if modelled else None
    return out


def variant_inputs(impl, n, args, rng):
    """q, k, v, dy float32: q and dy (B,H,N,D), k and v (B,K,N,D)."""
    B, H, D = args.batch_size, args.n_head, args.head_dim
    _, K, _ = shape_of(impl, args)
    return tuple(rng.standard_normal(shape, dtype=np.float32)
                 for shape in ((B, H, n, D), (B, K, n, D), (B, K, n, D), (B, H, n, D)))


def variant_fns(impl, q, k, v, dy, args):
    """(forward, forward+backward) of a variant, functions of no arguments."""
    _, K, window = shape_of(impl, args)
    g = args.n_head // K
    bq, bk = args.q_tile, args.k_tile
    if args.engine == "textbook":
        def fwd():
            return tiled_attention_forward(q, repeat_kv(k, g), repeat_kv(v, g), None, bq, bk,
                                           window=window)

        def fwd_bwd():
            (dq, dk, dv), _ = tiled_attention_backward(dy, fwd()[1])
            return dq, repeat_kv_backward(dk, g), repeat_kv_backward(dv, g)

        return fwd, fwd_bwd
    B, _, n, D = k.shape
    shape = (B, g, n, D)
    if g == 1:                                       # K = H (the window): one core on every head
        groups = [(slice(None), k, v)]
    else:                                            # one core per key/value head
        groups = [(slice(j * g, (j + 1) * g), np.broadcast_to(k[:, j:j + 1], shape),
                   np.broadcast_to(v[:, j:j + 1], shape)) for j in range(K)]

    def fwd():
        return [tiled_attention_forward_fast(q[:, heads], k_j, v_j, None, bq, bk, window=window)
                for heads, k_j, v_j in groups]

    def fwd_bwd():
        grads = []
        for (heads, _, _), (_, cache) in zip(groups, fwd()):
            (dq, dk, dv), _ = tiled_attention_backward_fast(dy[:, heads], cache)
            grads.append((dq, dk, dv) if g == 1 else (dq, dk.sum(axis=1), dv.sum(axis=1)))
        return grads

    return fwd, fwd_bwd


def torch_fns(torch, q, k, v, dy):
    """SDPA (is_causal=True) on the same float32 arrays."""
    F = torch.nn.functional
    tq, tk, tv, tdy = (torch.from_numpy(a) for a in (q, k, v, dy))

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

    def fwd_bwd():
        leaves = [t.detach().requires_grad_(True) for t in (tq, tk, tv)]
        y = F.scaled_dot_product_attention(*leaves, is_causal=True)
        y.backward(tdy)
        return [t.grad for t in leaves]

    return fwd, fwd_bwd


def roofline_lines(result):
    """At the largest N each implementation ran: FLOP/byte, achieved GFLOP/s and GB/s."""
    last = {r["impl"]: r for r in result["rows"] if r["status"] == "ok" and r.get("gbps_fwd_bwd")}
    return [f"roofline {impl:8s} N={r['n']}: fwd+bwd {r['intensity_fwd_bwd']:.1f} FLOP/byte, "
            f"{r['gflops_fwd_bwd']:.1f} GFLOP/s, {r['gbps_fwd_bwd']:.1f} GB/s "
            f"({100 * r['gbps_fwd_bwd'] / result['triad_gbps']:.0f}% of triad)"
            for impl, r in last.items()]


def variants_config(args):
    """What the JSON's config says of the variants."""
    names = getattr(args, "variants", None) or []
    return {name: dict(zip(("core", "n_kv_head", "window"), shape_of(name, args))) for name in names}
