"""Text for pre-training: load, tokenise with bytes, split, sample batches.

Default text: the language reference topics in `pydoc_data.topics` (part of every Python
installation, ~450 KB of English prose and code), so `numpygpt train` needs no download.

A batch is B random windows of T+1 tokens from the training ids:
    x = window[:T],   labels = window[1:]        (aligned: label t is the target of logits t)
Every position has a real next token, so no label is -100.

The unigram baseline is the entropy of the byte distribution on the held-out split, in
nats: the loss of a model that ignores context. A model that has learned anything about
context must go below it.
"""
import os

import numpy as np

from ..io import ByteTokenizer


def default_text():
    """The pydoc topics text: every topic, in sorted key order, joined by blank lines."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def load_text(path=None):
    """The text of a UTF-8 file, or the default text when path is None."""
    if path is None:
        return default_text()
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r}: " + ("a directory, not a file" if os.path.isdir(path)
                                                 else "no such file"))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"--data {path!r}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--data {path!r}: not UTF-8 text (invalid byte {raw[e.start]:#04x} "
                         f"at byte offset {e.start})") from None
    if not text:
        raise ValueError(f"--data {path!r}: the file is empty")
    return text


def train_val_split(ids, val_fraction=0.1):
    """The first (1 - val_fraction) of the ids for training, the rest held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = int(round(len(ids) * val_fraction))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def load_dataset(path=None, val_fraction=0.1, seq_len=None):
    """Text -> (train_ids, val_ids), uint16 byte ids; checks both splits hold a window."""
    ids = ByteTokenizer().encode(load_text(path)).astype(np.uint16)
    train, val = train_val_split(ids, val_fraction)
    if seq_len is not None:
        for name, split in (("training", train), ("validation", val)):
            if len(split) < seq_len + 1:
                where = "the default text" if path is None else f"--data {path!r}"
                raise ValueError(f"{where}: the {name} split has {len(split)} tokens, fewer than "
                                 f"seq_len + 1 = {seq_len + 1}; use a longer text or a "
                                 f"smaller --seq-len")
    return train, val


def get_batch(ids, batch_size, seq_len, rng):
    """B random windows -> a batch: input_ids (B,T) int64 and aligned labels (B,T) int64."""
    starts = rng.integers(0, len(ids) - seq_len, size=batch_size)          # (B,)
    window = ids[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # (B,T+1)
    return {"input_ids": window[:, :-1], "labels": window[:, 1:]}


def eval_batches(ids, batch_size, seq_len, n_batches, seed=1234):
    """A fixed list of batches for validation, the same at every evaluation and untouched by
    the training RNG (so evaluating does not change the training run)."""
    rng = np.random.default_rng(seed)
    return [get_batch(ids, batch_size, seq_len, rng) for _ in range(n_batches)]


def unigram_entropy(ids, vocab_size=ByteTokenizer.vocab_size):
    """Entropy in nats of the token frequencies in ids: -sum p log p."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
