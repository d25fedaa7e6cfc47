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
# # Gradient checks: experiments
#
# Every backward in numpygpt is written by hand, so every backward can be wrong; a gradient
# check compares it with what the forward alone says (docs/gradient-checks.md). Three
# experiments with the checker itself:
#
# 1. **the zoo**: classic backprop, loss and label bugs put in one at a time: which check
#    catches which, and why the others miss it;
# 2. **the step size**: the check's own error against its step eps, float64 against float32,
#    the V between truncation and rounding;
# 3. **a layer of your own**, written by the layer convention and checked in one call.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
from numpygpt import gradcheck

# %% [markdown]
# ## What a check computes
#
# Nudge one parameter up and down by eps; the loss moves by about 2 eps times its derivative.
# By hand, for one coordinate of a LayerNorm's weight (loss `sum(out * R)`, R fixed):

# %%
from numpygpt.layers import layernorm_forward, layernorm_backward

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 5, 8))
p = {"weight": 1 + 0.1 * rng.standard_normal(8), "bias": 0.1 * rng.standard_normal(8)}
R = rng.standard_normal((2, 5, 8))
loss = lambda: float((layernorm_forward(x, p)[0] * R).sum())

out, cache = layernorm_forward(x, p)
_, grads = layernorm_backward(R, cache)                    # the hand-written backward
eps, i = 1e-5, 3
p["weight"][i] += eps
up = loss()
p["weight"][i] -= 2 * eps
down = loss()
p["weight"][i] += eps
numeric = (up - down) / (2 * eps)
print(f"analytic {grads['weight'][i]:.12f}   central difference {numeric:.12f}")
assert abs(grads["weight"][i] - numeric) <= 1e-6 * abs(numeric)

# %% [markdown]
# `gradcheck.check_layer` does it for every tensor of one of numpygpt's layers (32 random
# coordinates each), and reports the relative error `max|a - n| / max(|a|, |n|)` per tensor:

# %%
results = gradcheck.check_layer("layernorm")
lines, ok = gradcheck.format_report(results)
print("\n".join(lines))
assert ok

# %% [markdown]
# ## 1. The zoo: which check catches which bug
#
# `run_zoo` runs the right code, then each bug of `gradcheck.BUGS`, through four checks: the
# coordinate gradcheck, the directional one (two forward passes per random direction, for big
# models), properties (relations the model must satisfy with itself: the gradients of a batch
# are the sum of its halves', reduction "sum" is "mean" times the count, the labels' shift,
# the masked loss equals the prefix-scored one), and the PyTorch oracle (autograd on the same
# weights; "n/a" without torch). Each bug declares which checks should catch it.

# %%
rows = gradcheck.run_zoo()
lines = gradcheck.format_zoo(rows)
print("\n".join(lines[:lines.index("") + 3]))          # the table and its headline
assert all(r.ok for r in rows)                         # every row as declared

# %% [markdown]
# The same as a picture: finite differences catch every wrong *backward*, and no wrong *loss*
# (a right gradient of a wrong loss: the check differentiates the same wrong loss and agrees).
# The properties catch the loss and label bugs. A wrong *forward* differentiated correctly
# (a sliding window off by one) passes both; the oracle, which builds its own model, labels
# and loss, catches everything.

# %%
bugs = [r for r in rows if r.name in gradcheck.BUGS]
code = {"caught": 1.0, "missed": 0.0, "n/a": np.nan, "error": np.nan}
grid = np.array([[code[r.results[c].outcome] for c in gradcheck.CHECKS] for r in bugs])
fig, ax = plt.subplots(figsize=(6, 0.32 * len(bugs) + 1))
ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
ax.set_xticks(range(len(gradcheck.CHECKS)), gradcheck.CHECKS)
ax.set_yticks(range(len(bugs)), [f"{r.name} ({r.home})" for r in bugs], fontsize=8)
for (j, c), value in np.ndenumerate(grid):
    ax.text(c, j, {1.0: "caught", 0.0: "missed"}.get(value, "n/a"), ha="center", va="center", fontsize=7)
ax.set_title("the bug zoo: green = caught")
plt.show()

backward_bugs = [r for r in bugs if r.results["coordinate"].outcome == "caught"]
loss_bugs = [r for r in bugs if r.results["coordinate"].outcome == "missed"
             and r.results["property"].outcome == "caught"]
forward_bugs = [r for r in bugs if r.results["coordinate"].outcome == "missed"
                and r.results["property"].outcome == "missed"]
assert len(backward_bugs) + len(loss_bugs) + len(forward_bugs) == len(bugs)
print(f"{len(backward_bugs)} wrong backwards, all caught by finite differences; "
      f"{len(loss_bugs)} wrong losses or labels, missed by them and caught by the properties; "
      f"{len(forward_bugs)} wrong forward(s) differentiated correctly, which only an "
      f"independent model (the torch oracle) catches: {[r.name for r in forward_bugs]}")

# %% [markdown]
# One bug close up: the softmax backward without its row-sum term. Only the tensors upstream
# of the mistake are wrong: `v`'s gradient does not pass through the softmax.

# %%
result = gradcheck.run_bug("softmax-no-rowsum")
print("\n".join(result["coordinate"].lines))
worst = {t.name: t.max_rel_error for t in result["coordinate"].raw}
assert worst["q"] > 1e-3 and worst["k"] > 1e-3 and worst["v"] < 1e-6

# %% [markdown]
# A mutation of your own goes in with `gradcheck.swapped((right, wrong))`: inside the block,
# numpygpt calls the wrong function wherever it called the right one. Here, a GELU backward
# that forgets the derivative of tanh inside it:

# %%
import numpygpt as ng


def gelu_backward_no_tanh_derivative(dout, cache):
    (x,) = cache
    th = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))
    return dout * 0.5 * (1 + th), {}                   # BUG: the 0.5 x (1 - th^2) ... term


with gradcheck.swapped((ng.gelu_backward, gelu_backward_no_tanh_derivative)):
    results = gradcheck.check_layer("mlp")
print("\n".join(gradcheck.format_report(results)[0]))
failed = {r.name for r in results if not r.passed}
assert failed == {"x", "c_fc.weight", "c_fc.bias"}     # below GELU: wrong; above it: right

# %% [markdown]
# ## 2. The step size: truncation against rounding
#
# A central difference carries two errors: truncation, `~ eps^2 |f'''| / 6`, which falls as eps
# shrinks (slope 2 on a log-log plot), and rounding, `~ u |f| / eps`, which grows (slope -1),
# u being the unit roundoff of the dtype: 1.1e-16 in float64, 6.0e-8 in float32. Their sum is
# smallest near `eps ~ u^(1/3)`. `sweep_eps` measures it on a tiny GPT, the same weights in
# both dtypes, at 23 steps from 1e-1 to 1e-12.

# %%
sweep = gradcheck.sweep_eps()
eps = np.array(sweep.eps)
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, dtype in zip(axes, ("float64", "float32")):
    worst = sweep.worst(dtype)
    ax.loglog(eps, np.where(sweep.errors[dtype] > 0, sweep.errors[dtype], np.nan), color="0.8", lw=0.8)
    ax.loglog(eps, worst, "o-", ms=4, label="worst tensor (what a check reports)")
    ax.axvline(gradcheck.predicted_best_eps(dtype), color="C3",
               label=f"u^(1/3) = {gradcheck.predicted_best_eps(dtype):.0e}")
    default_eps, tol = gradcheck.TOLERANCES[dtype]
    ax.axvline(default_eps, color="k", ls=":", label=f"default eps {default_eps:g}")
    ax.axhline(tol, color="k", ls="-.", label=f"tolerance {tol:g}")
    ax.set_xlim(eps.max() * 2, eps.min() / 2)          # the step shrinks to the right
    ax.set_title(f"{dtype}: u = {gradcheck.unit_roundoff(dtype):.1e}")
    ax.set_xlabel("step eps")
    ax.legend(fontsize=7, loc="upper center" if dtype == "float64" else "lower left")
axes[0].set_ylabel("max relative error")
plt.show()

# %% [markdown]
# The V, in numbers: the slopes on both sides, the best step against the prediction, and the
# default steps of `gradcheck.TOLERANCES` well inside their tolerances.

# %%
def slope(dtype, lo, hi):
    """Log-log slope of the worst error against eps over lo <= eps <= hi."""
    keep = (eps >= lo) & (eps <= hi)
    return np.polyfit(np.log10(eps[keep]), np.log10(sweep.worst(dtype)[keep]), 1)[0]


for dtype in ("float64", "float32"):
    best_eps, best_err = sweep.best(dtype)
    predicted = gradcheck.predicted_best_eps(dtype)
    default_eps, tol = gradcheck.TOLERANCES[dtype]
    print(f"{dtype}: best eps {best_eps:.1e} (error {best_err:.1e}), predicted u^(1/3) {predicted:.1e}; "
          f"default eps {default_eps:g}: error {sweep.at(dtype, default_eps)[1]:.1e} <= {tol:g}")
    assert sweep.shape_holds(dtype)                    # the V
    assert abs(np.log10(best_eps / predicted)) <= 1    # within a decade of u^(1/3)
    assert sweep.at(dtype, default_eps)[1] <= tol
truncation, rounding = slope("float64", 1e-3, 1e-1), slope("float64", 1e-12, 1e-8)
print(f"float64 slopes: truncation side {truncation:.2f} (2 expected), rounding side {rounding:.2f} (-1 expected)")
assert 1.5 < truncation < 2.5 and -1.5 < rounding < -0.5

# %% [markdown]
# In float32 the whole curve is lifted by u: float64's step gives a large error, and below
# ~1e-8 the step is lost altogether (`p + eps` rounds to `p`, the difference is 0, the error 1).
# Hence float32's own step, 1e-3, and tolerance, 1e-2: prove a backward in float64.

# %%
print(f"float32 at float64's step 1e-5: error {sweep.at('float32', 1e-5)[1]:.1e}; "
      f"at 1e-12: {sweep.at('float32', 1e-12)[1]:.1e}")
assert sweep.at("float32", 1e-5)[1] > 1e-2 and sweep.at("float32", 1e-12)[1] >= 0.99

# %% [markdown]
# ## 3. A layer of your own
#
# Any forward/backward pair that keeps the layer convention,
# `out, cache = forward(x, p)` and `dx, grads = backward(dout, cache)`, is checked by one call,
# `gradcheck.check_pair` (tests/gradcheck/test_own_layer.py holds the recipe with RMSNorm).
# Here a layer numpygpt does not have: LLaMA's SwiGLU MLP,
# `out = (silu(x W1) * (x W3)) W2`, `silu(a) = a sigmoid(a)`.

# %%
def swiglu_forward(x, p):
    """x (...,C), p {"w1": (C,F), "w3": (C,F), "w2": (F,C)} -> out (...,C)."""
    a = x @ p["w1"]                                    # (...,F)
    sig = 1 / (1 + np.exp(-a))                         # (...,F)
    gate = a * sig                                     # (...,F) silu(a)
    b = x @ p["w3"]                                    # (...,F)
    h = gate * b                                       # (...,F)
    out = h @ p["w2"]                                  # (...,C)
    return out, (x, a, sig, gate, b, h, p)


def swiglu_backward(dout, cache):
    """dout (...,C) -> dx (...,C), {"w1", "w3", "w2"}."""
    x, a, sig, gate, b, h, p = cache
    C, F = p["w1"].shape
    dw2 = h.reshape(-1, F).T @ dout.reshape(-1, C)     # out = h @ w2
    dh = dout @ p["w2"].T
    dgate, db = dh * b, dh * gate                      # h = gate * b
    da = dgate * (sig + a * sig * (1 - sig))           # silu'(a) = sig + a sig (1 - sig)
    dx = da @ p["w1"].T + db @ p["w3"].T               # x is used twice: the shares add up
    dw1 = x.reshape(-1, C).T @ da.reshape(-1, F)
    dw3 = x.reshape(-1, C).T @ db.reshape(-1, F)
    return dx, {"w1": dw1, "w3": dw3, "w2": dw2}


rng = np.random.default_rng(0)
C, F = 8, 12
x = rng.standard_normal((2, 5, C))                     # float64: the strict check
p = {"w1": rng.standard_normal((C, F)) / np.sqrt(C), "w3": rng.standard_normal((C, F)) / np.sqrt(C),
     "w2": rng.standard_normal((F, C)) / np.sqrt(F)}
results = gradcheck.check_pair(swiglu_forward, swiglu_backward, x, p)
lines, ok = gradcheck.format_report(results)
print("\n".join(lines))
assert ok

# %% [markdown]
# In float32 the check uses float32's step and tolerance (eps 1e-3, tolerance 1e-2); it still
# passes, but proves less: only errors above about 1% would show.

# %%
x32 = x.astype(np.float32)
p32 = {k: v.astype(np.float32) for k, v in p.items()}
results = gradcheck.check_pair(swiglu_forward, swiglu_backward, x32, p32)
print("\n".join(gradcheck.format_report(results)[0]))
assert all(r.passed for r in results)

# %% [markdown]
# And a deliberate bug: the derivative of silu taken as sigmoid alone (the product rule's
# `a sig (1 - sig)` forgotten). The report names the tensors below the mistake, `x` and `w1`,
# and leaves `w2` and `w3`, which do not pass through it, right.

# %%
def swiglu_backward_bug(dout, cache):
    x, a, sig, gate, b, h, p = cache
    C, F = p["w1"].shape
    dw2 = h.reshape(-1, F).T @ dout.reshape(-1, C)
    dh = dout @ p["w2"].T
    dgate, db = dh * b, dh * gate
    da = dgate * sig                                   # BUG: silu'(a) is not sigmoid(a)
    dx = da @ p["w1"].T + db @ p["w3"].T
    dw1 = x.reshape(-1, C).T @ da.reshape(-1, F)
    dw3 = x.reshape(-1, C).T @ db.reshape(-1, F)
    return dx, {"w1": dw1, "w3": dw3, "w2": dw2}


results = gradcheck.check_pair(swiglu_forward, swiglu_backward_bug, x, p)
print("\n".join(gradcheck.format_report(results)[0]))
assert {r.name for r in results if not r.passed} == {"x", "w1"}

# %% [markdown]
# ## 4. Why the checks redraw the weights at unit scale
#
# GPT-2 initialises its matrices with standard deviation 0.02. Per-block histograms of the
# activations and of their gradients (`numpygpt.pictures.layer_stats`, as nn-zero-to-hero
# part 3 draws them) show what that means for a check: every layer's output is tiny, and GELU
# works on its nearly linear middle (no unit saturated), so a mistake in its curvature would
# hardly show. At unit scale (`gradcheck.unit_scale_params`) the activations are of order one
# and GELU is used as the nonlinearity it is.

# %%
import tempfile
from pathlib import Path
from IPython.display import Image, display
from numpygpt.pictures import draw_histograms, layer_stats, stats_lines

tok = ng.ByteTokenizer()
config = ng.GPTConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_head=4, n_layer=2)
ids = tok.encode("To be or not to be, that is the question.")[None]
labels = ng.causal_lm_labels(ids)
model = ng.GPT(config, seed=0, dtype=np.float64)
at_gpt2 = layer_stats(model, ids, labels)
gradcheck.unit_scale_params(model.params, np.random.default_rng(0))
at_unit = layer_stats(model, ids, labels)
for label, stats in (("GPT-2 initialisation (std 0.02)", at_gpt2), ("unit scale", at_unit)):
    print(label)
    print("\n".join(stats_lines(stats)))

for gpt2_layer, unit_layer in zip(at_gpt2["layers"], at_unit["layers"]):
    assert gpt2_layer["attn_out"]["std"] < 0.01 < 0.1 < unit_layer["attn_out"]["std"]
    assert gpt2_layer["gelu_saturation"] == 0 < 0.01 < unit_layer["gelu_saturation"]

path = draw_histograms([("GPT-2 initialisation", at_gpt2), ("unit scale", at_unit)],
                       Path(tempfile.mkdtemp()) / "histograms.png",
                       title="activations and gradients per block, one batch")
display(Image(filename=str(path)))
