"""The drawings write PNGs (skipped without matplotlib), and say how to get it without."""
import numpy as np
import pytest

from numpygpt.config import GPTConfig
from numpygpt.model import GPT
from numpygpt.pictures import (attention_maps, draw_attention_maps, draw_histograms,
                               draw_update_ratios, have_matplotlib, layer_stats)
from numpygpt.pictures import draw

IDS = np.array([[1, 4, 2, 7], [6, 2, 9, 0]])
LABELS = np.array([[4, 2, 7, -100], [-100, 9, -100, -100]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
PNG = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(not have_matplotlib(), reason="matplotlib not installed")


def model():
    cfg = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=1)
    return GPT(cfg, seed=0, dtype=np.float64)


def is_png(path):
    return path.read_bytes()[:8] == PNG


@needs_matplotlib
def test_each_drawing_writes_a_png(tmp_path):
    maps = attention_maps(model(), IDS, LABELS, MASK)
    draw_attention_maps(maps, 1, tmp_path / "maps.png", tokens=list("abcd"), title="t")
    stats = layer_stats(model(), IDS, LABELS, MASK)
    draw_histograms([("start", stats), ("end", stats)], tmp_path / "hist.png")
    history = {"update_ratio": [[1, {"w": 1e-3}], [2, {"w": 2e-3, "v": 0.0}]]}
    draw_update_ratios(history, tmp_path / "ratio.png")
    assert all(is_png(tmp_path / f) for f in ("maps.png", "hist.png", "ratio.png"))
    with pytest.raises(ValueError, match="no update ratios"):
        draw_update_ratios({"losses": [1.0]}, tmp_path / "none.png")


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not have_matplotlib()
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[plot\]\""):
        draw.pyplot()
