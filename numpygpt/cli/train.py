"""`numpygpt train` (pre-training on text) and `numpygpt sft` (prompt-masked fine-tuning):
one training loop (numpygpt/train/loop.py), two kinds of batches and reports.

Both save checkpoints with --out (every --save-every steps, at the end, and on Ctrl-C or
SIGTERM), continue one with --resume, and stop on NaN/inf keeping the last good checkpoint
(exit 1). Options given with --resume (or sft's --init) must agree with the checkpoint,
except --steps, which may extend the run.
"""
import math
import os
import time
from dataclasses import fields

import numpy as np

from ..decode import generate
from ..io import ByteTokenizer
from ..model import GPT
from ..train import AdamW, TrainSettings, PRETRAIN, SFT, train_loop, load_checkpoint
from ..train.checkpoint import MANIFEST
from ..train.data import load_dataset, get_batch, eval_batches, unigram_entropy
from ..train.loop import mean_loss, format_seconds
from ..train.sft import AdditionTask, JsonlTask, addition_example, make_batch, exact_match
from ..train.sft import answer_loss_masked
from .common import check_output_dir, float_in, int_at_least, positive_float, positive_int
from .progress import Progress

TOK = ByteTokenizer()
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "pos_encoding")


# ---- options --------------------------------------------------------------------------------

def add_common_arguments(p, d):
    """The options of both commands; defaults None, so that we know which were given."""
    p.add_argument("--out", metavar="DIR", help="save checkpoints here (created if needed)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run saved in DIR with its settings (--steps may extend it)")
    p.add_argument("--steps", type=positive_int, help=f"optimizer steps (>= 1, default {d.steps})")
    p.add_argument("--stop-at", type=positive_int, metavar="STEP",
                   help="stop (and save) after this step, as if interrupted; the schedule still "
                        "runs to --steps, and --resume continues")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=positive_int, help=f"(>= 1, default {d.n_layer})")
    g.add_argument("--n-head", type=positive_int, help=f"(>= 1, divides --n-embd; default {d.n_head})")
    g.add_argument("--n-embd", type=positive_int, help=f"(>= 1, default {d.n_embd})")
    g.add_argument("--pos-encoding", choices=("learned", "rope"), help=f"(default {d.pos_encoding})")
    g = p.add_argument_group("data and optimisation")
    g.add_argument("--batch-size", type=positive_int, help=f"(>= 1, default {d.batch_size})")
    g.add_argument("--val-fraction", type=float_in(0, 1, low_open=True, high_open=True),
                   help=f"held-out share of --data, in (0, 1) (default {d.val_fraction})")
    g.add_argument("--lr", type=positive_float, help=f"peak learning rate (> 0, default {d.lr})")
    g.add_argument("--min-lr", type=float_in(0), help=f"(>= 0, default {d.min_lr})")
    g.add_argument("--warmup", type=int_at_least(0), help=f"warm-up steps (>= 0, default {d.warmup})")
    g.add_argument("--weight-decay", type=float_in(0), help=f"(>= 0, default {d.weight_decay})")
    g.add_argument("--grad-clip", type=positive_float, help=f"max gradient norm (> 0, default {d.grad_clip})")
    g.add_argument("--eval-every", type=positive_int, help=f"(>= 1, default {d.eval_every})")
    g.add_argument("--save-every", type=positive_int, help=f"(>= 1, default {d.save_every})")


def add_train_arguments(p):
    d = PRETRAIN
    p.add_argument("--data", metavar="PATH",
                   help="UTF-8 text file (default: Python's pydoc_data.topics, ~450 KB)")
    add_common_arguments(p, d)
    p.add_argument("--seq-len", type=positive_int, help=f"context length T (>= 1, default {d.seq_len})")
    p.add_argument("--eval-batches", type=positive_int, help=f"(>= 1, default {d.eval_batches})")
    p.add_argument("--sample-tokens", type=int_at_least(0), default=300,
                   help="length of the sample printed at the end (>= 0; 0: none)")
    p.add_argument("--sample-prompt", default="The ")


def add_sft_arguments(p):
    d = SFT
    p.add_argument("--data", metavar="PATH",
                   help='JSONL of {"prompt": ..., "answer": ...} (default: a generated addition '
                        'task, answers reversed)')
    p.add_argument("--init", metavar="DIR", help="start from a numpygpt checkpoint (e.g. `train --out`)")
    add_common_arguments(p, d)
    p.add_argument("--no-prompt-mask", dest="prompt_mask", action="store_false", default=None,
                   help="train on the whole sequence (prompt tokens are targets too)")
    p.add_argument("--n-test", type=positive_int,
                   help=f"held-out problems of the addition task (1 to 501,000; default {d.n_test})")
    p.add_argument("--show", type=int_at_least(0), default=5,
                   help="held-out examples printed at the end (>= 0)")


def settings_from(args, defaults):
    """TrainSettings: the defaults (or the resumed checkpoint's), with the options given.
    Returns (settings, checkpoint or None, notes)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings)
             if getattr(args, f.name, None) is not None and f.name != "seed"}
    if args.seed_given:
        given["seed"] = args.seed
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])
    if args.resume is None:
        return TrainSettings(**{**defaults.to_dict(), **given}), None, []
    ckpt = load_checkpoint(args.resume)
    if "settings" not in ckpt["extra"] or ckpt["optimizer_state"] is None:
        raise ValueError(f"--resume {args.resume}: not a checkpoint of a training run (no "
                         f"settings or optimizer state)")
    saved = TrainSettings.from_dict(ckpt["extra"]["settings"])
    if saved.task != defaults.task:
        raise ValueError(f"--resume {args.resume}: a '{saved.task}' run, which this command "
                         f"does not continue")
    notes = []
    for name, value in given.items():
        if name == "steps" and value != saved.steps:
            notes.append(f"--steps {value} (the run had {saved.steps})")
        elif value != getattr(saved, name):
            flag = "--no-prompt-mask" if name == "prompt_mask" else \
                f"--{name.replace('_', '-')} {value}"
            raise ValueError(f"{flag} contradicts the checkpoint in {args.resume} "
                             f"({name}={getattr(saved, name)}); leave it out to continue")
    saved.steps = given.get("steps", saved.steps)
    if ckpt["step"] >= saved.steps:
        raise ValueError(f"--resume {args.resume} is at step {ckpt['step']}, which is not below "
                         f"--steps {saved.steps}; pass a larger --steps to continue")
    return saved, ckpt, notes


def check_paths(args):
    out = args.out or args.resume
    check_output_dir("--out", out)
    if (args.out is not None and args.out != args.resume
            and os.path.isfile(os.path.join(args.out, MANIFEST))):
        raise ValueError(f"--out {args.out} already holds a checkpoint; continue it with "
                         f"--resume {args.out}, or choose another --out")
    return out


def start(settings, ckpt, model):
    """The optimiser, RNG, first step and history: fresh, or the checkpoint's."""
    s = settings
    optimizer = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    if ckpt is None:
        return optimizer, np.random.default_rng(s.seed), 0, {"losses": [], "evals": []}
    optimizer.load_state_dict(ckpt["optimizer_state"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["rng_state"]
    history = ckpt["extra"].get("history") or {}
    return optimizer, rng, ckpt["step"], {"losses": list(history.get("losses", [])),
                                          "evals": list(history.get("evals", []))}


def run_loop(command, settings, model, ckpt, out, next_batch, evaluate, args):
    optimizer, rng, step0, history = start(settings, ckpt, model)
    t0 = time.perf_counter()
    result = train_loop(model, optimizer, settings, next_batch, rng, step0, out, evaluate,
                        args.stop_at, history, log=print, progress=Progress())
    if result["stopped_by"]:
        where = (f"checkpoint of step {result['step']} saved in {out}; continue with: "
                 f"numpygpt {command} --resume {out}" if result["saved"] is not None
                 else "nothing saved (no --out)")
        what = "nothing trained yet" if result["step"] == step0 else f"stopped after step {result['step']}"
        print(f"numpygpt {command}: {result['stopped_by']}: {what}; {where}")
    return result, time.perf_counter() - t0


# ---- numpygpt train -------------------------------------------------------------------------

def run_train(args):
    s, ckpt, notes = settings_from(args, PRETRAIN)
    out = check_paths(args)
    train_ids, val_ids = load_dataset(s.data, s.val_fraction, s.seq_len)
    model = GPT(s.model_config(n_positions=s.seq_len) if ckpt is None else ckpt["config"],
                seed=s.seed, params=None if ckpt is None else ckpt["params"])
    val = eval_batches(val_ids, s.batch_size, s.seq_len, s.eval_batches)
    print(f"data: {s.data or 'pydoc_data.topics'}: {len(train_ids):,} training / "
          f"{len(val_ids):,} validation bytes")
    print(f"model: {model.num_params():,} parameters (n_layer={s.n_layer}, n_head={s.n_head}, "
          f"n_embd={s.n_embd}, seq_len={s.seq_len}, {s.pos_encoding} positions, float32)")
    baseline = unigram_entropy(val_ids)
    print(f"unigram baseline (entropy of the byte distribution on validation): {baseline:.4f} nats")
    if ckpt is None:
        print(f"step 0: val loss {mean_loss(model, val):.4f} (uniform over 257 tokens: "
              f"{math.log(257):.4f})")
    else:
        print(f"resuming from {args.resume} at step {ckpt['step']}" +
              (f"; {', '.join(notes)}" if notes else ""))
    result, dt = run_loop("train", s, model, ckpt, out,
                          lambda rng: get_batch(train_ids, s.batch_size, s.seq_len, rng),
                          lambda m: {"val loss": mean_loss(m, val)}, args)
    if result["stopped_by"]:
        return 130 if result["stopped_by"] == "SIGINT" else 143
    last = result["evals"][-1] if result["evals"] else (None, None)
    final = last[1]["val loss"] if last[0] == result["step"] else mean_loss(model, val)
    print(f"done: {result['step']} steps in {format_seconds(dt)}; final val loss {final:.4f} nats "
          f"vs unigram baseline {baseline:.4f} nats")
    if out is not None:
        print(f"checkpoint: {out} (step {result['step']})")
    if args.sample_tokens > 0:
        print("sample (temperature 0.8):")
        print(sample_text(model, args.sample_prompt, args.sample_tokens, seed=s.seed))
    return 0


def sample_text(model, prompt, n_tokens, seed=0, temperature=0.8):
    ids = TOK.encode(prompt)
    if ids.size == 0:
        raise ValueError("--sample-prompt is empty")
    out = generate(model, [ids], n_tokens, temperature, seed=seed, eot_id=TOK.eot_id)[0]
    text = TOK.decode(np.concatenate([ids, out]))
    # an undertrained model emits control bytes; keep the terminal sane
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


# ---- numpygpt sft ---------------------------------------------------------------------------

def run_sft(args):
    s, ckpt, notes = settings_from(args, SFT)
    out = check_paths(args)
    if s.data is None:
        task = AdditionTask(n_test=s.n_test, seed=s.seed)
        print(f"task: a+b for a, b in [0, 999], answer digits reversed (e.g. "
              f"{''.join(addition_example(17, 25))}); {len(task.test)} held-out problems "
              f"never drawn for training")
    else:
        task = JsonlTask(s.data, s.val_fraction, s.seed)
        print(f"task: {s.data}: {len(task.train)} training / {len(task.test)} held-out records")
    lengths = [len(TOK.encode(p)) + len(TOK.encode(a)) + 1
               for p, a in task.test + getattr(task, "train", [])]
    model = sft_model(s, ckpt, args, max(lengths))
    print(f"model: {model.num_params():,} parameters (n_layer={model.config.n_layer}, "
          f"n_embd={model.config.n_embd}), {s.steps} steps of batch {s.batch_size}, "
          f"{'prompt masked (-100)' if s.prompt_mask else 'NO prompt mask: whole sequence'}")
    acc0, _ = exact_match(model, task.test)
    loss0 = answer_loss_masked(model, task.test)
    when = "before" if ckpt is None else f"at step {ckpt['step']}"
    print(f"{when}: held-out exact match {acc0:.1%}, held-out answer loss {loss0:.4f}"
          + (f"; {', '.join(notes)}" if notes else ""))
    result, dt = run_loop("sft", s, model, ckpt, out,
                          lambda rng: make_batch(task.sample(s.batch_size, rng), s.prompt_mask),
                          lambda m: {"held-out exact match": exact_match(m, task.test)[0]}, args)
    if result["stopped_by"]:
        return 130 if result["stopped_by"] == "SIGINT" else 143
    acc, results = exact_match(model, task.test)
    loss = answer_loss_masked(model, task.test)
    print(f"after {result['step']} steps ({format_seconds(dt)}): held-out exact match "
          f"{acc0:.1%} -> {acc:.1%}, answer loss {loss0:.4f} -> {loss:.4f}")
    if args.show > 0:
        show_examples(results, args.show)
    if out is not None:
        print(f"checkpoint: {out} (step {result['step']})")
    return 0


def sft_model(s, ckpt, args, longest):
    """The model to fine-tune: resumed, from --init, or new (its n_positions fits the task)."""
    if ckpt is not None:
        return GPT(ckpt["config"], params=ckpt["params"])
    if args.init is None:
        n_pos = 32 if s.data is None else 2 ** math.ceil(math.log2(longest * 2))
        return GPT(s.model_config(n_positions=n_pos), seed=s.seed)
    init = load_checkpoint(args.init)
    config = init["config"]
    for name in MODEL_FIELDS:
        given = getattr(args, name)
        if given is not None and given != getattr(config, name):
            raise ValueError(f"--{name.replace('_', '-')} {given} contradicts --init {args.init} "
                             f"({name}={getattr(config, name)}); leave it out")
        setattr(s, name, getattr(config, name))
    if config.vocab_size != TOK.vocab_size:
        raise ValueError(f"--init {args.init}: vocab_size {config.vocab_size} is not the byte "
                         f"tokenizer's {TOK.vocab_size}")
    if config.pos_encoding == "learned" and longest > config.n_positions:
        raise ValueError(f"--init {args.init}: n_positions={config.n_positions} is shorter than "
                         f"the longest example ({longest} tokens with the eot)")
    return GPT(config, params=init["params"])


def show_examples(results, n):
    """n held-out examples spread over the set, then up to 3 wrong ones not shown yet."""
    every = max(1, len(results) // n)
    picks = results[::every][:n]
    wrong = [r for r in results if r[1] != r[2] and r not in picks][:3]
    print(f"held-out examples (one in {every}" + (", then wrong ones" if wrong else "") +
          "; answers are reversed):")
    for p, a, got in picks + wrong:
        print(f"  {p!r:>12} expected {a!r:8} got {got!r:8} {'ok' if got == a else 'WRONG'}")
