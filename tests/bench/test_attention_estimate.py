"""The cost bench-attention says before it spends it (numpygpt.bench.attention_estimate): the
peak memory count and the N^2 extrapolation, on numbers worked out by hand."""
from argparse import Namespace

import pytest

from numpygpt.bench import attention_estimate as est


def args(**kw):
    base = dict(batch_size=1, n_head=2, head_dim=8, engine="fast", q_tile=16, k_tile=24,
                memory_budget_gb=8.0, min_n=16, max_n=64)
    return Namespace(**{**base, **kw})


def test_peak_bytes_counts_the_vectors_and_the_larger_core():
    # N=64: 8 (1,2,64,8) float32 arrays = 32768 bytes; standard 3 (1,2,64,64) = 98304;
    # tiled 3 (1,2,16,24) tiles = 9216
    assert est.peak_bytes(64, args()) == 32768 + 98304
    # the textbook holds 5 (B,H,N,N) arrays
    assert est.peak_bytes(64, args(engine="textbook")) == 32768 + 5 * 32768
    # over --memory-budget-gb (50 kB < 98304) the standard core is skipped: the tiles remain
    assert est.peak_bytes(64, args(memory_budget_gb=0.00005)) == 32768 + 9216
    # tiles never larger than N x N: at N=8, 3 (1,2,8,8) tiles = 1536 = the standard's
    assert est.peak_bytes(8, args()) == 8 * 2 * 8 * 8 * 4 + 1536
    assert est.sweep_peak(args()) == (64, 32768 + 98304)


def test_check_memory_refuses_naming_max_n_and_the_estimate():
    # 131072 bytes = 0.125 MiB
    with pytest.raises(ValueError, match=r"^--max-n 64: .* estimated at 0\.1 MiB \(at N=64\), "
                                         r"more than the 0\.0 MiB available"):
        est.check_memory(args(), 1000)
    assert est.check_memory(args(), 131072) == (64, 131072)        # exactly enough: accepted
    with pytest.raises(ValueError, match="--max-n 64"):
        est.check_memory(args(), 131071)
    assert est.check_memory(args(), None) == (64, 131072)          # not known: not judged


def test_seconds_left_follow_the_n_squared_law():
    # from N=16: 2 s of measuring, 1 s of yardstick; N=32 takes 2*4+1, N=64 2*16+1
    assert est.seconds_left(16, {"matmul": 1.0, "impls": 2.0}, args()) == 9 + 33
    assert est.seconds_left(64, {"matmul": 1.0, "impls": 2.0}, args()) == 0


def test_peak_bytes_counts_the_grouped_variants_kv_heads():
    # H=8: 8 (1,8,64,8) arrays = 131072; standard 3 (1,8,64,64) = 393216
    base = 131072 + 393216
    assert est.peak_bytes(64, args(n_head=8)) == base
    # gqa, K = H/4 = 2: 4 (1,2,64,8) float32 arrays more = 16384
    assert est.peak_bytes(64, args(n_head=8, variants=["gqa"])) == base + 16384
    # mqa alone: K = 1, 8192; with gqa the larger K counts
    assert est.peak_bytes(64, args(n_head=8, variants=["mqa"])) == base + 8192
    assert est.peak_bytes(64, args(n_head=8, variants=["mqa", "gqa"])) == base + 16384
    # --n-kv-head 4 for gqa: 32768; a window adds nothing
    assert est.peak_bytes(64, args(n_head=8, variants=["gqa"], n_kv_head=4)) == base + 32768
    assert est.peak_bytes(64, args(n_head=8, variants=["window"])) == base
