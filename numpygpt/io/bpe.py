"""GPT-2's byte-level BPE tokenizer, in plain Python: `load_bpe(dir)` reads vocab.json + merges.txt.

    text --pre-tokenise--> words --utf-8--> bytes --byte_to_unicode--> symbols
         --merge pairs, lowest rank first--> tokens --vocab.json--> ids

1. Pre-tokenisation splits text with GPT-2's pattern
       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
   so merges never cross a word, a number or a run of punctuation; a word keeps the
   space before it (" world"). The stdlib `re` has no \\p{L} (letter) / \\p{N} (number),
   so `pretokenize` is a hand-written scanner trying the alternatives in that order.
2. Every byte 0..255 is one of 256 printable unicode symbols (`bytes_to_unicode`), so
   vocab.json's keys are strings and any byte sequence can be encoded: no unknown token.
3. BPE: start from single symbols; repeatedly merge the adjacent pair whose merge rule
   comes first in merges.txt, until no pair has a rule.
The special token <|endoftext|> is matched in the text before all this, as HuggingFace does.
Decoding maps ids to symbols, symbols to bytes, and bytes to UTF-8 (invalid -> U+FFFD).
"""
import os
import unicodedata

import numpy as np

from ..checks import as_int_array, check_range, read_json_object

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
EOT = "<|endoftext|>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")     # after "'", in the pattern's order


def bytes_to_unicode():
    """GPT-2's table byte -> printable character. The 188 bytes that are printable
    (latin-1 '!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 (control
    characters, space, ...) to chr(256 + k), in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, k = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + k)
            k += 1
    return table


# ---- pre-tokenisation -------------------------------------------------------------------------
def _is_letter(c):
    return unicodedata.category(c)[0] == "L"               # \p{L}: Lu Ll Lt Lm Lo


def _is_number(c):
    return unicodedata.category(c)[0] == "N"               # \p{N}: Nd Nl No


def _is_space(c):
    # \s of the `regex` module is Unicode White_Space; str.isspace() adds \x1c-\x1f
    return c.isspace() and not "\x1c" <= c <= "\x1f"


def _is_other(c):
    return not (_is_space(c) or _is_letter(c) or _is_number(c))


def _run(text, i, pred):
    """End of the run of characters satisfying pred that starts at i."""
    while i < len(text) and pred(text[i]):
        i += 1
    return i


def pretokenize(text):
    """Split text as GPT-2's regex does (leftmost alternative that matches, each greedy)."""
    words, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":                                        # 's|'t|'re|'ve|'m|'ll|'d
            tail = next((t for t in CONTRACTIONS if text.startswith(t, i + 1)), None)
            if tail is not None:
                words.append(text[i:i + 1 + len(tail)])
                i += 1 + len(tail)
                continue
        # " ?X+" for X in letters, numbers, other: an optional space, then a run of one class
        start = i + 1 if c == " " and i + 1 < n else i
        matched = False
        for pred in (_is_letter, _is_number, _is_other):
            if pred(text[start]):
                end = _run(text, start, pred)
                words.append(text[i:end])
                i, matched = end, True
                break
        if matched:
            continue
        # \s+(?!\S): whitespace, leaving the last one to the next word if one follows;
        # else \s+
        end = _run(text, i, _is_space)
        if end < n and end - i > 1:
            end -= 1
        words.append(text[i:end])
        i = end
    return words


# ---- the tokenizer ----------------------------------------------------------------------------
class BPETokenizer:
    """GPT-2 byte-level BPE. encode(text) -> ids (np.int64), decode(ids) -> text."""

    def __init__(self, vocab, merges):
        """vocab: token string -> id; merges: list of (left, right) pairs, highest priority first."""
        self.encoder = dict(vocab)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.vocab_size = max(self.decoder) + 1
        self.eot_id = self.encoder.get(EOT)
        self.cache = {}

    def bpe(self, word):
        """One pre-tokenised word, as byte symbols -> its tokens (strings)."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self.ranks.get(pair, np.inf))
            if best not in self.ranks:
                break
            out, j = [], 0                     # merge every occurrence of best, left to right
            while j < len(parts):
                if j + 1 < len(parts) and (parts[j], parts[j + 1]) == best:
                    out.append(parts[j] + parts[j + 1])
                    j += 2
                else:
                    out.append(parts[j])
                    j += 1
            parts = out
        self.cache[word] = parts
        return parts

    def _encode_ordinary(self, text, ids):
        for word in pretokenize(text):
            symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            for token in self.bpe(symbols):
                if token not in self.encoder:
                    raise ValueError(f"token {token!r} (from {word!r}) is not in {VOCAB_FILE}")
                ids.append(self.encoder[token])

    def encode(self, text, add_eot=False):
        """text -> (N,) int64 ids. "<|endoftext|>" in the text becomes its id."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = []
        pieces = text.split(EOT) if self.eot_id is not None else [text]
        for k, piece in enumerate(pieces):
            if k:
                ids.append(self.eot_id)
            self._encode_ordinary(piece, ids)
        if add_eot:
            if self.eot_id is None:
                raise ValueError(f"add_eot=True but {EOT!r} is not in {VOCAB_FILE}")
            ids.append(self.eot_id)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids, stop_at_eot=False):
        """ids -> text; a byte sequence cut inside a character shows U+FFFD there."""
        ids = as_int_array("ids", ids, ndim=1)
        check_range("ids", ids, 0, self.vocab_size)
        if stop_at_eot and self.eot_id is not None and (ids == self.eot_id).any():
            ids = ids[:int(np.argmax(ids == self.eot_id))]
        missing = [int(i) for i in ids if int(i) not in self.decoder]
        if missing:
            pos = int(np.argmax(ids == missing[0]))
            raise ValueError(f"ids[{pos}] = {missing[0]} is not an id in {VOCAB_FILE}")
        out = bytearray()
        for i in ids:
            token = self.decoder[int(i)]
            if token == EOT:
                out += EOT.encode("utf-8")
            else:
                out += bytes(self.byte_decoder[c] for c in token)
        return out.decode("utf-8", errors="replace")

    def token_str(self, i):
        """A printable form of one token, for tables."""
        token = self.decoder[int(i)]
        if token == EOT:
            return token
        text = bytes(self.byte_decoder[c] for c in token).decode("utf-8", errors="replace")
        return repr(text)[1:-1] if not text.isprintable() or "'" in text else text


def read_vocab(path):
    vocab = read_json_object(path)
    if not vocab:
        raise ValueError(f"{path} must hold a non-empty JSON object token -> id")
    seen = {}
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{path}: id of token {token!r} must be a non-negative integer, got {i!r}")
        if i in seen:
            raise ValueError(f"{path}: id {i} is given to both {seen[i]!r} and {token!r}")
        seen[i] = token
    return vocab


def read_merges(path):
    merges = []
    with open(path, "rb") as f:
        try:
            lines = f.read().decode("utf-8").split("\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not valid UTF-8: {e}") from None
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"{path}:{lineno}: expected two symbols separated by one space, "
                             f"got {line!r}")
        merges.append(tuple(pair))
    return merges


def load_bpe(directory):
    """BPETokenizer from directory/vocab.json + merges.txt; None if neither file is there."""
    directory = os.fspath(directory)
    vocab_path, merges_path = (os.path.join(directory, f) for f in (VOCAB_FILE, MERGES_FILE))
    have = os.path.isfile(vocab_path), os.path.isfile(merges_path)
    if not any(have):
        return None
    if not all(have):
        missing = MERGES_FILE if have[0] else VOCAB_FILE
        raise ValueError(f"{directory}: has {'merges.txt' if have[1] else 'vocab.json'} "
                         f"but no {missing}; GPT-2's BPE needs both")
    return BPETokenizer(read_vocab(vocab_path), read_merges(merges_path))
