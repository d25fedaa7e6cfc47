"""`numpygpt dataflow`: shapes, parameters, FLOPs and activation memory of a configuration,
stage by stage (the counting is numpygpt/dataflow.py's; this is its report)."""
import dataclasses
import json

import numpy as np

from ..attention_cost import CORES, attention_core_cost
from ..config import GPTConfig, Execution
from ..dataflow import stages, block_stages, totals, training_flops, param_count
from .common import (add_model_size_arguments, human_bytes,
                     model_from_arguments, model_title)

# without --preset: a small byte-level model
DEFAULT_MODEL = GPTConfig(vocab_size=257, n_positions=1024, n_embd=128, n_head=4, n_layer=2)
DEFAULT_BATCH, DEFAULT_SEQ_LEN = 8, 128


def add_arguments(p):
    add_model_size_arguments(p)
    p.add_argument("--attention", choices=["standard", "tiled"], default="standard",
                   help="standard attention (keeps the T x T probabilities) or tiled")
    p.add_argument("--loss", choices=["standard", "chunked"], default="chunked",
                   help="chunked lm_head + cross-entropy (the default) or standard (keeps N x V)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="bytes per activation (default float32)")
    p.add_argument("--full", action="store_true",
                   help="count attention FLOPs over all T^2 pairs, not only the causal ones")
    p.add_argument("--json", action="store_true", help="print the per-stage rows as JSON")


def run(args):
    preset = args.preset is not None
    config, B, T = model_from_arguments(args, DEFAULT_MODEL, 1 if preset else DEFAULT_BATCH,
                                        None if preset else DEFAULT_SEQ_LEN)
    check_countable(args, config)
    execution = Execution(attention=args.attention, loss=args.loss)
    itemsize = np.dtype(args.dtype).itemsize
    causal = not args.full
    if args.json:
        rows, tot = report_rows(config, B, T, itemsize, causal, execution)
        print(json.dumps({"config": config.to_dict(), "attention": args.attention,
                          "loss": args.loss, "batch_size": B, "seq_len": T, "dtype": args.dtype,
                          "causal": causal, "stages": rows, "totals": tot,
                          "attention_core": core_cost_rows(config, B, T, itemsize, causal, execution),
                          "training_flops": training_flops(config, B, T, causal)}, indent=1))
        return 0
    title = " ".join(["numpygpt dataflow", model_title(args, config)]).strip()
    print(format_report(config, B, T, itemsize, causal, execution, title))
    return 0


MAX_BLOCK_ROWS = 128     # deeper models show their (identical) blocks as one row


def report_rows(config, B, T, itemsize=4, causal=True, execution=Execution()):
    """-> (rows, totals) of numpygpt.dataflow.stages; a model of more than MAX_BLOCK_ROWS
    blocks has one row for all of them (the numbers of each; "count": n_layer), so that the
    report of a 10^9-layer model is as short and as quick as any other."""
    L = config.n_layer
    if L <= MAX_BLOCK_ROWS:
        rows = stages(config, B, T, itemsize, causal, execution)
        return rows, totals(rows)
    rows = stages(dataclasses.replace(config, n_layer=1), B, T, itemsize, causal, execution)
    tot = totals(rows)
    block = next(r for r in rows if r["name"] == "h.0")
    for key in tot:
        tot[key] += (L - 1) * block[key]
    block.update(name=f"h.0 .. h.{L - 1} (each)", count=L)
    return rows, tot


def check_countable(args, config):
    """The counts are exact integers; a model whose parameter count passes 2^63 (int64, which
    any array index must fit) exists on no machine: refused rather than printed wrong."""
    n_params = param_count(config)
    if n_params >= 2 ** 63:
        given = [f"--{name.replace('_', '-')} {getattr(args, name)}"
                 for name in ("n_embd", "n_layer", "vocab_size", "n_positions")
                 if getattr(args, name) is not None]
        raise ValueError(f"{', '.join(given) or 'these sizes'}: the model would have "
                         f"{n_params:.3g} parameters, more than 2^63 (no array can hold it)")


def core_cost_rows(config, B, T, itemsize=4, causal=True, execution=Execution()):
    """The attention core of one layer, each core forward and forward+backward: dicts of core,
    pass, flops, bytes and intensity (numpygpt.attention_cost)."""
    window = config.sliding_window if causal else None
    return [{"core": core, "pass": name,
             **attention_core_cost(B, config.n_head, config.head_dim, T, core, backward,
                                   config.kv_heads, window, causal, execution.q_tile, itemsize)}
            for core in CORES for name, backward in (("forward", False), ("forward+backward", True))]


def human_flops(n):
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def format_shape(shape):
    return "(" + ", ".join(f"{d:,}" for d in shape) + ")" if shape else "scalar"


FORMULAS = """\
FLOPs: matmuls only, 2*m*n*k per (m,k)@(k,n); N = B*T tokens.
  per block forward  = 24*N*C^2 (c_attn 6, c_proj 2, c_fc 8, mlp.c_proj 8)
                     + attention core: all pairs 4*B*T^2*C, causal 2*B*T*(T+1)*C (T(T+1)/2 pairs)
  lm_head forward    = 2*n*C*V, n = N (the chunked loss: n = the targets not -100)
  backward           = 2 x forward (da = dout @ b^T and db = a^T @ dout per matmul)
  training step      = 3 x forward
Activations kept for the backward (float bytes s): per block (16*N*C + 2*N + B*H*T^2)*s
  with the standard attention, (16*N*C + 2*N + B*H*T)*s tiled, +2*N*C*s with rope;
  the chunked loss keeps no (N,V) array (it works chunk by chunk and keeps dx and the
  lm_head's gradient); the standard loss keeps softmax - onehot, N*V*s.
Bytes the attention core moves, in numbers of s bytes (Q = B*H*T*D, KV = B*K*T*D, R = B*H*T,
  M = B*H*T^2; n = B*K*D x the keys the tiled core's query blocks read, ~T^2/(2*q_tile)):
  standard forward 2Q + 2KV + 4M, backward 4Q + 4KV + 6M (S, P, dP, dS are whole T x T arrays);
  tiled forward 2Q + R + 2n, backward 5Q + 3R + 2KV + 6n (no T x T array ever reaches memory)."""


def format_report(config, batch_size, seq_len, itemsize=4, causal=True, execution=Execution(),
                  title=None):
    """The `numpygpt dataflow` text: per stage, inside one block, totals, formulas."""
    rows, tot = report_rows(config, batch_size, seq_len, itemsize, causal, execution)
    lines = []
    add = lines.append
    c = config
    add(title or "numpygpt dataflow")
    add(f"config: vocab_size={c.vocab_size:,} n_positions={c.n_positions:,} n_embd={c.n_embd} "
        f"n_head={c.n_head} n_layer={c.n_layer} tied={c.tie_word_embeddings} "
        f"pos={c.pos_encoding}"
        + (f" n_kv_head={c.n_kv_head}" if c.n_kv_head is not None else "")
        + (f" sliding_window={c.sliding_window}" if c.sliding_window is not None else "")
        + f"; attention {execution.attention}, loss {execution.loss}; "
        f"batch {batch_size}, seq_len {seq_len}, "
        f"{'float32' if itemsize == 4 else 'float64'}; FLOPs "
        f"{'with the causal mask' if causal else 'full (no causal saving)'}")
    add("")
    head = f"{'stage':<36}{'output shape':>20}{'params':>15}{'fwd FLOPs':>13}{'bwd FLOPs':>13}{'act kept':>12}"
    add(head)
    add("-" * len(head))
    for r in rows:
        add(f"{r['name']:<36}{format_shape(r['shape']):>20}{r['params']:>15,}"
            f"{human_flops(r['fwd_flops']):>13}{human_flops(r['bwd_flops']):>13}"
            f"{human_bytes(r['act_bytes']):>12}")
    add("-" * len(head))
    add(f"{'total':<36}{'':>20}{tot['params']:>15,}{human_flops(tot['fwd_flops']):>13}"
        f"{human_flops(tot['bwd_flops']):>13}{human_bytes(tot['act_bytes']):>12}")
    add("")
    step = tot["fwd_flops"] + tot["bwd_flops"]
    step_full = 3 * tot["fwd_flops_full"]
    add(f"parameters:            {tot['params']:,} ({tot['params'] * itemsize / 2**20:.1f} MiB)")
    add(f"training step FLOPs:   {step:,} causal, {step_full:,} full "
        f"({step / (batch_size * seq_len):,.0f} per token)")
    add(f"activations kept:      {tot['act_bytes']:,} bytes ({human_bytes(tot['act_bytes'])})")
    add("")
    add("inside one block (h.0), forward:")
    head2 = f"  {'layer':<30}{'output shape':>22}{'params':>13}{'fwd FLOPs':>13}{'act kept':>12}"
    add(head2)
    for name, shape, params, fwd, act in block_stages(config, batch_size, seq_len, itemsize, causal,
                                                      execution):
        add(f"  {name:<30}{format_shape(shape):>22}{params:>13,}{human_flops(fwd):>13}"
            f"{human_bytes(act):>12}")
    add("")
    add(f"attention core of one layer: bytes moved to and from memory (q_tile {execution.q_tile}; "
        f"the model in numpygpt/attention_cost.py)")
    add(f"  {'core':<10}{'pass':<18}{'FLOPs':>11}{'bytes':>12}{'FLOP/byte':>11}")
    for r in core_cost_rows(config, batch_size, seq_len, itemsize, causal, execution):
        mark = "  <- --attention" if r["core"] == execution.attention else ""
        add(f"  {r['core']:<10}{r['pass']:<18}{human_flops(r['flops']):>11}"
            f"{human_bytes(r['bytes']):>12}{r['intensity']:>11.1f}{mark}")
    add("")
    add(FORMULAS)
    return "\n".join(lines)
