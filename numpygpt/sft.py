"""Supervised fine-tuning: `numpygpt sft`, prompt-masked next-token loss, exact-match accuracy.

An example is one sequence, prompt then answer then end-of-text:
    input   [Q1 Q2 Q3 A1 A2 <eot>]
    labels  [-100 -100 A1 A2 <eot> -100]         aligned; the eot is a target: the model learns to stop
Batches are right-padded; padding is masked out of attention and its labels are -100
(numpygpt.labels.sft_batch). With --no-prompt-mask the labels are the plain next-token
labels of the whole sequence (prompt included), the pre-training objective on the same data.

The default task is checkable exactly: addition of two numbers in [0, 999], operands written
with 3 digits, the answer with its digits reversed ("017+025=" -> "24", i.e. 42): least
significant digit first, so each digit depends only on the operands' digits at fixed places
and the carry (the order a person adds in). Answers have 1 to 4 digits, so batches are padded.
Held-out problems are drawn first, and never appear in training.

Accuracy: greedy decoding with the KV cache, the answer must match exactly and be followed
by end-of-text.

The seed's claim, as a function: `answer_loss_by_prefill` prefills the prompt into the KV
cache and scores the answer tokens one at a time; it equals the masked full-sequence loss
`answer_loss_masked` (tests check float64 to 1e-10): masking the prompt with -100 *is*
"start predicting where the question ends".
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass, asdict, fields

import numpy as np

from .checkpoint import save_checkpoint, load_checkpoint
from .config import GPTConfig
from .generate import generate
from .kv_cache import KVCache, gpt_forward_with_cache
from .labels import sft_batch, causal_lm_labels
from .model import GPT
from .optim import AdamW, clip_grad_norm, lr_at
from .progress import Progress
from .tokenizer import ByteTokenizer

TOK = ByteTokenizer()


# ---- data ---------------------------------------------------------------------------------

def addition_example(a, b):
    """17, 25 -> ("017+025=", "24"): operands zero-padded to 3 digits, so digit i of each
    sits at a fixed position; the sum reversed, without leading zeros (1 to 4 digits)."""
    return f"{a:03d}+{b:03d}=", str(a + b)[::-1]


class AdditionTask:
    """a + b for a, b in [0, max_value]; n_test held-out problems, training draws the rest."""

    def __init__(self, n_test=500, max_value=999, seed=0):
        rng = np.random.default_rng(seed + 1_000_003)
        pairs = set()
        while len(pairs) < n_test:
            pairs.add(tuple(int(v) for v in rng.integers(0, max_value + 1, size=2)))
        self.test_pairs = sorted(pairs)
        self.max_value = max_value
        self.test = [addition_example(a, b) for a, b in self.test_pairs]

    def sample(self, n, rng):
        """n training examples, none of them a test problem."""
        out = []
        while len(out) < n:
            a, b = (int(v) for v in rng.integers(0, self.max_value + 1, size=2))
            if (a, b) not in self._test_set:
                out.append(addition_example(a, b))
        return out

    @property
    def _test_set(self):
        if not hasattr(self, "_set"):
            self._set = set(self.test_pairs)
        return self._set


class JsonlTask:
    """Records {"prompt": str, "answer": str}, one per line; a seeded shuffle holds out
    val_fraction of them (at least one)."""

    def __init__(self, path, val_fraction=0.1, seed=0):
        records = read_jsonl(path)
        if len(records) < 2:
            raise ValueError(f"--data {path!r}: needs at least 2 records (training and "
                             f"held-out), got {len(records)}")
        order = np.random.default_rng(seed).permutation(len(records))
        n_test = min(max(1, int(round(len(records) * val_fraction))), len(records) - 1)
        self.test = [records[i] for i in order[:n_test]]
        self.train = [records[i] for i in order[n_test:]]

    def sample(self, n, rng):
        return [self.train[i] for i in rng.integers(0, len(self.train), size=n)]


def read_jsonl(path):
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r}: no such file")
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"--data {path}:{lineno}: not UTF-8 (byte {e.start} of the line)") from None
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"--data {path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"--data {path}:{lineno}: expected an object with \"prompt\" and "
                                 f"\"answer\", got {type(rec).__name__}")
            for key in ("prompt", "answer"):
                if not isinstance(rec.get(key), str):
                    raise ValueError(f"--data {path}:{lineno}: \"{key}\" must be a string, got "
                                     f"{rec.get(key)!r}")
            if not rec["prompt"]:
                raise ValueError(f"--data {path}:{lineno}: \"prompt\" is empty")
            records.append((rec["prompt"], rec["answer"]))
    return records


def encode_examples(examples):
    return [(TOK.encode(p), TOK.encode(a)) for p, a in examples]


def make_batch(examples, prompt_mask=True):
    """Text pairs -> input_ids, labels, attention_mask, position_ids (B,T), right-padded.
    prompt_mask=False: labels of the whole sequence (prompt tokens are targets too)."""
    ids, labels, mask, pos = sft_batch(encode_examples(examples), pad_id=TOK.eot_id,
                                       eos_id=TOK.eot_id)
    if not prompt_mask:
        labels = causal_lm_labels(ids, mask)
    return ids, labels, mask, pos


# ---- evaluation ---------------------------------------------------------------------------

def exact_match(model, examples, batch_size=500):
    """Fraction of examples whose greedy answer equals the answer, followed by end-of-text;
    also returns the (prompt, expected, got) triples."""
    results = []
    max_answer = max(len(TOK.encode(a)) for _, a in examples)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        outs = generate(model.params, model.config, [TOK.encode(p) for p, _ in chunk],
                        max_answer + 1, eot_id=TOK.eot_id)
        # max_answer + 1 tokens: a right answer shorter than that must have ended with <eot>
        results += [(p, a, TOK.decode(o)) for (p, a), o in zip(chunk, outs)]
    correct = sum(a == got for _, a, got in results)
    return correct / len(results), results


def answer_loss_masked(model, examples):
    """Mean loss over answer tokens (and the eot after each), full sequence, prompt masked."""
    ids, labels, mask, pos = make_batch(examples)
    return model.loss(ids, labels, attention_mask=mask, position_ids=pos)


def answer_loss_by_prefill(model, examples):
    """The same quantity computed the inference way: prefill the prompt into the KV cache,
    then feed the answer one token at a time, scoring each next token. Mean over all."""
    total, count = 0.0, 0
    for prompt, answer in encode_examples(examples):
        if len(prompt) == 0:
            raise ValueError("answer_loss_by_prefill: an example has an empty prompt")
        targets = np.append(answer, TOK.eot_id)
        cache = KVCache(model.config, 1, len(prompt) + len(answer), model.dtype)
        logits = gpt_forward_with_cache(model.params, model.config, prompt[None], cache)[0, -1]
        for t, target in enumerate(targets):
            # -log softmax(logits)[target], stable
            z = logits - logits.max()
            total += float(np.log(np.exp(z).sum()) - z[target])
            count += 1
            if t < len(answer):
                logits = gpt_forward_with_cache(model.params, model.config,
                                                answer[None, t:t + 1], cache)[0, -1]
    return total / count


# ---- training -----------------------------------------------------------------------------

@dataclass
class SFTSettings:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    prompt_mask: bool = True
    n_test: int = 500
    eval_every: int = 500
    seed: int = 0


def sft_loop(model, optimizer, settings, task, rng, log=print, progress=None, eval_examples=None):
    """settings.steps SFT steps; returns train losses and (step, accuracy) evaluations."""
    s = settings
    losses, evals = [], []
    t0 = time.perf_counter()
    for step in range(s.steps):
        lr = lr_at(step, s.lr, s.warmup, s.steps, s.min_lr)
        ids, labels, mask, pos = make_batch(task.sample(s.batch_size, rng), s.prompt_mask)
        loss, grads = model.loss_and_grads(ids, labels, attention_mask=mask, position_ids=pos)
        norm = clip_grad_norm(grads, s.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise ValueError(f"step {step}: loss {loss}, gradient norm {norm}: training diverged; "
                             f"try a lower --lr")
        optimizer.step(model.params, grads, lr)
        losses.append(loss)
        if progress is not None:
            el = time.perf_counter() - t0
            progress.update(f"step {step + 1}/{s.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                            f"{(step + 1) / el:.1f} steps/s | elapsed {el:.0f}s | "
                            f"remaining {el / (step + 1) * (s.steps - step - 1):.0f}s")
        if eval_examples is not None and ((step + 1) % s.eval_every == 0 or step + 1 == s.steps):
            acc, _ = exact_match(model, eval_examples)
            evals.append((step + 1, acc))
            if progress is not None:
                progress.done()
            log(f"step {step + 1}: train loss {loss:.4f}, held-out exact match {acc:.1%}")
    return {"losses": losses, "evals": evals}


# ---- the command ----------------------------------------------------------------------

def add_arguments(parser):
    d = SFTSettings()
    parser.add_argument("--data", metavar="PATH", default=None,
                        help='JSONL of {"prompt": ..., "answer": ...} (default: generated addition '
                             'task, answers reversed)')
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held-out share of a JSONL file (default 0.1)")
    parser.add_argument("--no-prompt-mask", action="store_true",
                        help="train on the whole sequence (prompt tokens are targets too)")
    parser.add_argument("--init", metavar="DIR", default=None,
                        help="start from a numpygpt checkpoint (e.g. from `numpygpt train`)")
    parser.add_argument("--out", metavar="DIR", default=None, help="save the fine-tuned model here")
    for name in ("n_layer", "n_head", "n_embd", "steps", "batch_size", "warmup", "n_test",
                 "eval_every", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    parser.add_argument("--show", type=int, default=5, help="held-out examples printed at the end")


def run(args):
    try:
        return _run(args)
    except ValueError as e:
        print(f"numpygpt sft: error: {e}", file=sys.stderr)
        return 2


def _run(args):
    names = {f.name for f in fields(SFTSettings)}
    s = SFTSettings(**{k: v for k, v in vars(args).items() if k in names})
    s.prompt_mask = not args.no_prompt_mask
    for name in ("n_layer", "n_head", "n_embd", "steps", "batch_size", "n_test", "eval_every"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if not s.grad_clip > 0 or not s.lr > 0:
        raise ValueError("--lr and --grad-clip must be > 0")
    if args.data is None:
        task = AdditionTask(n_test=s.n_test, seed=s.seed)
        print(f"task: a+b for a, b in [0, 999], answer digits reversed (e.g. "
              f"{''.join(addition_example(17, 25))}); {len(task.test)} held-out problems "
              f"never drawn for training")
    else:
        task = JsonlTask(args.data, args.val_fraction, s.seed)
        print(f"task: {args.data}: {len(task.train)} training / {len(task.test)} held-out records")
    records = task.test + getattr(task, "train", [])
    lengths = [len(TOK.encode(p)) + len(TOK.encode(a)) + 1 for p, a in records]
    if args.init is not None:
        ckpt = load_checkpoint(args.init)
        model = GPT(ckpt["config"], params=ckpt["params"])
        if model.config.vocab_size != TOK.vocab_size:
            raise ValueError(f"--init {args.init}: vocab_size {model.config.vocab_size} is not the "
                             f"byte tokenizer's {TOK.vocab_size}")
    else:
        n_pos = 32 if args.data is None else 2 ** math.ceil(math.log2(max(lengths) * 2))
        model = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_positions=n_pos, n_embd=s.n_embd,
                              n_head=s.n_head, n_layer=s.n_layer), seed=s.seed)
    if model.config.pos_encoding == "learned" and max(lengths) > model.config.n_positions:
        raise ValueError(f"--init {args.init}: n_positions={model.config.n_positions} is shorter "
                         f"than the longest example ({max(lengths)} tokens with the eot)")
    print(f"model: {model.num_params():,} parameters (n_layer={model.config.n_layer}, "
          f"n_embd={model.config.n_embd}), {s.steps} steps of batch {s.batch_size}, "
          f"{'prompt masked (-100)' if s.prompt_mask else 'NO prompt mask: whole sequence'}")
    acc0, _ = exact_match(model, task.test)
    loss0 = answer_loss_masked(model, task.test)
    print(f"before: held-out exact match {acc0:.1%}, held-out answer loss {loss0:.4f}")
    opt = AdamW(model.params, s.lr, weight_decay=s.weight_decay)
    rng = np.random.default_rng(s.seed)
    t0 = time.perf_counter()
    sft_loop(model, opt, s, task, rng, progress=Progress(), eval_examples=task.test)
    dt = time.perf_counter() - t0
    acc, results = exact_match(model, task.test)
    loss = answer_loss_masked(model, task.test)
    print(f"after {s.steps} steps ({dt:.0f}s): held-out exact match {acc0:.1%} -> {acc:.1%}, "
          f"answer loss {loss0:.4f} -> {loss:.4f}")
    wrong = [r for r in results if r[1] != r[2]]
    if args.show > 0:
        picks = results[::max(1, len(results) // args.show)][:args.show] + wrong[:3]
        print(f"held-out examples (every {max(1, len(results) // args.show)}th, then the first "
              f"wrong ones; answers are reversed):")
        for p, a, got in picks:
            print(f"  {p!r:>12} expected {a!r:8} got {got!r:8} {'ok' if got == a else 'WRONG'}")
    if args.out is not None:
        save_checkpoint(args.out, model.config, model.params, opt.state_dict(), s.steps,
                        rng.bit_generator.state, {"sft_settings": asdict(s), "accuracy": acc})
        print(f"checkpoint: {args.out}")
    return 0


# ---- tour ---------------------------------------------------------------------------------

def tour_section(write, seed=0):
    """A few SFT steps on the addition task: prompt masked, loss on answers falls."""
    task = AdditionTask(n_test=50, seed=seed)
    s = SFTSettings(n_layer=1, n_head=2, n_embd=64, steps=30, batch_size=32, lr=1e-2,
                    warmup=5, seed=seed)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_positions=32, n_embd=s.n_embd,
                          n_head=s.n_head, n_layer=s.n_layer), seed=seed)
    ids, labels, mask, _ = make_batch(task.sample(1, np.random.default_rng(seed)))
    write("One SFT example (prompt, answer reversed, eot), aligned labels; -100 = not counted:")
    write("  input : " + " ".join(f"{TOK.token_str(t):>5}" for t in ids[0]))
    write("  labels: " + " ".join(f"{TOK.token_str(t) if t >= 0 else t:>5}" for t in labels[0]))
    before = answer_loss_masked(model, task.test)
    out = sft_loop(model, AdamW(model.params, s.lr), s, task, np.random.default_rng(seed))
    for i in range(0, s.steps, 6):
        write(f"  step {i + 1:3d}  answer loss {out['losses'][i]:.3f}")
    write(f"held-out answer loss {before:.3f} -> {answer_loss_masked(model, task.test):.3f} "
          f"after {s.steps} steps; `numpygpt sft` trains to >= 90% exact match.")
    write(f"prefilling the prompt into the KV cache and scoring the answer token by token gives "
          f"{answer_loss_by_prefill(model, task.test[:5]):.6f}; the masked full-sequence loss "
          f"on the same 5 problems is {answer_loss_masked(model, task.test[:5]):.6f}")
