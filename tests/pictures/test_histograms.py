"""The statistics are numpy's on the arrays the probe keeps (real tokens only)."""
import numpy as np
import pytest

from numpygpt.config import GPTConfig
from numpygpt.layers import gelu_forward
from numpygpt.model import GPT
from numpygpt.pictures import (ACTIVATIONS, GRADIENTS, SATURATED_SLOPE, layer_stats, probe,
                               stats_lines, tensor_stats)

IDS = np.array([[1, 4, 2, 7, 3], [6, 2, 9, 0, 0]])
LABELS = np.array([[4, 2, 7, 3, -100], [-100, 9, -100, -100, -100]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def model():
    cfg = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=2)
    return GPT(cfg, seed=1, dtype=np.float64)


def test_tensor_stats_are_numpys():
    x = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
    s = tensor_stats(x, bins=3)
    assert s["mean"] == pytest.approx(0.875) and s["std"] == pytest.approx(np.sqrt(4.546875))
    np.testing.assert_array_equal(s["counts"], [1, 2, 1])      # [-2,0) [0,2) [2,4]
    np.testing.assert_allclose(s["edges"], [-2, 0, 2, 4])
    with pytest.raises(ValueError, match="empty"):
        tensor_stats(np.zeros((0, 3)))


def test_layer_stats_over_the_real_tokens():
    m = model()
    stats = layer_stats(m, IDS, LABELS, MASK)
    run = probe(m, IDS, LABELS, MASK)
    real = MASK.astype(bool)
    assert len(stats["layers"]) == 2
    for layer, block in zip(stats["layers"], run["blocks"]):
        for name in ACTIVATIONS + GRADIENTS:
            values = block[name][real]                 # (8, C or 4C): 8 real tokens
            assert values.shape[0] == 8
            assert layer[name]["mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-300)
            assert layer[name]["std"] == pytest.approx(values.std(), rel=1e-12)
            assert layer[name]["counts"].sum() == values.size
        assert layer["gelu_out"]["mean"] == pytest.approx(
            gelu_forward(block["gelu_in"][real])[0].mean(), rel=1e-12)


def test_saturation_counts_the_flat_part_of_gelu():
    m = model()
    for name, p in m.params.items():               # push every MLP's hidden layer far negative
        if name.endswith("mlp.c_fc.bias"):
            p[: p.size // 4] = -10.0               # a quarter of the units: gelu' ~ 0 there
    stats = layer_stats(m, IDS, LABELS, MASK)
    for layer in stats["layers"]:
        assert layer["gelu_saturation"] == pytest.approx(0.25)
    assert SATURATED_SLOPE == 0.05
    lines = stats_lines(stats)
    assert len(lines) == 3 and lines[1].rstrip().endswith("25.0%")
