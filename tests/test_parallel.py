"""numpygpt/parallel.py, the one seam where threads enter, and what it promises:
threads=1 is the serial code of c4ea370 bit for bit (tests/serial_reference.py keeps a copy);
any thread count equals threads=1 to float32 rounding; a fixed thread count is deterministic."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import numpygpt as ng
import serial_reference as ref
from numpygpt import parallel
from numpygpt.config import Execution
from numpygpt.layers import (causal_attention_forward, causal_attention_backward,
                             tiled_attention_forward, tiled_attention_backward, gelu_forward,
                             gelu_backward, layernorm_forward, layernorm_backward,
                             lm_head_cross_entropy)
from numpygpt.train.optim import AdamW

threadpoolctl = pytest.importorskip("threadpoolctl")
RNG = np.random.default_rng


@pytest.fixture
def threads():
    """parallel.set_threads for one test; the setting as it was afterwards."""
    before = parallel._state["threads"]
    yield parallel.set_threads
    parallel.set_threads(before)


def blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


# ---- the helper --------------------------------------------------------------------------------

@pytest.mark.parametrize("n, parts", [(10, 2), (7, 3), (2, 5), (1, 2), (100, 1), (0, 2)])
def test_pieces_cover_the_range_in_order(n, parts):
    cut = parallel.pieces(n, parts)
    assert len(cut) == max(1, min(parts, n))
    assert cut[0][0] == 0 and cut[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cut, cut[1:]))                 # contiguous
    sizes = [hi - lo for lo, hi in cut]
    assert max(sizes) - min(sizes) <= 1


def test_one_thread_is_one_call_in_the_calling_thread(threads):
    threads(1)
    calls = []
    out = parallel.rows(10, lambda lo, hi: calls.append((lo, hi, threading.get_ident())) or hi - lo)
    assert out == [10] and calls == [(0, 10, threading.get_ident())]


def test_two_threads_split_the_range_and_return_in_order(threads):
    threads(2)
    seen = []
    out = parallel.rows(10, lambda lo, hi: seen.append(threading.get_ident()) or (lo, hi))
    assert out == [(0, 5), (5, 10)]
    assert len(set(seen)) == 2                                              # two threads ran


def test_grain_cuts_each_piece_into_tiles(threads):
    for n_threads in (1, 2):
        threads(n_threads)
        out = parallel.rows(10, lambda lo, hi: (lo, hi), grain=3)
        assert [hi - lo for lo, hi in out] == ([3, 3, 3, 1] if n_threads == 1 else [3, 2, 3, 2])
        assert out[0][0] == 0 and out[-1][1] == 10
        assert all(a[1] == b[0] for a, b in zip(out, out[1:]))


def test_small_work_runs_in_the_calling_thread(threads):
    threads(2)
    seen = []
    parallel.rows(10, lambda lo, hi: seen.append((lo, hi, threading.get_ident())),
                  size=parallel.SMALL_WORK - 1)
    assert seen == [(0, 10, threading.get_ident())]


def test_blas_is_one_thread_inside_a_section_and_restored_after(threads):
    before = blas_threads()
    threads(2)
    inside = parallel.rows(4, lambda lo, hi: blas_threads())
    assert inside == [[1] * len(before)] * 2
    assert blas_threads() == before
    threads(1)                                   # serial: BLAS untouched
    assert parallel.rows(4, lambda lo, hi: blas_threads()) == [before]


def test_a_section_inside_a_piece_runs_serially(threads):
    threads(2)
    inner = parallel.rows(2, lambda lo, hi: parallel.rows(8, lambda a, b: (a, b)))
    assert inner == [[(0, 8)], [(0, 8)]]


def test_an_error_in_a_worker_reaches_the_caller_and_the_pool_survives(threads):
    threads(2)

    def work(lo, hi):
        if lo > 0:
            raise KeyError("piece 2")
        return lo
    with pytest.raises(KeyError, match="piece 2"):
        parallel.rows(4, work)
    assert parallel.rows(4, lambda lo, hi: hi) == [2, 4]
    assert blas_threads() == [b for b in blas_threads()]     # (restored: no exception inside)


def test_errstate_holds_in_the_workers(threads):
    """The model raises on overflow (np.errstate in the calling thread): the pieces run by the
    pool's threads must raise too."""
    threads(2)
    x = np.full(8, 1e30, np.float32)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            parallel.rows(8, lambda lo, hi: x[lo:hi] * x[lo:hi] if lo > 0 else None)


def test_total_adds_in_order_and_keeps_one_part_as_it_is():
    one = np.arange(3.0)
    assert parallel.total([one]) is one
    parts = [np.float32(1e8), np.float32(1.0), np.float32(-1e8)]
    assert parallel.total([np.array(p) for p in parts]) == (parts[0] + parts[1]) + parts[2]


def test_thread_setting_is_checked_and_restored(threads):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            parallel.set_threads(bad)
    threads(2)
    with parallel.using_threads(1):
        assert parallel.get_threads() == 1 and not parallel.settings()["parallel"]
    assert parallel.get_threads() == 2 and parallel.settings()["parallel"]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_environment_variable_sets_the_default():
    r = run_python("from numpygpt import parallel; print(parallel.get_threads())",
                   NUMPYGPT_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr
    r = run_python("from numpygpt import parallel; parallel.get_threads()", NUMPYGPT_THREADS="x")
    assert r.returncode != 0 and "NUMPYGPT_THREADS='x'" in r.stderr


def test_without_threadpoolctl_everything_runs_serially():
    code = ("import sys; sys.modules['threadpoolctl'] = None\n"
            "from numpygpt import parallel; parallel.set_threads(2)\n"
            "print(parallel.get_threads(), parallel.rows(4, lambda lo, hi: (lo, hi)))")
    r = run_python(code)
    assert r.stdout.strip() == "1 [(0, 4)]", r.stderr


# ---- threads=1 is c4ea370's serial code, bit for bit ---------------------------------------------

def qkv(B=2, H=3, T=37, D=8, dtype=np.float32, seed=0):
    rng = RNG(seed)
    return tuple(rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(4))


def key_mask(B, T):
    mask = np.ones((B, T), bool)
    mask[0, :5] = False                          # left padding
    mask[-1, -3:] = False
    return mask


def layer_runs():
    """(name, new implementation, c4ea370's) as functions of no arguments, each returning
    every array the layer makes, forward and backward; sizes above SMALL_WORK so that
    threads=2 runs them in parallel."""
    runs = []
    for dtype in (np.float32, np.float64):
        q, k, v, dy = qkv(2, 4, 150, 16, dtype)
        for mask in (None, key_mask(2, 150)):
            def core(fwd, bwd, q=q, k=k, v=v, dy=dy, mask=mask):
                y, cache = fwd(q, k, v, mask)
                return (y, *bwd(dy, cache)[0])
            runs.append((f"textbook {dtype.__name__} mask={mask is not None}",
                         lambda core=core: core(causal_attention_forward, causal_attention_backward),
                         lambda core=core: core(ref.causal_attention_forward, ref.causal_attention_backward)))
            tiles = lambda f, **kw: (lambda q, k, v, m: f(q, k, v, m, 32, 48))  # noqa: E731
            runs.append((f"tiled {dtype.__name__} mask={mask is not None}",
                         lambda core=core: core(tiles(tiled_attention_forward), tiled_attention_backward),
                         lambda core=core: core(tiles(ref.tiled_attention_forward),
                                                ref.tiled_attention_backward)))
        rng = RNG(1)
        h = (2 * rng.standard_normal((3, 50, 700))).astype(dtype)
        dh = rng.standard_normal(h.shape).astype(dtype)
        for name, f, b, rf, rb in (("gelu", gelu_forward, gelu_backward, ref.gelu_forward, ref.gelu_backward),):
            runs.append((f"{name} {dtype.__name__}",
                         lambda f=f, b=b: (f(h)[0], b(dh, f(h)[1])[0]),
                         lambda f=rf, b=rb: (f(h)[0], b(dh, f(h)[1])[0])))
        x = rng.standard_normal((3, 200, 130)).astype(dtype)
        p = {"weight": (1 + 0.1 * rng.standard_normal(130)).astype(dtype),
             "bias": (0.1 * rng.standard_normal(130)).astype(dtype)}

        def ln(f, b, x=x, p=p, dx=dh[..., :130].copy()):
            out, cache = f(x, p)
            d, g = b(x[..., :130] * 0.5, cache)
            return out, d, g["weight"], g["bias"]
        runs.append((f"layernorm {dtype.__name__}", lambda ln=ln: ln(layernorm_forward, layernorm_backward),
                     lambda ln=ln: ln(ref.layernorm_forward, ref.layernorm_backward)))
        xs = rng.standard_normal((2, 90, 24)).astype(dtype)
        W = {"weight": rng.standard_normal((3000, 24)).astype(dtype)}
        labels = rng.integers(0, 3000, (2, 90))
        labels[0, :30] = -100
        for reduction in ("mean", "none"):
            def loss(f, reduction=reduction, xs=xs, W=W, labels=labels):
                value, d, g = f(xs, W, labels, reduction=reduction, chunk_size=40)
                return np.asarray(value), d, g["weight"]
            runs.append((f"fused loss {dtype.__name__} {reduction}",
                         lambda loss=loss: loss(lm_head_cross_entropy),
                         lambda loss=loss: loss(ref.lm_head_cross_entropy)))
    return runs


LAYER_RUNS = layer_runs()


@pytest.mark.parametrize("name, new, old", LAYER_RUNS, ids=[r[0] for r in LAYER_RUNS])
def test_one_thread_is_the_serial_code_bit_for_bit(threads, name, new, old):
    threads(1)
    for a, b in zip(new(), old(), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("name, new, old", LAYER_RUNS, ids=[r[0] for r in LAYER_RUNS])
def test_two_threads_equal_one_to_rounding_and_repeat_exactly(threads, name, new, old):
    threads(1)
    serial = new()
    threads(2)
    first, second = new(), new()
    for a, b, c in zip(first, second, serial, strict=True):
        assert np.array_equal(a, b), f"{name}: two runs with 2 threads differ"
        rtol = 1e-5 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(a, c, rtol=rtol, atol=rtol * np.abs(c).max(), err_msg=name)


def test_adamw_one_thread_is_the_serial_update_bit_for_bit(threads):
    cfg = ng.GPTConfig(vocab_size=3000, n_positions=64, n_embd=32, n_head=2, n_layer=1)
    for dtype in (np.float32, np.float64):
        rng = RNG(0)
        params = ng.init_params(cfg, dtype=dtype)
        grads = [{k: rng.standard_normal(p.shape).astype(dtype) for k, p in params.items()}
                 for _ in range(3)]
        runs = {}
        for how in ("serial", 1, 2):
            ps = {k: p.copy() for k, p in params.items()}
            opt = AdamW(ps, lr=1e-2, weight_decay=0.1)
            for g in grads:
                if how == "serial":
                    ref.adamw_step(opt, ps, g)
                else:
                    threads(how)
                    opt.step(ps, g)
            runs[how] = ps, opt.m, opt.v
        for k in params:
            for a, b in zip(runs[1], runs["serial"]):
                assert np.array_equal(a[k], b[k]), k
            for a, b in zip(runs[2], runs["serial"]):      # chunks apart: the same arithmetic
                assert np.array_equal(a[k], b[k]), k


def test_adamw_makes_no_parameter_sized_temporary(threads):
    """The chunked update allocates chunk-sized scratch, not arrays the size of the parameters
    (a parameter of many chunks: 4.8M elements, 37 chunks)."""
    import tracemalloc
    from numpygpt.train.optim import CHUNK
    threads(2)
    shape = (8000, 600)
    assert shape[0] * shape[1] > 16 * CHUNK
    params = {"h.0.mlp.c_fc.weight": np.ones(shape, np.float32)}
    grads = {"h.0.mlp.c_fc.weight": np.full(shape, 0.5, np.float32)}
    opt = AdamW(params)
    opt.step(params, grads)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        opt.step(params, grads)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < params["h.0.mlp.c_fc.weight"].nbytes / 4, peak


@pytest.mark.parametrize("attention, loss", [("textbook", "fused"), ("tiled", "fused"),
                                             ("textbook", "textbook")])
def test_model_two_threads_equal_one_and_repeat_exactly(threads, attention, loss):
    cfg = ng.GPTConfig(vocab_size=500, n_positions=128, n_embd=64, n_head=4, n_layer=2)
    model = ng.GPT(cfg, seed=3, execution=Execution(attention=attention, loss=loss, q_tile=32,
                                                    k_tile=64, loss_chunk=50))
    rng = RNG(0)
    ids, labels = rng.integers(0, 500, (2, 120)), rng.integers(0, 500, (2, 120))
    labels[:, :20] = -100
    mask = np.ones((2, 120), np.int64)
    mask[1, :9] = 0
    threads(1)
    loss1, g1 = model.loss_and_grads(ids, labels, attention_mask=mask)
    threads(2)
    loss2, g2 = model.loss_and_grads(ids, labels, attention_mask=mask)
    loss3, g3 = model.loss_and_grads(ids, labels, attention_mask=mask)
    assert loss2 == loss3 and all(np.array_equal(g2[k], g3[k]) for k in g2)
    assert abs(loss2 - loss1) <= 1e-6 * abs(loss1)
    for k in g1:
        scale = np.abs(g1[k]).max()
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_makes_its_own_pool(threads):
    threads(2)
    parallel.rows(4, lambda lo, hi: hi)                      # the parent's pool exists
    code = ("import os, sys\nfrom numpygpt import parallel\nparallel.set_threads(2)\n"
            "parallel.rows(4, lambda lo, hi: hi)\npid = os.fork()\n"
            "if pid == 0:\n    os._exit(0 if parallel.rows(4, lambda lo, hi: hi) == [2, 4] else 3)\n"
            "print(os.waitpid(pid, 0)[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "0", r.stderr


def test_adamw_updates_a_strided_parameter_in_place(threads):
    """A parameter that is a view (a transposed matrix) is updated where it lives."""
    threads(2)
    base = np.ones((6, 40000))
    name = "h.0.mlp.c_fc.weight"
    params, grads = {name: base.T}, {name: np.full((40000, 6), 0.5)}
    expect = {name: np.ones((40000, 6))}
    AdamW(params).step(params, grads)
    ref.adamw_step(AdamW(expect), expect, grads)
    assert np.array_equal(base.T, expect[name]) and not np.array_equal(base, np.ones((6, 40000)))
