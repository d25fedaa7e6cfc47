"""std(update) / std(weight), by hand on a one-step toy."""
import numpy as np
import pytest

from numpygpt.pictures import ratio_names, ratio_series, snapshot, update_ratios
from numpygpt.train import AdamW


def test_one_step_of_plain_arithmetic():
    params = {"w": np.array([[1.0, 3.0], [5.0, 7.0]]), "b": np.zeros(2)}
    before = snapshot(params)
    assert list(before) == ["w"] and ratio_names(params) == ["w"]
    params["w"] -= np.array([[0.0, 0.2], [0.0, 0.2]])          # the update: 0, -0.2, 0, -0.2
    # std(update) = 0.1; std(w before) = sqrt(5) (values 1,3,5,7: variance 5)
    assert update_ratios(before, params) == {"w": pytest.approx(0.1 / np.sqrt(5), rel=1e-12)}
    before["w"][:] = 2.0                                       # std 0: no ratio
    assert update_ratios(before, params) == {}


def test_one_adamw_step_moves_every_entry_by_lr():
    """Adam's first step: m_hat / sqrt(v_hat) = sign(g), so (no decay) each entry moves by
    exactly lr: std(update) = lr * std(-sign(g))."""
    w = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    g = np.array([[1.0, 2.0, -3.0], [0.5, 0.25, -1.0]])
    name = "h.0.mlp.c_fc.weight"
    params = {name: w.copy()}
    before = snapshot(params)
    AdamW(params, lr=0.01, weight_decay=0.0, eps=0.0).step(params, {name: g})
    signs = np.sign(g)                                         # + + - + + -
    expected = 0.01 * signs.std() / w.std()
    assert update_ratios(before, params)[name] == pytest.approx(expected, rel=1e-9)


def test_series_follow_the_steps():
    history = {"update_ratio": [[1, {"a": 0.1, "b": 0.2}], [2, {"a": 0.3}]]}
    series = ratio_series(history)
    np.testing.assert_array_equal(series["a"][0], [1, 2])
    np.testing.assert_array_equal(series["a"][1], [0.1, 0.3])
    np.testing.assert_array_equal(series["b"][0], [1])
    assert ratio_series({"losses": []}) == {}
