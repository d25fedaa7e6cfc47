"""HuggingFace GPT-2 directories written by numpygpt and read back (GPT.save_pretrained /
GPT.from_pretrained, on numpygpt.io.hf's write_hf_directory / read_hf_directory), and every way
one can be wrong. NumPy only; reading HuggingFace's own files is in test_oracle.py."""
import hashlib
import json
import os

import numpy as np
import pytest

import numpygpt as ng
from numpygpt import checks
from numpygpt.io import hf
from numpygpt.io import safetensors as sft
from numpygpt.io.hf import read_hf_directory, write_hf_directory
from numpygpt.train import checkpoint

TINY = dict(vocab_size=23, n_positions=12, n_embd=8, n_head=2, n_layer=2)


def random_model(dtype=np.float64, tied=True, seed=0):
    """Random values everywhere (LayerNorm and biases too), so a swapped tensor shows."""
    cfg = ng.GPTConfig(**TINY, tie_word_embeddings=tied, layer_norm_epsilon=1e-6)
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(0, 0.3, size=s) for k, s in ng.param_shapes(cfg).items()}
    return ng.GPT(cfg, dtype=dtype, params=params)


def ids(B=2, T=7, seed=1):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(B, T))


def tensors_of(path):
    return sft.load_file(os.path.join(path, "model.safetensors"))[0]


def rewrite(path, tensors, **config_changes):
    sft.save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if config_changes:
        cfg_path = os.path.join(path, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        for k, v in config_changes.items():
            if v is ...:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tied", [True, False])
def test_save_then_load_is_identical(tmp_path, dtype, tied):
    model = random_model(dtype, tied)
    model.save_pretrained(tmp_path)
    back = ng.GPT.from_pretrained(tmp_path, dtype=dtype)
    assert back.config == model.config and back.dtype == np.dtype(dtype)
    assert sorted(back.params) == sorted(model.params)
    for k, p in model.params.items():
        assert back.params[k].dtype == p.dtype and back.params[k].tobytes() == p.tobytes(), k
        assert back.params[k].flags.writeable and back.params[k].flags.c_contiguous
    x = ids()
    assert np.array_equal(back.logits(x), model.logits(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tied", [True, False])
def test_write_then_read_directory_functions(tmp_path, dtype, tied):
    """The functions under GPT.save_pretrained / GPT.from_pretrained: (config, params) in and out."""
    model = random_model(dtype, tied)
    write_hf_directory(model.config, model.params, tmp_path)
    config, params = read_hf_directory(tmp_path, dtype)
    assert config == model.config and sorted(params) == sorted(model.params)
    for k, p in model.params.items():
        assert params[k].dtype == np.dtype(dtype) and params[k].tobytes() == p.tobytes(), k
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["torch_dtype"] == np.dtype(dtype).name


def test_directory_layout_is_huggingfaces(tmp_path):
    random_model(np.float32, tied=True).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert {k: cfg[k] for k in TINY} == TINY
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True
    assert cfg["layer_norm_epsilon"] == 1e-6
    tensors, meta = sft.load_file(tmp_path / "model.safetensors")
    assert meta == {"format": "pt"}                       # transformers refuses files without it
    assert all(k.startswith("transformer.") for k in tensors)      # tied: no lm_head.weight
    assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (8, 24)    # Conv1D (in, out)
    assert all(t.dtype == np.float32 for t in tensors.values())

    random_model(np.float64, tied=False).save_pretrained(tmp_path / "untied")
    assert "lm_head.weight" in tensors_of(tmp_path / "untied")


def test_float32_file_into_float64_model_and_back(tmp_path):
    model = random_model(np.float32)
    model.save_pretrained(tmp_path)
    wide = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    assert all(np.array_equal(wide.params[k], model.params[k].astype(np.float64)) for k in model.params)


def test_names_without_prefix_and_mask_buffers(tmp_path):
    """Old GPT-2 files: no 'transformer.' prefix, and h.N.attn.bias / masked_bias buffers."""
    model = random_model()
    model.save_pretrained(tmp_path)
    old = {k.removeprefix("transformer."): v for k, v in tensors_of(tmp_path).items()}
    for i in range(TINY["n_layer"]):
        old[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 12, 12), dtype=np.float32))
        old[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    rewrite(tmp_path, old)
    back = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)


def test_tied_lm_head_present_and_equal_is_accepted(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    t = tensors_of(tmp_path)
    rewrite(tmp_path, {**t, "lm_head.weight": t["transformer.wte.weight"]})
    back = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    assert "lm_head.weight" not in back.params
    rewrite(tmp_path, {**t, "lm_head.weight": t["transformer.wte.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        ng.GPT.from_pretrained(tmp_path)


def test_half_precision_files_are_upcast(tmp_path):
    model = random_model(np.float32)
    model.save_pretrained(tmp_path)
    t = tensors_of(tmp_path)
    sft.save_file(t, tmp_path / "model.safetensors", metadata={"format": "pt"},
                  dtypes={k: "BF16" for k in t})
    back = ng.GPT.from_pretrained(tmp_path)
    w = model.params["wte.weight"]
    assert np.abs(back.params["wte.weight"] - w).max() <= 2**-8 * np.abs(w).max()   # bf16: 8 bits
    rewrite(tmp_path, {k: v.astype(np.float16) for k, v in t.items()})
    back = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    assert np.array_equal(back.params["wte.weight"], w.astype(np.float16).astype(np.float64))


def test_sharded_directory(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    t = tensors_of(tmp_path)
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        sft.save_file({k: t[k] for k in keys}, tmp_path / file, metadata={"format": "pt"})
    os.remove(tmp_path / "model.safetensors")
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}, f)
    back = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"x": "../elsewhere.safetensors"}}, f)
    with pytest.raises(ValueError, match="not a file name in this directory"):
        ng.GPT.from_pretrained(tmp_path)


@pytest.fixture
def saved(tmp_path):
    random_model().save_pretrained(tmp_path)
    return tmp_path, tensors_of(tmp_path)


def test_missing_tensor_is_named(saved):
    path, t = saved
    del t["transformer.h.1.mlp.c_fc.bias"]
    rewrite(path, t)
    with pytest.raises(ValueError, match=r"missing \['h.1.mlp.c_fc.bias'\]"):
        ng.GPT.from_pretrained(path)


def test_untied_needs_lm_head(saved):
    path, t = saved
    rewrite(path, t, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        ng.GPT.from_pretrained(path)


def test_unexpected_tensor_is_named(saved):
    path, t = saved
    rewrite(path, {**t, "transformer.h.2.ln_1.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected \['h.2.ln_1.weight'\]"):
        ng.GPT.from_pretrained(path)


def test_misshaped_tensor_is_named(saved):
    path, t = saved
    t["transformer.h.0.attn.c_attn.weight"] = t["transformer.h.0.attn.c_attn.weight"].T.copy()
    rewrite(path, t)
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn.weight: \(24, 8\), expected \(8, 24\)"):
        ng.GPT.from_pretrained(path)


def test_integer_tensor_is_refused(saved):
    path, t = saved
    t["transformer.ln_f.bias"] = np.zeros(8, dtype=np.int32)
    rewrite(path, t)
    with pytest.raises(ValueError, match="ln_f.bias: int32"):
        ng.GPT.from_pretrained(path)


def test_duplicate_with_and_without_prefix(saved):
    path, t = saved
    rewrite(path, {**t, "ln_f.bias": t["transformer.ln_f.bias"]})
    with pytest.raises(ValueError, match="'ln_f.bias' appears twice"):
        ng.GPT.from_pretrained(path)


@pytest.mark.parametrize("change,match", [
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"activation_function": "gelu"}, "gelu_new"),
    ({"model_type": "llama"}, "model_type='llama'"),
    ({"n_inner": 17}, "n_inner=17"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"n_head": 3}, "not divisible"),
    ({"n_embd": ...}, r"missing keys \['n_embd'\]"),
    ({"tie_word_embeddings": "yes"}, "true or false"),
    ({"n_layer": 3}, r"missing \["),
])
def test_bad_config(saved, change, match):
    path, t = saved
    rewrite(path, t, **change)
    with pytest.raises(ValueError, match=match):
        ng.GPT.from_pretrained(path)


def test_config_defaults(saved):
    """Absent activation_function / layer_norm_epsilon / tie_word_embeddings take GPT-2's defaults;
    an explicit n_inner = 4 n_embd is the default too."""
    path, t = saved
    rewrite(path, t, activation_function=..., layer_norm_epsilon=..., tie_word_embeddings=...,
            n_inner=32, model_type=...)
    model = ng.GPT.from_pretrained(path)
    assert model.config.layer_norm_epsilon == 1e-5 and model.config.tie_word_embeddings


@pytest.mark.parametrize("load", [read_hf_directory, ng.GPT.from_pretrained],
                         ids=["read_hf_directory", "GPT.from_pretrained"])
def test_not_a_gpt2_directory(tmp_path, load):
    with pytest.raises(ValueError, match="is not a directory"):
        load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no config.json"):
        load(tmp_path)
    random_model().save_pretrained(tmp_path)
    os.rename(tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load(tmp_path)


def test_corrupt_weights_file_names_the_file(saved):
    path, _ = saved
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="model.safetensors: header length"):
        ng.GPT.from_pretrained(path)


def test_bad_dtype_argument(saved):
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ng.GPT.from_pretrained(saved[0], dtype=np.float16)


def test_rope_model_cannot_be_a_gpt2_checkpoint(tmp_path):
    model = ng.GPT(ng.GPTConfig(**TINY, pos_encoding="rope"))
    with pytest.raises(ValueError, match="pos_encoding='rope'"):
        model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pos_encoding='rope'"):
        write_hf_directory(model.config, model.params, tmp_path)
    assert not os.listdir(tmp_path)


def test_overwrite_is_deterministic(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    model.save_pretrained(tmp_path / "b")
    for f in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_training_checkpoint_is_pointed_elsewhere(tmp_path):
    model = random_model()
    checkpoint.save_checkpoint(tmp_path, model.config, model.params)
    with pytest.raises(ValueError, match="load_checkpoint"):
        ng.GPT.from_pretrained(tmp_path)
    step_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    with pytest.raises(ValueError, match="load_checkpoint"):
        ng.GPT.from_pretrained(step_dir)


@pytest.mark.parametrize("field, value", [("n_layer", 10 ** 9), ("n_layer", 10 ** 5),
                                          ("n_embd", 2 ** 20), ("vocab_size", 10 ** 7)])
def test_sizes_the_weights_cannot_hold_are_refused_before_anything_is_allocated(
        saved, monkeypatch, field, value):
    """An untrusted config.json claiming more parameters than the weight files hold (2 bytes
    each at least) is one short error naming the file and the size, before anything is
    allocated or a list of the missing tensors is built."""
    path, t = saved
    rewrite(path, t, **{field: value, "n_head": 1})
    monkeypatch.setattr(hf, "param_shapes", lambda config: pytest.fail("tensors were listed"))
    with pytest.raises(ValueError) as e:
        ng.GPT.from_pretrained(path)
    message = str(e.value)
    assert "config.json" in message and f"{field}={value}" in message and len(message) < 400


def test_sizes_beyond_the_memory_available_are_refused_before_anything_is_allocated(saved,
                                                                                   monkeypatch):
    path, _ = saved
    monkeypatch.setattr(checks, "available_memory", lambda: 1000)     # bytes
    monkeypatch.setattr(hf, "param_shapes", lambda config: pytest.fail("tensors were listed"))
    with pytest.raises(ValueError, match=r"config.json: .*n_layer=2.* more than the 1000 B "
                                         r"available"):
        ng.GPT.from_pretrained(path)
    monkeypatch.undo()
    monkeypatch.setattr(checks, "available_memory", lambda: None)     # the system does not say
    ng.GPT.from_pretrained(path)


def test_a_checkpoint_config_its_params_cannot_hold_is_refused_before_listing_tensors(tmp_path,
                                                                                       monkeypatch):
    model = random_model()
    checkpoint.save_checkpoint(str(tmp_path), model.config, model.params)
    with open(tmp_path / checkpoint.MANIFEST) as f:
        manifest = json.load(f)
    config_path = tmp_path / manifest["dir"] / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg["n_layer"] = 10 ** 9
    config_path.write_text(json.dumps(cfg))
    data = config_path.read_bytes()
    manifest["files"]["config.json"] = {"bytes": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest()}
    (tmp_path / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(checkpoint, "param_shapes", lambda config: pytest.fail("listed"))
    with pytest.raises(ValueError, match=r"config.json: .*n_layer=1000000000 describe"):
        checkpoint.load_checkpoint(tmp_path)


def test_windowed_model_cannot_be_a_gpt2_checkpoint(tmp_path):
    model = ng.GPT(ng.GPTConfig(**TINY, sliding_window=4))
    with pytest.raises(ValueError, match="sliding_window=4: GPT-2 checkpoints have full causal"):
        model.save_pretrained(tmp_path)
    assert not os.listdir(tmp_path)


def test_save_pretrained_refuses_grouped_query_attention(tmp_path):
    """GPT-2's format has one key/value head per query head: a GQA model cannot be written."""
    model = ng.GPT(ng.GPTConfig(**{**TINY, "n_kv_head": 1}))
    with pytest.raises(ValueError, match=r"n_kv_head=1 \(grouped-query attention, n_head=2\)"):
        model.save_pretrained(tmp_path / "gqa")
    assert not (tmp_path / "gqa").exists()
