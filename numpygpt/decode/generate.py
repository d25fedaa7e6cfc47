"""Text generation with a KV cache.

    prefill:  logits = forward(prompt) once, filling the cache      (B,Tp) -> (B,Tp,V)
    decode:   next = pick(logits[:, -1]); logits = forward([next])   (B,1) -> (B,1,V), repeat
until every row has produced end-of-text or max_new_tokens is reached. With learned
positions a full cache (n_positions) is restarted from the last n_positions // 2 tokens.

pick: greedy (temperature 0) takes the argmax; otherwise logits / temperature, keep the
top_k largest (the rest -inf), softmax, and draw from a seeded NumPy Generator.

Prompts of different lengths are left-padded so that all rows end at the same slot; the
padding is masked out of attention and position ids count real tokens only.
"""
import math

import numpy as np

from ..checks import as_int_array, check_range
from ..labels import pad_sequences
from ..model import range_checked
from .kv_cache import KVCache


def sample_next(logits, temperature=0.0, top_k=None, rng=None):
    """logits (B,V) -> next ids (B,)."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64)                   # (B,V); float64 for the CDF only, tiny
    z -= z.max(axis=-1, keepdims=True)              # <= 0, so a tiny temperature cannot overflow
    with np.errstate(over="ignore"):
        z /= temperature                            # -huge / tiny = -inf: probability 0, right
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(len(z))[:, None] * cdf[:, -1:]   # inverse-CDF draw, one per row
    return np.minimum((cdf < u).sum(axis=-1), z.shape[-1] - 1)


def check_generate_args(config, prompts, max_new_tokens, temperature, top_k, eot_id):
    """Every argument of generate, checked before any work: a ValueError naming it."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of 1-D id sequences, got "
                         f"{type(prompts).__name__}")
    checked = []
    for i, p in enumerate(prompts):
        ids = as_int_array(f"prompts[{i}]", p, ndim=1)
        if ids.size == 0:
            raise ValueError(f"prompts[{i}] is empty; generation needs at least one token")
        check_range(f"prompts[{i}]", ids, 0, config.vocab_size,
                    what=f"[0, vocab_size={config.vocab_size})")
        if config.pos_encoding == "learned" and ids.size > config.n_positions:
            raise ValueError(f"prompts[{i}] has {ids.size} tokens, more than "
                             f"n_positions={config.n_positions}")
        checked.append(ids)
    for name, value, low in (("max_new_tokens", max_new_tokens, 0), ("top_k", top_k, 1),
                             ("eot_id", eot_id, 0)):
        if value is None and name != "max_new_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    return checked


def generate(model, prompts, max_new_tokens, temperature=0.0, top_k=None, seed=0, eot_id=None,
             rng=None):
    """prompts: a list of 1-D id sequences (each non-empty) -> a list of generated id arrays
    (without the end-of-text token).

    Learned positions end at n_positions: when the cache is full, the last n_positions // 2
    tokens of every row are prefilled into a fresh cache and decoding goes on (a sliding
    window, recomputed once per n_positions // 2 tokens). RoPE has no such limit."""
    config, params = model.config, model.params
    prompts = check_generate_args(config, prompts, max_new_tokens, temperature, top_k, eot_id)
    rng = np.random.default_rng(seed) if rng is None else rng
    limit = config.n_positions if config.pos_encoding == "learned" else None
    B = len(prompts)
    seqs = [[int(t) for t in p] for p in prompts]                          # context per row
    out = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    if max_new_tokens == 0:
        return [np.array(o, dtype=np.int64) for o in out]

    def prefill(contexts, remaining):
        ids, mask = pad_sequences(contexts, pad_value=0, side="left")       # (B,Tp)
        max_len = ids.shape[1] + remaining
        cache = KVCache(config, B, max_len if limit is None else min(max_len, limit), model.dtype,
                        initial=ids.shape[1] + min(remaining, 256))     # grows as tokens come
        return cache, forward(ids, cache, mask.astype(bool))                 # (B,Tp,V)

    def forward(ids, cache, key_mask=None):
        with range_checked(f"decoding with this {model.dtype.name} model", model.dtype):
            logits, _ = model.forward(ids, params, key_mask=key_mask, kv_cache=cache)
        return logits

    cache, logits = prefill(prompts, max_new_tokens)
    for step in range(max_new_tokens):
        nxt = sample_next(logits[:, -1], temperature, top_k, rng)          # (B,)
        if eot_id is not None:
            done |= nxt == eot_id
        for b in range(B):
            seqs[b].append(int(nxt[b]))
            if not done[b]:
                out[b].append(int(nxt[b]))
        if done.all() or step == max_new_tokens - 1:
            break
        if cache.length == cache.max_len:                                  # slide the window
            cache, logits = prefill([s[-(limit // 2):] for s in seqs], max_new_tokens - step - 1)
        else:
            logits = forward(nxt[:, None], cache)                          # (B,1,V)
    return [np.array(o, dtype=np.int64) for o in out]
