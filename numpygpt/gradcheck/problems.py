"""What the bug zoo checks: small float64 problems ("homes") and the properties that must hold.

A layer home is one layer on random inputs, loss = sum(out * R) (gradcheck/layers.py). The
model homes are a tiny GPT trained on a batch of SFT examples, with labels built from the raw
(prompt, answer) pairs by numpygpt.labels, as training builds them:

    "model"          loss, grads = model.loss_and_grads(**batch)          one batch
    "accumulation"   the same batch as two micro-batches, accumulate_grads()
    "rolling_cache"  the zoo's GPT with a sliding window on two sequences longer than its KV
                     cache's buffer: trained (the gradchecks), decoded token by token with
                     the cache (the property and the oracle)

Everything here is built on call, reading numpygpt's functions through this module's globals:
inside bugs.swapped(...) a problem is built from the wrong function.

The properties relate numbers the code computes to each other or to first principles:
    additivity     (layers) the gradients of a batch = those of its two halves, summed
                   (parameters) or side by side (inputs): a batch's loss is a sum over rows
    tying          (gqa_attention) grouped-query attention = multi-head attention whose
                   key/value heads are copies, one per query head: its gradients are the
                   copies' gradients summed (W_mha = W_gqa @ S, so dW_gqa = dW_mha @ S^T)
    decode         (rolling_cache) decoding token by token with the KV cache = the full
                   forward, position by position
    accumulation   micro-batches accumulated with num_items = the full batch's loss and grads
    sum=mean*n     reduction "sum" = "mean" x count_targets(labels), loss and grads
    shift          aligned labels are the inputs shifted by one, -100 where nothing follows
    sft-rule       SFT labels: -100 before the last prompt token, which predicts the first
                   answer token and counts; each answer token predicts the next
    prefix         the lesson's identity: the masked full-sequence loss = the loss of scoring
                   the answer token by token after the prompt (each prefix run on its own)
"""
from dataclasses import dataclass, replace

import numpy as np

from ..config import GPTConfig, Execution
from ..labels import IGNORE_INDEX, causal_lm_labels, sft_labels, sft_batch
from ..decode import KVCache
from ..layers import (count_targets, linear_forward, linear_backward, causal_attention_forward,
                      causal_attention_backward, attention_forward, attention_backward)
from ..model import GPT
from .core import relative_error
from .layers import CHECK_EXECUTION, layer_problem, unit_scale_params

LAYER_HOMES = ("linear-square", "embedding", "layernorm", "gelu", "attention_core",
               "tiled_attention", "window_attention", "gqa_attention")
MODEL_HOMES = ("model", "accumulation", "rolling_cache")
HOMES = LAYER_HOMES + MODEL_HOMES
# the zoo's GPT: standard loss (lm_head, then cross_entropy), so the loss code is the one checked
ZOO_CONFIG = GPTConfig(vocab_size=11, n_positions=16, n_embd=8, n_head=2, n_layer=1)
ZOO_EXECUTION = Execution(attention="standard", loss="standard")
EOT = ZOO_CONFIG.vocab_size - 1           # end of text, appended to each answer; also the pad id
PROMPT_LENGTHS, ANSWER_LENGTHS = (3, 2, 4, 2), (2, 4, 1, 3)   # micro-batches of 8 and 6 targets
ZOO_WINDOW = 2                            # the window_attention home: T = 6 queries, W = 2
# the gqa_attention home: H = 4 query heads in 2 groups, one key/value head each (D = 2)
GQA_CONFIG = GPTConfig(vocab_size=11, n_positions=16, n_embd=8, n_head=4, n_kv_head=2, n_layer=1)
# the rolling_cache home: W = 2, so the cache holds 2W = 4 slots and 12 tokens slide it 3 times
CACHE_CONFIG = replace(ZOO_CONFIG, sliding_window=ZOO_WINDOW)
CACHE_SHAPE = (2, 12)
PROPERTY_TOL = 1e-9                       # relative, float64; label properties must be exact
LABEL_PROPERTIES = ("shift", "sft-rule")  # their difference: the fraction of labels wrong


@dataclass
class PropertyResult:
    name: str
    holds: bool
    difference: float     # relative difference, or the fraction of labels that are wrong
    what: str


# ---- the homes ------------------------------------------------------------------------------

def layer_home(home, seed=0):
    """-> (forward, backward, x, p, input_names) of a layer home, float64."""
    if home == "linear-square":     # W (C,C): a missing transpose still has the right shapes
        rng = np.random.default_rng(seed)
        C = ZOO_CONFIG.n_embd
        x = rng.standard_normal((2, 5, C))
        p = {"weight": rng.standard_normal((C, C)) / np.sqrt(C), "bias": 0.1 * rng.standard_normal(C)}
        return (lambda x, p: linear_forward(x, p)), linear_backward, x, p, None
    if home == "window_attention":  # the standard core with a sliding window, T > W
        rng = np.random.default_rng(seed)
        qkv = tuple(rng.standard_normal((2, 2, 6, 3)) for _ in range(3))
        forward = lambda x, p: causal_attention_forward(*x, None, ZOO_WINDOW)
        return forward, causal_attention_backward, qkv, {}, ("q", "k", "v")
    if home == "gqa_attention":     # the attention layer, K = 2 key/value heads for H = 4
        return layer_problem("attention", config=GQA_CONFIG, seed=seed)
    return layer_problem(home, seed=seed)


def zoo_examples(seed=0):
    """4 (prompt, answer) pairs of token ids in [0, EOT), of the lengths above."""
    rng = np.random.default_rng(seed + 1)
    return [(rng.integers(0, EOT, n_p), rng.integers(0, EOT, n_a))
            for n_p, n_a in zip(PROMPT_LENGTHS, ANSWER_LENGTHS)]


def zoo_model(seed=0):
    model = GPT(ZOO_CONFIG, seed=seed, dtype=np.float64, execution=ZOO_EXECUTION)
    unit_scale_params(model.params, np.random.default_rng(seed))
    return model


def model_batch(examples):
    """The SFT batch training builds: right-padded, labels by numpygpt.labels."""
    ids, labels, mask, pos = sft_batch(examples, pad_id=EOT, eot_id=EOT)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos}


def split_batch(batch, n=2):
    """The batch's rows in n micro-batches (same T)."""
    B = batch["input_ids"].shape[0]
    cuts = np.array_split(np.arange(B), n)
    return [{k: v[rows] for k, v in batch.items()} for rows in cuts]


def accumulate_grads(model, micro_batches, need_grads=True):
    """Gradient accumulation: each micro-batch's summed loss divided by num_items, the
    count of targets over *all* micro-batches, so that their sum is the full batch's mean."""
    num_items = sum(count_targets(mb["labels"]) for mb in micro_batches)
    share = 1.0                       # a micro-batch's sum / num_items is its share already
    total, grads = 0.0, None
    for mb in micro_batches:
        if not need_grads:
            total += share * model.loss(**mb, num_items=num_items)
            continue
        loss, g = model.loss_and_grads(**mb, num_items=num_items)
        total += share * loss
        g = {k: share * d for k, d in g.items()}
        grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
    return total, grads


def cache_home(seed=0):
    """-> (model, batch): the rolling_cache home's windowed GPT and two random sequences with
    their causal-LM labels (no padding)."""
    model = GPT(CACHE_CONFIG, seed=seed, dtype=np.float64, execution=ZOO_EXECUTION)
    unit_scale_params(model.params, np.random.default_rng(seed))
    ids = np.random.default_rng(seed + 1).integers(0, CACHE_CONFIG.vocab_size, CACHE_SHAPE)
    return model, {"input_ids": ids, "labels": causal_lm_labels(ids)}


def decoded_logits(model, ids):
    """ids (B,T) decoded one token at a time with a KVCache -> logits (B,T,V)."""
    B, T = ids.shape
    cache = KVCache(model.config, B, T, model.dtype)
    steps = [model.forward(ids[:, t:t + 1], model.params, kv_cache=cache)[0].copy()
             for t in range(T)]                                    # T x (B,1,V)
    return np.concatenate(steps, axis=1)


def model_objective(home, model, examples):
    """-> (f, (loss, grads)): the loss as a function of model.params, and its value and
    gradients as numpygpt computes them, for a model home."""
    batch = model_batch(examples)
    if home == "model":
        f = lambda: model.loss(**batch)
        return f, model.loss_and_grads(**batch)
    micro = split_batch(batch)
    f = lambda: accumulate_grads(model, micro, need_grads=False)[0]
    return f, accumulate_grads(model, micro)


def describe_home(home, seed=0):
    """One line: what the home problem is."""
    if home == "model":
        return (f"the zoo's GPT (V={ZOO_CONFIG.vocab_size}, C={ZOO_CONFIG.n_embd}, H="
                f"{ZOO_CONFIG.n_head}, L={ZOO_CONFIG.n_layer}, tied, float64, unit-scale weights) "
                f"on {len(PROMPT_LENGTHS)} SFT examples, one right-padded batch by sft_batch; "
                f"loss, grads = model.loss_and_grads(**batch)")
    if home == "accumulation":
        return (describe_home("model").split(";")[0] + "; the batch as 2 micro-batches, "
                "loss, grads = accumulate_grads(model, micro_batches)")
    if home == "rolling_cache":
        W, (B, T) = CACHE_CONFIG.sliding_window, CACHE_SHAPE
        return (f"the zoo's GPT with a sliding window W={W} on {B} random sequences of {T} "
                f"tokens: its training loss (causal-LM labels) for the gradchecks; decoded "
                f"token by token with a KVCache (a rolling buffer of 2W = {2 * W} slots, slid "
                f"{(T - 1 - 2 * W) // (W + 1) + 1} times) for the property and the oracle")
    forward, backward, x, p, names = layer_home(home, seed)
    xs = x if isinstance(x, tuple) else (x,)
    names = names or (("x",) if len(xs) == 1 else tuple(f"x[{i}]" for i in range(len(xs))))
    parts = [f"{n} {a.shape}" for n, a in zip(names, xs)] + [f"{k} {v.shape}" for k, v in p.items()]
    heads = (f" (H={GQA_CONFIG.n_head} query heads, K={GQA_CONFIG.kv_heads} key/value heads)"
             if home == "gqa_attention" else "")
    return f"layer {home}{heads}: {', '.join(parts)}, float64; loss = sum(out * R), R ~ N(0, 1)"


# ---- the properties -------------------------------------------------------------------------

def _numeric(name, diff, what):
    return PropertyResult(name, bool(diff <= PROPERTY_TOL), float(diff), what)


def _labels(name, got, expected, what):
    got, expected = np.asarray(got), np.asarray(expected)
    diff = 1.0 if got.shape != expected.shape else float(np.mean(got != expected))
    return PropertyResult(name, diff == 0.0, diff, what)


def _grads_diff(a, b, scale_b=1.0):
    return max(relative_error(a[k], scale_b * b[k]) for k in a)


def additivity(forward, backward, x, p, seed=0):
    """The layer's gradients on the whole batch against those on its two halves (axis 0)."""
    as_tuple = lambda t: t if isinstance(t, tuple) else (t,)
    out, cache = forward(x, p)
    R = np.random.default_rng(seed).standard_normal(np.shape(out))
    dx, grads = backward(R, cache)
    h = as_tuple(x)[0].shape[0] // 2
    halves = []
    for part in (slice(0, h), slice(h, None)):
        xp = tuple(a[part] for a in as_tuple(x))
        _, c = forward(xp if isinstance(x, tuple) else xp[0], p)
        halves.append(backward(R[part], c))
    (dx0, g0), (dx1, g1) = halves
    diffs = [relative_error(grads[k], g0[k] + g1[k]) for k in grads]
    diffs += [relative_error(d, np.concatenate([d0, d1]))
              for d, d0, d1 in zip(as_tuple(dx), as_tuple(dx0), as_tuple(dx1)) if d is not None]
    return [_numeric("additivity", max(diffs), "the batch's gradients = the sum (params) and "
                                               "the concatenation (inputs) of its halves'")]


def layer_properties(home, forward, backward, x, p, seed=0):
    """A layer home's properties: additivity, and tying for gqa_attention."""
    results = additivity(forward, backward, x, p, seed)
    return results + (gqa_tying(forward, backward, x, p, seed) if home == "gqa_attention" else [])


def gqa_tying(forward, backward, x, p, seed=0):
    """The gqa_attention layer against multi-head attention (K = H) whose c_attn holds each
    key/value head's columns once per query head: W_mha = W_gqa @ S, S a 0/1 copy matrix
    (C+2KD, 3C); the same output, and d W_gqa = d W_mha @ S^T (a copy's gradient is a sum)."""
    C, H, K = x.shape[-1], GQA_CONFIG.n_head, GQA_CONFIG.kv_heads
    D = C // H
    heads = np.repeat(np.arange(K * D).reshape(K, D), H // K, axis=0).ravel()  # (C,) kv column
    cols = np.concatenate([np.arange(C), C + heads, C + K * D + heads])  # (3C,) the copies'
    S = np.zeros((C + 2 * K * D, 3 * C))
    S[cols, np.arange(3 * C)] = 1.0                                      # column j copies cols[j]
    mha = {**p, "c_attn.weight": p["c_attn.weight"] @ S, "c_attn.bias": p["c_attn.bias"] @ S}
    out, cache = forward(x, p)
    R = np.random.default_rng(seed).standard_normal(np.shape(out))
    dx, grads = backward(R, cache)
    mha_out, mha_cache = attention_forward(x, mha, H, attention=CHECK_EXECUTION.attention,
                                           q_tile=CHECK_EXECUTION.q_tile,
                                           k_tile=CHECK_EXECUTION.k_tile)
    mha_dx, mha_grads = attention_backward(R, mha_cache)
    diffs = [relative_error(out, mha_out), relative_error(dx, mha_dx)]
    diffs += [relative_error(grads[k], mha_grads[k] @ S.T if k.startswith("c_attn") else
                             mha_grads[k]) for k in grads]
    return [_numeric("tying", max(diffs), f"K={K} key/value heads = {H} heads with tied "
                                          f"copies: same output, copies' gradients summed")]


def decode_property(model, batch):
    """The rolling_cache home's property: the cached decode against the full forward."""
    ids = batch["input_ids"]
    full = model.logits(ids)
    W = model.config.sliding_window
    return [_numeric("decode", relative_error(decoded_logits(model, ids), full),
                     f"decoding token by token with the rolling KV cache (W={W}) = the full "
                     f"forward, logits position by position")]


def model_properties(model, examples):
    """The model homes' properties, on the zoo's model and examples."""
    batch = model_batch(examples)
    loss, grads = model.loss_and_grads(**batch)
    acc_loss, acc_grads = accumulate_grads(model, split_batch(batch))
    results = [_numeric("accumulation",
                        max(abs(acc_loss - loss) / abs(loss), _grads_diff(acc_grads, grads)),
                        "two micro-batches accumulated with num_items = the full batch")]
    n = count_targets(batch["labels"])
    s_loss, s_grads = model.loss_and_grads(**batch, reduction="sum")
    results.append(_numeric("sum=mean*n",
                            max(abs(s_loss - n * loss) / abs(s_loss), _grads_diff(s_grads, grads, n)),
                            f"reduction sum = mean x {n} counted targets, loss and grads"))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = np.full_like(ids, IGNORE_INDEX)                 # by hand: t predicts t + 1
    real = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    expected[:, :-1] = np.where(real, ids[:, 1:], IGNORE_INDEX)
    results.append(_labels("shift", causal_lm_labels(ids, mask), expected,
                           "causal_lm_labels: label t = input t+1, -100 where nothing follows"))
    got, want = [], []
    for prompt, answer in examples:
        got += list(sft_labels(prompt, answer, eot_id=EOT)[1])
        want += [IGNORE_INDEX] * (len(prompt) - 1) + list(answer) + [EOT, IGNORE_INDEX]
    results.append(_labels("sft-rule", got, want, "sft_labels: the last prompt token predicts "
                                                  "the first answer token, and counts"))
    prefix = prefix_scored_loss(model, examples)
    results.append(_numeric("prefix", abs(loss - prefix) / abs(prefix),
                            f"masked full-sequence loss {loss:.12f} = prefix-scored {prefix:.12f}"))
    return results


def prefix_scored_loss(model, examples):
    """The inference way: after the prompt (and the answer so far), score the next answer token
    (then the end of text); mean over all of them. No labels involved."""
    total, count = 0.0, 0
    for prompt, answer in examples:
        seq = np.concatenate([prompt, answer, [EOT]])
        for t in range(len(prompt), len(seq)):
            z = model.logits(seq[None, :t])[0, -1]                 # (V,) after seq[:t]
            z = z - z.max()
            total += float(np.log(np.exp(z).sum()) - z[seq[t]])
            count += 1
    return total / count
