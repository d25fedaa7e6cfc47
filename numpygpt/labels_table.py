"""Label tables: what each position sees, what it must predict, and whether it counts.

Shared by `numpygpt labels` and the tour. Both forms of the seed are shown side by side:
  aligned (numpygpt):  label t is the target of logits t (already shifted)
  HuggingFace:         labels unshifted (= the inputs, prompt set to -100); the model
                       drops logits[-1] and labels[0] itself, so HF label t+1 is the target of logits t.
"""
import numpy as np

from .labels import IGNORE_INDEX, causal_lm_labels, labels_from_hf, sft_labels, sft_labels_hf
from .tokenizer import ByteTokenizer


def token_repr(i, tokenizer=None):
    """A byte token, quoted: 'a', ' ', '\\n', '\\xc3' (one byte of a UTF-8 character), <|eot|>."""
    tok = tokenizer or ByteTokenizer()
    i = int(i)
    if i == tok.eot_id:
        return "<|eot|>"
    if 32 <= i < 127:
        return repr(chr(i))
    return "'" + repr(bytes([i]))[2:-1] + "'"       # b'\xc3' -> '\xc3'


def label_repr(label, tokenizer=None):
    label = int(label)
    return str(IGNORE_INDEX) if label == IGNORE_INDEX else f"{token_repr(label, tokenizer)} {label}"


def make_example(prompt, answer=None, eot=False, tokenizer=None):
    """Text -> (input_ids, aligned labels, HF labels, n_prompt) with the byte tokenizer.
    Pre-training when answer is None (every next token counts), SFT otherwise."""
    tok = tokenizer or ByteTokenizer()
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if answer is None:
        ids = tok.encode(prompt, add_eot=eot)
        if ids.size == 0:
            raise ValueError("PROMPT is empty: there is no token to label")
        return ids, causal_lm_labels(ids), ids.copy(), None
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a string, got {type(answer).__name__}")
    p, a = tok.encode(prompt), tok.encode(answer)
    if a.size == 0 and not eot:
        raise ValueError("ANSWER is empty: an SFT example needs at least one answer token (or --eot)")
    eos = tok.eot_id if eot else None
    ids, aligned = sft_labels(p, a, eos_id=eos)
    _, hf = sft_labels_hf(p, a, eos_id=eos)
    return ids, aligned, hf, len(p)


def table_lines(ids, aligned, hf, n_prompt=None, tokenizer=None):
    """One row per position: input, aligned target or -100, counted, HF label, and which
    HF label that position's logits are scored against after HF's own shift."""
    ids, aligned, hf = (np.asarray(a) for a in (ids, aligned, hf))
    lines = []
    head = (f"{'pos':>4}  {'part':<8}{'input':<14}{'aligned label (target)':<24}{'counted':<9}"
            f"| {'HF label':<14}")
    lines.append(head)
    lines.append("-" * len(head))
    for t in range(len(ids)):
        part = "" if n_prompt is None else ("prompt" if t < n_prompt else "answer")
        counted = "yes" if aligned[t] != IGNORE_INDEX else "no"
        lines.append(f"{t:>4}  {part:<8}{token_repr(ids[t], tokenizer) + ' ' + str(int(ids[t])):<14}"
                     f"{label_repr(aligned[t], tokenizer):<24}{counted:<9}"
                     f"| {label_repr(hf[t], tokenizer):<14}")
    n = int(np.count_nonzero(aligned != IGNORE_INDEX))
    same = np.array_equal(labels_from_hf(hf), aligned)
    lines.append(f"counted targets: {n} of {len(ids)} positions")
    lines.append(f"labels_from_hf(HF labels) == aligned labels: {'yes' if same else 'NO'} "
                 f"(HF label t+1 is the target of logits t; HF ignores labels[0] and logits[-1])")
    return lines
