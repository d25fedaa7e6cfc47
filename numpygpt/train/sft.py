"""Supervised fine-tuning data: prompt-masked batches, the tasks, exact-match accuracy.

An example is one sequence, prompt then answer then end-of-text:
    input   [Q1 Q2 Q3 A1 A2 <eot>]
    labels  [-100 -100 A1 A2 <eot> -100]         aligned; the eot is a target: the model learns to stop
Batches are right-padded; padding is masked out of attention and its labels are -100
(numpygpt.labels.sft_batch). With prompt_mask=False the labels are the plain next-token
labels of the whole sequence (prompt included), the pre-training objective on the same data.

The default task is checkable exactly: addition of two numbers in [0, 999], operands written
with 3 digits, the answer with its digits reversed ("017+025=" -> "24", i.e. 42): least
significant digit first, so each digit depends only on the operands' digits at fixed places
and the carry (the order a person adds in). Answers have 1 to 4 digits, so batches are padded.
Held-out problems are drawn first, and never appear in training.

Accuracy: greedy decoding with the KV cache, the answer must match exactly and be followed
by end-of-text.

The lesson's claim, as a function: `answer_loss_by_prefill` prefills the prompt into the KV
cache and scores the answer tokens one at a time; it equals the masked full-sequence loss
`answer_loss_masked` (tests check float64 to 1e-10): masking the prompt with -100 *is*
"start predicting where the question ends".
"""
import json
import os

import numpy as np

from ..decode import KVCache, generate
from ..io import ByteTokenizer
from ..labels import sft_batch, causal_lm_labels

TOK = ByteTokenizer()


# ---- data ---------------------------------------------------------------------------------

def addition_example(a, b):
    """17, 25 -> ("017+025=", "24"): operands zero-padded to 3 digits, so digit i of each
    sits at a fixed position; the sum reversed, without leading zeros (1 to 4 digits)."""
    return f"{a:03d}+{b:03d}=", str(a + b)[::-1]


class AdditionTask:
    """a + b for a, b in [0, max_value]; n_test held-out problems, training draws the rest."""

    @staticmethod
    def n_problems(max_value=999):
        """Distinct problems: (max_value + 1)^2 ordered pairs (a, b)."""
        return (max_value + 1) ** 2

    def __init__(self, n_test=500, max_value=999, seed=0):
        if isinstance(max_value, bool) or not isinstance(max_value, (int, np.integer)) \
                or max_value < 1:
            raise ValueError(f"max_value must be an integer >= 1, got {max_value!r}")
        n_problems = self.n_problems(max_value)
        if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) \
                or not 1 <= n_test <= n_problems // 2:
            raise ValueError(f"n_test={n_test!r}: the addition task has {n_problems:,} distinct "
                             f"problems; hold out between 1 and half of them ({n_problems // 2:,})")
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
        raise ValueError(f"--data {path!r}: " + ("a directory, not a file" if os.path.isdir(path)
                                                 else "no such file"))
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise ValueError(f"--data {path!r}: cannot be read ({e.strerror or e})") from None
    records = []
    for lineno, raw in enumerate(lines, 1):
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
        except RecursionError:
            raise ValueError(f"--data {path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(rec, dict):
            raise ValueError(f"--data {path}:{lineno}: expected an object with \"prompt\" and "
                             f"\"answer\", got {type(rec).__name__}")
        for key in ("prompt", "answer"):
            if not isinstance(rec.get(key), str):
                raise ValueError(f"--data {path}:{lineno}: \"{key}\" must be a string, got "
                                 f"{rec.get(key)!r}")
            try:
                rec[key].encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"--data {path}:{lineno}: \"{key}\" holds {rec[key][e.start]!r}, "
                                 f"a lone surrogate that is no UTF-8 text") from None
        if not rec["prompt"]:
            raise ValueError(f"--data {path}:{lineno}: \"prompt\" is empty")
        records.append((rec["prompt"], rec["answer"]))
    return records


def encode_examples(examples):
    return [(TOK.encode(p), TOK.encode(a)) for p, a in examples]


def make_batch(examples, prompt_mask=True):
    """Text pairs -> a batch: input_ids, labels, attention_mask, position_ids (B,T),
    right-padded. prompt_mask=False: labels of the whole sequence (prompt tokens are targets too)."""
    ids, labels, mask, pos = sft_batch(encode_examples(examples), pad_id=TOK.eot_id,
                                       eot_id=TOK.eot_id)
    if not prompt_mask:
        labels = causal_lm_labels(ids, mask)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos}


# ---- evaluation ---------------------------------------------------------------------------

def exact_match(model, examples, batch_size=500):
    """Fraction of examples whose greedy answer equals the answer, followed by end-of-text;
    also returns the (prompt, expected, got) triples."""
    results = []
    max_answer = max(len(TOK.encode(a)) for _, a in examples)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        outs = generate(model, [TOK.encode(p) for p, _ in chunk], max_answer + 1,
                        eot_id=TOK.eot_id)
        # max_answer + 1 tokens: a right answer shorter than that must have ended with <eot>
        results += [(p, a, TOK.decode(o)) for (p, a), o in zip(chunk, outs)]
    correct = sum(a == got for _, a, got in results)
    return correct / len(results), results


def answer_loss_masked(model, examples):
    """Mean loss over answer tokens (and the eot after each), full sequence, prompt masked."""
    return model.loss(**make_batch(examples))


def answer_loss_by_prefill(model, examples):
    """The same quantity computed the inference way: prefill the prompt into the KV cache,
    then feed the answer one token at a time, scoring each next token. Mean over all."""
    total, count = 0.0, 0
    for prompt, answer in encode_examples(examples):
        if len(prompt) == 0:
            raise ValueError("answer_loss_by_prefill: an example has an empty prompt")
        targets = np.append(answer, TOK.eot_id)
        cache = KVCache(model.config, 1, len(prompt) + len(answer), model.dtype)
        step = lambda ids: model.forward(ids[None], model.params, kv_cache=cache)[0][0, -1]
        logits = step(prompt)                                          # (V,) after the prompt
        for t, target in enumerate(targets):
            z = logits - logits.max()                                  # -log softmax[target], stable
            total += float(np.log(np.exp(z).sum()) - z[target])
            count += 1
            if t < len(answer):
                logits = step(answer[t:t + 1])                         # one answer token more
    return total / count


