# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attention cost against sequence length
#
# The lesson's first point: the length N of a sequence does not change the network, only its
# cost, because self-attention compares every token with every other one: O(N^2). This
# notebook measures it on a small sweep (N = 128 .. 2048, a few seconds) with the code of
# `numpygpt bench-attention` (numpygpt/bench/attention.py), for the two attention cores:
#
# - **standard**: `S = q k^T / sqrt(D)`, `P = softmax(S)`, `y = P v`, and P (N x N per head)
#   kept for the backward;
# - **tiled** (FlashAttention-2 style): an online softmax over tiles of q_tile x k_tile; keeps
#   `y` and one log-sum-exp per row, never an N x N array (docs/attention.md).
#
# Times on a shared machine are noisy, so the notebook shows them but asserts only what does
# not depend on the machine: the memory.

# %%
# %matplotlib inline
import argparse

import numpy as np
import matplotlib.pyplot as plt
import numpygpt as ng
from numpygpt.bench.attention import sweep, table_header, table_row
from numpygpt.bench.measure import loglog_slope

# %% [markdown]
# ## The sweep
#
# Batch 1, 2 heads of width 64, float32, forward and forward+backward of the attention core
# alone, each the median of 3 repeats; peak memory by tracemalloc. The tiled core works in
# tiles of 64 queries x 128 keys. The cores timed are the textbook's, the code of
# numpygpt/layers/ (`engine="textbook"`); the full benchmark, `numpygpt bench-attention`, times
# the engine's twins up to N = 8192 with PyTorch beside (its results are in the README).

# %%
args = argparse.Namespace(batch_size=1, n_head=2, head_dim=64, q_tile=64, k_tile=128,
                          repeats=3, min_n=128, max_n=2048, memory_budget_gb=1.0,
                          no_torch=True, seed=0, engine="textbook")
result = sweep(args)
sizes = result["config"]["sizes"]
print(table_header(result["impls"]))
for n in sizes:
    print(table_row(n, [r for r in result["rows"] if r["n"] == n], result["impls"]))


def column(impl, key):
    return np.array([r[key] for r in result["rows"] if r["impl"] == impl], dtype=float)


N = np.array(sizes, dtype=float)

# %% [markdown]
# ## Time: O(N^2) for both
#
# The FLOPs are the same for both cores, `12 D` per (query, key) pair for forward+backward with
# the causal mask: tiling changes where the numbers live, not how many multiplications there
# are. On a log-log plot O(N^2) is a line of slope 2; at small N fixed overheads flatten it.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for impl in ("standard", "tiled"):
    ax.loglog(N, column(impl, "fwd_bwd_s") * 1e3, "o-", label=f"{impl}, forward+backward")
    ax.loglog(N, column(impl, "fwd_s") * 1e3, "o--", label=f"{impl}, forward", alpha=0.6)
t_top = column("standard", "fwd_bwd_s")[-1] * 1e3
ax.loglog(N, t_top * (N / N[-1]) ** 2, "k:", label="slope 2 (N^2)")
ax.set_xlabel("sequence length N")
ax.set_ylabel("time (ms)")
ax.set_xticks(N, [str(int(n)) for n in N], minor=False)
ax.minorticks_off()
ax.set_title("attention core, B=1, H=2, D=64, float32")
ax.legend(fontsize=8)
plt.show()

upper = N >= N[len(N) // 2]
for impl in ("standard", "tiled"):
    slope = loglog_slope(N[upper], column(impl, "fwd_bwd_s")[upper])
    print(f"{impl:<8} time slope, N={int(N[upper][0])}..{int(N[-1])}: {slope:.2f}")
flops = column("tiled", "flops_fwd_bwd")
assert np.allclose(flops, 12 * args.head_dim * args.n_head * N * (N + 1) / 2)   # the count
print(f"FLOPs slope: {loglog_slope(N, flops):.2f}")

# %% [markdown]
# ## Memory: O(N^2) against O(N)
#
# The standard core's peak is dominated by its (B,H,N,N) arrays; the tiled core's by q, k, v,
# y and their gradients, O(N D), plus one fixed tile. The dotted line is one (B,H,N,N) float32
# array: what O(N^2) attention holds at least.

# %%
mib = 2 ** 20
fig, ax = plt.subplots(figsize=(6, 4))
for impl in ("standard", "tiled"):
    ax.loglog(N, column(impl, "peak_bytes") / mib, "o-", label=f"{impl}, peak of forward+backward")
ax.loglog(N, column("standard", "tt_bytes") / mib, "k:", label="one (B,H,N,N) float32 array")
ax.set_xlabel("sequence length N")
ax.set_ylabel("MiB")
ax.set_xticks(N, [str(int(n)) for n in N], minor=False)
ax.minorticks_off()
ax.legend(fontsize=8)
plt.show()

slopes = {impl: loglog_slope(N[upper], column(impl, "peak_bytes")[upper]) for impl in ("standard", "tiled")}
print(f"memory slopes, N={int(N[upper][0])}..{int(N[-1])}: standard {slopes['standard']:.2f}, "
      f"tiled {slopes['tiled']:.2f}")
assert slopes["standard"] > 1.6 and slopes["tiled"] < 1.2
assert column("tiled", "peak_bytes")[-1] < column("standard", "peak_bytes")[-1] / 4

# %% [markdown]
# ## At GPT-2's size, counted
#
# What one GPT-2 block keeps for its backward (batch 1, float32), by core, counted by
# `numpygpt.dataflow` (whose counts the tests compare with the real caches byte for byte), far
# beyond what a notebook should allocate: from N ~ 1000 on, the standard block is mostly P.

# %%
from numpygpt.dataflow import block_activation_bytes

gpt2 = ng.PRESETS["gpt2"]
lengths = 2 ** np.arange(8, 15)                        # 256 .. 16384
kept = {a: np.array([block_activation_bytes(gpt2, 1, int(n), 4, ng.Execution(attention=a))
                     for n in lengths], dtype=float) for a in ("standard", "tiled")}
fig, ax = plt.subplots(figsize=(6, 4))
for a, b in kept.items():
    ax.loglog(lengths, b / mib, "o-", label=a)
ax.set_xlabel("sequence length N")
ax.set_ylabel("MiB kept by one GPT-2 block")
ax.legend()
plt.show()
for n, s, t in zip(lengths, kept["standard"] / mib, kept["tiled"] / mib):
    print(f"N={n:>6}  standard {s:>9.1f} MiB   tiled {t:>7.1f} MiB")
top = slice(-3, None)
standard_slope = loglog_slope(lengths[top], kept["standard"][top])
tiled_slope = loglog_slope(lengths[top], kept["tiled"][top])
print(f"slopes N=4096..16384: standard {standard_slope:.2f}, tiled {tiled_slope:.2f}")
assert 1.8 < standard_slope <= 2.0 and 0.95 < tiled_slope < 1.05
