"""The bug zoo's wrong losses and labels (bugs.py holds the zoo and the wrong backwards): each
a copy of the right function with the line marked `# BUG` changed, or a wrapper around it.
Like bugs.py, this module is left alone by bugs.swapped: its wrappers call the right functions.
"""
import numpy as np

from ..labels import IGNORE_INDEX, _as_batch, causal_lm_labels, labels_from_hf
from ..checks import as_int_array, check_attention_mask
from ..layers import cross_entropy, count_targets
from ..layers.cross_entropy import loss_denominator


def cross_entropy_over_all_positions(logits, labels, ignore_index=-100, reduction="mean",
                                     num_items=None):
    """BUG: the mean divides the summed loss by every position (B*T), the -100 ones too,
    instead of by the counted ones, count_targets(labels)."""
    if reduction != "mean" or num_items is not None:
        return cross_entropy(logits, labels, ignore_index, reduction, num_items)
    total, dlogits = cross_entropy(logits, labels, ignore_index, reduction="sum")
    n = np.asarray(labels).size                                  # BUG: count_targets(labels)
    return total / n, dlogits / n


def cross_entropy_ignored_rows_trained(logits, labels, ignore_index=-100, reduction="mean",
                                       num_items=None):
    """BUG: dlogits = (softmax - onehot) / count on every row: a -100 row (no onehot) keeps
    softmax / count, though it adds nothing to the loss. The loss itself is right."""
    loss, dlogits = cross_entropy(logits, labels, ignore_index, reduction, num_items)
    z = np.asarray(logits) - np.max(logits, axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)       # softmax (...,V)
    denominator = loss_denominator(count_targets(labels, ignore_index), reduction, num_items)
    ignored = (np.asarray(labels) == ignore_index)[..., None]        # (...,1)
    return loss, np.where(ignored, probs / denominator, dlogits)     # BUG: 0 on ignored rows


def accumulate_grads_own_count(model, micro_batches, need_grads=True):
    """Gradient accumulation: each micro-batch's summed loss divided by num_items, the
    count of targets over *all* micro-batches, so that their sum is the full batch's mean."""
    num_items, share = None, 1 / len(micro_batches)   # BUG: each one's own mean, averaged
    total, grads = 0.0, None
    for mb in micro_batches:
        if not need_grads:
            total += share * model.loss(**mb, num_items=num_items)
            continue
        loss, g = model.loss_and_grads(**mb, num_items=num_items)
        total += share * loss
        g = {k: share * d for k, d in g.items()}
        grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
    return total, grads


def causal_lm_labels_not_shifted(input_ids, attention_mask=None, ignore_index=IGNORE_INDEX):
    """(B,T) or (T,) ids -> aligned labels of the same shape: ids shifted left by one,
    ignore_index at the last position and wherever the position or its target is padding."""
    ids, single = _as_batch("input_ids", input_ids)
    labels = np.full_like(ids, ignore_index)
    labels[:, :-1] = ids[:, :-1]                            # BUG: position t "predicts" token t
    if attention_mask is not None:
        mask = check_attention_mask(np.asarray(attention_mask).reshape(ids.shape)
                                    if np.ndim(attention_mask) == 1 else attention_mask, ids.shape)
        real = np.zeros_like(mask)
        real[:, :-1] = mask[:, :-1] & mask[:, 1:]           # both the position and its target are real
        labels[~real] = ignore_index
    return labels[0] if single else labels


def causal_lm_labels_shifted_twice(input_ids, attention_mask=None, ignore_index=IGNORE_INDEX):
    """BUG: aligned labels taken for HuggingFace-form ones and shifted again (labels_from_hf
    on labels already shifted): position t predicts token t+2."""
    labels = causal_lm_labels(input_ids, attention_mask, ignore_index)
    return labels_from_hf(labels, ignore_index)


def sft_labels_last_prompt_masked(prompt_ids, answer_ids, eot_id=None, ignore_index=IGNORE_INDEX):
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
    labels[:len(prompt)] = ignore_index                     # BUG: the whole prompt, Q3 -> A1 too
    return input_ids, labels
