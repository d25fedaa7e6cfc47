"""`numpygpt labels`: what each position sees, what it must predict, and whether it counts.

The table is shared with the tour. Both forms of the lesson are shown side by side:
  aligned (numpygpt):  label t is the target of logits t (already shifted)
  HuggingFace:         labels unshifted (= the inputs, prompt set to -100); the model
                       drops logits[-1] and labels[0] itself, so HF label t+1 is the target of logits t.
"""
import numpy as np

from ..io import ByteTokenizer
from ..labels import IGNORE_INDEX, causal_lm_labels, labels_from_hf, sft_labels, sft_labels_hf
from .common import utf8_text

TOK = ByteTokenizer()


def add_arguments(p):
    p.add_argument("prompt", metavar="PROMPT", help="text; alone it is a pre-training example")
    p.add_argument("answer", metavar="ANSWER", nargs="?",
                   help="with an answer: an SFT example (PROMPT masked with -100)")
    p.add_argument("--eot", action="store_true",
                   help="append the end-of-text token (<|eot|>, id 256) so it is a target too")


def run(args):
    utf8_text("PROMPT", args.prompt)
    if args.answer is not None:
        utf8_text("ANSWER", args.answer)
    ids, aligned, hf, n_prompt = make_example(args.prompt, args.answer, eot=args.eot)
    kind = "pre-training" if args.answer is None else "SFT"
    print(f"{kind} example, byte-level tokens (ByteTokenizer: 256 bytes + <|eot|> 256)")
    if args.answer is None:
        print("aligned: label t = input t+1 (the next token); the last position has none (-100)")
        print("HF:      labels = the inputs; the model shifts them by one itself")
    else:
        print("aligned: label t = input t+1 where that is an answer token; the last prompt position "
              "predicts the first answer token and counts")
        print("HF:      labels = the inputs with the prompt set to -100; the model shifts them itself")
    print()
    for line in table_lines(ids, aligned, hf, n_prompt):
        print(line)
    return 0


def label_repr(label):
    label = int(label)
    return str(IGNORE_INDEX) if label == IGNORE_INDEX else f"{TOK.token_str(label)} {label}"


def make_example(prompt, answer=None, eot=False):
    """Text -> (input_ids, aligned labels, HF labels, n_prompt) with the byte tokenizer.
    Pre-training when answer is None (every next token counts), SFT otherwise."""
    tok = TOK
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
    eot_id = tok.eot_id if eot else None
    ids, aligned = sft_labels(p, a, eot_id=eot_id)
    _, hf = sft_labels_hf(p, a, eot_id=eot_id)
    return ids, aligned, hf, len(p)


def table_lines(ids, aligned, hf, n_prompt=None):
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
        lines.append(f"{t:>4}  {part:<8}{TOK.token_str(ids[t]) + ' ' + str(int(ids[t])):<14}"
                     f"{label_repr(aligned[t]):<24}{counted:<9}"
                     f"| {label_repr(hf[t]):<14}")
    n = int(np.count_nonzero(aligned != IGNORE_INDEX))
    same = np.array_equal(labels_from_hf(hf), aligned)
    lines.append(f"counted targets: {n} of {len(ids)} positions")
    lines.append(f"labels_from_hf(HF labels) == aligned labels: {'yes' if same else 'NO'} "
                 f"(HF label t+1 is the target of logits t; HF ignores labels[0] and logits[-1])")
    return lines
