"""The loss step alone (`numpygpt bench-step --loss-memory`): lm_head + cross-entropy, forward
and backward, float32, the textbook path that holds the (B,T,V) logits against the engine's
chunked one at several chunk sizes: time and peak memory."""
import time

import numpy as np

from ..engine.chunked_loss import lm_head_cross_entropy_fast
from ..layers import lm_head_forward, lm_head_backward, cross_entropy
from ..layers.chunked_loss import default_chunk_rows
from .measure import peak_memory


def standard_loss_step(x, p, labels):
    """lm_head, cross-entropy and back, as gpt_forward / gpt_backward compose them."""
    logits, cache = lm_head_forward(x, p)                            # (B,T,C) -> (B,T,V)
    loss, dlogits = cross_entropy(logits, labels)                    # (B,T,V)
    dx, grads = lm_head_backward(dlogits, cache)
    return loss, dx, grads


def bench_loss(vocab_size=50257, n_embd=768, rows=1024, chunk_sizes=(None, 256, 512), repeats=3,
               seed=0, progress=None):
    """lm_head + cross-entropy, forward and backward, float32: the standard path against the
    engine's chunked one at several chunk sizes, timed interleaved; peak memory by tracemalloc
    (dweight included: every path returns it)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, rows, n_embd)).astype(np.float32)
    p = {"weight": (0.02 * rng.standard_normal((vocab_size, n_embd))).astype(np.float32)}
    labels = rng.integers(0, vocab_size, (1, rows))
    fns = {"standard": lambda: standard_loss_step(x, p, labels)}
    for cs in chunk_sizes:
        rows_per_chunk = min(rows, cs or default_chunk_rows(vocab_size))
        fns[f"chunked chunk_rows={rows_per_chunk}"] = (
            lambda cs=cs: lm_head_cross_entropy_fast(x, p, labels, chunk_rows=cs))
    say = progress.update if progress is not None else (lambda text, force=False: None)
    times = {k: [] for k in fns}
    for k, fn in fns.items():
        say(f"loss: warm-up {k}", force=True)
        fn()
    for r in range(repeats):
        for k, fn in fns.items():
            say(f"loss: repeat {r + 1}/{repeats} {k}")
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    out = {"vocab_size": vocab_size, "n_embd": n_embd, "rows": rows, "runs": {}}
    for k, fn in fns.items():
        say(f"loss: peak memory {k}", force=True)
        out["runs"][k] = {"median_s": float(np.median(times[k])), "times_s": times[k],
                          "peak_tracemalloc_bytes": peak_memory(fn)}
    base = out["runs"]["standard"]["peak_tracemalloc_bytes"]
    for r in out["runs"].values():
        r["memory_ratio_vs_standard"] = base / r["peak_tracemalloc_bytes"]
    return out


def format_loss(result):
    lines = [f"loss step (lm_head + cross-entropy, forward + backward) at B*T={result['rows']}, "
             f"C={result['n_embd']}, V={result['vocab_size']}, float32"]
    for k, r in result["runs"].items():
        lines.append(f"  {k:24s} peak {r['peak_tracemalloc_bytes'] / 2 ** 20:6.0f} MiB "
                     f"({r['memory_ratio_vs_standard']:3.1f}x below standard)  "
                     f"median {r['median_s'] * 1e3:6.0f} ms")
    return lines
