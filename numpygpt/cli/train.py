"""`numpygpt train` (pre-training on text) and `numpygpt sft` (prompt-masked fine-tuning):
one training loop (numpygpt/train/loop.py), two kinds of batches and reports.

Both save checkpoints with --out (every --save-every steps, at the end, and on Ctrl-C or
SIGTERM), continue one with --resume, and stop on NaN/inf keeping the last good checkpoint
(exit 1). Options given with --resume (or sft's --init) must agree with the checkpoint,
except --steps, which may extend the run.
"""
import contextlib
import math
import os
import time

import numpy as np

from ..decode import generate
from ..io import ByteTokenizer
from ..config import ENGINES, Execution
from ..model import GPT
from ..train import AdamW, PRETRAIN, SFT, train_loop, load_checkpoint
from ..train.data import load_dataset, get_batch, eval_batches, unigram_entropy
from ..train.loop import mean_loss, format_seconds
from ..train.sft import AdditionTask, JsonlTask, addition_example, make_batch, exact_match
from ..train.sft import answer_loss_masked
from ..train.distributed import one_thread_per_rank, shares, world as mpi_world
from .common import (add_attention_variant_arguments, eprint, float_in, int_at_least, int_in,
                     positive_float, positive_int, size_options, utf8_text)
from .train_setup import (Pictures, check_paths, check_plots, check_run_memory, claim_out,
                          engine_line, flag, settings_from, threads_note)
from .progress import Progress

TOK = ByteTokenizer()
N_TEST_MAX = AdditionTask.n_problems() // 2
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "pos_encoding", "sliding_window", "n_kv_head")


# ---- options --------------------------------------------------------------------------------

def add_common_arguments(p, d):
    """The options of both commands; defaults None, so that we know which were given."""
    p.add_argument("--out", metavar="DIR", help="save checkpoints here (created if needed)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run saved in DIR with its settings (--steps may extend it)")
    p.add_argument("--steps", type=positive_int, help=f"optimizer steps (>= 1, default {d.steps})")
    p.add_argument("--engine", choices=ENGINES, default="fast",
                   help="fast (default): numpygpt/engine/; textbook: numpygpt/layers/, the code a "
                        "reader reads (the same numbers to rounding, slower)")
    p.add_argument("--plots", metavar="DIR", help="draw the loss curve, activation and gradient "
                   "histograms and update ratios into DIR (needs matplotlib, the plot extra)")
    p.add_argument("--stop-at", type=positive_int, metavar="STEP",
                   help="stop (and save) after this step, as if interrupted; the schedule still "
                        "runs to --steps, and --resume continues")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=positive_int, help=f"(>= 1, default {d.n_layer})")
    g.add_argument("--n-head", type=positive_int, help=f"(>= 1, divides --n-embd; default {d.n_head})")
    g.add_argument("--n-embd", type=positive_int, help=f"(>= 1, default {d.n_embd})")
    g.add_argument("--pos-encoding", choices=("learned", "rope"), help=f"(default {d.pos_encoding})")
    add_attention_variant_arguments(g)
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
    p.add_argument("--sample-tokens", type=int_in(0, 100_000), default=300,
                   help="length of the sample printed at the end (0 to 100,000; 0: none)")
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
    p.add_argument("--n-test", type=int_in(1, N_TEST_MAX),
                   help=f"held-out problems of the addition task (1 to {N_TEST_MAX:,}: half of its "
                        f"10^6 distinct problems; default {d.n_test})")
    p.add_argument("--show", type=int_at_least(0), default=5,
                   help="held-out examples printed at the end (>= 0)")


def build_model(args, config, seed, params):
    """The model to train, computed by --engine (the chunked loss: -100 rows cost nothing)."""
    return GPT(config, seed=seed, params=params,
               execution=Execution(engine=args.engine, loss="chunked"))


def model_config(settings, n_positions):
    """The model the options describe; an error names the options."""
    try:
        return settings.model_config(n_positions=n_positions)
    except ValueError as e:
        raise ValueError(size_options(e)) from None


def start(settings, run, model):
    """The optimiser, RNG, first step and history: fresh, or the resumed run's."""
    s = settings
    optimizer = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay,
                      engine=model.execution.engine)
    if run is None:
        return optimizer, np.random.default_rng(s.seed), 0, {"losses": [], "evals": []}
    optimizer.load_state_dict(run["checkpoint"]["optimizer_state"])
    history = {field: list(entries) for field, entries in run["history"].items()}
    return optimizer, run["rng"], run["checkpoint"]["step"], history


def data_parallel(world, settings):
    """A run over several ranks: one thread each, and rank 0 says how the batch is split."""
    if world.size > 1:
        threads = one_thread_per_rank(world)
        split = " + ".join(map(str, shares(settings.batch_size, world.size)))
        print(f"data-parallel: {world.name}; global batch {settings.batch_size} = {split} rows; "
              f"{threads}")


@contextlib.contextmanager
def rank_zero_prints(world):
    """Every rank runs the command; the others' stdout goes nowhere."""
    if world.rank == 0:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def run_loop(command, settings, model, run, out, next_batch, evaluate, args, world):
    """The one training loop; -> (result, seconds, exit code if it was stopped, else None)."""
    optimizer, rng, step0, history = start(settings, run, model)
    pictures = Pictures(args, command, model, next_batch, settings.seed, step0, world)
    t0 = time.perf_counter()
    result = train_loop(model, optimizer, settings, next_batch, rng, step0, out, evaluate,
                        args.stop_at, history, log=print, progress=Progress(), world=world,
                        update_ratio=args.plots is not None)
    pictures.draw(result)
    stopped_by = result["stopped_by"]
    step = result["step"]
    if not stopped_by and step < settings.steps:        # --stop-at: a pause, not the end
        print(f"numpygpt {command}: --stop-at {args.stop_at}: stopped after step {step} of "
              f"{settings.steps}; checkpoint of step {step} saved in {out}; continue with: "
              f"numpygpt {command} --resume {out}")
        return result, time.perf_counter() - t0, 0
    if not stopped_by:
        return result, time.perf_counter() - t0, None
    if result["saved"] is not None:
        where = (f"stopped after step {step}; checkpoint of step {step} saved in {out}; "
                 f"continue with: numpygpt {command} --resume {out}")
    elif step > step0:
        where = f"stopped after step {step}; nothing saved (no --out)"
    elif run is not None:
        where = f"nothing trained since step {step0}; the checkpoint in {out} is unchanged"
    else:
        where = "nothing trained yet; nothing saved"
    line = f"numpygpt {command}: {stopped_by}: {where}"
    if stopped_by == "SIGPIPE":              # stdout is gone: say it where it can be read
        eprint(line)
        return result, time.perf_counter() - t0, 141
    print(line)
    return result, time.perf_counter() - t0, 130 if stopped_by == "SIGINT" else 143


def run_train(args):
    world = mpi_world()                       # this process alone, or the ranks of mpiexec
    with rank_zero_prints(world), contextlib.ExitStack() as claims:
        return train_command(args, world, claims)


def run_sft(args):
    world = mpi_world()
    with rank_zero_prints(world), contextlib.ExitStack() as claims:
        return sft_command(args, world, claims)


def before_first_step(args):
    kept = f"; the checkpoint in {args.resume} is unchanged" if args.resume else ""
    return f"before the first step: nothing trained, nothing saved{kept}"


def interrupted(e, what):
    """Ctrl-C or SIGTERM outside the loop (which handles its own): say what it cost."""
    e.args = (what,)
    return e


# ---- numpygpt train -------------------------------------------------------------------------

def train_command(args, world, claims):
    """claims: an ExitStack holding the claim on the directory saved into until the end."""
    try:
        s, run, notes = settings_from(args, PRETRAIN)
        data_parallel(world, s)
        out = check_paths(args, run)
        claim_out(args, out, world, claims)
        check_plots(args)
        sample_ids = check_sample_prompt(args)
        train_ids, val_ids = load_dataset(s.data, s.val_fraction, s.seq_len)
        ckpt = None if run is None else run["checkpoint"]
        config = model_config(s, s.seq_len) if ckpt is None else ckpt["config"]
        if sample_ids is not None and config.pos_encoding == "learned" \
                and len(sample_ids) > config.n_positions:
            raise ValueError(f"--sample-prompt has {len(sample_ids)} tokens, more than the "
                             f"model's n_positions={config.n_positions}")
        check_run_memory(args, config, s.batch_size, s.seq_len, "training this model",
                         [("validation batches", s.eval_batches * s.batch_size * s.seq_len * 16)])
        model = build_model(args, config, s.seed, None if ckpt is None else ckpt["params"])
        val = eval_batches(val_ids, s.batch_size, s.seq_len, s.eval_batches)
        print(f"data: {s.data or 'pydoc_data.topics'}: {len(train_ids):,} training / "
              f"{len(val_ids):,} validation bytes")
        print(engine_line(args))
        threads_note(world)
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
    except KeyboardInterrupt as e:
        raise interrupted(e, before_first_step(args)) from None
    result, dt, stopped = run_loop("train", s, model, run, out,
                                   lambda rng: get_batch(train_ids, s.batch_size, s.seq_len, rng),
                                   lambda m: {"val loss": mean_loss(m, val)}, args, world)
    if stopped is not None:
        return stopped
    try:
        last = result["evals"][-1] if result["evals"] else (None, None)
        final = last[1]["val loss"] if last[0] == result["step"] else mean_loss(model, val)
        print(f"done: {result['step']} steps in {format_seconds(dt)}; final val loss {final:.4f} "
              f"nats vs unigram baseline {baseline:.4f} nats")
        if out is not None:
            print(f"checkpoint: {out} (step {result['step']})")
        if sample_ids is not None:
            print("sample (temperature 0.8):")
            print(sample_text(model, sample_ids, args.sample_tokens, seed=s.seed))
    except KeyboardInterrupt as e:
        saved = f"; checkpoint: {out} (step {result['step']})" if out is not None else ""
        raise interrupted(e, f"after training ({result['step']} steps){saved}") from None
    return 0


def check_sample_prompt(args):
    """The end-of-training sample's prompt, checked before training: its ids, or None."""
    if args.sample_tokens == 0:
        return None
    ids = TOK.encode(utf8_text("--sample-prompt", args.sample_prompt))
    if ids.size == 0:
        raise ValueError("--sample-prompt is empty (or pass --sample-tokens 0: no sample)")
    return ids


def sample_text(model, prompt, n_tokens, seed=0, temperature=0.8):
    """prompt: text or its byte ids."""
    ids = TOK.encode(prompt) if isinstance(prompt, str) else np.asarray(prompt)
    if ids.size == 0:
        raise ValueError("--sample-prompt is empty")
    out = generate(model, [ids], n_tokens, temperature, seed=seed, eot_id=TOK.eot_id)[0]
    text = TOK.decode(np.concatenate([ids, out]))
    # an undertrained model emits control bytes; keep the terminal sane
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


# ---- numpygpt sft ---------------------------------------------------------------------------

def sft_command(args, world, claims):
    """claims: an ExitStack holding the claim on the directory saved into until the end."""
    try:
        if args.init is not None and args.resume is not None:
            raise ValueError(f"--init {args.init} with --resume {args.resume}: a resumed run "
                             f"continues from its own checkpoint; give one of them")
        s, run, notes = settings_from(args, SFT)
        data_parallel(world, s)
        out = check_paths(args, run)
        claim_out(args, out, world, claims)
        check_plots(args)
        if s.data is not None and args.n_test is not None and run is None:
            raise ValueError(f"--n-test {args.n_test} sets the held-out share of the addition "
                             f"task; with --data the held-out share is --val-fraction")
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
        ckpt = None if run is None else run["checkpoint"]
        config, params = sft_model(s, ckpt, args, max(lengths))
        check_run_memory(args, config, s.batch_size, max(lengths), "fine-tuning this model")
        model = build_model(args, config, s.seed, params)
        print(engine_line(args))
        threads_note(world)
        print(f"model: {model.num_params():,} parameters (n_layer={model.config.n_layer}, "
              f"n_embd={model.config.n_embd}), {s.steps} steps of batch {s.batch_size}, "
              f"{'prompt masked (-100)' if s.prompt_mask else 'NO prompt mask: whole sequence'}")
        acc0, _ = exact_match(model, task.test)
        loss0 = answer_loss_masked(model, task.test)
        when = "before" if ckpt is None else f"at step {ckpt['step']}"
        print(f"{when}: held-out exact match {acc0:.1%}, held-out answer loss {loss0:.4f}"
              + (f"; {', '.join(notes)}" if notes else ""))
    except KeyboardInterrupt as e:
        raise interrupted(e, before_first_step(args)) from None
    result, dt, stopped = run_loop(
        "sft", s, model, run, out,
        lambda rng: make_batch(task.sample(s.batch_size, rng), s.prompt_mask),
        lambda m: {"held-out exact match": exact_match(m, task.test)[0]}, args, world)
    if stopped is not None:
        return stopped
    try:
        acc, results = exact_match(model, task.test)
        loss = answer_loss_masked(model, task.test)
        print(f"after {result['step']} steps ({format_seconds(dt)}): held-out exact match "
              f"{acc0:.1%} -> {acc:.1%}, answer loss {loss0:.4f} -> {loss:.4f}")
        if args.show > 0:
            # the built-in task's answers are reversed; the user's records are their own
            show_examples(results, args.show, None if args.data else "answers are reversed")
        if out is not None:
            print(f"checkpoint: {out} (step {result['step']})")
    except KeyboardInterrupt as e:
        saved = f"; checkpoint: {out} (step {result['step']})" if out is not None else ""
        raise interrupted(e, f"after training ({result['step']} steps){saved}") from None
    return 0


def sft_model(s, ckpt, args, longest):
    """The model to fine-tune, as (config, params or None): resumed, from --init, or new (its
    n_positions fits the task). Options contradicting --init are refused, all named."""
    if ckpt is not None:
        return ckpt["config"], ckpt["params"]
    if args.init is None:
        n_pos = 32 if s.data is None else 2 ** math.ceil(math.log2(longest * 2))
        return model_config(s, n_pos), None
    try:
        init = load_checkpoint(args.init)
    except ValueError as e:
        raise ValueError(f"--init {args.init}: {e}") from None
    config = init["config"]
    stored = {name: config.kv_heads if name == "n_kv_head" else getattr(config, name)
              for name in MODEL_FIELDS}              # n_kv_head: K, also where K = n_head
    contradict = [name for name in MODEL_FIELDS
                  if getattr(args, name) is not None and getattr(args, name) != stored[name]]
    if contradict:
        raise ValueError(f"{', '.join(flag(n, getattr(args, n)) for n in contradict)} "
                         f"contradict{'s' if len(contradict) == 1 else ''} --init {args.init} "
                         f"({', '.join(f'{n}={stored[n]!r}' for n in contradict)}); "
                         f"leave {'it' if len(contradict) == 1 else 'them'} out")
    for name in MODEL_FIELDS:
        setattr(s, name, getattr(config, name))
    if config.vocab_size != TOK.vocab_size:
        raise ValueError(f"--init {args.init}: vocab_size {config.vocab_size} is not the byte "
                         f"tokenizer's {TOK.vocab_size}")
    if config.pos_encoding == "learned" and longest > config.n_positions:
        raise ValueError(f"--init {args.init}: n_positions={config.n_positions} is shorter than "
                         f"the longest example ({longest} tokens with the eot)")
    return config, init["params"]


def show_examples(results, n, note=None):
    """n held-out examples spread over the set, then up to 3 wrong ones not shown yet; no
    example twice. note: what the reader must know about the answers, or None."""
    every = max(1, len(results) // n)
    picks = results[::every][:n]
    wrong = [r for r in results if r[1] != r[2] and r not in picks][:3]
    if len(picks) == len(results):
        which = f"all {len(picks)} held-out examples"
    elif every == 1:
        which = f"the first {len(picks)} of {len(results)} held-out examples"
    else:
        which = f"{len(picks)} of {len(results)} held-out examples (one in {every})"
    print(f"{which}" + (f", then {len(wrong)} more that are wrong" if wrong else "") +
          (f" ({note}):" if note else ":"))
    for p, a, got in picks + wrong:
        print(f"  {p!r:>12} expected {a!r:8} got {got!r:8} {'ok' if got == a else 'WRONG'}")
