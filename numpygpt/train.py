"""Pre-training: `numpygpt train`, and `train_loop` for use from Python.

One step:
    lr    = warm-up then cosine (numpygpt.optim.lr_at)
    x, y  = B random windows of T+1 bytes from the training split       (B,T), aligned labels
    loss, grads = model.loss_and_grads(x, y)                             forward + backward
    stop if loss or the gradient norm is NaN/inf (the last checkpoint saved stays as it is)
    clip the global gradient norm; AdamW step

Exact resumption: a checkpoint holds the parameters, AdamW's moments and step count, the
step, the training RNG's state and the settings, so a resumed run draws the same batches
and computes bit-identical losses to an uninterrupted one. Validation batches come from
their own fixed RNG: how often you evaluate does not change the training batches.
"""
import math
import os
import sys
import time
from dataclasses import dataclass, asdict, fields

import numpy as np

from .checkpoint import save_checkpoint, load_checkpoint
from .config import GPTConfig
from .data import load_dataset, get_batch, eval_batches, unigram_entropy
from .model import GPT
from .optim import AdamW, clip_grad_norm, lr_at
from .progress import Progress
from .tokenizer import ByteTokenizer


@dataclass
class TrainSettings:
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    pos_encoding: str = "learned"
    # data
    block_size: int = 128
    batch_size: int = 16
    val_fraction: float = 0.1
    # optimisation
    steps: int = 600
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # bookkeeping
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 0

    def model_config(self):
        return GPTConfig(vocab_size=ByteTokenizer.vocab_size, n_positions=self.block_size,
                         n_embd=self.n_embd, n_head=self.n_head, n_layer=self.n_layer,
                         pos_encoding=self.pos_encoding)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NonFiniteError(Exception):
    """Training produced NaN or inf; the message says where."""


def evaluate(model, batches):
    """Mean loss over fixed batches (each batch's mean; all have the same token count)."""
    return float(np.mean([model.loss(x, y) for x, y in batches]))


def format_seconds(s):
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def train_loop(model, optimizer, settings, train_ids, val_ids, rng, start_step=0, out=None,
               stop_at=None, log=print, progress=None, history=None, extra=None):
    """Run steps start_step .. settings.steps - 1 (or until stop_at). Returns a dict with
    losses (train loss per step run here), val (list of (step, val loss)), step (steps done).
    Raises NonFiniteError on NaN/inf; checkpoints saved before are kept. `extra` (a JSON-able
    dict) is saved in each checkpoint beside the settings and the loss history."""
    s = settings
    history = history if history is not None else {"losses": [], "val": []}
    val_batches = eval_batches(val_ids, s.batch_size, s.block_size, s.eval_batches)
    losses, vals = [], []
    step, t_start = start_step, time.perf_counter()
    last_saved = None

    def save(step):
        nonlocal last_saved
        if out is not None:
            save_checkpoint(out, model.config, model.params, optimizer.state_dict(), step,
                            rng.bit_generator.state,
                            {"settings": asdict(s), "history": history, **(extra or {})})
            last_saved = step

    while step < s.steps and (stop_at is None or step < stop_at):
        lr = lr_at(step, s.lr, s.warmup, s.steps, s.min_lr)
        x, y = get_batch(train_ids, s.batch_size, s.block_size, rng)          # (B,T), (B,T)
        loss, grads = model.loss_and_grads(x, y)
        norm = clip_grad_norm(grads, s.grad_clip)       # scales nothing if the norm is nan/inf
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
            kept = (f"the last good checkpoint, step {last_saved}, is kept in {out}"
                    if last_saved is not None else "no checkpoint was saved in this run")
            if progress is not None:
                progress.done()
            raise NonFiniteError(f"step {step}: {what}; training stopped ({kept})")
        optimizer.step(model.params, grads, lr)
        step += 1
        losses.append(loss)
        history["losses"].append(loss)
        if progress is not None:
            elapsed = time.perf_counter() - t_start
            done_here = step - start_step
            remaining = elapsed / done_here * (s.steps - step)
            tok_s = done_here * s.batch_size * s.block_size / elapsed
            progress.update(f"step {step}/{s.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                            f"{tok_s:,.0f} tok/s | elapsed {format_seconds(elapsed)} | "
                            f"remaining {format_seconds(remaining)}")
        if step % s.eval_every == 0 or step == s.steps:
            val = evaluate(model, val_batches)
            vals.append((step, val))
            history["val"].append((step, val))
            if progress is not None:
                progress.done()
            log(f"step {step}: train loss {loss:.4f}, val loss {val:.4f}")
        if step % s.save_every == 0 or step == s.steps or step == stop_at:
            save(step)
    if progress is not None:
        progress.done()
    return {"losses": losses, "val": vals, "step": step, "history": history}


def sample_text(model, prompt, n_tokens, seed=0, temperature=0.8, top_k=None):
    from .generate import generate
    tok = ByteTokenizer()
    ids = tok.encode(prompt)
    out = generate(model.params, model.config, [ids], n_tokens, temperature, top_k, seed,
                   eot_id=tok.eot_id)[0]
    text = tok.decode(np.concatenate([ids, out]))
    # an undertrained model emits control bytes; keep the terminal sane
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


# ---- the command ----------------------------------------------------------------------

def add_arguments(parser):
    d = TrainSettings()
    parser.add_argument("--data", metavar="PATH", default=None,
                        help="UTF-8 text file (default: Python's pydoc_data.topics, ~450 KB)")
    parser.add_argument("--out", metavar="DIR", default=None, help="checkpoint directory")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the run saved in DIR (its settings; --steps may extend it)")
    parser.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {d.steps})")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (and save) after this step, as if interrupted; the schedule "
                             "still runs to --steps, and --resume continues")
    g = parser.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=d.n_layer)
    g.add_argument("--n-head", type=int, default=d.n_head)
    g.add_argument("--n-embd", type=int, default=d.n_embd)
    g.add_argument("--pos-encoding", choices=("learned", "rope"), default=d.pos_encoding)
    g = parser.add_argument_group("data and optimisation")
    g.add_argument("--block-size", type=int, default=d.block_size, help="sequence length T")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--val-fraction", type=float, default=d.val_fraction)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--eval-batches", type=int, default=d.eval_batches)
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--sample-tokens", type=int, default=300,
                        help="length of the sample printed at the end (0: none)")
    parser.add_argument("--sample-prompt", default="The ")


def _check_settings(s):
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps",
                 "eval_every", "eval_batches", "save_every"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        if not getattr(s, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
    if s.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {s.warmup}")
    if s.grad_clip == 0:
        raise ValueError("--grad-clip must be > 0")


def run(args):
    try:
        return _run(args)
    except ValueError as e:
        print(f"numpygpt train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"numpygpt train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f"; the last checkpoint in {args.out or args.resume} continues with --resume" \
            if (args.out or args.resume) else ""
        print(f"\nnumpygpt train: interrupted{where}", file=sys.stderr)
        return 130


def _run(args):
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        saved = ckpt["extra"].get("settings")
        if saved is None:
            raise ValueError(f"--resume {args.resume}: the checkpoint has no training settings")
        s = TrainSettings.from_dict(saved)
        if args.steps is not None:
            s.steps = args.steps
        if ckpt["optimizer_state"] is None:
            raise ValueError(f"--resume {args.resume}: the checkpoint has no optimizer state")
        data = args.data if args.data is not None else ckpt["extra"].get("data")
        out = args.out or args.resume
    else:
        fields_ = {f.name for f in fields(TrainSettings)}
        s = TrainSettings(**{k: v for k, v in vars(args).items() if k in fields_ and v is not None})
        data = None if args.data is None else os.path.abspath(args.data)
        out = args.out
    _check_settings(s)
    if args.stop_at is not None and args.stop_at < 1:
        raise ValueError(f"--stop-at must be >= 1, got {args.stop_at}")
    config = s.model_config()
    train_ids, val_ids = load_dataset(data, s.val_fraction, s.block_size)
    if args.resume is not None:
        model = GPT(ckpt["config"], params=ckpt["params"])
        start, history = ckpt["step"], ckpt["extra"].get("history") or {"losses": [], "val": []}
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt["rng_state"]
    else:
        model = GPT(config, seed=s.seed)
        start, history = 0, {"losses": [], "val": []}
        rng = np.random.default_rng(s.seed)
    optimizer = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    if args.resume is not None:
        optimizer.load_state_dict(ckpt["optimizer_state"])

    where = "pydoc_data.topics" if data is None else data
    print(f"data: {where}: {len(train_ids):,} training / {len(val_ids):,} validation bytes")
    print(f"model: {model.num_params():,} parameters (n_layer={s.n_layer}, n_head={s.n_head}, "
          f"n_embd={s.n_embd}, block_size={s.block_size}, {s.pos_encoding} positions, float32)")
    baseline = unigram_entropy(val_ids)
    print(f"unigram baseline (entropy of the byte distribution on validation): {baseline:.4f} nats")
    val_batches = eval_batches(val_ids, s.batch_size, s.block_size, s.eval_batches)
    if start == 0:
        print(f"step 0: val loss {evaluate(model, val_batches):.4f} (uniform over 257 tokens: "
              f"{math.log(257):.4f})")
    else:
        print(f"resuming from {args.resume} at step {start}")
    if start >= s.steps:
        raise ValueError(f"--resume {args.resume} is at step {start}, which is not below "
                         f"--steps {s.steps}; pass a larger --steps to continue")
    t0 = time.perf_counter()
    result = train_loop(model, optimizer, s, train_ids, val_ids, rng, start, out,
                        log=print, progress=Progress(), history=history, extra={"data": data},
                        stop_at=args.stop_at)
    dt = time.perf_counter() - t0
    last_eval = result["val"][-1] if result["val"] else (None, None)
    final = last_eval[1] if last_eval[0] == result["step"] else evaluate(model, val_batches)
    print(f"done: {result['step']} steps in {format_seconds(dt)}; final val loss {final:.4f} nats "
          f"vs unigram baseline {baseline:.4f} nats")
    if out is not None:
        print(f"checkpoint: {out} (step {result['step']})")
    if args.sample_tokens > 0:
        print("sample (temperature 0.8):")
        print(sample_text(model, args.sample_prompt, args.sample_tokens, seed=s.seed))
    return 0


# ---- tour ---------------------------------------------------------------------------------

def tour_section(write, seed=0):
    """A few training steps of a tiny model on the default text: the loss falls."""
    s = TrainSettings(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, steps=40,
                      lr=1e-2, min_lr=1e-3, warmup=5, eval_every=40, eval_batches=2, seed=seed)
    train_ids, val_ids = load_dataset(None, s.val_fraction, s.block_size)
    model = GPT(s.model_config(), seed=seed)
    opt = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    rng = np.random.default_rng(seed)
    val_batches = eval_batches(val_ids, s.batch_size, s.block_size, s.eval_batches)
    write(f"A {model.num_params():,}-parameter GPT learns bytes of Python's pydoc topics "
          f"(B={s.batch_size}, T={s.block_size}, AdamW, warm-up + cosine).")
    write(f"unigram baseline {unigram_entropy(val_ids):.3f} nats; "
          f"val loss before {evaluate(model, val_batches):.3f}")
    result = train_loop(model, opt, s, train_ids, val_ids, rng, log=lambda line: None)
    for i in range(0, s.steps, 5):
        write(f"  step {i + 1:3d}  train loss {result['losses'][i]:.3f}")
    write(f"val loss after {s.steps} steps: {result['val'][-1][1]:.3f} "
          f"(`numpygpt train` runs longer and goes well below the baseline)")
