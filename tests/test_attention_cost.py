"""numpygpt.attention_cost: the attention core's bytes and intensity, held against counts made
by hand in this file from the model in the module's docstring, and the tiled core's key count
against the key chunks the engine really visits."""
import pytest
from hypothesis import given, settings, strategies as st

from numpygpt.attention_cost import attention_core_bytes, attention_core_cost, keys_read
from numpygpt.engine.tiled_attention import _key_chunks

# The small case of every test: B=1, H=2, K=1, D=4, T=8, q_tile=4, float32 (s=4).
# Q = B*H*T*D = 64, KV = B*K*T*D = 32, R = B*H*T = 16, M = B*H*T*T = 128.
SMALL = dict(batch_size=1, n_head=2, head_dim=4, seq_len=8, n_kv_head=1, q_tile=4)


def test_keys_read_by_hand():
    # T=8, b=4, causal: block [0,4) reads keys 0..3 (4), block [4,8) keys 0..7 (8)
    assert keys_read(8, 4) == 12
    # W=3: block [4,8)'s first query 4 sees keys from 2 on: keys 2..7 (6)
    assert keys_read(8, 4, window=3) == 4 + 6
    # T=10: a short last block [8,10) reads keys 0..9
    assert keys_read(10, 4) == 4 + 8 + 10
    # without the mask every block reads all 10 keys
    assert keys_read(10, 4, causal=False) == 3 * 10
    # W=1: a block reads its own keys only: T in all
    assert keys_read(10, 4, window=1) == 10
    # one query per block, causal: 1 + 2 + ... + T
    assert keys_read(6, 1) == 21
    # a window wider than the text changes nothing
    assert keys_read(8, 4, window=100) == keys_read(8, 4)


def test_standard_core_bytes_by_hand():
    # forward 2Q + 2KV + 4M = 128 + 64 + 512 = 704 numbers
    assert attention_core_bytes(**SMALL, core="standard") == 704 * 4
    # forward + backward 6Q + 6KV + 10M = 384 + 192 + 1280 = 1856 numbers
    assert attention_core_bytes(**SMALL, core="standard", backward=True) == 1856 * 4
    # the window does not shrink the materialised T x T matrix
    assert attention_core_bytes(**SMALL, core="standard", window=3) == 704 * 4
    # float64: twice the bytes
    assert attention_core_bytes(**SMALL, core="standard", itemsize=8) == 704 * 8


def test_tiled_core_bytes_by_hand():
    # causal: n = keys_read * B*K*D = 12 * 4 = 48
    # forward 2Q + R + 2n = 128 + 16 + 96 = 240 numbers
    assert attention_core_bytes(**SMALL, core="tiled") == 240 * 4
    # forward + backward 7Q + 4R + 2KV + 8n = 448 + 64 + 64 + 384 = 960 numbers
    assert attention_core_bytes(**SMALL, core="tiled", backward=True) == 960 * 4
    # window W=3: n = 10 * 4 = 40; forward 128 + 16 + 80 = 224, both 448 + 64 + 64 + 320 = 896
    assert attention_core_bytes(**SMALL, core="tiled", window=3) == 224 * 4
    assert attention_core_bytes(**SMALL, core="tiled", window=3, backward=True) == 896 * 4
    # K = H = 2 (no grouping): KV = 64, n = 12 * 2 * 4 = 96; forward 128 + 16 + 192 = 336,
    # both 448 + 64 + 128 + 768 = 1408
    mha = {**SMALL, "n_kv_head": 2}
    assert attention_core_bytes(**mha, core="tiled") == 336 * 4
    assert attention_core_bytes(**mha, core="tiled", backward=True) == 1408 * 4
    assert attention_core_bytes(**{**SMALL, "n_kv_head": None}, core="tiled") == 336 * 4


def test_intensity_is_flops_over_bytes():
    # causal pairs per head T(T+1)/2 = 36, 2 heads: 72; forward 4*D*72 = 1152 FLOPs
    cost = attention_core_cost(**SMALL, core="tiled")
    assert cost == {"flops": 1152, "bytes": 960, "intensity": 1152 / 960}
    # forward + backward: 3 x 1152 FLOPs over 7424 bytes (the standard core)
    cost = attention_core_cost(**SMALL, core="standard", backward=True)
    assert cost == {"flops": 3456, "bytes": 7424, "intensity": 3456 / 7424}
    # window W=3: 6 + 5*3 = 21 pairs per head, 42 in all; 4*4*42 = 672 FLOPs over 896 bytes
    cost = attention_core_cost(**SMALL, core="tiled", window=3)
    assert cost == {"flops": 672, "bytes": 896, "intensity": 672 / 896}


def test_large_n_limits():
    """At large T the largest terms win: tiled causal forward+backward, 3 * 2*D*T^2 FLOPs per
    head over 8n ~ 8 * K*D*T^2/(2b) numbers: 3*H*b / (2*K*s); the standard forward, 2*D*T^2
    FLOPs per head over its 4 T x T matrices: 2*D / (4*s)."""
    B, H, D, T, b = 1, 4, 64, 1 << 16, 256
    tiled = attention_core_cost(B, H, D, T, core="tiled", backward=True, q_tile=b)["intensity"]
    # fwd+bwd: 3 * 2*D*T^2 FLOPs per head over 8 * K*D*T^2/(2b) numbers: 3*H*b / (2*K*s)
    assert tiled == pytest.approx(3 * H * b / (2 * H * 4), rel=0.02)
    gqa = attention_core_cost(B, H, D, T, core="tiled", backward=True, q_tile=b,
                              n_kv_head=1)["intensity"]
    assert gqa == pytest.approx(3 * H * b / (2 * 1 * 4), rel=0.05)
    standard = attention_core_cost(B, H, D, T, core="standard")["intensity"]
    assert standard == pytest.approx(2 * D / (4 * 4), rel=0.01)     # 2D FLOPs per 4 entries


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), b=st.integers(1, 12), bk=st.integers(1, 16),
       window=st.one_of(st.none(), st.integers(1, 45)))
def test_keys_read_equals_the_engines_key_chunks(T, b, bk, window):
    """The engine's forward visits, for each query block, the key chunks _key_chunks gives:
    their widths summed over the blocks are the keys the count says (whatever k_tile)."""
    visited = sum(j1 - j0 for i0 in range(0, T, b)
                  for j0, j1 in _key_chunks(i0, min(i0 + b, T), bk, window))
    assert keys_read(T, b, window=window) == visited


@pytest.mark.parametrize("kwargs, name", [
    (dict(core="flash"), "core"),
    (dict(n_kv_head=3), "n_kv_head=3 must divide n_head=2"),
    (dict(n_kv_head=0), "n_kv_head"),
    (dict(seq_len=0), "seq_len"),
    (dict(q_tile=0), "q_tile"),
    (dict(window=0), "window"),
    (dict(window=2, causal=False), "window=2 needs causal"),
    (dict(head_dim=2.0), "head_dim"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        attention_core_bytes(**{**SMALL, "core": "tiled", **kwargs})
