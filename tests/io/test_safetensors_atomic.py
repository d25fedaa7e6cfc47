"""Issue 11's last row: safetensors.save_file promises atomicity (a temporary file, then
os.replace), and nothing tested it. Here a save fails (an OSError at its k-th write) or is
killed (SIGKILL in a child process at its k-th write) at points from its first write to its
last, and the previous file, or HuggingFace directory, must still load bit for bit; the next
completed save leaves no temporary file behind. A save written in place fails these tests.

The failure is injected with sys.setprofile, which sees every call of a file's write(), so
the tests do not depend on how save_file is written."""
import io
import os
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.io import safetensors as sft
from numpygpt.train import save_checkpoint
from numpygpt.train.checkpoint import MANIFEST

CFG = ng.GPTConfig(vocab_size=31, n_positions=8, n_embd=8, n_head=2, n_layer=2)


def file_write(event, arg):
    return (event == "c_call" and getattr(arg, "__name__", "") == "write"
            and isinstance(getattr(arg, "__self__", None), (io.BufferedIOBase, io.RawIOBase,
                                                             io.TextIOWrapper)))


@contextmanager
def fail_at_write(k, exc):
    """Raise exc at the k-th file write made inside the block (1-based)."""
    seen = [0]

    def profile(frame, event, arg):
        if file_write(event, arg):
            seen[0] += 1
            if seen[0] == k:
                raise exc
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def count_writes(save):
    seen = [0]

    def profile(frame, event, arg):
        if file_write(event, arg):
            seen[0] += 1
    sys.setprofile(profile)
    try:
        save()
    finally:
        sys.setprofile(None)
    return seen[0]


def kill_points(n_writes):
    """The first write, one in the middle, the last."""
    return sorted({1, max(1, n_writes // 2), n_writes})


def tensors(seed):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((64, 33)).astype(np.float32),
            "b": rng.integers(-9, 9, size=(1000,), dtype=np.int64),
            "c": rng.standard_normal((7,))}


def same(got, want):
    return set(got) == set(want) and all(
        got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes() for k in want)


def test_a_completed_save_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "w.safetensors"
    sft.save_file(tensors(0), path)
    sft.save_file(tensors(1), path)
    assert same(sft.load_file(path)[0], tensors(1))
    assert os.listdir(tmp_path) == ["w.safetensors"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_previous_file_loadable(tmp_path, exc):
    path = tmp_path / "w.safetensors"
    sft.save_file(tensors(0), path, metadata={"v": "0"})
    n = count_writes(lambda: sft.save_file(tensors(1), tmp_path / "dry.safetensors"))
    os.remove(tmp_path / "dry.safetensors")
    assert n >= 2
    for k in kill_points(n):
        with pytest.raises(type(exc)):
            with fail_at_write(k, exc):
                sft.save_file(tensors(1), path, metadata={"v": "1"})
        got, meta = sft.load_file(path)
        assert same(got, tensors(0)) and meta == {"v": "0"}, f"failed at write {k} of {n}"
        assert os.listdir(tmp_path) == ["w.safetensors"]         # the temporary file is gone


CHILD = r"""
import io, os, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from test_safetensors_atomic import file_write, tensors, CFG
import numpygpt as ng
from numpygpt.io import safetensors as sft
what, target, _, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = [0]
def profile(frame, event, arg):
    if file_write(event, arg):
        seen[0] += 1
        if seen[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
if what == "file":
    data = tensors(1)
    sys.setprofile(profile)
    sft.save_file(data, target, metadata={"v": "1"})
else:
    model = ng.GPT(CFG, seed=1)
    sys.setprofile(profile)
    model.save_pretrained(target)
sys.setprofile(None)
print("not killed")
"""


def killed_save(what, target, k):
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", CHILD, what, str(target), here, str(k)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)


def test_a_killed_save_leaves_the_previous_file_loadable(tmp_path):
    path = tmp_path / "w.safetensors"
    sft.save_file(tensors(0), path, metadata={"v": "0"})
    n = count_writes(lambda: sft.save_file(tensors(1), tmp_path / "dry.safetensors"))
    os.remove(tmp_path / "dry.safetensors")
    for k in kill_points(n):
        killed_save("file", path, k)
        got, meta = sft.load_file(path)
        assert same(got, tensors(0)) and meta == {"v": "0"}, f"killed at write {k} of {n}"
    sft.save_file(tensors(1), path, metadata={"v": "1"})      # the next save cleans up after them
    assert same(sft.load_file(path)[0], tensors(1))
    assert os.listdir(tmp_path) == ["w.safetensors"]


def same_model(path, want):
    got = ng.GPT.from_pretrained(str(path))
    return got.config == want.config and all(np.array_equal(got.params[k], p)
                                             for k, p in want.params.items())


def test_a_failed_or_killed_huggingface_save_leaves_the_previous_directory_loadable(tmp_path):
    """config.json too: both files are replaced only once both are written."""
    old, new = ng.GPT(CFG, seed=0), ng.GPT(CFG, seed=1)
    old.save_pretrained(str(tmp_path / "m"))
    files = sorted(os.listdir(tmp_path / "m"))
    n = count_writes(lambda: new.save_pretrained(str(tmp_path / "dry")))
    assert n >= 3
    for k in kill_points(n):
        with pytest.raises(OSError):
            with fail_at_write(k, OSError(28, "No space left on device")):
                new.save_pretrained(str(tmp_path / "m"))
        assert same_model(tmp_path / "m", old), f"failed at write {k} of {n}"
        assert sorted(os.listdir(tmp_path / "m")) == files
    for k in kill_points(n):
        killed_save("hf", tmp_path / "m", k)
        assert same_model(tmp_path / "m", old), f"killed at write {k} of {n}"
    new.save_pretrained(str(tmp_path / "m"))
    assert same_model(tmp_path / "m", new)
    assert sorted(os.listdir(tmp_path / "m")) == files           # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_and_directories_are_readable_as_the_umask_says(tmp_path, umask):
    """save_pretrained's config.json and model.safetensors, a training checkpoint's step
    directory and files: the modes open() and mkdir() give under the umask, not the 0600
    and 0700 of temporary files."""
    model = ng.GPT(ng.GPTConfig(vocab_size=11, n_positions=4, n_embd=4, n_head=1, n_layer=1))
    before = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "hf")
        save_checkpoint(str(tmp_path / "ck"), model.config, model.params)
    finally:
        os.umask(before)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    for name in ("config.json", "model.safetensors"):
        assert mode(tmp_path / "hf" / name) == 0o666 & ~umask, name
    step_dir = next(p for p in (tmp_path / "ck").iterdir() if p.name.startswith("step-"))
    assert mode(step_dir) == 0o777 & ~umask
    for p in [tmp_path / "ck" / MANIFEST, *step_dir.iterdir()]:
        assert mode(p) == 0o666 & ~umask, p.name
