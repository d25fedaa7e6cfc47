"""Issue 11, the API rows: the same cases through the library, for Python callers. A bad
argument is a ValueError naming it (and the value, and where) before any work; nothing
non-finite is returned as if it were a result (NonFiniteError, a ValueError, names the layer);
checkpoints are validated field by field; an interrupted save leaves no debris for good.
On the code before the issue each of these failed (IndexError from deep inside, a silently
wrapped id, token 0 forever, a NaN model loaded, inf with only a warning, 3.9 printed for an
overflowed float32 model, a TypeError traceback, a stale temporary file)."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.checks import NonFiniteError
from numpygpt.decode import KVCache
from numpygpt.io import safetensors
from numpygpt.train import clip_grad_norm, global_grad_norm, load_checkpoint, save_checkpoint
from numpygpt.train import checkpoint as ck
from numpygpt.train.checkpoint import rng_from_state
from numpygpt.train.loop import TrainSettings, load_training_checkpoint
from numpygpt.train.optim import AdamW
from numpygpt.train.sft import AdditionTask

CFG = ng.GPTConfig(vocab_size=17, n_positions=8, n_embd=8, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def model():
    return ng.GPT(CFG, seed=0)


# ---- rows: generate(...) with prompt ids >= V (IndexError from deep inside), with -1
#      (silently the last embedding row), --temperature nan (token 0 forever)

@pytest.mark.parametrize("prompts, words", [
    ([[1, 2, 17]], "prompts[0][2] = 17 is outside [0, vocab_size=17)"),
    ([[3], [1, 99, 2]], "prompts[1][1] = 99 is outside [0, vocab_size=17)"),
    ([[-1, 2]], "prompts[0][0] = -1 is outside [0, vocab_size=17)"),
    ([[1.5]], "prompts[0] must be an integer array"),
    ([[]], "prompts[0] is empty"),
    ([], "prompts must be a non-empty list"),
    ([[1] * 9], "prompts[0] has 9 tokens, more than n_positions=8"),
])
def test_generate_refuses_bad_prompts_naming_the_id(model, prompts, words):
    with pytest.raises(ValueError) as e:
        ng.generate(model, prompts, 3)
    assert words in str(e.value)


@pytest.mark.parametrize("kw, words", [
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0, got -1"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"eot_id": -3}, "eot_id"),
])
def test_generate_refuses_bad_sampling_arguments(model, kw, words):
    args = {"max_new_tokens": 3, **kw}
    with pytest.raises(ValueError) as e:
        ng.generate(model, [[1, 2]], **args)
    assert words in str(e.value)


def test_a_long_rope_generation_allocates_as_it_goes():
    """max_new_tokens is a bound, not an allocation: the cache grows with the tokens made."""
    cfg = ng.GPTConfig(vocab_size=17, n_positions=8, n_embd=8, n_head=2, n_layer=1,
                       pos_encoding="rope")
    cache = KVCache(cfg, 1, 10 ** 12, initial=4)          # 10^12 slots would need terabytes
    assert cache.capacity == 4
    cache.extend(None, 3)
    cache.extend(None, 5)
    assert cache.length == 8 and cache.capacity == 8
    m = ng.GPT(cfg, seed=0)
    out = ng.generate(m, [[1, 2]], 40, eot_id=None)[0]
    assert len(out) == 40


# ---- rows: GPT.from_pretrained(dir) with a NaN weight loaded; an F64 weight of 1e300 became
#      inf as float32 with only a NumPy overflow warning

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


# ---- row: a float32 model whose weights overflow in the forward (wte x 1e30) printed loss
#      3.9 as if fine (float64 gives 2.8e29), with only NumPy warnings

def test_float32_overflow_in_the_forward_is_an_error_naming_the_layer_and_block():
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
            assert "float32" in str(e.value) and "in h.0" in str(e.value)
            assert "layernorm_forward" in str(e.value)


# ---- row: clip_grad_norm with the norm exactly max_norm was not clipped; PyTorch scales by
#      max_norm / (norm + 1e-6) whenever that is < 1

@pytest.mark.parametrize("norm_over_max", [1 - 1e-3, 1 - 1e-7, 1.0, 1 + 1e-9, 1 + 1e-3, 10.0])
@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 5.0])
def test_clip_grad_norm_at_and_near_max_norm_follows_the_pytorch_formula(max_norm, norm_over_max):
    rng = np.random.default_rng(0)
    g = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    scale0 = max_norm * norm_over_max / global_grad_norm(g)
    g = {k: v * scale0 for k, v in g.items()}
    before = {k: v.copy() for k, v in g.items()}
    norm = clip_grad_norm(g, max_norm)
    coef = min(1.0, max_norm / (norm + 1e-6))             # torch.nn.utils.clip_grad_norm_
    for k in g:
        np.testing.assert_allclose(g[k], before[k] * coef, rtol=1e-15, atol=0)
    if norm_over_max == 1.0:
        assert coef < 1                                   # at max_norm: scaled, just under it


def test_clip_grad_norm_equals_torch_at_and_near_max_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for max_norm in (1e-3, 1.0, 5.0):
        for ratio in (1 - 1e-3, 1 - 1e-7, 1.0, 1 + 1e-3):
            g = rng.standard_normal(7)
            g *= max_norm * ratio / np.linalg.norm(g)
            ours = {"g": g.copy()}
            clip_grad_norm(ours, max_norm)
            t = torch.zeros(7, dtype=torch.float64, requires_grad=True)
            t.grad = torch.from_numpy(g.copy())
            torch.nn.utils.clip_grad_norm_([t], max_norm)
            np.testing.assert_allclose(ours["g"], t.grad.numpy(), rtol=1e-14, atol=0)


# ---- row: sft --n-test 1000000000 looped forever: the library refuses too

@pytest.mark.parametrize("n_test", [0, 500_001, 10 ** 9, 2.5, True])
def test_addition_task_refuses_more_held_out_problems_than_half(n_test):
    with pytest.raises(ValueError, match="1,000,000 distinct problems"):
        AdditionTask(n_test=n_test)
    assert AdditionTask.n_problems() == 1_000_000


# ---- row: --resume with a garbage rng_state (hash recomputed), or a manifest whose `files`
#      entry is not an object: TypeError / AttributeError tracebacks

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


# ---- row: an interrupted save left .checkpoint.json.tmp-PID files that later saves never removed

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
    model = ng.GPT(CFG)
    with pytest.raises(ValueError, match="cannot be saved as JSON"):
        save_checkpoint(str(tmp_path / "ck"), CFG, model.params, extra={"f": object()})
    assert not (tmp_path / "ck").exists()


# ---- row: `python tests/test_oracle.py` without torch exited 1 with a `Skipped:` traceback

def test_the_oracle_script_without_torch_says_it_skipped_and_exits_0(tmp_path):
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_oracle.py")
    p = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stdout and "torch" in p.stdout
    assert "Traceback" not in p.stderr and "Skipped" not in p.stderr
