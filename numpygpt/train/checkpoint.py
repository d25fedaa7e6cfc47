"""numpygpt's own training checkpoint: a directory that survives a crash during a save.

    DIR/checkpoint.json          the manifest: step, which step directory is current, and the
                                 size and SHA-256 of every file in it. Written LAST.
    DIR/step-00000300-XXXX/      one save:
        config.json              GPTConfig
        params.npz               parameters, by GPT-2 name
        optim.npz                AdamW moments "m.<name>", "v.<name>" (absent if no optimiser)
        state.json               step, AdamW step count, RNG state, training settings, history

Atomicity: a save writes a fresh step directory, then the manifest under a temporary name,
then os.replace()s it onto checkpoint.json (atomic on POSIX). A crash or kill before the
replace leaves the old manifest pointing at the old, untouched step directory; after it, the
new save is complete. Stale step directories are removed only after the replace.

Loading trusts nothing: every file named by the manifest must exist with the recorded size
and hash (so a truncated or swapped file is caught), arrays are read with
np.load(allow_pickle=False), and every tensor's name and shape is checked against the
config. Errors are ValueErrors that name the file.

This is not the HuggingFace layout (config.json + model.safetensors, numpygpt/io/hf.py);
that one holds weights only, this one everything needed to continue a run exactly.
"""
import hashlib
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

from ..checks import read_json_object
from ..config import GPTConfig, param_shapes

FORMAT = "numpygpt-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path, config, params, optimizer_state=None, step=0, rng_state=None,
                    extra=None):
    """Save atomically into directory `path` (created if needed).
    optimizer_state: AdamW.state_dict() or None; rng_state: Generator.bit_generator.state;
    extra: any JSON-serialisable dict (training settings, loss history)."""
    os.makedirs(path, exist_ok=True)
    step_dir = tempfile.mkdtemp(prefix=f"step-{int(step):08d}-", dir=path)
    files = {"config.json": config.to_dict(), "params.npz": dict(params),
             "state.json": {"step": int(step), "rng_state": rng_state, "extra": extra or {}}}
    if optimizer_state is not None:
        files["state.json"]["optimizer_t"] = int(optimizer_state["t"])
        files["optim.npz"] = {**{f"m.{k}": a for k, a in optimizer_state["m"].items()},
                              **{f"v.{k}": a for k, a in optimizer_state["v"].items()}}
    manifest = {"format": FORMAT, "version": VERSION, "step": int(step),
                "dir": os.path.basename(step_dir), "files": {}}
    for name, content in files.items():
        file_path = os.path.join(step_dir, name)
        (_write_npz if name.endswith(".npz") else _write_json)(file_path, content)
        manifest["files"][name] = {"bytes": os.path.getsize(file_path), "sha256": _sha256(file_path)}
    _fsync(step_dir)
    # commit point: the manifest names the new directory only once it is complete
    tmp = os.path.join(path, f".{MANIFEST}.tmp-{os.getpid()}")
    _write_json(tmp, manifest)
    os.replace(tmp, os.path.join(path, MANIFEST))
    _fsync(path)
    for entry in os.listdir(path):                   # earlier saves and leftovers of crashed ones
        if entry.startswith("step-") and entry != manifest["dir"]:
            shutil.rmtree(os.path.join(path, entry), ignore_errors=True)
    return os.path.join(path, MANIFEST)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"checkpoint file {path}: not a readable .npz ({e})") from None


def _check_arrays(file_path, arrays, expected):
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint file {file_path}: tensors do not match config.json: "
                         f"missing {missing}, unexpected {unexpected}")
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != tuple(shape):
            raise ValueError(f"checkpoint file {file_path}: tensor {name!r} has shape {a.shape}, "
                             f"config.json implies {tuple(shape)}")
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"checkpoint file {file_path}: tensor {name!r} has dtype {a.dtype}, "
                             f"expected float32 or float64")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"checkpoint file {file_path}: tensor {name!r} holds NaN or inf")


def load_checkpoint(path):
    """Validate and read a checkpoint directory -> dict with config (GPTConfig), params,
    optimizer_state (or None), step, rng_state, extra."""
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r}: not a directory")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise ValueError(f"checkpoint {path!r}: missing file {MANIFEST} (not a numpygpt "
                         f"checkpoint, or no save has completed)")
    manifest = read_json_object(manifest_path, "checkpoint file")
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and manifest.get("version") == VERSION and isinstance(manifest.get("files"), dict)
            and isinstance(manifest.get("dir"), str)):
        raise ValueError(f"checkpoint file {manifest_path}: not a {FORMAT} v{VERSION} manifest")
    step_dir = os.path.join(path, os.path.basename(manifest["dir"]))
    for name in ("config.json", "params.npz", "state.json"):
        if name not in manifest["files"]:
            raise ValueError(f"checkpoint file {manifest_path}: does not list {name}")
    for name, meta in manifest["files"].items():
        file_path = os.path.join(step_dir, os.path.basename(name))
        if not os.path.isfile(file_path):
            raise ValueError(f"checkpoint file {file_path}: missing")
        size = os.path.getsize(file_path)
        if size != meta.get("bytes"):
            raise ValueError(f"checkpoint file {file_path}: {size} bytes, the manifest says "
                             f"{meta.get('bytes')} (truncated or replaced)")
        if _sha256(file_path) != meta.get("sha256"):
            raise ValueError(f"checkpoint file {file_path}: SHA-256 does not match the manifest "
                             f"(corrupted or replaced)")

    config_path = os.path.join(step_dir, "config.json")
    try:
        config = GPTConfig.from_dict(read_json_object(config_path, "checkpoint file"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {config_path}: invalid config ({e})") from None
    shapes = param_shapes(config)

    params_path = os.path.join(step_dir, "params.npz")
    params = _read_npz(params_path)
    _check_arrays(params_path, params, shapes)

    state_path = os.path.join(step_dir, "state.json")
    state = read_json_object(state_path, "checkpoint file")
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 0):
        raise ValueError(f"checkpoint file {state_path}: no valid 'step'")

    optimizer_state = None
    if "optim.npz" in manifest["files"]:
        optim_path = os.path.join(step_dir, "optim.npz")
        arrays = _read_npz(optim_path)
        _check_arrays(optim_path, arrays, {f"{mv}.{k}": s for mv in "mv" for k, s in shapes.items()})
        if not isinstance(state.get("optimizer_t"), int):
            raise ValueError(f"checkpoint file {state_path}: no valid 'optimizer_t'")
        optimizer_state = {"t": state["optimizer_t"],
                           "m": {k: arrays[f"m.{k}"] for k in shapes},
                           "v": {k: arrays[f"v.{k}"] for k in shapes}}
    return {"config": config, "params": params, "optimizer_state": optimizer_state,
            "step": state["step"], "rng_state": state.get("rng_state"),
            "extra": state.get("extra") or {}, "dir": step_dir}
