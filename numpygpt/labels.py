"""Labels for next-token prediction, in the two forms the lesson describes.

Aligned form (numpygpt's): label t is the target of logits t.
    pre-training   input  [x1, x2, x3, x4]
                   labels [x2, x3, x4, -100]          the last position has nothing to predict
    SFT            input  [Q1, Q2, Q3, A1, A2, A3]
                   labels [-100, -100, A1, A2, A3, -100]
                   the last prompt position (Q3) predicts A1 and *counts*.

HuggingFace form: labels unshifted, equal to the inputs with masked positions set
to -100; the model shifts them by one itself.
    SFT            labels [-100, -100, -100, A1, A2, A3]

`labels_from_hf` converts HF form to aligned form. Shifting twice (feeding HF-form
labels to an aligned loss after shifting them yourself, or aligned labels to
HF's model) trains position t to predict token t+2, or token t itself.

Padding: a position whose *target* is padding, or which is itself padding, is -100.
This is decided by the attention mask (or lengths), never by token value, so an
end-of-text token used as pad id is still learned where it is real.
"""
import numpy as np

from .checks import as_int_array, check_attention_mask

IGNORE_INDEX = -100


def _as_batch(name, ids):
    ids = as_int_array(name, ids, ndim=(1, 2))
    return (ids[None], True) if ids.ndim == 1 else (ids, False)


def causal_lm_labels(input_ids, attention_mask=None, ignore_index=IGNORE_INDEX):
    """(B,T) or (T,) ids -> aligned labels of the same shape: ids shifted left by one,
    ignore_index at the last position and wherever the position or its target is padding."""
    ids, single = _as_batch("input_ids", input_ids)
    labels = np.full_like(ids, ignore_index)
    labels[:, :-1] = ids[:, 1:]                             # position t predicts token t+1
    if attention_mask is not None:
        mask = check_attention_mask(np.asarray(attention_mask).reshape(ids.shape)
                                    if np.ndim(attention_mask) == 1 else attention_mask, ids.shape)
        real = np.zeros_like(mask)
        real[:, :-1] = mask[:, :-1] & mask[:, 1:]           # both the position and its target are real
        labels[~real] = ignore_index
    return labels[0] if single else labels


def sft_labels(prompt_ids, answer_ids, eot_id=None, ignore_index=IGNORE_INDEX):
    """One example: 1-D prompt and answer ids -> (input_ids, aligned labels), both 1-D.
    input = prompt + answer (+ [eot_id] if given, so the model learns to stop).
    Only positions whose target is an answer token (or the eos) count."""
    prompt = as_int_array("prompt_ids", prompt_ids, ndim=1)
    answer = as_int_array("answer_ids", answer_ids, ndim=1)
    if eot_id is not None:
        answer = np.append(answer, eot_id).astype(answer.dtype)
    input_ids = np.concatenate([prompt, answer]).astype(np.int64)
    if input_ids.size == 0:
        raise ValueError("sft_labels: prompt_ids and answer_ids are both empty")
    labels = causal_lm_labels(input_ids, ignore_index=ignore_index)
    # target of position t is input t+1; it is a prompt token for t+1 < len(prompt)
    labels[:max(len(prompt) - 1, 0)] = ignore_index
    return input_ids, labels


def sft_labels_hf(prompt_ids, answer_ids, eot_id=None, ignore_index=IGNORE_INDEX):
    """The same example in HuggingFace form: labels = input_ids with the prompt set to -100."""
    input_ids, _ = sft_labels(prompt_ids, answer_ids, eot_id, ignore_index)
    hf = input_ids.copy()
    hf[:len(np.asarray(prompt_ids))] = ignore_index
    return input_ids, hf


def labels_from_hf(hf_labels, ignore_index=IGNORE_INDEX):
    """HuggingFace-form labels (B,T) or (T,) -> aligned labels: shift left by one,
    ignore_index at the last position. (HF drops logits[-1] and labels[0] instead.)"""
    hf, single = _as_batch("hf_labels", hf_labels)
    labels = np.full_like(hf, ignore_index)
    labels[:, :-1] = hf[:, 1:]
    return labels[0] if single else labels


def pad_sequences(sequences, pad_value=0, side="right", length=None):
    """List of 1-D int sequences -> (B,T) array and attention_mask (B,T) (1 = real token)."""
    if side not in ("right", "left"):
        raise ValueError(f"side={side!r} is not 'right' or 'left'")
    seqs = [as_int_array(f"sequences[{i}]", s, ndim=1) for i, s in enumerate(sequences)]
    if not seqs:
        raise ValueError("sequences is empty")
    T = max(len(s) for s in seqs) if length is None else length
    for i, s in enumerate(seqs):
        if len(s) > T:
            raise ValueError(f"sequences[{i}] has length {len(s)} > length={T}")
    out = np.full((len(seqs), T), pad_value, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        out[i, sl], mask[i, sl] = s, 1
    return out, mask


def position_ids_from_mask(attention_mask):
    """Positions counted over real tokens only: cumsum(mask) - 1, and 0 on padding.
    With left padding, this gives every sequence positions 0, 1, 2, ... from its first token."""
    mask = np.asarray(attention_mask)
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0) * (mask != 0)


def sft_batch(examples, pad_id=0, eot_id=None, side="right", ignore_index=IGNORE_INDEX):
    """List of (prompt_ids, answer_ids) -> input_ids, labels, attention_mask, position_ids (B,T).
    Padding targets are ignore_index; position_ids restart at 0 on each sequence's first token."""
    pairs = [sft_labels(p, a, eot_id, ignore_index) for p, a in examples]
    input_ids, mask = pad_sequences([ids for ids, _ in pairs], pad_id, side)
    labels, _ = pad_sequences([lab for _, lab in pairs], ignore_index, side)
    return input_ids, labels, mask, position_ids_from_mask(mask)
