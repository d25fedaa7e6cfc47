"""Issue 11, the command rows: each case a new user hit, through main(argv).

The rule: bad input gets one line `numpygpt <command>: error: ...` naming the argument and the
value, before any work, and exit 2; work already done is never lost (Ctrl-C and SIGTERM save
the step in progress); nothing non-finite is printed as a result; a closed stdout ends the
command quietly. Each test names the row it holds; on the code before the issue each failed
(a traceback after training, an endless loop, a silent garbage result, ...).
"""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import numpygpt as ng
from numpygpt.cli import main
from numpygpt.io import safetensors
from numpygpt.train.checkpoint import LOCK, MANIFEST, load_checkpoint, save_checkpoint

cli_train = sys.modules["numpygpt.cli.train"]

TRAIN = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--seq-len", "16",
         "--batch-size", "2", "--eval-batches", "1", "--eval-every", "100", "--warmup", "1",
         "--sample-tokens", "0"]
SFT = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "4", "--n-test", "6",
       "--eval-every", "100", "--warmup", "1", "--show", "0"]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def error_line(capsys, command):
    """The one stderr line of a refused command (progress lines on stderr are not allowed
    either: a refusal comes before any work)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"numpygpt {command}: error: "), lines[0]
    return lines[0]


def tree(path):
    """Every file under path with its bytes: to show that nothing was written."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    """A checkpoint of 2 steps of `numpygpt train` (copy it before changing it)."""
    out = str(tmp_path_factory.mktemp("trained") / "ck")
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "2", "--out", out]) == 0
    return out


def copy_of(src, tmp_path, name="ck"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def unwritable_dir(tmp_path):
    """A directory nobody can create files in: /proc for root (who ignores permission bits),
    else a folder made read-only."""
    if ROOT:
        return "/proc"
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o500)
    return str(d)


def bad_outs(tmp_path):
    existing = tmp_path / "a_file"
    existing.write_text("keep me")
    return {"an existing file": (str(existing), "exists and is not a directory"),
            "a path under a file": (str(existing / "ck"), "is a file, not a directory"),
            "a system file": (os.devnull, "exists and is not a directory"),
            "an unwritable folder": (os.path.join(unwritable_dir(tmp_path), "numpygpt-ck"),
                                     "not writable"),
            "a name too long": (str(tmp_path / ("x" * 300) / "ck"), "longer than")}


# ---- row: train --out PATH (a file, unwritable) trained until the first save, then a traceback

@pytest.mark.parametrize("case", ["an existing file", "a path under a file", "a system file",
                                  "an unwritable folder", "a name too long"])
def test_train_refuses_a_bad_out_before_any_step(tmp_path, capsys, text_file, case):
    path, words = bad_outs(tmp_path)[case]
    before = tree(tmp_path)
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "2", "--out", path]) == 2
    line = error_line(capsys, "train")
    assert f"--out {path!r}" in line and words in line
    assert tree(tmp_path) == before                     # nothing written, the file untouched


# ---- row: sft --out the same: trained every step, printed its results, then the traceback

@pytest.mark.parametrize("case", ["an existing file", "a path under a file", "a system file",
                                  "an unwritable folder"])
def test_sft_refuses_a_bad_out_before_any_step(tmp_path, capsys, case):
    path, words = bad_outs(tmp_path)[case]
    before = tree(tmp_path)
    assert main(["sft", *SFT, "--steps", "2", "--out", path]) == 2
    line = error_line(capsys, "sft")
    assert f"--out {path!r}" in line and words in line
    assert capsys.readouterr().out == ""                # not a single result printed
    assert tree(tmp_path) == before


def test_out_with_missing_parents_is_created_like_mkdir_p(tmp_path, capsys, text_file):
    out = str(tmp_path / "a" / "b" / "ck")
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "1", "--out", out]) == 0
    assert load_checkpoint(out)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["a"]         # the writability probe left nothing


# ---- row: sft --n-test 1000000000 looped forever (there are 10^6 distinct problems)

@pytest.mark.parametrize("n_test", ["1000000000", "500001"])
def test_sft_n_test_beyond_half_the_problems_is_refused_at_once(capsys, n_test):
    assert main(["sft", "--n-test", n_test]) == 2
    line = error_line(capsys, "sft")
    assert "--n-test" in line and n_test in line and "500,000" in line


def test_sft_help_states_the_n_test_bound(capsys):
    assert main(["sft", "--help"]) == 0
    assert "1 to 500,000" in " ".join(capsys.readouterr().out.split())


# ---- row: Ctrl-C in train before the first save named a checkpoint that did not exist;
#      sft saved nothing on Ctrl-C

def signal_on_first_batch(monkeypatch, name, sig):
    real = getattr(cli_train, name)
    calls = []

    def batch_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == 1:                          # arrives during step 1
            os.kill(os.getpid(), sig)
        return real(*args, **kw)
    monkeypatch.setattr(cli_train, name, batch_then_signal)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_train_interrupted_before_the_first_save_saves_the_step_it_was_in(
        tmp_path, capsys, monkeypatch, text_file, sig, code):
    out = str(tmp_path / "k4")
    signal_on_first_batch(monkeypatch, "get_batch", sig)
    argv = ["train", "--data", text_file, *TRAIN, "--steps", "50", "--save-every", "100"]
    assert main(argv + ["--out", out]) == code
    stdout = capsys.readouterr().out
    assert f"{signal.Signals(sig).name}: stopped after step 1; checkpoint of step 1 saved in {out}" \
        in stdout and f"numpygpt train --resume {out}" in stdout
    assert load_checkpoint(out)["step"] == 1            # it exists, and it is step 1
    monkeypatch.undo()
    assert main(["train", "--resume", out, "--stop-at", "2"]) == 0     # and it continues
    assert load_checkpoint(out)["step"] == 2


def test_train_interrupted_without_out_says_nothing_was_saved(capsys, monkeypatch, text_file):
    signal_on_first_batch(monkeypatch, "get_batch", signal.SIGINT)
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "50"]) == 130
    assert "SIGINT: stopped after step 1; nothing saved (no --out)" in capsys.readouterr().out


def test_interrupted_before_training_starts_says_nothing_was_trained(tmp_path, capsys, monkeypatch,
                                                                     text_file):
    def interrupt(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_train, "load_dataset", interrupt)
    out = str(tmp_path / "k4")
    assert main(["train", "--data", text_file, *TRAIN, "--out", out]) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("numpygpt train: interrupted (SIGINT): before the first step: nothing "
                   "trained, nothing saved")
    assert not os.path.exists(out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sft_interrupted_saves_the_step_it_was_in(tmp_path, capsys, monkeypatch, sig, code):
    out = str(tmp_path / "ft")
    signal_on_first_batch(monkeypatch, "make_batch", sig)
    assert main(["sft", *SFT, "--steps", "50", "--save-every", "100", "--out", out]) == code
    stdout = capsys.readouterr().out
    assert f"stopped after step 1; checkpoint of step 1 saved in {out}" in stdout
    assert f"numpygpt sft --resume {out}" in stdout
    assert load_checkpoint(out)["step"] == 1


# ---- row: --resume with a checkpoint whose rng_state is garbage (hash recomputed), or whose
#      manifest `files` entry is not an object: TypeError / AttributeError tracebacks

def refresh_manifest(path):
    """Re-record the sizes and hashes, as a careful tamperer would."""
    man_path = os.path.join(path, MANIFEST)
    with open(man_path) as f:
        man = json.load(f)
    for name in man["files"]:
        with open(os.path.join(path, man["dir"], name), "rb") as f:
            data = f.read()
        man["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(man_path, "w") as f:
        json.dump(man, f)


def change_state(change):
    def apply(path):
        with open(os.path.join(path, MANIFEST)) as f:
            state_path = os.path.join(path, json.load(f)["dir"], "state.json")
        with open(state_path) as f:
            state = json.load(f)
        change(state)
        with open(state_path, "w") as f:
            json.dump(state, f)
        refresh_manifest(path)
    return apply


def change_manifest(change):
    def apply(path):
        with open(os.path.join(path, MANIFEST)) as f:
            man = json.load(f)
        change(man)
        with open(os.path.join(path, MANIFEST), "w") as f:
            json.dump(man, f)
    return apply


def pcg64(**state):
    return {"bit_generator": "PCG64", "state": {"state": 5, "inc": 7, **state},
            "has_uint32": 0, "uinteger": 0}


CORRUPTIONS = {   # name -> (change, the file named, the field named)
    "rng_state garbage": (change_state(lambda s: s.update(rng_state="garbage")),
                          "state.json", "rng_state"),
    "rng_state out of range": (change_state(lambda s: s.update(rng_state=pcg64(state=-1))),
                               "state.json", "rng_state"),
    "rng_state too large": (change_state(lambda s: s.update(rng_state=pcg64(state=2 ** 200))),
                            "state.json", "rng_state"),
    "rng_state float": (change_state(lambda s: s.update(rng_state=pcg64(state=5.5))),
                        "state.json", "rng_state"),
    "rng_state of another generator": (
        change_state(lambda s: s["rng_state"].update(bit_generator="MT19937")),
        "state.json", "rng_state"),
    "files entry not an object": (change_manifest(lambda m: m["files"].update({"state.json": 5})),
                                  MANIFEST, "files.state.json"),
    "files not an object": (change_manifest(lambda m: m.update(files=[1, 2])), MANIFEST, "files"),
    "files bytes a string": (change_manifest(lambda m: m["files"]["params.npz"].update(bytes="9")),
                             MANIFEST, "files.params.npz.bytes"),
    "files sha256 not hex": (change_manifest(lambda m: m["files"]["params.npz"].update(sha256=7)),
                             MANIFEST, "files.params.npz.sha256"),
    "manifest step a string": (change_manifest(lambda m: m.update(step="2")), MANIFEST, "step"),
    "manifest dir escapes": (change_manifest(lambda m: m.update(dir="../elsewhere")), MANIFEST, "dir"),
    "state step a bool": (change_state(lambda s: s.update(step=True)), "state.json", "step"),
    "state step disagrees": (change_state(lambda s: s.update(step=1)), "state.json", "step"),
    "optimizer_t negative": (change_state(lambda s: s.update(optimizer_t=-3)),
                             "state.json", "optimizer_t"),
    "extra a list": (change_state(lambda s: s.update(extra=[1])), "state.json", "extra"),
    "settings a list": (change_state(lambda s: s["extra"].update(settings=[1])),
                        "state.json", "settings"),
    "settings lr a string": (change_state(lambda s: s["extra"]["settings"].update(lr="x")),
                             "state.json", "lr"),
    "settings steps negative": (change_state(lambda s: s["extra"]["settings"].update(steps=-5)),
                                "state.json", "steps"),
    "settings n_embd not the config's": (
        change_state(lambda s: s["extra"]["settings"].update(n_embd=32)), "state.json", "n_embd"),
    "history losses a string": (change_state(lambda s: s["extra"]["history"].update(losses="abc")),
                                "state.json", "history.losses"),
    "history evals garbage": (change_state(lambda s: s["extra"]["history"].update(evals=5)),
                              "state.json", "history.evals"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_names_the_file_and_the_field_of_a_malformed_checkpoint(tmp_path, capsys, trained,
                                                                       name):
    change, file_name, field = CORRUPTIONS[name]
    ck = copy_of(trained, tmp_path)
    change(ck)
    before = tree(ck)
    assert main(["train", "--resume", ck, "--steps", "4"]) == 2
    line = error_line(capsys, "train")
    assert line.startswith(f"numpygpt train: error: --resume {ck}: ")
    assert file_name in line and field in line, line
    assert tree(ck) == before                           # nothing written


# ---- row: train --resume DIR --n-embd 999 --lr 5 --batch-size 3 (and sft --init DIR
#      --n-embd 16 --n-layer 7): the explicit flags were silently ignored

def test_resume_refuses_every_contradicting_flag_by_name(tmp_path, capsys, trained):
    ck = copy_of(trained, tmp_path)
    before = tree(ck)
    assert main(["train", "--resume", ck, "--n-embd", "999", "--lr", "5", "--batch-size", "3"]) == 2
    line = error_line(capsys, "train")
    for words in ("--n-embd 999", "--lr 5", "--batch-size 3", "n_embd=16", "batch_size=2"):
        assert words in line
    assert tree(ck) == before


def test_resume_applies_and_reports_steps(tmp_path, capsys, trained):
    ck = copy_of(trained, tmp_path)
    assert main(["train", "--resume", ck, "--steps", "3"]) == 0
    assert "--steps 3 (the run had 2)" in capsys.readouterr().out
    assert load_checkpoint(ck)["step"] == 3


def test_sft_init_refuses_contradicting_model_sizes(tmp_path, capsys):
    cfg = ng.GPTConfig(vocab_size=257, n_positions=32, n_embd=8, n_head=2, n_layer=1)
    save_checkpoint(str(tmp_path / "init"), cfg, ng.GPT(cfg).params)
    assert main(["sft", "--init", str(tmp_path / "init"), "--n-embd", "16", "--n-layer", "7"]) == 2
    line = error_line(capsys, "sft")
    assert "--n-embd 16" in line and "--n-layer 7" in line and "n_embd=8" in line
    assert "--init" in line


def test_sft_refuses_init_and_resume_together(tmp_path, capsys, trained):
    assert main(["sft", "--init", trained, "--resume", trained]) == 2
    line = error_line(capsys, "sft")
    assert "--init" in line and "--resume" in line


# ---- row: `dataflow --preset gpt2 | head -1` (and `tour | head`): BrokenPipeError traceback

class ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone: every write fails as a closed pipe does."""

    def writable(self):
        return True

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("argv", [["dataflow", "--preset", "gpt2"], ["tour"],
                                  ["labels", "hello"]])
def test_closed_stdout_ends_quietly_with_141(capsys, monkeypatch, argv):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(argv) == 141
    assert capsys.readouterr().err == ""                # no traceback, no message


def test_closed_pipe_in_a_real_process(tmp_path):
    """`numpygpt dataflow --preset gpt2 | head -1` for real: a pipe whose reader is gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        p = subprocess.run([sys.executable, "-m", "numpygpt", "dataflow", "--preset", "gpt2"],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert p.returncode == 141 and p.stderr == "", p.stderr


def test_training_with_a_closed_stdout_saves_and_stops(tmp_path, capsys, monkeypatch, text_file):
    """The log's reader went away mid-run: the step is saved (work is not lost), exit 141."""
    out = str(tmp_path / "ck")

    class ClosesLater(io.StringIO):
        def write(self, text):
            if "step 2:" in text:                    # the second evaluation's line
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)
    monkeypatch.setattr(sys, "stdout", ClosesLater())
    argv = ["train", "--data", text_file, *TRAIN, "--steps", "50", "--eval-every", "1",
            "--save-every", "100", "--out", out]
    assert main(argv) == 141
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"checkpoint of step 2 saved in {out}" in err
    assert load_checkpoint(out)["step"] == 2


# ---- row: --temperature nan (command): emitted token 0 forever, exit 0

@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_generate_refuses_a_temperature_that_is_not_a_number_or_negative(capsys, trained, value):
    assert main(["generate", "--checkpoint", trained, "--prompt", "the", "--temperature", value,
                 "--max-new-tokens", "3"]) == 2
    line = error_line(capsys, "generate")
    assert "--temperature" in line and value in line
    assert capsys.readouterr().out == ""


# ---- row: GPT.from_pretrained(dir) with a NaN weight loaded; generate --pretrained printed
#      garbage, exit 0

def test_generate_pretrained_with_a_nan_weight_is_refused_naming_the_tensor(tmp_path, capsys):
    cfg = ng.GPTConfig(vocab_size=50, n_positions=16, n_embd=8, n_head=2, n_layer=1)
    ng.GPT(cfg).save_pretrained(str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    tensors, meta = safetensors.load_file(path)
    tensors["transformer.h.0.attn.c_proj.weight"][3, 1] = np.nan
    safetensors.save_file(tensors, path, metadata=meta)
    assert main(["generate", "--pretrained", str(tmp_path), "--prompt-ids", "1,2",
                 "--max-new-tokens", "3"]) == 2
    line = error_line(capsys, "generate")
    assert "--pretrained" in line and "'h.0.attn.c_proj.weight'[3, 1]" in line and "NaN" in line
    assert capsys.readouterr().out == ""


# ---- row: bench-step --warmup 0 was refused, but --help did not say the minimum

def test_bench_step_warmup_bound_is_in_the_help_and_enforced(capsys):
    assert main(["bench-step", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--warmup WARMUP untimed steps first (>= 1" in help_text
    assert main(["bench-step", "--warmup", "0"]) == 2
    line = error_line(capsys, "bench-step")
    assert "--warmup" in line and "integer >= 1" in line and "0" in line


@pytest.mark.parametrize("command", [
    "train", "sft", "generate", "bench-step", "bench-attention", "dataflow", "tour", "labels",
    "gradcheck"])
def test_every_numeric_option_states_its_bounds_in_the_help(capsys, command):
    """Every option whose value is a number says its range (>=, >, 'in [', or 'to')."""
    from numpygpt.cli.commands import build_parser
    _, subparsers = build_parser()
    unbounded = [a.option_strings[0] for a in subparsers[command]._actions
                 if a.type in (int, float) or getattr(a.type, "__name__", "").startswith(
                     ("integer", "number"))
                 if not any(w in (a.help or "") for w in (">=", ">", "in [", "in (", " to "))]
    assert unbounded == []


# ---- row: bench-attention without torch suggested `pip install torch` (the unpinned CUDA build)

def test_bench_attention_without_torch_names_the_pinned_cpu_build(tmp_path, capsys, monkeypatch):
    attention = sys.modules["numpygpt.bench.attention"]
    monkeypatch.setattr(attention, "torch_or_none", lambda: None)
    assert main(["bench-attention", "--min-n", "8", "--max-n", "8", "--repeats", "1",
                 "--n-head", "1", "--head-dim", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pip install torch==2.13.0" in out
    assert "pip install torch)" not in out and "pip install torch\n" not in out


# ---- row: dataflow --preset gpt2 --seq-len 2048 grew n_positions silently and printed
#      125,226,240 params under the title "GPT-2 124M"

def test_dataflow_refuses_a_seq_len_beyond_the_learned_positions(capsys):
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "2048"]) == 2
    line = error_line(capsys, "dataflow")
    assert "--seq-len 2048" in line and "n_positions=1024" in line
    assert capsys.readouterr().out == ""


def test_dataflow_says_when_the_options_changed_the_preset(capsys):
    assert main(["dataflow", "--preset", "gpt2", "--seq-len", "2048", "--n-positions", "2048"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "numpygpt dataflow --preset gpt2, changed by the options given"
    assert "125,226,240" in out and "124M" not in out
    assert main(["dataflow", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "numpygpt dataflow --preset gpt2" and "124,439,808" in out


# ---- row: sft output said "every 1th" and printed one problem twice

def test_sft_examples_are_worded_right_and_never_repeated(capsys):
    assert main(["sft", *SFT[:-2], "--steps", "1", "--show", "6"]) == 0
    out = capsys.readouterr().out
    assert "1th" not in out and "every" not in out
    shown = [line for line in out.splitlines() if "expected" in line]
    assert shown and len(shown) == len(set(shown))
    assert "all 6 held-out examples" in out


def test_show_examples_wording(capsys):
    results = [(f"{i:03d}+000=", str(i)[::-1], "0" if i % 2 else str(i)[::-1]) for i in range(20)]
    cli_train.show_examples(results, 5, "answers are reversed")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "5 of 20 held-out examples (one in 4), then 3 more that are wrong " \
                       "(answers are reversed):"
    assert len(lines[1:]) == len(set(lines[1:])) == 8
    cli_train.show_examples(results, 15)
    assert capsys.readouterr().out.startswith("the first 15 of 20 held-out examples")


def test_sft_on_the_users_records_says_nothing_about_reversed_answers(tmp_path, capsys):
    data = tmp_path / "two.jsonl"
    data.write_text("".join('{"prompt": "%d?", "answer": "%d"}\n' % (i, i % 3) for i in range(40)))
    sft = [a for a in SFT[:-2] if a not in ("--n-test", "6")]
    assert main(["sft", *sft, "--data", str(data), "--steps", "1", "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "held-out examples" in out and "revers" not in out
    assert main(["sft", *SFT[:-2], "--steps", "1", "--show", "3"]) == 0     # the built-in task
    assert "(answers are reversed):" in capsys.readouterr().out


# ---- row: error prefixes `numpygpt dataflow: error:`, `numpygpt: error:`, `bench-step: error:`,
#      `bench-attention: ...` with no "error"

@pytest.mark.parametrize("argv", [
    ["dataflow", "--n-embd", "10", "--n-head", "3"],
    ["bench-step", "--configs", "nope"],
    ["bench-step", "--repeats", "0"],
    ["bench-attention", "--min-n", "64", "--max-n", "8"],
    ["bench-attention", "--memory-budget-gb", "nan"],
    ["generate", "--checkpoint", "/nonexistent", "--prompt", "a"],
    ["train", "--data", "/nonexistent/t.txt"],
    ["sft", "--data", "/nonexistent/d.jsonl"],
    ["labels", ""],
    ["tour", "--sections", "nosuch"],
    ["gradcheck", "--seq-len", "1"],
])
def test_one_error_prefix_for_every_command(capsys, argv):
    assert main(argv) == 2
    error_line(capsys, argv[0])


# ---- beyond the table: the same rule where a new user would go next

def test_train_refuses_sizes_that_cannot_fit_in_memory_before_allocating(capsys):
    assert main(["train", "--n-embd", "1000000"]) == 2
    line = error_line(capsys, "train")
    assert "--n-embd 1000000" in line and "memory" in line and "available" in line


def test_memory_estimate_against_a_small_machine(capsys, monkeypatch, text_file):
    """The estimate is compared with what the machine has: on a 1 MiB machine even a small
    model is refused, naming the size options given, before anything is built."""
    monkeypatch.setattr(sys.modules["numpygpt.cli.common"], "available_memory", lambda: 2 ** 20)
    built = []
    monkeypatch.setattr(cli_train, "GPT", lambda *a, **k: built.append(1))
    assert main(["train", "--data", text_file, *TRAIN, "--n-embd", "64", "--steps", "1"]) == 2
    line = error_line(capsys, "train")
    assert "--n-embd 64" in line and "1.0 MiB available" in line and built == []


def test_sample_prompt_is_checked_before_training(capsys, text_file):
    assert main(["train", "--data", text_file, *TRAIN[:-2], "--sample-prompt", ""]) == 2
    assert "--sample-prompt is empty" in error_line(capsys, "train")
    assert capsys.readouterr().out == ""


def test_stop_at_without_out_is_refused(capsys, text_file):
    assert main(["train", "--data", text_file, *TRAIN, "--stop-at", "1"]) == 2
    assert "--stop-at 1" in error_line(capsys, "train")


def test_a_diverging_learning_rate_stops_before_saving_non_finite_weights(tmp_path, capsys,
                                                                          text_file):
    out = str(tmp_path / "ck")
    argv = ["train", "--data", text_file, *TRAIN, "--steps", "5", "--save-every", "1",
            "--lr", "1e39", "--warmup", "0", "--out", out]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Warning" not in err
    lines = [x for x in err.splitlines() if x.startswith("numpygpt train: error:")]
    assert len(lines) == 1 and "left the floating-point range" in lines[0] and "no checkpoint was saved" in lines[0]
    assert not os.path.exists(os.path.join(out, MANIFEST))          # nothing non-finite saved


def test_argv_that_is_not_utf8_is_named(capsys):
    bad = b"\xff".decode("utf-8", "surrogateescape")          # how Python passes such bytes
    assert main(["labels", bad]) == 2
    assert "PROMPT" in error_line(capsys, "labels")


def test_seed_bounds(capsys):
    assert main(["tour", "--seed", "-1"]) == 2
    assert "--seed" in error_line(capsys, "tour")
    assert main(["dataflow", "--seed", str(2 ** 32)]) == 2
    assert "--seed" in error_line(capsys, "dataflow")


def test_dataflow_counts_never_overflow_and_deep_models_report_at_once(capsys):
    assert main(["dataflow", "--n-embd", "10000000000", "--n-head", "1"]) == 2
    assert "2^63" in error_line(capsys, "dataflow")
    assert main(["dataflow", "--n-layer", "1000000000", "--n-embd", "8", "--n-head", "2"]) == 0
    out = capsys.readouterr().out
    assert "h.0 .. h.999999999 (each)" in out and "872,000,010,264" in out


def test_tour_sections_that_select_nothing_are_refused(capsys):
    assert main(["tour", "--sections", ""]) == 2
    assert "names no section" in error_line(capsys, "tour")
    assert main(["tour", "--sections", "gradcheck", "--skip-gradcheck"]) == 2
    assert "--skip-gradcheck" in error_line(capsys, "tour")


def test_train_into_a_directory_another_live_run_saves_into_fails_at_once_naming_its_pid(
        tmp_path, capsys, text_file):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(str(other.pid))                # as a live run's claim
        assert main(["train", "--data", text_file, *TRAIN, "--steps", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"numpygpt train: error: --out {out}: another numpygpt process "
                              f"(pid {other.pid}) is saving into") and "\n" not in err
        assert os.listdir(out) == [LOCK]                       # nothing written
    finally:
        other.kill()
        other.wait()
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "2", "--out", str(out)]) == 0
    assert LOCK not in os.listdir(out)                         # the dead one's lock taken over


# ---- errors name the option the user typed, never an internal name

@pytest.mark.parametrize("command", [["train", "--steps", "1"], ["sft", "--steps", "1"],
                                     ["dataflow"]])
def test_model_size_errors_name_the_options(capsys, command):
    assert main([*command, "--n-embd", "10", "--n-head", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"numpygpt {command[0]}: error: --n-embd 10 is not divisible by --n-head 3"


def test_a_prompt_too_long_for_the_model_names_the_prompt_option(tmp_path, capsys):
    ng.GPT(ng.GPTConfig(vocab_size=257, n_positions=4, n_embd=8, n_head=2, n_layer=1)) \
        .save_pretrained(tmp_path)
    assert main(["generate", "--pretrained", str(tmp_path), "--prompt-ids", "1,2,3,4,5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("numpygpt generate: error: --prompt-ids has 5 tokens"), err
    assert "prompts[" not in err


def test_resuming_the_other_kind_of_run_names_the_commands(tmp_path, capsys, text_file):
    out = str(tmp_path / "pre")
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["sft", "--resume", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"numpygpt sft: error: --resume {out}: checkpoint {out!r} is of a "
                   f"pre-training (numpygpt train) run, not a fine-tuning (numpygpt sft) one")


def test_train_and_sft_draw_their_loss_curve_into_plots_dir(tmp_path, capsys, text_file):
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "3", "--eval-every", "2",
                 "--plots", str(plots)]) == 0
    assert main(["sft", *SFT, "--steps", "2", "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sft"):
        png = plots / f"{command}_loss.png"
        assert f"loss curve: {png}" in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for what, name in (("activation and gradient histograms", "histograms"),
                           ("update-to-weight ratios", "update_ratio")):
            png = plots / f"{command}_{name}.png"
            assert f"{what}: {png}" in out
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_is_refused_before_training(tmp_path, capsys, monkeypatch,
                                                             text_file):
    import numpygpt.cli.train_setup as setup
    monkeypatch.setattr(setup, "have_matplotlib", lambda: False)
    assert main(["train", "--data", text_file, *TRAIN, "--steps", "3",
                 "--plots", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"numpygpt train: error: --plots {tmp_path / 'p'}: matplotlib is not "
                   f"installed (pip install -e \".[plot]\")")
    assert not (tmp_path / "p").exists()


def test_update_ratios_are_kept_every_step_and_survive_a_resume(tmp_path, capsys, text_file):
    """--plots keeps std(update)/std(weight) of each weight matrix at every step, in the
    checkpoint's history; a resumed run continues the same series."""
    pytest.importorskip("matplotlib")
    from numpygpt.train.resume import load_training_checkpoint
    out, plots = str(tmp_path / "run"), str(tmp_path / "plots")
    argv = ["train", "--data", text_file, *TRAIN, "--steps", "4", "--save-every", "1",
            "--out", out, "--plots", plots]
    assert main([*argv, "--stop-at", "2"]) == 0
    assert main(["train", "--resume", out, "--plots", plots]) == 0
    capsys.readouterr()
    run = load_training_checkpoint(out, "text")
    series = run["history"]["update_ratio"]
    assert [step for step, _ in series] == [1, 2, 3, 4]
    weights = {name for name, p in run["checkpoint"]["params"].items() if p.ndim == 2}
    for _, ratios in series:
        assert set(ratios) == weights and all(0 < r < 1 for r in ratios.values())
