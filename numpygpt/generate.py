"""Text generation with a KV cache: `numpygpt generate`.

    prefill:  logits = forward(prompt) once, filling the cache      (B,Tp) -> (B,Tp,V)
    decode:   next = pick(logits[:, -1]); logits = forward([next])   (B,1) -> (B,1,V), repeat
until every row has produced end-of-text or max_new_tokens is reached. With learned
positions a full cache (n_positions) is restarted from the last n_positions // 2 tokens.

pick: greedy (temperature 0) takes the argmax; otherwise logits / temperature, keep the
top_k largest (the rest -inf), softmax, and draw from a seeded numpy Generator.

Prompts of different lengths are left-padded so that all rows end at the same slot; the
padding is masked out of attention and position ids count real tokens only.
"""
import sys

import numpy as np

from .kv_cache import KVCache, gpt_forward_with_cache
from .labels import pad_sequences


def sample_next(logits, temperature=0.0, top_k=None, rng=None):
    """logits (B,V) -> next ids (B,)."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature     # (B,V); float64 for the CDF only, tiny
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(len(z))[:, None] * cdf[:, -1:]   # inverse-CDF draw, one per row
    return np.minimum((cdf < u).sum(axis=-1), z.shape[-1] - 1)


def generate(params, config, prompts, max_new_tokens, temperature=0.0, top_k=None, seed=0,
             eot_id=None, rng=None):
    """prompts: list of 1-D id sequences (each non-empty) -> list of generated id arrays
    (without the end-of-text token).

    Learned positions end at n_positions: when the cache is full, the last n_positions // 2
    tokens of every row are prefilled into a fresh cache and decoding goes on (a sliding
    window, recomputed once per n_positions // 2 tokens). RoPE has no such limit."""
    if not prompts:
        raise ValueError("prompts is empty")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty; generation needs at least one token")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    rng = np.random.default_rng(seed) if rng is None else rng
    limit = config.n_positions if config.pos_encoding == "learned" else None
    dtype = params["wte.weight"].dtype
    ids, mask = pad_sequences(prompts, pad_value=0, side="left")          # (B,Tp)
    B, Tp = ids.shape
    if limit is not None and Tp > limit:
        raise ValueError(f"prompt of {Tp} tokens is longer than n_positions={limit}")
    seqs = [[int(t) for t in p] for p in prompts]                          # context per row
    out = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    if max_new_tokens <= 0:
        return [np.array(o, dtype=np.int64) for o in out]

    def prefill(ids, mask, remaining):
        max_len = ids.shape[1] + remaining
        cache = KVCache(config, B, max_len if limit is None else min(max_len, limit), dtype)
        return cache, gpt_forward_with_cache(params, config, ids, cache, mask)   # (B,T,V)

    cache, logits = prefill(ids, mask, max_new_tokens)
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
            ids, mask = pad_sequences([s[-(limit // 2):] for s in seqs], side="left")
            cache, logits = prefill(ids, mask, max_new_tokens - step - 1)
        else:
            logits = gpt_forward_with_cache(params, config, nxt[:, None], cache)   # (B,1,V)
    return [np.array(o, dtype=np.int64) for o in out]


# ---- the command ----------------------------------------------------------------------

def add_arguments(parser):
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="a numpygpt checkpoint (train / sft --out)")
    src.add_argument("--pretrained", metavar="DIR",
                     help="a HuggingFace GPT-2 directory (config.json + model.safetensors)")
    parser.add_argument("--prompt", default=None, help="prompt text")
    parser.add_argument("--prompt-ids", default=None, metavar="IDS",
                        help='prompt as comma-separated token ids, e.g. "464,3290" '
                             '(for a pretrained directory without vocab.json/merges.txt)')
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1, help="samples drawn in one batch")


def _parse_ids(text, vocab_size):
    ids = []
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            ids.append(int(part))
        except ValueError:
            raise ValueError(f"--prompt-ids: item {i} = {part!r} is not an integer") from None
        if not 0 <= ids[-1] < vocab_size:
            raise ValueError(f"--prompt-ids: item {i} = {ids[-1]} is outside [0, vocab_size={vocab_size})")
    return np.array(ids, dtype=np.int64)


def run(args):
    try:
        return _run(args)
    except ValueError as e:
        print(f"numpygpt generate: error: {e}", file=sys.stderr)
        return 2


def _run(args):
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-ids IDS")
    if args.checkpoint is not None:
        from .checkpoint import load_checkpoint
        from .tokenizer import ByteTokenizer
        ckpt = load_checkpoint(args.checkpoint)
        config, params = ckpt["config"], ckpt["params"]
        tokenizer = ByteTokenizer()
        if config.vocab_size != tokenizer.vocab_size:
            tokenizer = None
    else:
        from .model import GPT
        from .bpe import load_bpe
        model = GPT.from_pretrained(args.pretrained)
        config, params = model.config, model.params
        tokenizer = load_bpe(args.pretrained)
    eot_id = getattr(tokenizer, "eot_id", None)
    if eot_id is None and args.pretrained is not None and config.vocab_size == 50257:
        eot_id = 50256                               # GPT-2's <|endoftext|>
    if args.prompt_ids is not None:
        prompt = _parse_ids(args.prompt_ids, config.vocab_size)
    else:
        if tokenizer is None:
            raise ValueError(f"--prompt needs a tokenizer, and {args.checkpoint or args.pretrained} "
                             f"has none (no vocab.json/merges.txt); use --prompt-ids")
        prompt = np.asarray(tokenizer.encode(args.prompt), dtype=np.int64)
        if prompt.size == 0:
            raise ValueError("--prompt is empty")
    outs = generate(params, config, [prompt] * args.num_samples, args.max_new_tokens,
                    args.temperature, args.top_k, args.seed, eot_id)
    for i, out in enumerate(outs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        ids = [int(t) for t in np.concatenate([prompt, out])]
        print(",".join(map(str, ids)) if tokenizer is None else tokenizer.decode(ids))
    return 0
