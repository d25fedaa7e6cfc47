"""HuggingFace GPT-2 directories in and out (GPT.from_pretrained and GPT.save_pretrained).

The layout GPT2LMHeadModel.save_pretrained writes, and reads:

    config.json          {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
                          "n_embd": 768, "n_layer": 12, "n_head": 12, "layer_norm_epsilon": 1e-05,
                          "activation_function": "gelu_new", "tie_word_embeddings": true, ...}
    model.safetensors    transformer.wte.weight (V,C), transformer.wpe.weight (P,C),
                         transformer.h.{i}.ln_1.weight, ..., transformer.ln_f.bias,
                         [lm_head.weight (V,C): only when not tied]
    (or model.safetensors.index.json + shards, for large models)

GPT-2's Conv1D stores weights (in, out) and computes x @ W + b: numpygpt's layout, so
tensors are taken over as they are; only the "transformer." prefix goes. Old files
name parameters without it, and may hold the attention-mask buffers h.{i}.attn.bias /
h.{i}.attn.masked_bias, which are not parameters and are skipped. With tied embeddings
lm_head.weight is wte: absent from the file, or present and equal to it.

This is *not* numpygpt's training checkpoint (numpygpt/train/checkpoint.py: numpygpt's own
GPTConfig + optimizer state in .npz): this format carries weights only,
in the form the PyTorch ecosystem reads.
"""
import json
import os
import re

import numpy as np

from . import safetensors
from ..checks import check_stored_model, read_json_object
from ..config import GPTConfig, param_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREFIX = "transformer."
BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")    # causal-mask buffers, not parameters

# GPT2Config keys numpygpt cannot honour, with the value GPT-2 has (anything else is rejected)
FIXED = {"n_inner": None, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
         "add_cross_attention": False}


def config_from_hf(hf, where=CONFIG_FILE):
    """A GPT-2 config.json dict -> GPTConfig, rejecting what numpygpt's GPT-2 does not compute."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{where}: model_type={model_type!r}; only 'gpt2' can be loaded")
    act = hf.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise ValueError(f"{where}: activation_function={act!r}; numpygpt computes GPT-2's "
                         f"'gelu_new' (tanh approximation) only")
    for key, value in FIXED.items():
        got = hf.get(key, value)
        if key == "n_inner" and got is not None and got == 4 * hf.get("n_embd", -1):
            continue                                   # explicit 4C is the default
        if got != value:
            raise ValueError(f"{where}: {key}={got!r} is not supported (numpygpt's GPT-2 has "
                             f"{key}={value!r})")
    tie = hf.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise ValueError(f"{where}: tie_word_embeddings={tie!r} must be true or false")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    try:
        return GPTConfig(vocab_size=hf["vocab_size"], n_positions=hf["n_positions"],
                         n_embd=hf["n_embd"], n_layer=hf["n_layer"], n_head=hf["n_head"],
                         layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                         tie_word_embeddings=tie)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def config_to_hf(config, dtype):
    """GPTConfig -> the config.json transformers reads for GPT2LMHeadModel."""
    if config.pos_encoding != "learned":
        raise ValueError(f"pos_encoding={config.pos_encoding!r}: GPT-2 checkpoints have learned "
                         f"absolute positions only; save this model with numpygpt.train.save_checkpoint")
    if config.n_kv_head is not None:
        raise ValueError(f"n_kv_head={config.n_kv_head} (grouped-query attention, n_head="
                         f"{config.n_head}): GPT-2 checkpoints have one key/value head per query "
                         f"head; save this model with numpygpt.train.save_checkpoint")
    if config.sliding_window is not None:
        raise ValueError(f"sliding_window={config.sliding_window}: GPT-2 checkpoints have full causal "
                         f"attention only; save this model with numpygpt.train.save_checkpoint")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.n_positions,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_inner": None, "layer_norm_epsilon": config.layer_norm_epsilon,
            "activation_function": "gelu_new",
            "tie_word_embeddings": config.tie_word_embeddings,
            # GPT-2's <|endoftext|> (50256) and numpygpt's ByteTokenizer eot (256) are both the last id
            "bos_token_id": config.vocab_size - 1, "eos_token_id": config.vocab_size - 1,
            "torch_dtype": np.dtype(dtype).name}


def _weight_files(path):
    """The safetensors file(s) of a directory: model.safetensors, or the shards its index lists."""
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: 'weight_map' must be a non-empty object")
        files = sorted(set(weight_map.values()))
        for f in files:
            if not isinstance(f, str) or os.path.basename(f) != f or f in ("", ".", ".."):
                raise ValueError(f"{index}: shard {f!r} is not a file name in this directory")
        return [os.path.join(path, f) for f in files]
    files = os.listdir(path)
    others = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if "checkpoint.json" in files or any(f.endswith(".npz") for f in files):
        hint = ("; this looks like a numpygpt training checkpoint: load it with "
                "numpygpt.train.load_checkpoint (or --checkpoint)")
    elif others:
        hint = f"; found {others}: numpygpt reads safetensors only (never pickle)"
    else:
        hint = ""
    raise ValueError(f"{path}: no {WEIGHTS_FILE} (or {INDEX_FILE}){hint}")


def _read_tensors(files):
    """All tensors of a directory's weight files, names without the 'transformer.' prefix,
    buffers dropped."""
    tensors = {}
    for file in files:
        try:
            file_tensors, _ = safetensors.load_file(file, copy=False)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None
        for name, t in file_tensors.items():
            short = name[len(PREFIX):] if name.startswith(PREFIX) else name
            if BUFFER.fullmatch(short):
                continue
            if short in tensors:
                raise ValueError(f"{file}: tensor {short!r} appears twice (with and without "
                                 f"the {PREFIX!r} prefix, or in two shards)")
            tensors[short] = t
    return tensors


def read_hf_directory(path, dtype=np.float32):
    """A HuggingFace GPT-2 directory -> (GPTConfig, params cast to dtype: float32 or float64)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"path={path!r} is not a directory (expected one holding "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        hint = (": it is a numpygpt training checkpoint; load it with "
                "numpygpt.train.load_checkpoint (or --checkpoint)"
                if os.path.isfile(os.path.join(path, "checkpoint.json")) else "")
        raise ValueError(f"{path}: no {CONFIG_FILE}{hint}")
    config = config_from_hf(read_json_object(config_path), where=config_path)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")

    tensors = _read_tensors(_weight_files(path))      # memory-mapped: nothing copied yet
    # before anything is allocated or listed: 2 bytes a parameter at least (float16, bfloat16)
    check_stored_model(config_path, config, sum(t.nbytes for t in tensors.values()), 2,
                       dtype.itemsize)
    expected = param_shapes(config)
    if config.tie_word_embeddings and "lm_head.weight" in tensors:
        head, wte = tensors.pop("lm_head.weight"), tensors.get("wte.weight")
        if wte is not None and not (head.shape == wte.shape and np.array_equal(head, wte)):
            raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs "
                             f"from wte.weight")
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in expected)
    misshaped = [f"{k}: {tensors[k].shape}, expected {s}" for k, s in expected.items()
                 if k in tensors and tensors[k].shape != s]
    not_float = [f"{k}: {tensors[k].dtype}" for k in expected
                 if k in tensors and tensors[k].dtype.kind != "f"]
    problems = [f"{label} {items}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                 ("not floating point", not_float)) if items]
    if problems:
        raise ValueError(f"{path}: the tensors do not match {CONFIG_FILE}: " + "; ".join(problems))
    params = {}
    for name in expected:                     # copy out of the memory map, cast once, check
        source = tensors[name]
        with np.errstate(over="ignore"):      # an overflow is reported below, by name
            params[name] = np.array(source, dtype=dtype)
        bad = ~np.isfinite(params[name])
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            value = source[index].item()
            why = ("holds NaN or inf" if not np.isfinite(value) else
                   f"holds {value!r}, which overflows {dtype.name}")
            raise ValueError(f"{path}: tensor {name!r}{list(index)} {why}")
    return config, params


def write_hf_directory(config, params, path):
    """Write a HuggingFace GPT-2 directory (config.json + model.safetensors) that
    transformers' GPT2LMHeadModel.from_pretrained and read_hf_directory both read.

    Both files are written to temporary files first and os.replace()d into place one right
    after the other (weights, then config.json): a failed or killed save leaves the previous
    directory as it was. (Only a kill between the two replaces, microseconds apart, could
    pair new weights with the old config.json; reading checks every shape against it.)"""
    path = os.fspath(path)
    hf_config = config_to_hf(config, params["wte.weight"].dtype)
    config_text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    os.makedirs(path, exist_ok=True)
    tensors = {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in params.items()}
    with safetensors.atomic_write(os.path.join(path, CONFIG_FILE), text=True) as f:
        f.write(config_text)
        f.flush()
        os.fsync(f.fileno())
        safetensors.save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
