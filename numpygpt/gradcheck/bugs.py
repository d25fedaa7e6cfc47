"""The bug zoo: classic backprop and loss bugs, each a wrong function written beside the right
one, and the context manager that swaps it in.

    with swapped((layernorm_backward, layernorm_backward_no_mean_terms)):
        ...        # every numpygpt module now calls the wrong LayerNorm backward

Most wrong functions below are a copy of the right one with the line marked `# BUG` changed
(`numpygpt gradcheck --bug NAME` prints the diff); a few wrap the right one. The layer files
stay as a reader studies them: no flag in them turns a bug on.

Callers import functions by name (`from .linear import linear_backward`), so a swap rebinds
every module-global name in numpygpt's modules that refers to the right function object, and
restores them on exit, even on error. This module, loss_bugs.py (the wrong losses and labels)
and attention_bugs.py (grouped-query attention's and the rolling KV cache's) are left alone by
the swap: their wrong functions call the right ones they wrap.

BUGS maps a bug's name to a Bug: what it is, where it is checked (a "home", problems.py), which
checks are expected to catch it and why the others miss it. gradcheck/zoo.py runs them.
"""
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..labels import causal_lm_labels, sft_labels
from ..layers import (prefixed, linear_backward, embedding_backward, layernorm_backward,
                      gelu_backward, causal_attention_backward, tiled_attention_backward,
                      attention_backward, mlp_backward, merge_heads, rope_backward,
                      lm_head_backward, cross_entropy)
from ..layers.attention import repeat_kv_backward
from ..layers.causal_mask import allowed_keys
from ..decode.kv_cache import move_to_front
from ..model import gpt_backward, block_backward
from .problems import accumulate_grads
from .loss_bugs import (cross_entropy_over_all_positions, cross_entropy_ignored_rows_trained,
                        accumulate_grads_own_count, causal_lm_labels_not_shifted,
                        causal_lm_labels_shifted_twice, sft_labels_last_prompt_masked)
from .attention_bugs import repeat_kv_backward_one_head, move_to_front_one_slot_late

CHECKS = ("coordinate", "directional", "property", "oracle")
LEFT_ALONE = (__name__, accumulate_grads_own_count.__module__,   # the wrong functions' modules
              repeat_kv_backward_one_head.__module__)


def rebound(bug):
    """The module-global names a bug's swap rebinds (where numpygpt refers to the function)."""
    with swapped(*bug.swaps) as names:
        return names


@contextmanager
def swapped(*pairs):
    """with swapped((right, wrong), ...): inside the block, every global name of every loaded
    numpygpt module (this one excepted) bound to `right` is bound to `wrong`."""
    changed = []
    try:
        for right, wrong in pairs:
            for name, module in list(sys.modules.items()):
                if module is None or name in LEFT_ALONE or not (
                        name == "numpygpt" or name.startswith("numpygpt.")):
                    continue
                for attr, value in list(vars(module).items()):
                    if value is right:
                        setattr(module, attr, wrong)
                        changed.append((module, attr, right))
        yield [f"{m.__name__}.{attr}" for m, attr, _ in changed]
    finally:
        for module, attr, right in reversed(changed):
            setattr(module, attr, right)


# ---- layer backwards ------------------------------------------------------------------------

def linear_backward_no_transpose(dout, cache):
    """dout (...,Cout) -> dx (...,Cin), {"weight": (Cin,Cout), "bias": (Cout,)}."""
    x, weight = cache
    Cin, Cout = weight.shape
    dx = dout @ weight                                             # BUG: weight.T (runs if Cin == Cout)
    dweight = x.reshape(-1, Cin).T @ dout.reshape(-1, Cout)       # (Cin,N) @ (N,Cout)
    dbias = dout.reshape(-1, Cout).sum(axis=0)                     # (Cout,)
    return dx, {"weight": dweight, "bias": dbias}


def embedding_backward_assign(dx, cache):
    """dx (B,T,C) -> None (ids have no gradient), {"wte.weight": (V,C), ["wpe.weight": ...]}."""
    input_ids, position_ids, shapes = cache
    C = dx.shape[-1]
    rows = dx.reshape(-1, C)                                       # (N,C), N = B*T
    grads = {}
    for name, ids in (("wte.weight", input_ids), ("wpe.weight", position_ids)):
        if name in shapes:
            grads[name] = np.zeros(shapes[name], dtype=dx.dtype)
            grads[name][np.asarray(ids).reshape(-1)] += rows     # BUG: a repeated id keeps one write
    return None, grads


def causal_attention_backward_no_rowsum(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, probs = cache
    D = q.shape[-1]
    # y = probs @ v
    dv = probs.swapaxes(-1, -2) @ dy                                # (B,H,Tk,T) @ (B,H,T,D) -> (B,H,Tk,D)
    dprobs = dy @ v.swapaxes(-1, -2)                                # (B,H,T,D) @ (B,H,D,Tk) -> (B,H,T,Tk)
    # probs = softmax(scores): masked entries have probs = 0, so they get no gradient
    dscores = probs * dprobs                                        # BUG: - rowsum(dprobs * probs) dropped
    # scores = q @ k^T / sqrt(D)
    dq = dscores @ k / math.sqrt(D)                                 # (B,H,T,Tk) @ (B,H,Tk,D) -> (B,H,T,D)
    dk = dscores.swapaxes(-1, -2) @ q / math.sqrt(D)                # (B,H,Tk,T) @ (B,H,T,D) -> (B,H,Tk,D)
    return (dq, dk, dv), {}


def causal_attention_backward_no_scale(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, probs = cache
    D = q.shape[-1]
    # y = probs @ v
    dv = probs.swapaxes(-1, -2) @ dy                                # (B,H,Tk,T) @ (B,H,T,D) -> (B,H,Tk,D)
    dprobs = dy @ v.swapaxes(-1, -2)                                # (B,H,T,D) @ (B,H,D,Tk) -> (B,H,T,Tk)
    # probs = softmax(scores): masked entries have probs = 0, so they get no gradient
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))   # (B,H,T,Tk)
    # scores = q @ k^T / sqrt(D)
    dq = dscores @ k                                                # BUG: / math.sqrt(D) forgotten
    dk = dscores.swapaxes(-1, -2) @ q                               # BUG: / math.sqrt(D) forgotten
    return (dq, dk, dv), {}


def tiled_attention_backward_unmasked(dy, cache):
    """dy (B,H,T,D) -> (dq, dk, dv), {}."""
    q, k, v, key_mask, q_tile, k_tile, window, y, lse = cache
    T, D = q.shape[2], q.shape[3]
    Tk = k.shape[2]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    delta = (dy * y).sum(axis=-1, keepdims=True)                   # (B,H,T,1) = rowsum(dP * P)
    for i0 in range(0, T, q_tile):
        i1 = min(i0 + q_tile, T)
        q_i, dy_i = q[:, :, i0:i1], dy[:, :, i0:i1]                # (B,H,bq,D)
        for j0 in range(0, Tk - T + i1, k_tile):
            j1 = min(j0 + k_tile, Tk - T + i1)
            if window is not None and j1 <= Tk - T + i0 - window + 1:
                continue             # every key of the tile is older than every query's window
            s = q_i @ k[:, :, j0:j1].swapaxes(-1, -2) / math.sqrt(D)             # (B,H,bq,bk)
            # BUG: the recomputed tile is not masked (allowed_keys): later keys get probability
            p = np.exp(s - lse[:, :, i0:i1])                       # the tile's probabilities
            dv[:, :, j0:j1] += p.swapaxes(-1, -2) @ dy_i           # (B,H,bk,bq) @ (B,H,bq,D)
            dp = dy_i @ v[:, :, j0:j1].swapaxes(-1, -2)            # (B,H,bq,D) @ (B,H,D,bk)
            ds = p * (dp - delta[:, :, i0:i1])                     # (B,H,bq,bk)
            dq[:, :, i0:i1] += ds @ k[:, :, j0:j1] / math.sqrt(D)  # (B,H,bq,bk) @ (B,H,bk,D)
            dk[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i / math.sqrt(D)          # (B,H,bk,D)
    return (dq, dk, dv), {}


def allowed_keys_window_off_by_one(n_query, n_key, key_mask=None, queries=None, keys=None, window=None):
    """Which keys each query may see: the one masking rule of both cores.
    Query i sits at position n_key - n_query + i (the queries are the last n_query of the
    n_key positions) and sees key s when position - window < s <= position (no lower limit
    when window is None) and key s is not padding.
    queries, keys: (start, stop) ranges to return a tile of; default all of them.
    -> bool (nq,nk), or (B,1,nq,nk) with key_mask (B,n_key)."""
    i0, i1 = queries or (0, n_query)
    j0, j1 = keys or (0, n_key)
    position = np.arange(i0, i1)[:, None] + (n_key - n_query)      # (nq,1) the queries' positions
    key = np.arange(j0, j1)[None, :]                                # (1,nk) the keys' positions
    allowed = key <= position                                       # (nq,nk) causal
    if window is not None:
        allowed = allowed & (key >= position - window)              # BUG: t - W <= s, W + 1 keys
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, j0:j1]          # (B,1,nq,nk) and not padding
    return allowed


def layernorm_backward_no_mean_terms(dout, cache):
    """dout (...,C) -> dx (...,C), {"weight": (C,), "bias": (C,)}."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    # out = xhat * weight + bias
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)      # (C,)
    dbias = dout.reshape(-1, C).sum(axis=0)                 # (C,)
    g = dout * weight                                       # (...,C) d loss / d xhat
    # xhat = (x - mean) * rstd, mean and rstd being functions of x
    dx = rstd * g                                           # BUG: mean and rstd taken as constants
    return dx, {"weight": dweight, "bias": dbias}


def gelu_backward_erf(dout, cache):
    """BUG: the derivative of the exact GELU x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2,
    under GPT-2's tanh-approximation forward: off by up to ~1e-3 of dout."""
    (x,) = cache
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dout * (cdf + x * pdf), {}


def attention_backward_heads_reshaped(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    c_attn_cache, rope_cache, attention, core_cache, c_proj_cache, n_head, n_kv_head = cache
    dy, g_proj = linear_backward(dout, c_proj_cache)             # out = merge(y) @ W_proj + b
    B, T, C = dy.shape
    dy = dy.reshape(B, n_head, T, C // n_head)                   # BUG: split_heads(dy, n_head)
    if attention == "tiled":
        (dq, dk, dv), _ = tiled_attention_backward(dy, core_cache)
    else:
        (dq, dk, dv), _ = causal_attention_backward(dy, core_cache)
    dk = repeat_kv_backward(dk, n_head // n_kv_head)             # (B,H,T,D) -> (B,K,T,D): group sums
    dv = repeat_kv_backward(dv, n_head // n_kv_head)             # (B,H,T,D) -> (B,K,T,D)
    if rope_cache is not None:                                   # q, k = rope(q), rope(k)
        dq, _ = rope_backward(dq, rope_cache)
        dk, _ = rope_backward(dk, rope_cache)
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B,T,C+2KD)
    dx, g_attn = linear_backward(dqkv, c_attn_cache)             # qkv = x @ W_attn + b
    return dx, {**prefixed("c_attn", g_attn), **prefixed("c_proj", g_proj)}


def mlp_backward_no_gelu(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    fc_cache, gelu_cache, proj_cache = cache
    da, g_proj = linear_backward(dout, proj_cache)               # out = a @ W_proj + b
    dh = da                                                      # BUG: gelu_backward(da, gelu_cache)
    dx, g_fc = linear_backward(dh, fc_cache)                     # h = x @ W_fc + b
    return dx, {**prefixed("c_fc", g_fc), **prefixed("c_proj", g_proj)}


def block_backward_no_residual(dout, cache):
    """dout (B,T,C) -> dx (B,T,C), grads with p's keys."""
    ln_1_cache, attn_cache, ln_2_cache, mlp_cache = cache
    dh, g_mlp = mlp_backward(dout, mlp_cache)
    dx, g_ln_2 = layernorm_backward(dh, ln_2_cache)              # BUG: dx = dx + dout dropped
    dh, g_attn = attention_backward(dx, attn_cache)
    dx_in, g_ln_1 = layernorm_backward(dh, ln_1_cache)
    dx_in = dx_in + dx
    return dx_in, {**prefixed("ln_1", g_ln_1), **prefixed("attn", g_attn),
                   **prefixed("ln_2", g_ln_2), **prefixed("mlp", g_mlp)}


# ---- the model, the loss, the labels --------------------------------------------------------

def gpt_backward_tied_one_use(cache):
    """The gradients of gpt_forward's loss, one per parameter (params' keys): the forward
    undone, from the loss back to the embedding."""
    top, ln_f_cache, block_caches, emb_cache, tied = cache
    if top[0] == "standard":
        _, dlogits, head_cache = top
        dx, g_head = lm_head_backward(dlogits, head_cache)                     # (B,T,V) -> (B,T,C)
    else:
        _, dx, g_head = top                                # the chunked loss did it with the loss
    dx, g_ln_f = layernorm_backward(dx, ln_f_cache)                            # (B,T,C)
    grads = prefixed("ln_f", g_ln_f)
    for i in reversed(range(len(block_caches))):
        dx, g = block_backward(dx, block_caches[i])                            # (B,T,C)
        grads.update(prefixed(f"h.{i}", g))
    _, g_emb = embedding_backward(dx, emb_cache)
    grads.update(g_emb)
    if tied:            # wte is used twice, embedding and lm_head: its gradient is the sum
        grads["wte.weight"] = g_head["weight"]                 # BUG: the embedding's use lost
    else:
        grads["lm_head.weight"] = g_head["weight"]
    return grads


# ---- the zoo --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    home: str               # where it is checked (problems.HOMES)
    swaps: tuple            # ((right, wrong), ...)
    caught_by: tuple        # the CHECKS expected to catch it; the others are expected to miss
    why: str                # why the ones that miss it miss it
    show: str = "diff"      # --bug prints the wrong function as a diff or as its source

    def expected(self, check):
        return "caught" if check in self.caught_by else "missed"


GRAD, ALL, LOSS = ("coordinate", "directional", "oracle"), CHECKS, ("property", "oracle")
BACKWARD_WHY = ("a wrong backward: finite differences and torch see it; the additivity property "
                "compares the layer with itself, wrong the same way on both sides")
MODEL_WHY = ("a wrong backward: finite differences and torch see it; every property compares the "
             "model with itself (batch splits, reductions, labels), wrong the same way on both sides")
LOSS_WHY = ("a right gradient of a wrong loss: finite differences differentiate the same wrong "
            "loss and agree; the properties and the oracle (which builds its own labels and loss "
            "from the raw examples) see it")

BUGS = {b.name: b for b in [
    Bug("linear-dx-no-transpose", "linear backward dx = dout @ W, not dout @ W^T (square W)",
        "linear-square", ((linear_backward, linear_backward_no_transpose),), GRAD, BACKWARD_WHY),
    Bug("embedding-assign", "embedding backward dW[ids] += dx, not np.add.at: repeated ids lose "
        "writes", "embedding", ((embedding_backward, embedding_backward_assign),), ALL,
        "the lost writes depend on which ids share a batch, so the two halves' gradients do not "
        "add up to the whole batch's: even the additivity property sees it"),
    Bug("softmax-no-rowsum", "attention softmax backward dS = P * dP, the row-sum term dropped",
        "attention_core", ((causal_attention_backward, causal_attention_backward_no_rowsum),),
        GRAD, BACKWARD_WHY),
    Bug("layernorm-no-mean-terms", "LayerNorm backward dx = rstd * g: mean and rstd taken as "
        "constants", "layernorm", ((layernorm_backward, layernorm_backward_no_mean_terms),),
        GRAD, BACKWARD_WHY),
    Bug("attention-no-scale", "attention backward: dq, dk not multiplied by 1/sqrt(D)",
        "attention_core", ((causal_attention_backward, causal_attention_backward_no_scale),),
        GRAD, BACKWARD_WHY),
    Bug("causal-mask-grad", "tiled attention backward recomputes P without the causal mask: "
        "masked scores get gradient", "tiled_attention",
        ((tiled_attention_backward, tiled_attention_backward_unmasked),), GRAD, BACKWARD_WHY),
    Bug("window-off-by-one", "sliding window t - W <= s <= t: each query sees W + 1 keys, "
        "one too many", "window_attention", ((allowed_keys, allowed_keys_window_off_by_one),),
        ("oracle",), "a wrong forward (the mask), differentiated right: finite differences "
        "differentiate the same wrong function and agree, the additivity property holds for it; "
        "only torch, with its own banded mask, sees it (as does tests/layers/test_causal_mask.py, "
        "which holds allowed_keys to a band built from the definition)"),
    Bug("gqa-dk-not-summed", "grouped-query attention backward: each key/value head's dk, dv "
        "taken from the first query head of its group, not summed over the group",
        "gqa_attention", ((repeat_kv_backward, repeat_kv_backward_one_head),), ALL,
        "a wrong backward: finite differences and torch see it; additivity compares the layer "
        "with itself, wrong the same way on both sides, and holds; tying compares it with "
        "multi-head attention whose key/value heads are copies (K = H, where the group sum is "
        "not used) and sees it"),
    Bug("rolling-cache-wrong-slot", "sliding-window KV cache: the kept W - 1 keys and values "
        "moved to slots 1..W-1, not 0..W-2 (the key mask says 0..W-2)", "rolling_cache",
        ((move_to_front, move_to_front_one_slot_late),), ("property", "oracle"),
        "a decoding bug: training never uses the cache, so finite differences of the training "
        "loss agree with its gradients; decoding equals the full forward until the buffer "
        "first slides, then the decode property and torch's full forward see it"),
    Bug("gelu-erf-derivative", "GELU backward of the exact erf GELU under the tanh forward "
        "(~1e-3 off)", "gelu", ((gelu_backward, gelu_backward_erf),), GRAD,
        BACKWARD_WHY + "; the error is small (~1e-3) but 1e3 x the float64 tolerance", show="source"),
    Bug("heads-reshaped", "attention layer backward splits dy into heads by reshape, not "
        "transpose: each head gets other positions' rows", "model",
        ((attention_backward, attention_backward_heads_reshaped),), GRAD, MODEL_WHY),
    Bug("mlp-no-gelu", "MLP backward passes the gradient through GELU unchanged: dh = da",
        "model", ((mlp_backward, mlp_backward_no_gelu),), GRAD, MODEL_WHY),
    Bug("block-no-residual", "block backward drops the MLP residual's gradient: dx misses "
        "+ dout", "model", ((block_backward, block_backward_no_residual),), GRAD, MODEL_WHY),
    Bug("tied-one-use", "tied wte = lm_head: the lm_head's gradient replaces the sum of both uses",
        "model", ((gpt_backward, gpt_backward_tied_one_use),), GRAD, MODEL_WHY),
    Bug("loss-grad-ignored-rows", "cross-entropy gradient not zeroed on -100 rows: they keep "
        "softmax / count", "model", ((cross_entropy, cross_entropy_ignored_rows_trained),), GRAD,
        MODEL_WHY + "; the loss itself is right", show="source"),
    Bug("loss-mean-all-positions", "cross-entropy mean over all B*T positions, -100 ones "
        "included", "model", ((cross_entropy, cross_entropy_over_all_positions),), LOSS,
        LOSS_WHY, show="source"),
    Bug("accumulation-own-count", "gradient accumulation: each micro-batch's mean over its own "
        "count, averaged", "accumulation", ((accumulate_grads, accumulate_grads_own_count),),
        LOSS, LOSS_WHY + "; only because the micro-batches count different numbers of targets "
        "(8 and 6): with equal counts the bug does no harm"),
    Bug("labels-not-shifted", "causal_lm_labels without the shift: position t predicts token t",
        "model", ((causal_lm_labels, causal_lm_labels_not_shifted),), LOSS,
        LOSS_WHY),
    Bug("labels-shifted-twice", "aligned labels shifted again as if HF-form: t predicts t+2",
        "model", ((causal_lm_labels, causal_lm_labels_shifted_twice),), LOSS,
        LOSS_WHY, show="source"),
    Bug("sft-last-prompt-masked", "SFT labels mask the last prompt token too: the first answer "
        "token is never trained", "model", ((sft_labels, sft_labels_last_prompt_masked),), LOSS,
        LOSS_WHY),
]}
