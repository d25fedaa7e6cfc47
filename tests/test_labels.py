"""Labels as the lesson describes them: pre-training, SFT (prompt masked), padding, HF form."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng

ids_1d = st.lists(st.integers(0, 50), min_size=1, max_size=12).map(np.array)


def test_seed_pretraining_example():
    x1, x2, x3, x4 = 11, 12, 13, 14
    np.testing.assert_array_equal(ng.causal_lm_labels(np.array([x1, x2, x3, x4])), [x2, x3, x4, -100])


def test_seed_sft_example_in_both_forms():
    Q1, Q2, Q3, A1, A2, A3 = 1, 2, 3, 7, 8, 9
    input_ids, aligned = ng.sft_labels([Q1, Q2, Q3], [A1, A2, A3])
    np.testing.assert_array_equal(input_ids, [Q1, Q2, Q3, A1, A2, A3])
    np.testing.assert_array_equal(aligned, [-100, -100, A1, A2, A3, -100])   # Q3 predicts A1, counted
    _, hf = ng.sft_labels_hf([Q1, Q2, Q3], [A1, A2, A3])
    np.testing.assert_array_equal(hf, [-100, -100, -100, A1, A2, A3])
    np.testing.assert_array_equal(ng.labels_from_hf(hf), aligned)


def test_double_shift_is_wrong():
    """Shifting labels that are already aligned trains position t on token t+2."""
    ids = np.array([10, 11, 12, 13, 14])
    aligned = ng.causal_lm_labels(ids)
    twice = ng.labels_from_hf(aligned)
    np.testing.assert_array_equal(twice, [12, 13, 14, -100, -100])
    assert not np.array_equal(twice, aligned)


@given(ids_1d, ids_1d, st.booleans())
def test_sft_labels_count_exactly_the_answer_tokens(prompt, answer, eos):
    input_ids, labels = ng.sft_labels(prompt, answer, eot_id=99 if eos else None)
    n_answer = len(answer) + eos
    assert len(input_ids) == len(prompt) + n_answer
    assert ng.count_targets(labels) == n_answer
    counted = np.flatnonzero(labels != -100)
    # the targets are exactly the answer tokens (and the eos), predicted from the position before each
    np.testing.assert_array_equal(labels[counted], input_ids[len(prompt):])
    np.testing.assert_array_equal(counted, np.arange(len(prompt) - 1, len(input_ids) - 1))
    assert labels[-1] == -100


@given(st.lists(ids_1d, min_size=1, max_size=4), st.sampled_from(["left", "right"]))
def test_padding_targets_decided_by_mask_not_token_value(seqs, side):
    pad = 0                                                  # pad id equal to real tokens (and eos)
    seqs = [np.append(s, pad) for s in seqs]                 # every sequence ends in a real "eos" = pad
    ids, mask = ng.pad_sequences(seqs, pad_value=pad, side=side)
    labels = ng.causal_lm_labels(ids, mask)
    for i, s in enumerate(seqs):
        row = labels[i][mask[i] == 1]
        np.testing.assert_array_equal(row, ng.causal_lm_labels(s))   # the real eos stays a target
    assert np.all(labels[mask == 0] == -100)
    assert ng.count_targets(labels) == sum(len(s) - 1 for s in seqs)


def test_sft_batch_masks_prompt_and_padding_and_restarts_positions():
    ids, labels, mask, pos = ng.sft_batch([([1, 2], [3]), ([4, 5, 6], [7, 8])], pad_id=0, eot_id=9)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 9, 0, 0], [4, 5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(labels, [[-100, 3, 9, -100, -100, -100], [-100, -100, 7, 8, 9, -100]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1] * 6])
    _, _, lmask, lpos = ng.sft_batch([([1, 2], [3]), ([4, 5, 6], [7, 8])], side="left")
    np.testing.assert_array_equal(lmask[0], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(lpos[0], [0, 0, 0, 1, 2])


@given(st.lists(ids_1d, min_size=1, max_size=3))
def test_labels_from_hf_of_inputs_is_causal_lm_labels(seqs):
    ids, _ = ng.pad_sequences(seqs)
    np.testing.assert_array_equal(ng.labels_from_hf(ids), ng.causal_lm_labels(ids))


def test_label_functions_reject_bad_input():
    with pytest.raises(ValueError, match="input_ids must be an integer array"):
        ng.causal_lm_labels(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match=r"attention_mask\[0, 1\] = 2"):
        ng.causal_lm_labels(np.array([[1, 2]]), attention_mask=np.array([[1, 2]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ng.causal_lm_labels(np.array([[1, 2]]), attention_mask=np.array([[1, 1, 1]]))
    with pytest.raises(ValueError, match="both empty"):
        ng.sft_labels([], [])
    with pytest.raises(ValueError, match="side="):
        ng.pad_sequences([[1]], side="middle")
