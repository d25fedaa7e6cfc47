"""AdamW against the update written out by hand (and torch.optim.AdamW when importable),
clipping, the learning-rate schedule."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt.train.optim import AdamW, clip_grad_norm, default_decay, global_grad_norm, lr_at


def tiny_params(dtype=np.float64, seed=0):
    cfg = ng.GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=1)
    return ng.init_params(cfg, seed=seed, dtype=dtype)


def test_default_decay_matches_gpt2_recipe():
    names = set(tiny_params())
    decayed = {n for n in names if default_decay(n)}
    assert decayed == {"h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight",
                       "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight"}
    assert default_decay("lm_head.weight")          # an untied output matrix is a linear layer
    for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "h.3.ln_2.weight",
              "h.0.mlp.c_fc.bias"):
        assert not default_decay(n)


def test_two_adamw_steps_equal_the_update_by_hand():
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.9, 1e-6, 0.3
    params = tiny_params()
    start = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(1)
    g1 = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    g2 = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    opt.step(params, g1)
    opt.step(params, g2, lr=lr / 2)             # a schedule passes the step's lr
    for name, p0 in start.items():
        decay = wd if name in ("h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight",
                               "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight") else 0.0
        p, m, v = p0.copy(), 0.0, 0.0
        for t, (g, step_lr) in enumerate(((g1[name], lr), (g2[name], lr / 2)), start=1):
            p = p - step_lr * decay * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p = p - step_lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(params[name], p, rtol=1e-13, atol=1e-15, err_msg=name)
    assert opt.t == 2


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    params = tiny_params()
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    decay = [tparams[k] for k in params if default_decay(k)]
    no_decay = [tparams[k] for k in params if not default_decay(k)]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    opt = AdamW(params, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    rng = np.random.default_rng(2)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(params, grads)
    for k, p in tparams.items():
        np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


def test_adamw_keeps_float32():
    params = tiny_params(np.float32)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt = AdamW(params)
    opt.step(params, grads, lr=1e-3)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(m.dtype == np.float32 for m in opt.m.values())


def test_adamw_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr"):
        AdamW(tiny_params(), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(tiny_params(), betas=(0.9, 1.0))


grad_dicts = st.lists(
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.floats(-1e3, 1e3), st.integers(0, 99)),
    min_size=1, max_size=4)


@given(grad_dicts, st.floats(1e-3, 1e3))
def test_clipping_bounds_the_global_norm(specs, max_norm):
    grads = {f"g{i}": np.random.default_rng(seed).standard_normal((r, c)) * scale
             for i, (r, c, scale, seed) in enumerate(specs)}
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    expected = math.sqrt(sum((g ** 2).sum() for g in before.values()))
    assert norm == pytest.approx(expected, rel=1e-12)
    after = global_grad_norm(grads)
    assert after <= max_norm * (1 + 1e-9)
    if max_norm / (expected + 1e-6) >= 1:      # PyTorch's clip coefficient is 1: not touched
        assert all(np.array_equal(grads[k], before[k]) for k in grads)
    else:                     # direction kept; norm = max_norm * N / (N + 1e-6), as PyTorch's
        assert after == pytest.approx(max_norm * expected / (expected + 1e-6), rel=1e-9)
        for k in grads:
            np.testing.assert_allclose(grads[k], before[k] * (after / expected), rtol=1e-9)


def test_clipping_leaves_nonfinite_gradients_for_the_caller():
    grads = {"a": np.array([1.0, np.inf])}
    assert clip_grad_norm(grads, 1.0) == math.inf
    assert grads["a"][0] == 1.0


def test_schedule_warmup_then_cosine():
    max_lr, min_lr, warmup, total = 1.0, 0.1, 10, 110
    lrs = [lr_at(s, max_lr, warmup, total, min_lr) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5)   # linear: (s+1)/warmup
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)  # peak
    assert lrs[60] == pytest.approx((max_lr + min_lr) / 2)                 # cosine midpoint
    assert lrs[110] == lrs[114] == min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))                 # never rises after


# ---- clipping at and around max_norm ---------------------------------------------------------

@pytest.mark.parametrize("norm_over_max", [1 - 1e-3, 1 - 1e-7, 1.0, 1 + 1e-9, 1 + 1e-3, 10.0])
@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 5.0])
def test_clip_grad_norm_at_and_near_max_norm_follows_the_pytorch_formula(max_norm, norm_over_max):
    rng = np.random.default_rng(0)
    g = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    scale0 = max_norm * norm_over_max / global_grad_norm(g)
    g = {k: v * scale0 for k, v in g.items()}
    before = {k: v.copy() for k, v in g.items()}
    norm = clip_grad_norm(g, max_norm)
    coef = min(1.0, max_norm / (norm + 1e-6))             # torch.nn.utils.clip_grad_norm_
    for k in g:
        np.testing.assert_allclose(g[k], before[k] * coef, rtol=1e-15, atol=0)
    if norm_over_max == 1.0:
        assert coef < 1                                   # at max_norm: scaled, just under it


def test_clip_grad_norm_equals_torch_at_and_near_max_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for max_norm in (1e-3, 1.0, 5.0):
        for ratio in (1 - 1e-3, 1 - 1e-7, 1.0, 1 + 1e-3):
            g = rng.standard_normal(7)
            g *= max_norm * ratio / np.linalg.norm(g)
            ours = {"g": g.copy()}
            clip_grad_norm(ours, max_norm)
            t = torch.zeros(7, dtype=torch.float64, requires_grad=True)
            t.grad = torch.from_numpy(g.copy())
            torch.nn.utils.clip_grad_norm_([t], max_norm)
            np.testing.assert_allclose(ours["g"], t.grad.numpy(), rtol=1e-14, atol=0)
