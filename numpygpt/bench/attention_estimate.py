"""What `numpygpt bench-attention` will cost, said before it costs it: the peak memory of the
sweep from the bench's own per-N count of the arrays its cores hold (said, and judged against
the memory available, before any work), and the time of the sizes still to come, extrapolated
from the first size measured by the N^2 law (said once that size is done).

Peak memory at length N, float32 (4 bytes a number), B batch, H heads, D head size:
    q, k, v, dy, the output y and dq, dk, dv        8 (B,H,N,D) arrays        8 B H N D 4
    the grouped variants (--variants gqa, mqa)    4 (B,K,N,D) more          4 B K N D 4
        (their k, v, dk, dv of K heads; the textbook's repeat_kv copies and the engine's
        per-group gradients are among the 8 above)
    plus the larger of
        the standard core  STANDARD_TT_ARRAYS[engine] (B,H,N,N) arrays, none at sizes where
                           --memory-budget-gb skips it
        the tiled core     as many (B,H,q_tile,k_tile) tiles
Not counted: the triad's 3 float64 arrays of 2^24 numbers (bench/measure.py), 384 MiB for a
second at the start, freed before the sweep.
Where memory matters (tens of MiB and up) this is on the high side: tracemalloc sees 2.0 to 3.5
of the (B,H,N,N) arrays at once where the engine's count says 3 (bench/attention.py); below a
MiB, fixed costs the count leaves out are as large as what it counts.

Time: measure() times a size in work proportional to N^2 (the (query, key) pairs), so the size
2N takes ~4 times N's; the matmul yardstick before each size costs the same at every N. Small
sizes are dominated by fixed costs, so from a small first size the estimate is on the high side.
"""
from .attention import STANDARD_TT_ARRAYS, geometric_sizes, tt_bytes
from .attention_variants import shape_of


def peak_bytes(n, args):
    """The estimated peak bytes of the sweep's measurements at length n (see the docstring)."""
    B, H, D = args.batch_size, args.n_head, args.head_dim
    vectors = 8 * B * H * n * D * 4                       # (B,H,N,D) float32, 8 of them
    grouped = [shape_of(v, args)[1] for v in getattr(args, "variants", None) or []
               if v in ("gqa", "mqa")]
    vectors += 4 * B * max(grouped, default=0) * n * D * 4   # (B,K,N,D) k, v, dk, dv
    arrays = STANDARD_TT_ARRAYS[args.engine]
    standard = arrays * tt_bytes(n, B, H)
    if standard > args.memory_budget_gb * 1e9:            # skipped there (measure())
        standard = 0
    tiles = arrays * B * H * min(args.q_tile, n) * min(args.k_tile, n) * 4
    return vectors + max(standard, tiles)


def sweep_peak(args):
    """(N, bytes): the size of the sweep with the largest estimated peak, and that peak."""
    return max(((n, peak_bytes(n, args)) for n in geometric_sizes(args.min_n, args.max_n)),
               key=lambda pair: pair[1])


def check_memory(args, available):
    """ValueError naming --max-n and the estimate when the sweep's peak exceeds `available`
    bytes (None: the system does not say, nothing is judged)."""
    n, peak = sweep_peak(args)
    if available is not None and peak > available:
        raise ValueError(f"--max-n {args.max_n}: the sweep's peak memory is estimated at "
                         f"{gb(peak)} (at N={n}), more than the {gb(available)} available; "
                         f"lower --max-n (or --memory-budget-gb, --batch-size, --n-head)")
    return n, peak


def seconds_left(first_n, seconds, args):
    """Seconds the sizes after first_n should take, from first_n's measured seconds
    ({"matmul": the yardstick's, "impls": the implementations'}) by the N^2 law."""
    later = [n for n in geometric_sizes(first_n, args.max_n) if n > first_n]
    return sum(seconds["impls"] * (n / first_n) ** 2 + seconds["matmul"] for n in later)


def gb(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def duration(s):
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")
