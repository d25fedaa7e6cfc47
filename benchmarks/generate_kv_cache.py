"""Decoding speed with and without the KV cache, on the `numpygpt train` default model size.

    python benchmarks/generate_kv_cache.py                   # N = 64, 128, 256 new tokens
    python benchmarks/generate_kv_cache.py --json out.json --new-tokens 32 64

With the cache each new token costs one (B,1) forward pass against cached keys/values;
without it, every token recomputes the whole prefix: O(N) vs O(N^2) work for N tokens.
Greedy decoding of one prompt (8 tokens); median of repeats after a warm-up
(numpygpt/bench/measure.py), beside a float32 matmul GFLOP/s measured in the same run.
Both paths produce the same tokens (checked here too).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import numpygpt as ng  # noqa: E402
from numpygpt.bench.measure import matmul_gflops, time_call  # noqa: E402
from numpygpt.decode import generate  # noqa: E402


def greedy_recompute(model, prompt, n):
    """No cache: a full forward pass over the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model.logits(np.array([ids]))[0, -1].argmax()))
    return np.array(ids[len(prompt):])


def bench(new_tokens=(64, 128, 256), n_layer=4, n_head=4, n_embd=128, repeats=3, warmup=1):
    cfg = ng.GPTConfig(vocab_size=257, n_positions=8 + max(new_tokens), n_embd=n_embd,
                       n_head=n_head, n_layer=n_layer)
    model = ng.GPT(cfg, seed=0)
    prompt = ng.ByteTokenizer().encode("The cat ")
    rows = []
    for n in new_tokens:
        cached = generate(model, [prompt], n)[0]
        assert np.array_equal(cached, greedy_recompute(model, prompt, n)), "paths disagree"
        t_cache = time_call(lambda: generate(model, [prompt], n), repeats, warmup)
        t_full = time_call(lambda: greedy_recompute(model, prompt, n), repeats, warmup)
        rows.append({"new_tokens": n, "kv_cache_s": t_cache["median"], "recompute_s": t_full["median"],
                     "kv_cache_tok_s": n / t_cache["median"], "recompute_tok_s": n / t_full["median"],
                     "speedup": t_full["median"] / t_cache["median"]})
    return {"config": cfg.to_dict(), "matmul_gflops_f32": matmul_gflops(), "rows": rows,
            "repeats": repeats, "warmup": warmup}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if min(args.new_tokens) < 1 or args.repeats < 1:
        print("generate_kv_cache: error: --new-tokens and --repeats must be >= 1", file=sys.stderr)
        return 2
    r = bench(args.new_tokens, args.n_layer, args.n_head, args.n_embd, args.repeats)
    print(f"model n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd}, float32, "
          f"greedy, batch 1; matmul {r['matmul_gflops_f32']:.0f} GFLOP/s in this run")
    print(f"{'new tokens':>10} {'KV cache tok/s':>15} {'recompute tok/s':>16} {'speedup':>8}")
    for row in r["rows"]:
        print(f"{row['new_tokens']:>10} {row['kv_cache_tok_s']:>15,.0f} "
              f"{row['recompute_tok_s']:>16,.0f} {row['speedup']:>7.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
