"""Continuing a run: a checkpoint saved by the training loop, checked for resuming it (its
settings, their agreement with the model, the loss history, the RNG state)."""
import math
import os

from ..io import ByteTokenizer
from .checkpoint import load_checkpoint, rng_from_state
from .settings import TrainSettings

def check_history(history):
    """A run's history as a checkpoint holds it: {"losses": [finite numbers], "evals":
    [[step, {metric: finite number}]], and "update_ratio": [[step, {tensor: finite number}]]
    when the run kept it} -> the same, with lists copied. ValueError naming the field otherwise."""
    if not isinstance(history, dict):
        raise ValueError(f"history must be an object, got {type(history).__name__}")
    losses = history.get("losses", [])
    if not isinstance(losses, list) or not all(_number(v) for v in losses):
        raise ValueError(f"history.losses must be a list of finite numbers, got "
                         f"{_short(losses)}")
    checked = {"losses": list(losses),
               "evals": [tuple(e) for e in _step_entries(history, "evals", "metric")]}
    if "update_ratio" in history:           # kept by runs drawing their pictures (--plots)
        checked["update_ratio"] = [list(e) for e in _step_entries(history, "update_ratio",
                                                                  "tensor")]
    return checked


def _number(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _step_entries(history, field, what):
    """history[field], checked: a list of [step, {what: finite number}]."""
    entries = history.get(field, [])
    for i, e in enumerate(entries if isinstance(entries, list) else [None]):
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int)
                and not isinstance(e[0], bool) and isinstance(e[1], dict)
                and all(isinstance(k, str) and _number(v) for k, v in e[1].items())):
            raise ValueError(f"history.{field}[{i}] must be [step, {{{what}: finite number}}], "
                             f"got {_short(e if isinstance(entries, list) else entries)}")
    return entries


def _short(value, n=60):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


RUNS = {"text": "pre-training (numpygpt train)", "sft": "fine-tuning (numpygpt sft)"}   # by task


def load_training_checkpoint(path, task):
    """A checkpoint saved by train_loop, checked for continuing it: the generic checks of
    load_checkpoint, then its training settings (every field), their agreement with the
    model's config, the loss history, and the RNG state. Returns {"checkpoint": the
    load_checkpoint dict, "settings": TrainSettings, "history": dict, "rng": Generator}."""
    ckpt = load_checkpoint(path)
    state_file = os.path.join(ckpt["dir"], "state.json")
    extra = ckpt["extra"]
    if "settings" not in extra or ckpt["optimizer_state"] is None or ckpt["rng_state"] is None:
        missing = [what for what, absent in (("settings", "settings" not in extra),
                                             ("optimizer state", ckpt["optimizer_state"] is None),
                                             ("rng_state", ckpt["rng_state"] is None)) if absent]
        raise ValueError(f"checkpoint {path!r} is not a checkpoint of a training run (no "
                         f"{', '.join(missing)})")
    try:
        settings = TrainSettings.from_dict(extra["settings"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {state_file}: settings: {e}") from None
    if settings.task != task:
        raise ValueError(f"checkpoint {path!r} is of a {RUNS[settings.task]} run, not a "
                         f"{RUNS[task]} one")
    config = ckpt["config"]
    for name in ("n_layer", "n_head", "n_embd", "pos_encoding", "sliding_window", "n_kv_head"):
        if getattr(settings, name) != getattr(config, name):
            raise ValueError(f"checkpoint file {state_file}: settings.{name}="
                             f"{getattr(settings, name)!r} disagrees with config.json "
                             f"({name}={getattr(config, name)!r})")
    if config.vocab_size != ByteTokenizer.vocab_size:
        raise ValueError(f"checkpoint {path!r}: vocab_size={config.vocab_size}, not the byte "
                         f"tokenizer's {ByteTokenizer.vocab_size}")
    if task == "text" and config.pos_encoding == "learned" and settings.seq_len > config.n_positions:
        raise ValueError(f"checkpoint file {state_file}: settings.seq_len={settings.seq_len} is "
                         f"longer than n_positions={config.n_positions} in config.json")
    try:
        history = check_history(extra.get("history", {"losses": [], "evals": []}))
    except ValueError as e:
        raise ValueError(f"checkpoint file {state_file}: {e}") from None
    return {"checkpoint": ckpt, "settings": settings, "history": history,
            "rng": rng_from_state(ckpt["rng_state"], f"checkpoint file {state_file}")}
