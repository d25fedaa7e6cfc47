# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Backprop by hand through one GPT block
#
# As in nn-zero-to-hero's "becoming a backprop ninja", for a transformer block: the forward is
# written one operation per line, keeping every intermediate; then the backward is written by
# hand, one intermediate's gradient at a time, from the block's output back to its input.
# Each gradient is checked as soon as it is written, twice:
#
# - against **the textbook's backward** (numpygpt/layers/, run layer by layer below):
#   `exact` (the same bits), `close` (relative error <= 1e-8: the same math, rounded in another
#   order) or `wrong`;
# - against **finite differences**: nudge the intermediate up and down by 1e-5, run the rest of
#   the forward, and see how the loss moves (numpygpt.gradcheck's `numeric_gradient` and
#   `relative_error`; float64, tolerance 1e-6).
#
# This is the worked version: the solutions are written in. To write them yourself, with a
# checker that names the wrong tensor and, where the bug zoo knows it, the mistake, take the
# course: `numpygpt exercise start DIR` (docs/exercises.md).

# %%
import numpy as np
import numpygpt as ng
from numpygpt import gradcheck
from numpygpt.gradcheck import numeric_gradient, relative_error
from numpygpt.layers import sub, prefixed
from numpygpt.layers.attention import softmax, split_heads, merge_heads

# %% [markdown]
# ## The problem
#
# One block of a tiny float64 GPT: batch B=2, T=5 positions, width C=8, H=2 heads of D=4.
# The weights are redrawn at unit scale (`gradcheck.unit_scale_params`): at GPT-2's 0.02 the
# softmax is nearly uniform and GELU nearly linear, and a wrong gradient hides in tiny numbers.
# The loss is `L = sum(out * R)` for a fixed random R: whatever the rest of the model would
# send back, here it is R, so `dL/dout = R`.

# %%
config = ng.GPTConfig(vocab_size=11, n_positions=16, n_embd=8, n_head=2, n_layer=1)
B, T, C, H = 2, 5, config.n_embd, config.n_head
D = C // H
rng = np.random.default_rng(0)
model = ng.GPT(config, seed=0, dtype=np.float64)
gradcheck.unit_scale_params(model.params, rng)
p = sub(model.params, "h.0")                      # the block's parameters, by GPT-2's names
x_in = rng.standard_normal((B, T, C))
R = rng.standard_normal((B, T, C))
causal = np.tril(np.ones((T, T), dtype=bool))     # query t sees keys s <= t
print(sorted(p))

# %% [markdown]
# ## The forward, one operation per line
#
# Each line computes one named tensor from the ones before it, and `fwd` keeps them all. Being
# a list, the forward can be rerun from any line on: that is how the finite differences below
# nudge an intermediate and see what the rest of the block makes of it.

# %%
def gelu(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))


STEPS = [
    # ln_1: LayerNorm
    ("rstd1", lambda f: 1 / np.sqrt(f["x"].var(axis=-1, keepdims=True) + 1e-5)),        # (B,T,1)
    ("xhat1", lambda f: (f["x"] - f["x"].mean(axis=-1, keepdims=True)) * f["rstd1"]),   # (B,T,C)
    ("h1", lambda f: f["xhat1"] * f["ln_1.weight"] + f["ln_1.bias"]),                   # (B,T,C)
    # attention: q, k, v in one matmul, split into heads
    ("qkv", lambda f: f["h1"] @ f["attn.c_attn.weight"] + f["attn.c_attn.bias"]),       # (B,T,3C)
    ("q", lambda f: split_heads(f["qkv"][..., :C], H)),                                 # (B,H,T,D)
    ("k", lambda f: split_heads(f["qkv"][..., C:2 * C], H)),                            # (B,H,T,D)
    ("v", lambda f: split_heads(f["qkv"][..., 2 * C:], H)),                             # (B,H,T,D)
    ("S", lambda f: f["q"] @ f["k"].swapaxes(-1, -2) / np.sqrt(D)),                     # (B,H,T,T)
    ("P", lambda f: softmax(np.where(causal, f["S"], -np.inf))),                        # (B,H,T,T)
    ("Y", lambda f: f["P"] @ f["v"]),                                                   # (B,H,T,D)
    ("y", lambda f: merge_heads(f["Y"])),                                               # (B,T,C)
    ("att", lambda f: f["y"] @ f["attn.c_proj.weight"] + f["attn.c_proj.bias"]),        # (B,T,C)
    ("x2", lambda f: f["x"] + f["att"]),                                                # residual
    # ln_2
    ("rstd2", lambda f: 1 / np.sqrt(f["x2"].var(axis=-1, keepdims=True) + 1e-5)),       # (B,T,1)
    ("xhat2", lambda f: (f["x2"] - f["x2"].mean(axis=-1, keepdims=True)) * f["rstd2"]), # (B,T,C)
    ("h2", lambda f: f["xhat2"] * f["ln_2.weight"] + f["ln_2.bias"]),                   # (B,T,C)
    # MLP: C -> 4C, GELU, 4C -> C
    ("fc", lambda f: f["h2"] @ f["mlp.c_fc.weight"] + f["mlp.c_fc.bias"]),              # (B,T,4C)
    ("act", lambda f: gelu(f["fc"])),                                                   # (B,T,4C)
    ("mlp", lambda f: f["act"] @ f["mlp.c_proj.weight"] + f["mlp.c_proj.bias"]),        # (B,T,C)
    ("out", lambda f: f["x2"] + f["mlp"]),                                              # residual
    ("L", lambda f: (f["out"] * R).sum()),                                              # scalar
]
ORDER = [name for name, _ in STEPS]


def run(fwd, start=0):
    """The forward from line `start` on; every tensor it computes is stored in fwd -> L."""
    for name, step in STEPS[start:]:
        fwd[name] = step(fwd)
    return float(fwd["L"])


fwd = {**{name: a.copy() for name, a in p.items()}, "x": x_in.copy()}
print(f"L = {run(fwd):.6f}")
print("P of head 0, batch 0 (each row sums to 1 over the keys it may see):")
print(np.round(fwd["P"][0, 0], 3))

# %% [markdown]
# ## The references
#
# **The textbook's backward**, layer by layer: `numpygpt.block_forward` keeps one cache per
# layer, and the layers' backwards are called in reverse, keeping each intermediate gradient.
# dP, dS and the LayerNorms' dxhat live inside a layer's backward: they are read from its local
# variables (`dprobs`, `dscores`, `g`) as it returns. The pieces put together must equal
# `block_backward` exactly.

# %%
from numpygpt.layers import (layernorm_backward, linear_backward, gelu_backward,
                             causal_attention_backward)
from numpygpt.exercises.check import call


def with_locals(fn, *args, names):
    """fn(*args), and the values of its local variables `names` when it returned."""
    value, seen = call(fn, args, "", names)
    return value, seen


out_ref, cache = ng.block_forward(x_in, p, config)
assert np.allclose(out_ref, fwd["out"], rtol=1e-12, atol=0)   # the same forward
ln_1_cache, attn_cache, ln_2_cache, mlp_cache = cache
c_attn_cache, _, _, core_cache, c_proj_cache, _, _ = attn_cache   # ..., n_head, n_kv_head
fc_cache, gelu_cache, proj_cache = mlp_cache

ref = {"out": R, "mlp": R}                                    # out = x2 + mlp
ref["act"], g_proj = linear_backward(R, proj_cache)
ref["fc"], _ = gelu_backward(ref["act"], gelu_cache)
ref["h2"], g_fc = linear_backward(ref["fc"], fc_cache)
(dx_ln2, g_ln_2), seen = with_locals(layernorm_backward, ref["h2"], ln_2_cache, names=("g",))
ref["xhat2"] = seen["g"]
ref["x2"] = ref["att"] = dx_ln2 + R                           # x2 feeds ln_2 and the residual
ref["y"], g_cproj = linear_backward(ref["x2"], c_proj_cache)
ref["Y"] = split_heads(ref["y"], H)
((ref["q"], ref["k"], ref["v"]), _), seen = with_locals(
    causal_attention_backward, ref["Y"], core_cache, names=("dprobs", "dscores"))
ref["P"], ref["S"] = seen["dprobs"], seen["dscores"]
ref["qkv"] = np.concatenate([merge_heads(ref[n]) for n in "qkv"], axis=-1)
ref["h1"], g_cattn = linear_backward(ref["qkv"], c_attn_cache)
(dx_ln1, g_ln_1), seen = with_locals(layernorm_backward, ref["h1"], ln_1_cache, names=("g",))
ref["xhat1"] = seen["g"]
ref["x"] = dx_ln1 + ref["x2"]
ref.update({**prefixed("ln_1", g_ln_1), **prefixed("attn.c_attn", g_cattn),
            **prefixed("attn.c_proj", g_cproj), **prefixed("ln_2", g_ln_2),
            **prefixed("mlp.c_fc", g_fc), **prefixed("mlp.c_proj", g_proj)})

dx_block, grads_block = ng.block_backward(R, cache)
assert np.array_equal(ref["x"], dx_block)
assert all(np.array_equal(ref[name], g) for name, g in grads_block.items())
print(f"{len(ref)} reference gradients; dx and the {len(grads_block)} parameter gradients "
      f"equal block_backward's exactly")

# %% [markdown]
# **Finite differences** of L with respect to any tensor in `fwd`: an intermediate is nudged
# and the forward rerun from the line after it; a parameter or the input x reruns it all.
#
# `cmp(name, mine, reference)` prints both verdicts and stops the notebook on a wrong one.

# %%
CLOSE = 1e-8                                      # the exercises' "close", too
EPS, TOL = gradcheck.TOLERANCES["float64"]        # 1e-5, 1e-6


def numeric(name, idx):
    """dL/d fwd[name] at the flat indices idx, by central differences."""
    start = ORDER.index(name) + 1 if name in ORDER else 0
    fwd[name] = np.ascontiguousarray(fwd[name])   # perturbed in place
    n = numeric_gradient(lambda: run(fwd, start), fwd[name], idx, EPS)
    run(fwd, start)                               # the lines after it, as they were
    return n


def cmp(name, mine, reference, must_pass=True):
    if np.array_equal(mine, reference):
        verdict, err = "exact", 0.0
    else:
        err = relative_error(mine, reference)
        verdict = "close" if err <= CLOSE else "wrong"
    idx = np.sort(rng.choice(mine.size, size=min(16, mine.size), replace=False))
    a = mine.reshape(-1)[idx]
    fd = relative_error(a, numeric(name, idx), floor=gradcheck.FLOOR * np.abs(mine).max())
    print(f"d{name:<20} {verdict:<6} textbook {err:.1e}   finite differences {fd:.1e} "
          f"{'pass' if fd <= TOL else 'FAIL'} ({len(idx)} of {mine.size})")
    if must_pass:
        assert verdict != "wrong" and fd <= TOL, f"d{name} is wrong"
    return verdict, fd

# %% [markdown]
# ## The backward, one intermediate at a time
#
# Every name below is `d` + the forward's name: `dfc` is dL/d fc, of fc's shape. Matrices act
# on the last axis, so a weight's gradient sums over every (batch, position) row:
# `dW = x^T dout` on the rows flattened to (B*T, ...).
#
# **The output and the second residual.** `out = x2 + mlp`: an addition passes its gradient to
# both inputs unchanged. `dx2` gets a second share from the MLP branch, below.

# %%
dout = R                                          # L = sum(out * R)
dmlp = dout
cmp("out", dout, ref["out"])
cmp("mlp", dmlp, ref["mlp"])

# %% [markdown]
# **The MLP's output projection**, `mlp = act @ W + b`, (B,T,4C) -> (B,T,C).

# %%
W = fwd["mlp.c_proj.weight"]                                            # (4C,C)
dact = dmlp @ W.T                                                       # (B,T,C) -> (B,T,4C)
dW_mlp_proj = fwd["act"].reshape(-1, 4 * C).T @ dmlp.reshape(-1, C)     # (4C,C)
db_mlp_proj = dmlp.sum(axis=(0, 1))                                     # (C,)
cmp("act", dact, ref["act"])
cmp("mlp.c_proj.weight", dW_mlp_proj, ref["mlp.c_proj.weight"])
cmp("mlp.c_proj.bias", db_mlp_proj, ref["mlp.c_proj.bias"])

# %% [markdown]
# **GELU**, `act = 0.5 fc (1 + th)`, `th = tanh(s (fc + 0.044715 fc^3))`: the product rule,
# and the chain rule through tanh (`tanh' = 1 - th^2`).

# %%
s = np.sqrt(2 / np.pi)
z = fwd["fc"]
th = np.tanh(s * (z + 0.044715 * z ** 3))
dfc = dact * (0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * s * (1 + 3 * 0.044715 * z ** 2))
cmp("fc", dfc, ref["fc"])

# %% [markdown]
# **The MLP's first layer**, `fc = h2 @ W + b`, (B,T,C) -> (B,T,4C).

# %%
W = fwd["mlp.c_fc.weight"]                                              # (C,4C)
dh2 = dfc @ W.T                                                         # (B,T,4C) -> (B,T,C)
dW_fc = fwd["h2"].reshape(-1, C).T @ dfc.reshape(-1, 4 * C)             # (C,4C)
db_fc = dfc.sum(axis=(0, 1))                                            # (4C,)
cmp("h2", dh2, ref["h2"])
cmp("mlp.c_fc.weight", dW_fc, ref["mlp.c_fc.weight"])
cmp("mlp.c_fc.bias", db_fc, ref["mlp.c_fc.bias"])

# %% [markdown]
# **LayerNorm ln_2**, `h2 = xhat2 w + b`, `xhat2 = (x2 - mean) rstd`. The gradient at xhat is
# `dh2 w`; to reach x2 it must go through the mean and through rstd as well, both functions of
# every input of the row:
# `dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`.
# Then the first residual: x2 also went straight to `out`, so `dx2` adds `dout`.

# %%
xhat, rstd, w = fwd["xhat2"], fwd["rstd2"], fwd["ln_2.weight"]
dxhat2 = dh2 * w                                                        # (B,T,C)
dw_ln_2 = (dh2 * xhat).sum(axis=(0, 1))                                 # (C,)
db_ln_2 = dh2.sum(axis=(0, 1))                                          # (C,)
dx2 = rstd * (dxhat2 - dxhat2.mean(axis=-1, keepdims=True)
              - xhat * (dxhat2 * xhat).mean(axis=-1, keepdims=True))    # through ln_2
dx2 = dx2 + dout                                                        # and the residual
cmp("xhat2", dxhat2, ref["xhat2"])
cmp("ln_2.weight", dw_ln_2, ref["ln_2.weight"])
cmp("ln_2.bias", db_ln_2, ref["ln_2.bias"])
cmp("x2", dx2, ref["x2"])

# %% [markdown]
# **The attention's output projection.** `x2 = x + att`: att gets dx2 unchanged (x's share
# comes at the very end). `att = y @ W + b`.

# %%
datt = dx2
W = fwd["attn.c_proj.weight"]                                           # (C,C)
dy = datt @ W.T                                                         # (B,T,C)
dW_attn_proj = fwd["y"].reshape(-1, C).T @ datt.reshape(-1, C)          # (C,C)
db_attn_proj = datt.sum(axis=(0, 1))                                    # (C,)
cmp("att", datt, ref["att"])
cmp("y", dy, ref["y"])
cmp("attn.c_proj.weight", dW_attn_proj, ref["attn.c_proj.weight"])
cmp("attn.c_proj.bias", db_attn_proj, ref["attn.c_proj.bias"])

# %% [markdown]
# **Heads.** `y = merge_heads(Y)` is a transpose and a reshape: its backward is the inverse,
# `split_heads`. (A plain reshape to (B,H,T,D) without the transpose gives each head other
# positions' rows: the zoo's `heads-reshaped` bug.)

# %%
dY = split_heads(dy, H)                                                 # (B,T,C) -> (B,H,T,D)
cmp("Y", dY, ref["Y"])

# %% [markdown]
# **The attention core**, `Y = P v`, per head a (T,T) @ (T,D) matmul: `dP = dY v^T`,
# `dv = P^T dY`.

# %%
P, q, k, v = fwd["P"], fwd["q"], fwd["k"], fwd["v"]
dP = dY @ v.swapaxes(-1, -2)                                            # (B,H,T,T)
dv = P.swapaxes(-1, -2) @ dY                                            # (B,H,T,D)
cmp("P", dP, ref["P"])
cmp("v", dv, ref["v"])

# %% [markdown]
# **The softmax**, row by row: `P = softmax(S)` has the Jacobian `diag(P) - P P^T`, so
# `dS = P * (dP - rowsum(dP * P))`. The masked entries (keys after the query) have P = 0: their
# dS is 0, and nudging them changes nothing, as the finite differences confirm.
#
# First the classic mistake, the rowsum forgotten, to see what `wrong` looks like: both
# references reject it.

# %%
dS_wrong = P * dP                                                       # BUG: - rowsum(dP * P) dropped
verdict, fd = cmp("S", dS_wrong, ref["S"], must_pass=False)
assert verdict == "wrong" and fd > TOL

dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))                    # (B,H,T,T)
cmp("S", dS, ref["S"])
assert np.all(dS[..., ~causal] == 0)                                    # nothing above the diagonal

# %% [markdown]
# **The scores**, `S = q k^T / sqrt(D)`: `dq = dS k / sqrt(D)`, `dk = dS^T q / sqrt(D)`.
# Forgetting the 1/sqrt(D) is the zoo's `attention-no-scale`.

# %%
dq = dS @ k / np.sqrt(D)                                                # (B,H,T,D)
dk = dS.swapaxes(-1, -2) @ q / np.sqrt(D)                               # (B,H,T,D)
cmp("q", dq, ref["q"])
cmp("k", dk, ref["k"])

# %% [markdown]
# **Heads back together, and the fused projection.** q, k and v were three slices of one
# `qkv = h1 @ W + b`: their gradients, merged back to (B,T,C), are its three slices.

# %%
dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)   # (B,T,3C)
W = fwd["attn.c_attn.weight"]                                           # (C,3C)
dh1 = dqkv @ W.T                                                        # (B,T,C)
dW_attn = fwd["h1"].reshape(-1, C).T @ dqkv.reshape(-1, 3 * C)          # (C,3C)
db_attn = dqkv.sum(axis=(0, 1))                                         # (3C,)
cmp("qkv", dqkv, ref["qkv"])
cmp("h1", dh1, ref["h1"])
cmp("attn.c_attn.weight", dW_attn, ref["attn.c_attn.weight"])
cmp("attn.c_attn.bias", db_attn, ref["attn.c_attn.bias"])

# %% [markdown]
# **LayerNorm ln_1, and the first residual.** The same LayerNorm backward; then x's second
# share: `x2 = x + att` passed dx2 to x unchanged.

# %%
xhat, rstd, w = fwd["xhat1"], fwd["rstd1"], fwd["ln_1.weight"]
dxhat1 = dh1 * w
dw_ln_1 = (dh1 * xhat).sum(axis=(0, 1))
db_ln_1 = dh1.sum(axis=(0, 1))
dx = rstd * (dxhat1 - dxhat1.mean(axis=-1, keepdims=True)
             - xhat * (dxhat1 * xhat).mean(axis=-1, keepdims=True))     # through ln_1
dx = dx + dx2                                                           # and the residual
cmp("xhat1", dxhat1, ref["xhat1"])
cmp("ln_1.weight", dw_ln_1, ref["ln_1.weight"])
cmp("ln_1.bias", db_ln_1, ref["ln_1.bias"])
cmp("x", dx, ref["x"])

# %% [markdown]
# ## All together
#
# Every gradient of the block, written by hand, against `block_backward`'s, and the whole
# hand-written backward through `gradcheck.check_pair`: the checker numpygpt's tests use on
# every layer, on every coordinate of every tensor this time.

# %%
mine = {"ln_1.weight": dw_ln_1, "ln_1.bias": db_ln_1,
        "attn.c_attn.weight": dW_attn, "attn.c_attn.bias": db_attn,
        "attn.c_proj.weight": dW_attn_proj, "attn.c_proj.bias": db_attn_proj,
        "ln_2.weight": dw_ln_2, "ln_2.bias": db_ln_2,
        "mlp.c_fc.weight": dW_fc, "mlp.c_fc.bias": db_fc,
        "mlp.c_proj.weight": dW_mlp_proj, "mlp.c_proj.bias": db_mlp_proj}
assert sorted(mine) == sorted(grads_block)
worst = max(relative_error(mine[n], grads_block[n]) for n in mine)
print(f"12 parameter gradients against block_backward: worst relative error {worst:.1e}")
assert worst <= CLOSE and relative_error(dx, dx_block) <= CLOSE


def my_block_forward(x, p):
    f = {**p, "x": x}
    run(f)
    return f["out"], f


def my_block_backward(dout, f):
    """The cells above, as one function: dout (B,T,C) -> dx, grads."""
    d = {}
    d["act"] = dout @ f["mlp.c_proj.weight"].T
    d["mlp.c_proj.weight"] = f["act"].reshape(-1, 4 * C).T @ dout.reshape(-1, C)
    d["mlp.c_proj.bias"] = dout.sum(axis=(0, 1))
    z = f["fc"]
    th = np.tanh(s * (z + 0.044715 * z ** 3))
    d["fc"] = d["act"] * (0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * s * (1 + 3 * 0.044715 * z ** 2))
    d["h2"] = d["fc"] @ f["mlp.c_fc.weight"].T
    d["mlp.c_fc.weight"] = f["h2"].reshape(-1, C).T @ d["fc"].reshape(-1, 4 * C)
    d["mlp.c_fc.bias"] = d["fc"].sum(axis=(0, 1))
    d["x2"] = layernorm_dx(d["h2"], f, "2", d) + dout
    d["y"] = d["x2"] @ f["attn.c_proj.weight"].T
    d["attn.c_proj.weight"] = f["y"].reshape(-1, C).T @ d["x2"].reshape(-1, C)
    d["attn.c_proj.bias"] = d["x2"].sum(axis=(0, 1))
    dY = split_heads(d["y"], H)
    dP = dY @ f["v"].swapaxes(-1, -2)
    dv = f["P"].swapaxes(-1, -2) @ dY
    dS = f["P"] * (dP - (dP * f["P"]).sum(axis=-1, keepdims=True))
    dq = dS @ f["k"] / np.sqrt(D)
    dk = dS.swapaxes(-1, -2) @ f["q"] / np.sqrt(D)
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    d["h1"] = dqkv @ f["attn.c_attn.weight"].T
    d["attn.c_attn.weight"] = f["h1"].reshape(-1, C).T @ dqkv.reshape(-1, 3 * C)
    d["attn.c_attn.bias"] = dqkv.sum(axis=(0, 1))
    dx = layernorm_dx(d["h1"], f, "1", d) + d["x2"]
    return dx, {name: d[name] for name in p}


def layernorm_dx(dh, f, i, d):
    """ln_i's backward: its parameters' gradients into d, and dx returned."""
    xhat, rstd, w = f[f"xhat{i}"], f[f"rstd{i}"], f[f"ln_{i}.weight"]
    d[f"ln_{i}.weight"] = (dh * xhat).sum(axis=(0, 1))
    d[f"ln_{i}.bias"] = dh.sum(axis=(0, 1))
    g = dh * w
    return rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))


results = gradcheck.check_pair(my_block_forward, my_block_backward, x_in.copy(),
                               {n: a.copy() for n, a in p.items()}, max_coords=None)
lines, ok = gradcheck.format_report(results)
print("\n".join(lines))
assert ok

# %% [markdown]
# Next: `numpygpt exercise start course` writes these backwards (and the embedding's, the
# loss's, the whole GPT's and the tiled attention's) as stubs for you to fill in;
# `numpygpt exercise check course` grades them tensor by tensor, and names the mistake when
# the bug zoo knows it (docs/exercises.md).
