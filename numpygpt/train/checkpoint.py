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

Loading trusts nothing: every field of the manifest and of state.json is checked for its
type and range; every file named by the manifest must exist with the recorded size and hash
(so a truncated or swapped file is caught); arrays are read with np.load(allow_pickle=False),
and every tensor's name, shape, dtype and finiteness is checked against the config (AdamW's
second moments must also be >= 0); the RNG state must be one its bit generator accepts as it
is. Errors are one-line ValueErrors that name the file and the field (a manifest recomputed
over a tampered file passes the hashes, not these checks).

Leftovers of saves killed midway (a step directory, a temporary manifest) are removed by
the next save.

This is not the HuggingFace layout (config.json + model.safetensors, numpygpt/io/hf.py);
that one holds weights only, this one everything needed to continue a run exactly.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

from ..checks import check_stored_model, read_json_object
from ..config import GPTConfig, param_shapes
from ..io.safetensors import umask_mode

FORMAT = "numpygpt-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
FILES = ("config.json", "params.npz", "state.json", "optim.npz")      # the last is optional
REQUIRED = FILES[:3]
LOCK = ".numpygpt.lock"            # the pid of the process saving into the directory
TMP_MANIFEST = re.compile(re.escape(f".{MANIFEST}.tmp-") + r"(\d+)")
SHA256 = re.compile(r"[0-9a-f]{64}")
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


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


def _jsonable(obj):
    """json.dumps' fallback: NumPy scalars and arrays (an MT19937 state holds one) as numbers
    and lists."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _json_text(what, obj):
    try:
        return json.dumps(obj, indent=1, sort_keys=True, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_checkpoint: {what} cannot be saved as JSON ({e})") from None


def _write_json(path, obj):
    text = obj if isinstance(obj, str) else _json_text(os.path.basename(path), obj)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _pid_alive(pid):
    if pid == os.getpid():
        return False           # our own leftover: the save in progress has no temporary yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # exists, but not ours to signal
        return True
    return True


def _lock_holder(lock_path):
    """The live process other than this one whose pid the lock file holds, or None."""
    try:
        with open(lock_path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and _pid_alive(int(text)) else None


@contextlib.contextmanager
def claimed(path):
    """`with claimed(path):` this process alone saves into directory path (created if
    needed). The claim is a lock file holding the pid, created atomically (O_EXCL), so of
    two runs started together one fails at once; a lock left by a dead process is taken
    over. Another live holder: ValueError naming its pid. A directory created here and left
    empty is removed again."""
    created = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK)
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        holder = _lock_holder(lock_path)
        if holder is not None:
            raise ValueError(f"another numpygpt process (pid {holder}) is saving into {path} "
                             f"(its lock: {lock_path}); wait for it or choose another "
                             f"directory") from None
        fd = None                    # stale: taken over below
    if fd is None:
        tmp = f"{lock_path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, lock_path)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(lock_path) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:
                os.remove(lock_path)
        if created:
            with contextlib.suppress(OSError):         # not empty: a save was made
                os.rmdir(path)


def _remove_leftovers(path, keep_dir):
    """Step directories other than the current one, and temporary manifests of saves that
    were killed (those of a live process are left alone)."""
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if entry.startswith("step-") and entry != keep_dir:
            shutil.rmtree(full, ignore_errors=True)
        m = TMP_MANIFEST.fullmatch(entry)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.remove(full)
            except OSError:
                pass


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
    state = {"step": int(step), "rng_state": rng_state, "extra": extra or {}}
    if optimizer_state is not None:
        state["optimizer_t"] = int(optimizer_state["t"])
    state_text = _json_text("state.json (rng_state, extra)", state)   # before anything is written
    arrays = {"params": params} if optimizer_state is None else {
        "params": params, "m": optimizer_state["m"], "v": optimizer_state["v"]}
    for what, named in arrays.items():                 # what load_checkpoint would refuse
        for name, a in named.items():
            if not np.all(np.isfinite(a)):
                raise ValueError(f"save_checkpoint: {what}[{name!r}] holds NaN or inf; not "
                                 f"saved (the previous checkpoint in {path} is kept)")
    os.makedirs(path, exist_ok=True)
    step_dir = tempfile.mkdtemp(prefix=f"step-{int(step):08d}-", dir=path)
    os.chmod(step_dir, umask_mode(0o777))       # mkdtemp's 0700 would hide it from others
    files = {"config.json": config.to_dict(), "params.npz": dict(params), "state.json": state_text}
    if optimizer_state is not None:
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
    _remove_leftovers(path, manifest["dir"])         # earlier saves and leftovers of killed ones
    return os.path.join(path, MANIFEST)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"checkpoint file {path}: not a readable .npz ({e})") from None


def _check_arrays(file_path, arrays, expected, non_negative=()):
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
        if name in non_negative and (a < 0).any():
            raise ValueError(f"checkpoint file {file_path}: tensor {name!r} holds negative "
                             f"values (AdamW's second moments are squares)")


def _is_int(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _field(file_path, name, value, expected):
    """The one-line error for a field of a JSON file."""
    text = repr(value)
    text = text if len(text) <= 80 else text[:80] + "..."
    return ValueError(f"checkpoint file {file_path}: field {name!r} is {text}; expected {expected}")


def _check_manifest(manifest, manifest_path):
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"checkpoint file {manifest_path}: not a {FORMAT} v{VERSION} manifest "
                         f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})")
    step, step_dir, files = manifest.get("step"), manifest.get("dir"), manifest.get("files")
    if not _is_int(step):
        raise _field(manifest_path, "step", step, "an integer >= 0")
    if not (isinstance(step_dir, str) and step_dir.startswith("step-")
            and os.path.basename(step_dir) == step_dir):
        raise _field(manifest_path, "dir", step_dir, "the name of a step-... directory beside it")
    if not isinstance(files, dict):
        raise _field(manifest_path, "files", files, "an object: file name -> {bytes, sha256}")
    for name in REQUIRED:
        if name not in files:
            raise ValueError(f"checkpoint file {manifest_path}: does not list {name}")
    for name, meta in files.items():
        if name not in FILES:
            raise _field(manifest_path, "files", name, f"only the files {', '.join(FILES)}")
        if not isinstance(meta, dict):
            raise _field(manifest_path, f"files.{name}", meta, "an object {bytes, sha256}")
        if not _is_int(meta.get("bytes")):
            raise _field(manifest_path, f"files.{name}.bytes", meta.get("bytes"),
                         "an integer >= 0")
        sha = meta.get("sha256")
        if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
            raise _field(manifest_path, f"files.{name}.sha256", sha, "64 hexadecimal digits")


def rng_from_state(state, where="rng_state"):
    """A NumPy Generator continuing exactly from a saved `bit_generator.state`, or a
    ValueError naming `where` if the state is not one its bit generator takes as it is."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise ValueError(f"{where}: field 'rng_state' is not a NumPy bit generator state "
                         f"(bit_generator {name!r}, expected one of {', '.join(BIT_GENERATORS)})")

    def plain(v):                # what JSON can hold: ints, strings, lists and objects of them
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, (list, np.ndarray)):
            return all(plain(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v))
        return isinstance(v, (int, str, np.integer)) and not isinstance(v, bool)

    bit_generator = getattr(np.random, name)()
    try:
        if not plain(state):
            raise ValueError("only integers are allowed in it")
        bit_generator.state = state
        back = json.loads(json.dumps(bit_generator.state, default=_jsonable))
        if back != json.loads(json.dumps(state, default=_jsonable)):
            raise ValueError(f"{name} does not keep it as given")
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as e:
        raise ValueError(f"{where}: field 'rng_state' is not a usable {name} state ({e})") from None
    return np.random.Generator(bit_generator)


def load_checkpoint(path):
    """Validate and read a checkpoint directory -> dict with config (GPTConfig), params,
    optimizer_state (or None), step, rng_state (None, or a state rng_from_state accepts),
    extra (a dict), dir (the step directory read)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r}: not a directory")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        hf = all(os.path.exists(os.path.join(path, f)) for f in ("config.json", "model.safetensors"))
        why = ("it is a HuggingFace GPT-2 directory: load it with GPT.from_pretrained "
               "(or --pretrained)" if hf else "not a numpygpt checkpoint, or no save has completed")
        raise ValueError(f"checkpoint {path!r}: missing file {MANIFEST} ({why})")
    manifest = read_json_object(manifest_path, "checkpoint file")
    _check_manifest(manifest, manifest_path)
    step_dir = os.path.join(path, manifest["dir"])
    for name, meta in manifest["files"].items():
        file_path = os.path.join(step_dir, name)
        if not os.path.isfile(file_path):
            raise ValueError(f"checkpoint file {file_path}: missing")
        size = os.path.getsize(file_path)
        if size != meta["bytes"]:
            raise ValueError(f"checkpoint file {file_path}: {size} bytes, the manifest says "
                             f"{meta['bytes']} (truncated or replaced)")
        if _sha256(file_path) != meta["sha256"]:
            raise ValueError(f"checkpoint file {file_path}: SHA-256 does not match the manifest "
                             f"(corrupted or replaced)")

    config_path = os.path.join(step_dir, "config.json")
    try:
        config = GPTConfig.from_dict(read_json_object(config_path, "checkpoint file"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {config_path}: invalid config ({e})") from None
    check_stored_model(f"checkpoint file {config_path}", config,        # float32 at least
                       manifest["files"]["params.npz"]["bytes"], 4, 4)
    shapes = param_shapes(config)

    params_path = os.path.join(step_dir, "params.npz")
    params = _read_npz(params_path)
    _check_arrays(params_path, params, shapes)

    state_path = os.path.join(step_dir, "state.json")
    state = read_json_object(state_path, "checkpoint file")
    if not _is_int(state.get("step")):
        raise _field(state_path, "step", state.get("step"), "an integer >= 0")
    if state["step"] != manifest["step"]:
        raise _field(state_path, "step", state["step"],
                     f"{manifest['step']}, the step {MANIFEST} names")
    if state.get("rng_state") is not None:
        rng_from_state(state["rng_state"], f"checkpoint file {state_path}")
    extra = state.get("extra", {})
    if not isinstance(extra, dict):
        raise _field(state_path, "extra", extra, "an object")

    optimizer_state = None
    if "optim.npz" in manifest["files"]:
        optim_path = os.path.join(step_dir, "optim.npz")
        arrays = _read_npz(optim_path)
        _check_arrays(optim_path, arrays, {f"{mv}.{k}": s for mv in "mv" for k, s in shapes.items()},
                      non_negative={f"v.{k}" for k in shapes})
        if not _is_int(state.get("optimizer_t")):
            raise _field(state_path, "optimizer_t", state.get("optimizer_t"), "an integer >= 0")
        optimizer_state = {"t": state["optimizer_t"],
                           "m": {k: arrays[f"m.{k}"] for k in shapes},
                           "v": {k: arrays[f"v.{k}"] for k in shapes}}
    return {"config": config, "params": params, "optimizer_state": optimizer_state,
            "step": state["step"], "rng_state": state.get("rng_state"),
            "extra": extra, "dir": step_dir}
