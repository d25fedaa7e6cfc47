"""A training checkpoint is trusted only after every field is checked: a garbage RNG state,
a manifest entry of the wrong type, settings that disagree with the config, any JSON in any
field give a ValueError naming the file and the field; saves leave no debris."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.train import load_checkpoint, save_checkpoint
from numpygpt.train import checkpoint as ck
from numpygpt.train.checkpoint import rng_from_state
from numpygpt.train.optim import AdamW
from numpygpt.train.resume import load_training_checkpoint
from numpygpt.train.settings import TrainSettings

BYTES = ng.GPTConfig(vocab_size=257, n_positions=8, n_embd=8, n_head=2, n_layer=2)


def saved_run(path, rng_state=None, step=3):
    """A checkpoint as train_loop saves it (byte vocabulary, settings, history, RNG)."""
    model = ng.GPT(BYTES, seed=0)
    opt = AdamW(model.params)
    opt.step(model.params, {k: np.full_like(v, 0.1) for k, v in model.params.items()}, 1e-3)
    rng = np.random.default_rng(5)
    rng.random(4)
    settings = TrainSettings(n_layer=2, n_head=2, n_embd=8, seq_len=8, steps=10)
    save_checkpoint(str(path), BYTES, model.params, opt.state_dict(), step,
                    rng.bit_generator.state if rng_state is None else rng_state,
                    {"settings": settings.to_dict(), "history": {"losses": [1.0] * step,
                                                                 "evals": []}})
    return rng


def rewrite(path, file_name, change, refresh=True):
    with open(os.path.join(path, ck.MANIFEST)) as f:
        man = json.load(f)
    target = os.path.join(path, ck.MANIFEST) if file_name == ck.MANIFEST else \
        os.path.join(path, man["dir"], file_name)
    with open(target) as f:
        obj = json.load(f)
    change(obj)
    with open(target, "w") as f:
        json.dump(obj, f)
    if refresh and file_name != ck.MANIFEST:
        with open(os.path.join(path, ck.MANIFEST)) as f:
            man = json.load(f)
        for name in man["files"]:
            with open(os.path.join(path, man["dir"], name), "rb") as f:
                data = f.read()
            man["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        with open(os.path.join(path, ck.MANIFEST), "w") as f:
            json.dump(man, f)


@pytest.mark.parametrize("file_name, change, field", [
    ("state.json", lambda s: s.update(rng_state="garbage"), "rng_state"),
    ("state.json", lambda s: s.update(rng_state=[1, 2]), "rng_state"),
    ("state.json", lambda s: s["rng_state"]["state"].update(state=-1), "rng_state"),
    ("state.json", lambda s: s["rng_state"]["state"].update(inc="x"), "rng_state"),
    ("state.json", lambda s: s["rng_state"].pop("state"), "rng_state"),
    ("state.json", lambda s: s.update(step="3"), "step"),
    ("state.json", lambda s: s.update(optimizer_t=1.5), "optimizer_t"),
    ("state.json", lambda s: s.update(extra="x"), "extra"),
    (ck.MANIFEST, lambda m: m["files"].update({"params.npz": "abc"}), "files.params.npz"),
    (ck.MANIFEST, lambda m: m["files"].update({"evil.pkl": {"bytes": 1, "sha256": "0" * 64}}),
     "files"),
    (ck.MANIFEST, lambda m: m.update(files=None), "files"),
    (ck.MANIFEST, lambda m: m.update(dir=5), "dir"),
    (ck.MANIFEST, lambda m: m.update(step=-1), "step"),
])
def test_load_checkpoint_names_the_file_and_the_field(tmp_path, file_name, change, field):
    saved_run(tmp_path)
    rewrite(tmp_path, file_name, change)
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(tmp_path))
    message = str(e.value)
    assert file_name in message and field in message and "\n" not in message, message


def test_negative_second_moments_are_refused(tmp_path):
    saved_run(tmp_path)
    with open(os.path.join(tmp_path, ck.MANIFEST)) as f:
        step_dir = os.path.join(tmp_path, json.load(f)["dir"])
    arrays = dict(np.load(os.path.join(step_dir, "optim.npz")))
    arrays["v.ln_f.weight"][0] = -1.0
    np.savez(os.path.join(step_dir, "optim.npz"), **arrays)
    rewrite(tmp_path, "state.json", lambda s: None)          # refresh the manifest only
    with pytest.raises(ValueError, match=r"optim.npz: tensor 'v.ln_f.weight' holds negative"):
        load_checkpoint(str(tmp_path))


def test_a_saved_rng_state_continues_the_stream_exactly(tmp_path):
    rng = saved_run(tmp_path)
    restored = rng_from_state(load_checkpoint(str(tmp_path))["rng_state"])
    assert np.array_equal(restored.random(5), rng.random(5))
    mt = np.random.Generator(np.random.MT19937(3))           # any NumPy bit generator
    mt.random(2)
    saved_run(tmp_path / "mt", rng_state=mt.bit_generator.state)
    again = rng_from_state(load_checkpoint(str(tmp_path / "mt"))["rng_state"])
    assert np.array_equal(again.random(5), mt.random(5))


@pytest.mark.parametrize("state, words", [
    ("garbage", "not a NumPy bit generator state"),
    ({"bit_generator": "PCG64", "state": {"state": 2 ** 200, "inc": 1},
      "has_uint32": 0, "uinteger": 0}, "not a usable PCG64 state"),
    ({"bit_generator": "PCG64", "state": {"state": 5.5, "inc": 1},
      "has_uint32": 0, "uinteger": 0}, "not a usable PCG64 state"),
    ({"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 0}}, "not a usable MT19937"),
    ({"bit_generator": "os.system", "state": {}}, "not a NumPy bit generator state"),
])
def test_a_valid_looking_but_unusable_rng_state_is_a_value_error(state, words):
    with pytest.raises(ValueError, match=words):
        rng_from_state(state, "somewhere")


def test_training_checkpoint_settings_history_and_config_must_agree(tmp_path):
    saved_run(tmp_path)
    run = load_training_checkpoint(str(tmp_path), "text")
    assert run["settings"].steps == 10 and run["checkpoint"]["step"] == 3
    for change, words in [
            (lambda s: s["extra"]["settings"].update(n_head=4), "settings.n_head=4 disagrees"),
            (lambda s: s["extra"]["settings"].update(seq_len=9), "seq_len=9 is longer than"),
            (lambda s: s["extra"]["settings"].update(beta2=1.0), "beta2"),
            (lambda s: s["extra"]["settings"].update(task="rl"), "task"),
            (lambda s: s["extra"]["settings"].update(nope=1), "unknown keys ['nope']"),
            (lambda s: s["extra"]["history"].update(losses=[1.0, float("nan")]), "history.losses"),
            (lambda s: s["extra"]["history"].update(evals=[[1, {"loss": "x"}]]), "history.evals[0]"),
            (lambda s: s.update(rng_state=None), "no rng_state")]:
        shutil.rmtree(tmp_path)
        saved_run(tmp_path)
        rewrite(tmp_path, "state.json", change)
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_training_checkpoint(str(tmp_path), "text")


def test_any_json_in_any_field_is_a_value_error_or_a_usable_checkpoint(tmp_path):
    """A small property: every field of state.json and the manifest replaced by values of
    every JSON type; loading either works (and the run can be continued) or raises a
    ValueError naming the file, never another exception."""
    values = [None, True, -1, 0, 2 ** 70, 1.5, float("nan"), "", "x", [], [1], {}, {"a": 1}]
    saved_run(tmp_path / "orig")
    outcomes = []
    fields = {"state.json": ["step", "rng_state", "extra", "optimizer_t"],
              ck.MANIFEST: ["format", "version", "step", "dir", "files"]}
    for file_name, keys in fields.items():
        for key in keys:
            for value in values:
                path = tmp_path / "case"
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(tmp_path / "orig", path)
                rewrite(path, file_name, lambda d: d.update({key: value}))
                try:
                    run = load_training_checkpoint(str(path), "text")
                except ValueError as e:
                    assert str(path) in str(e) and "\n" not in str(e)
                    outcomes.append("refused")
                else:
                    AdamW(ng.GPT(BYTES).params).load_state_dict(run["checkpoint"]["optimizer_state"])
                    run["rng"].random(3)
                    outcomes.append("usable")
    assert {"refused", "usable"} <= set(outcomes)          # both branches were taken


# ---- the temporary manifests of saves that were killed are removed by the next save

def test_the_next_save_removes_temporary_manifests_of_killed_saves(tmp_path, monkeypatch):
    saved_run(tmp_path, step=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".{ck.MANIFEST}.tmp-{dead}"          # a save killed before its commit
    stale.write_text("{}")

    def crash(*args):
        raise OSError("simulated kill at the commit")
    monkeypatch.setattr(ck.os, "replace", crash)             # and one of ours, interrupted
    with pytest.raises(OSError):
        saved_run(tmp_path, step=2)
    monkeypatch.undo()
    assert load_checkpoint(str(tmp_path))["step"] == 1
    assert (tmp_path / f".{ck.MANIFEST}.tmp-{os.getpid()}").exists()
    saved_run(tmp_path, step=3)
    assert load_checkpoint(str(tmp_path))["step"] == 3
    leftovers = [e for e in os.listdir(tmp_path) if e != ck.MANIFEST and not e.startswith("step-")]
    assert leftovers == []
    assert len([e for e in os.listdir(tmp_path) if e.startswith("step-")]) == 1


def test_a_temporary_manifest_of_a_live_process_is_left_alone(tmp_path):
    saved_run(tmp_path, step=1)
    live = tmp_path / f".{ck.MANIFEST}.tmp-1"               # pid 1 always runs
    live.write_text("{}")
    saved_run(tmp_path, step=2)
    assert live.exists()


def test_save_checkpoint_refuses_non_finite_arrays_keeping_the_previous_one(tmp_path):
    saved_run(tmp_path, step=1)
    model = ng.GPT(BYTES)
    model.params["h.1.ln_2.bias"][0] = np.inf
    with pytest.raises(ValueError, match=r"params\['h.1.ln_2.bias'\] holds NaN or inf"):
        save_checkpoint(str(tmp_path), BYTES, model.params, step=2)
    assert load_checkpoint(str(tmp_path))["step"] == 1
    assert len([e for e in os.listdir(tmp_path) if e.startswith("step-")]) == 1


def test_save_checkpoint_refuses_unserialisable_extra_before_writing(tmp_path):
    model = ng.GPT(BYTES)
    with pytest.raises(ValueError, match="cannot be saved as JSON"):
        save_checkpoint(str(tmp_path / "ck"), BYTES, model.params, extra={"f": object()})
    assert not (tmp_path / "ck").exists()



@pytest.mark.parametrize("dir_field", ["step-x/../../elsewhere", "../elsewhere", "{absolute}"])
def test_a_manifest_dir_that_is_not_a_plain_name_beside_it_is_refused_even_with_matching_hashes(
        tmp_path, dir_field):
    """A manifest pointing outside its checkpoint, at files whose sizes and hashes it records
    correctly, must not load them: `dir` names a step-... directory beside the manifest."""
    saved_run(tmp_path / "ck")
    with open(tmp_path / "ck" / ck.MANIFEST) as f:
        man = json.load(f)
    shutil.copytree(tmp_path / "ck" / man["dir"], tmp_path / "elsewhere")
    os.mkdir(tmp_path / "ck" / "step-x")              # so that step-x/../.. resolves
    man["dir"] = dir_field.format(absolute=tmp_path / "elsewhere")   # hashes still match
    with open(tmp_path / "ck" / ck.MANIFEST, "w") as f:
        json.dump(man, f)
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "ck")
    assert f"{ck.MANIFEST}: field 'dir'" in str(e.value), str(e.value)
