"""numpygpt checkpoints: exact round trip, validation naming the file, atomic saves."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.train import checkpoint as ck
from numpygpt.train.checkpoint import LOCK, claimed
from numpygpt.train.optim import AdamW

CFG = ng.GPTConfig(vocab_size=13, n_positions=8, n_embd=8, n_head=2, n_layer=1)


def make_state(seed=0):
    model = ng.GPT(CFG, seed=seed)
    opt = AdamW(model.params)
    grads = {k: np.full_like(v, 0.5) for k, v in model.params.items()}
    opt.step(model.params, grads, lr=1e-2)
    rng = np.random.default_rng(seed)
    rng.random(3)
    return model, opt, rng


def save(path, seed=0, step=7):
    model, opt, rng = make_state(seed)
    ck.save_checkpoint(path, CFG, model.params, opt.state_dict(), step, rng.bit_generator.state,
                       {"note": "hello"})
    return model, opt, rng


def step_dir(path):
    with open(os.path.join(path, ck.MANIFEST)) as f:
        return os.path.join(path, json.load(f)["dir"])


def refresh_manifest(path):
    """Re-record sizes and hashes, as if the files had been written by a save: lets a test
    reach the checks that come after the manifest's."""
    man_path = os.path.join(path, ck.MANIFEST)
    with open(man_path) as f:
        man = json.load(f)
    for name in man["files"]:
        p = os.path.join(path, man["dir"], name)
        with open(p, "rb") as f:
            data = f.read()
        man["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(man_path, "w") as f:
        json.dump(man, f)


def rewrite_npz(path, name, change):
    """Load step-dir/name (.npz) as a dict, let change(arrays) edit it, write it back and
    refresh the manifest: a file that passes the hash check but is wrong inside."""
    p = os.path.join(step_dir(path), name)
    arrays = dict(np.load(p))
    change(arrays)
    np.savez(p, **arrays)
    refresh_manifest(path)


def test_round_trip_is_exact(tmp_path):
    model, opt, rng = save(tmp_path)
    got = ck.load_checkpoint(str(tmp_path))
    assert got["config"] == CFG and got["step"] == 7 and got["extra"] == {"note": "hello"}
    for k, v in model.params.items():
        assert got["params"][k].dtype == v.dtype and np.array_equal(got["params"][k], v)
        assert np.array_equal(got["optimizer_state"]["m"][k], opt.m[k])
        assert np.array_equal(got["optimizer_state"]["v"][k], opt.v[k])
    assert got["optimizer_state"]["t"] == 1
    restored = np.random.default_rng()
    restored.bit_generator.state = got["rng_state"]
    assert np.array_equal(restored.random(5), rng.random(5))     # the stream continues


def test_a_second_save_replaces_the_first_and_cleans_up(tmp_path):
    save(tmp_path, seed=0, step=1)
    model, _, _ = save(tmp_path, seed=1, step=2)
    got = ck.load_checkpoint(str(tmp_path))
    assert got["step"] == 2 and np.array_equal(got["params"]["wte.weight"], model.params["wte.weight"])
    assert len([e for e in os.listdir(tmp_path) if e.startswith("step-")]) == 1


def test_missing_manifest(tmp_path):
    with pytest.raises(ValueError, match="missing file checkpoint.json"):
        ck.load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        ck.load_checkpoint(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["params.npz", "optim.npz", "config.json", "state.json"])
def test_missing_file_is_named(tmp_path, name):
    save(tmp_path)
    os.remove(os.path.join(step_dir(tmp_path), name))
    with pytest.raises(ValueError, match=f"{name}: missing"):
        ck.load_checkpoint(str(tmp_path))


@pytest.mark.parametrize("name", ["params.npz", "optim.npz", "config.json"])
def test_truncated_file_is_named(tmp_path, name):
    save(tmp_path)
    p = os.path.join(step_dir(tmp_path), name)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=rf"{name}: {size // 2} bytes, the manifest says {size}"):
        ck.load_checkpoint(str(tmp_path))
    # with the manifest made to agree, the file's own reader still refuses it, naming it
    refresh_manifest(tmp_path)
    with pytest.raises(ValueError, match=name):
        ck.load_checkpoint(str(tmp_path))


def test_corrupted_bytes_are_caught_by_the_hash(tmp_path):
    save(tmp_path)
    p = os.path.join(step_dir(tmp_path), "params.npz")
    with open(p, "r+b") as f:
        f.seek(os.path.getsize(p) - 40)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match="params.npz: SHA-256 does not match"):
        ck.load_checkpoint(str(tmp_path))


def test_wrong_shapes_are_named(tmp_path):
    save(tmp_path)
    rewrite_npz(tmp_path, "params.npz",
                lambda a: a.update({"h.0.mlp.c_fc.weight": np.zeros((8, 31), np.float32)}))
    with pytest.raises(ValueError, match=r"params.npz: tensor 'h.0.mlp.c_fc.weight' has shape "
                                         r"\(8, 31\), config.json implies \(8, 32\)"):
        ck.load_checkpoint(str(tmp_path))


def test_missing_tensor_and_optimizer_mismatch_are_named(tmp_path):
    save(tmp_path)
    rewrite_npz(tmp_path, "optim.npz", lambda a: a.pop("v.wte.weight"))
    with pytest.raises(ValueError, match=r"optim.npz: .*missing \['v.wte.weight'\]"):
        ck.load_checkpoint(str(tmp_path))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    save(tmp_path)
    rewrite_npz(tmp_path, "params.npz",
                lambda a: a.update({"wte.weight": np.array([{"evil": 1}], dtype=object)}))
    with pytest.raises(ValueError, match="params.npz: not a readable .npz"):
        ck.load_checkpoint(str(tmp_path))


def test_bad_config_is_named(tmp_path):
    save(tmp_path)
    with open(os.path.join(step_dir(tmp_path), "config.json"), "w") as f:
        json.dump({**CFG.to_dict(), "n_embd": 7}, f)
    refresh_manifest(tmp_path)
    with pytest.raises(ValueError, match="config.json: invalid config"):
        ck.load_checkpoint(str(tmp_path))


def test_nan_parameters_are_refused(tmp_path):
    save(tmp_path)
    rewrite_npz(tmp_path, "params.npz", lambda a: a.update({"ln_f.bias": a["ln_f.bias"] * np.nan}))
    with pytest.raises(ValueError, match="'ln_f.bias' holds NaN"):
        ck.load_checkpoint(str(tmp_path))


def test_crash_at_the_commit_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    old, _, _ = save(tmp_path, seed=0, step=1)

    def crash(*args):
        raise OSError("simulated kill")
    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="simulated kill"):
        save(tmp_path, seed=1, step=2)
    monkeypatch.undo()
    got = ck.load_checkpoint(str(tmp_path))
    assert got["step"] == 1
    assert np.array_equal(got["params"]["wte.weight"], old.params["wte.weight"])


def test_crash_midway_through_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    old, _, _ = save(tmp_path, seed=0, step=1)
    real = ck._write_npz
    calls = []

    def write_then_crash(path, arrays):
        calls.append(path)
        if len(calls) == 2:                        # params.npz written, optim.npz half-written
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 partial")
            raise KeyboardInterrupt("simulated kill")
        real(path, arrays)
    monkeypatch.setattr(ck, "_write_npz", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, seed=1, step=2)
    monkeypatch.undo()
    got = ck.load_checkpoint(str(tmp_path))
    assert got["step"] == 1
    assert np.array_equal(got["params"]["wte.weight"], old.params["wte.weight"])
    save(tmp_path, seed=2, step=3)                 # the next good save removes the debris
    assert len([e for e in os.listdir(tmp_path) if e.startswith("step-")]) == 1
    assert ck.load_checkpoint(str(tmp_path))["step"] == 3


def test_a_directory_claimed_by_a_live_process_is_refused_naming_its_pid_and_a_dead_ones_is_not(
        tmp_path):
    """claimed(): of two processes saving into one directory, the second fails at once with
    the first one's pid; a lock left by a process that died is taken over; the lock goes
    when the claim ends."""
    other = [sys.executable, "-c", "from numpygpt.train.checkpoint import claimed\n"
             f"with claimed({str(tmp_path)!r}): print('claimed')"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with claimed(str(tmp_path)):
        assert (tmp_path / LOCK).read_text() == str(os.getpid())
        r = subprocess.run(other, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0 and f"(pid {os.getpid()})" in r.stderr, r.stderr
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(str(dead.pid))                # a run that was killed
    r = subprocess.run(other, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout == "claimed\n", r.stderr
    assert not (tmp_path / LOCK).exists()


def test_sliding_window_is_saved_and_loaded(tmp_path):
    cfg = ng.GPTConfig(vocab_size=13, n_positions=8, n_embd=8, n_head=2, n_layer=1,
                       sliding_window=3)
    model = ng.GPT(cfg, seed=0)
    ck.save_checkpoint(str(tmp_path), cfg, model.params)
    got = ck.load_checkpoint(str(tmp_path))
    assert got["config"].sliding_window == 3 and got["config"] == cfg
    saved = json.loads(next(tmp_path.glob("step-*/config.json")).read_text())
    assert saved["sliding_window"] == 3


def test_a_checkpoint_from_before_the_window_loads_as_full_attention():
    d = CFG.to_dict()
    del d["sliding_window"]
    assert ng.GPTConfig.from_dict(d).sliding_window is None


def test_grouped_query_model_round_trips_with_its_n_kv_head(tmp_path):
    """config.json keeps n_kv_head; c_attn's (C, C+2KD) shape is checked against it."""
    cfg = ng.GPTConfig(vocab_size=13, n_positions=8, n_embd=8, n_head=4, n_layer=1, n_kv_head=2)
    model = ng.GPT(cfg, seed=3)
    ck.save_checkpoint(tmp_path / "ck", cfg, model.params)
    back = ck.load_checkpoint(tmp_path / "ck")
    assert back["config"] == cfg and back["config"].n_kv_head == 2
    assert back["params"]["h.0.attn.c_attn.weight"].shape == (8, 8 + 2 * 2 * 2)
    for name, p in model.params.items():
        np.testing.assert_array_equal(back["params"][name], p)
