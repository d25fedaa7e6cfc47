"""Nothing non-finite is taken or returned as if it were a number: weights that are NaN, inf
or overflow the model's dtype are refused naming the tensor and the position; a float32
forward that overflows is a NonFiniteError naming the layer."""
import math
import warnings

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.checks import NonFiniteError
from numpygpt.io import safetensors

CFG = ng.GPTConfig(vocab_size=17, n_positions=8, n_embd=8, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def model():
    return ng.GPT(CFG, seed=0)


@pytest.fixture()
def hf_dir(tmp_path, model):
    model.save_pretrained(str(tmp_path))
    return tmp_path


def poke(hf_dir, name, index, value, dtype=None):
    path = str(hf_dir / "model.safetensors")
    tensors, meta = safetensors.load_file(path)
    key = "transformer." + name
    if dtype is not None:
        tensors[key] = tensors[key].astype(dtype)
    tensors[key][index] = value
    safetensors.save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_from_pretrained_refuses_non_finite_weights_naming_the_tensor(hf_dir, value):
    poke(hf_dir, "h.1.mlp.c_fc.weight", (2, 5), value)
    with pytest.raises(ValueError) as e:
        ng.GPT.from_pretrained(str(hf_dir))
    assert "'h.1.mlp.c_fc.weight'[2, 5] holds NaN or inf" in str(e.value)


def test_from_pretrained_refuses_values_that_overflow_float32_without_warnings(hf_dir):
    poke(hf_dir, "wte.weight", (3, 1), 1e300, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no RuntimeWarning on the way
        with pytest.raises(ValueError) as e:
            ng.GPT.from_pretrained(str(hf_dir))
        assert "'wte.weight'[3, 1] holds 1e+300, which overflows float32" in str(e.value)
        big = ng.GPT.from_pretrained(str(hf_dir), dtype=np.float64)      # float64 holds it
    assert big.params["wte.weight"][3, 1] == 1e300


def test_gpt_refuses_params_that_are_not_finite_in_its_dtype():
    params = ng.init_params(CFG, dtype=np.float64)
    params["ln_f.bias"][1] = 1e300
    with pytest.raises(ValueError, match=r"params\['ln_f.bias'\]\[1\] holds 1e\+300, which "
                                         r"overflows float32"):
        ng.GPT(CFG, params=params)
    params["ln_f.bias"][1] = np.nan
    with pytest.raises(ValueError, match=r"params\['ln_f.bias'\]\[1\] holds nan"):
        ng.GPT(CFG, params=params, dtype=np.float64)


# ---- a float32 model whose weights overflow in the forward (wte x 1e30) printed loss
#      3.9 as if fine (float64 gives 2.8e29), with only NumPy warnings

def test_float32_overflow_in_the_forward_is_an_error_naming_the_layer():
    ids = np.array([[1, 2, 3, 4]])
    labels = np.array([[2, 3, 4, -100]])
    m32 = ng.GPT(CFG, seed=0)
    m64 = ng.GPT(CFG, seed=0, dtype=np.float64)
    for m in (m32, m64):
        m.params["wte.weight"] *= 1e30
    assert math.isfinite(m64.loss(ids, labels)) and m64.loss(ids, labels) > 1e20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (lambda: m32.loss(ids, labels), lambda: m32.logits(ids),
                     lambda: m32.loss_and_grads(ids, labels),
                     lambda: ng.generate(m32, [[1, 2]], 3)):
            with pytest.raises(NonFiniteError) as e:
                call()
            assert "float32" in str(e.value) and "layernorm_forward" in str(e.value)
