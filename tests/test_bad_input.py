"""Bad input raises ValueError naming the argument, the value and where it is."""
import numpy as np
import pytest

import numpygpt as ng
from helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    return ng.GPT(tiny_config(), seed=0)


IDS = np.array([[1, 2, 3], [4, 5, 6]])
LABELS = ng.causal_lm_labels(IDS)


@pytest.mark.parametrize("ids, message", [
    (np.array([[1, 2, 3], [4, 23, 6]]), r"input_ids\[1, 1\] = 23 is outside \[0, vocab_size=23\)"),
    (np.array([[1, -1, 3]]), r"input_ids\[0, 1\] = -1 is outside"),
    (np.array([[1.0, 2.5]]), r"input_ids must be an integer array, got dtype float64 \(e.g. input_ids\[0, 1\] = 2.5"),
    (np.array([[True, False]]), "input_ids must be an integer array, got dtype bool"),
    (np.array([1, 2, 3]), r"input_ids must have 2 dimension\(s\), got shape \(3,\)"),
    (np.zeros((1, 13), dtype=int), r"T=13 > n_positions=12"),
    (np.zeros((1, 0), dtype=int), "T=0"),
])
def test_bad_input_ids(model, ids, message):
    with pytest.raises(ValueError, match=message):
        model.logits(ids)
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(ids, np.full(ids.shape, -100) if ids.ndim == 2 else ids)


@pytest.mark.parametrize("labels, message", [
    (np.array([[2, 3, -100], [5, 23, -100]]), r"labels\[1, 1\] = 23 is outside \[0, vocab_size=23\) or -100"),
    (np.array([[2, 3, -1], [5, 6, -100]]), r"labels\[0, 2\] = -1 is outside"),
    (np.array([[2, 3], [5, 6]]), r"labels has shape \(2, 2\), expected \(2, 3\)"),
    (np.array([[2.0, 3, 1], [5, 6, 1]]), "labels must be an integer array"),
])
def test_bad_labels(model, labels, message):
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(IDS, labels)
    with pytest.raises(ValueError, match=message):
        ng.cross_entropy(np.zeros((2, 3, 23)), labels)


def test_bad_masks_and_positions(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 2\)"):
        model.logits(IDS, attention_mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"attention_mask\[1, 0\] = 3"):
        model.logits(IDS, attention_mask=np.array([[1, 1, 1], [3, 1, 1]]))
    with pytest.raises(ValueError, match=r"position_ids\[0, 2\] = 12 is outside \[0, n_positions=12\)"):
        model.logits(IDS, position_ids=np.array([[0, 1, 12], [0, 1, 2]]))
    with pytest.raises(ValueError, match=r"position_ids\[1, 0\] = -1"):
        model.logits(IDS, position_ids=np.array([[0, 1, 2], [-1, 0, 1]]))
    with pytest.raises(ValueError, match="position_ids has shape"):
        model.logits(IDS, position_ids=np.array([[0, 1]]))
    with pytest.raises(ValueError, match="position_ids must be an integer array"):
        model.logits(IDS, position_ids=np.zeros((2, 3)) + 0.5)
    # -1 on a padding position is fine: padding is never looked at
    out = model.logits(IDS, attention_mask=[[0, 1, 1], [1, 1, 1]], position_ids=[[-1, 0, 1], [0, 1, 2]])
    assert np.isfinite(out).all()


def test_bad_reduction_and_num_items(model):
    with pytest.raises(ValueError, match="reduction='avg' is not one of"):
        model.loss_and_grads(IDS, LABELS, reduction="avg")
    with pytest.raises(ValueError, match="reduction='avg'"):
        ng.cross_entropy(np.zeros((1, 2, 3)), np.zeros((1, 2), dtype=int), reduction="avg")
    with pytest.raises(ValueError, match="num_items=3 is smaller than the 4 targets"):
        model.loss_and_grads(IDS, LABELS, num_items=3)
    with pytest.raises(ValueError, match="num_items must be a non-negative integer, got -2"):
        model.loss_and_grads(IDS, LABELS, num_items=-2)
    with pytest.raises(ValueError, match="only used with reduction='mean'"):
        model.loss_and_grads(IDS, LABELS, reduction="sum", num_items=10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=10, n_head=4), "n_embd=10 is not divisible by n_head=4"),
    (dict(n_layer=0), "n_layer must be a positive integer, got 0"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer, got 2.5"),
    (dict(pos_encoding="alibi"), "pos_encoding='alibi' is not one of"),
    (dict(n_embd=6, n_head=2, pos_encoding="rope"), "rope needs an even head_dim, got n_embd/n_head=3"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(attention="fast"), "Execution.attention='fast' is not one of"),
    (dict(attention="naive"), "Execution.attention='naive' is not one of"),   # now "standard"
    (dict(loss="unfused"), "Execution.loss='unfused' is not one of"),
    (dict(q_tile=0), "Execution.q_tile must be a positive integer, got 0"),
    (dict(k_tile=2.5), "Execution.k_tile must be a positive integer, got 2.5"),
    (dict(loss_chunk=True), "Execution.loss_chunk must be a positive integer, got True"),
])
def test_bad_execution(kwargs, message):
    """How the model is computed (attention, tiles, loss) is no longer part of GPTConfig."""
    with pytest.raises(ValueError, match=message):
        ng.Execution(**kwargs)


def test_execution_is_not_a_config_field():
    with pytest.raises(TypeError):
        tiny_config(attn_impl="tiled")
    with pytest.raises(ValueError, match="execution must be an Execution, got str"):
        ng.GPT(tiny_config(), execution="tiled")


def test_bad_params_and_dtype():
    cfg = tiny_config()
    params = ng.init_params(cfg)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ng.GPT(cfg, dtype=np.int32)
    bad = dict(params)
    bad["h.1.ln_1.weight"] = np.ones(3)
    with pytest.raises(ValueError, match=r"params\['h.1.ln_1.weight'\] has shape \(3,\), expected \(8,\)"):
        ng.GPT(cfg, params=bad)
    bad = dict(params)
    del bad["ln_f.bias"]
    bad["extra"] = np.ones(2)
    with pytest.raises(ValueError, match=r"missing \['ln_f.bias'\], unexpected \['extra'\]"):
        ng.GPT(cfg, params=bad)
