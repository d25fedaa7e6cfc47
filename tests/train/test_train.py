"""Tokenizer round trip, data, the training loop: exact resumption, NaN stop, stop signals,
the command."""
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt.cli import main
from numpygpt.cli.tour import section_train
from numpygpt.checks import NonFiniteError
from numpygpt.train import data
from numpygpt.train.checkpoint import load_checkpoint
from numpygpt.train.loop import mean_loss, train_loop
from numpygpt.train.settings import TrainSettings
from numpygpt.train.optim import AdamW

TOK = ng.ByteTokenizer()


@given(st.text())
def test_byte_tokenizer_round_trips_any_text(s):
    ids = TOK.encode(s)
    assert ids.dtype == np.int64 and ((ids >= 0) & (ids < 256)).all()
    assert TOK.decode(ids) == s
    with_eot = TOK.encode(s, add_eot=True)
    assert with_eot[-1] == TOK.eot_id and TOK.decode(with_eot, stop_at_eot=True) == s


def test_default_text_is_the_pydoc_topics():
    text = data.default_text()
    assert 300_000 < len(text.encode()) < 2_000_000 and "assert" in text


def test_unigram_entropy_by_hand():
    ids = np.array([97, 97, 98, 99])                            # p = 1/2, 1/4, 1/4
    assert data.unigram_entropy(ids) == pytest.approx(0.5 * math.log(2) + 2 * 0.25 * math.log(4))
    assert data.unigram_entropy(np.full(10, 5)) == 0.0


def test_batches_are_windows_with_shifted_labels():
    ids = np.arange(1000, dtype=np.uint16) % 251
    batch = data.get_batch(ids, 4, 16, np.random.default_rng(0))
    assert set(batch) == {"input_ids", "labels"}
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    for row, lab in zip(x, y):
        start = int(np.flatnonzero(ids == row[0])[0])          # windows come from the text
        assert np.array_equal(row, ids[start:start + 16]) and lab[-1] == ids[start + 16]


def test_split_and_data_errors(tmp_path):
    train_ids, val_ids = data.train_val_split(np.arange(100), 0.1)
    assert len(train_ids) == 90 and val_ids[0] == 90
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfedef")
    with pytest.raises(ValueError, match=r"not UTF-8 text \(invalid byte 0xff at byte offset 3\)"):
        data.load_text(str(bad))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.load_text(str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="no such file"):
        data.load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "short.txt").write_text("x" * 100)
    with pytest.raises(ValueError, match="validation split has 10 tokens"):
        data.load_dataset(str(tmp_path / "short.txt"), 0.1, seq_len=32)


SETTINGS = dict(n_layer=1, n_head=2, n_embd=16, seq_len=16, batch_size=2, steps=6,
                lr=1e-2, min_lr=1e-3, warmup=2, eval_every=2, eval_batches=1, save_every=100)
IDS = np.random.default_rng(1).integers(97, 123, 4000).astype(np.uint16)
TRAIN_IDS, VAL_IDS = IDS[:3000], IDS[3000:]
QUIET = lambda _: None


def text_batches(s):
    """The batches of a pre-training run on TRAIN_IDS, and its validation on fixed VAL_IDS
    batches: (next_batch(rng), evaluate(model))."""
    val = data.eval_batches(VAL_IDS, s.batch_size, s.seq_len, s.eval_batches)
    return (lambda rng: data.get_batch(TRAIN_IDS, s.batch_size, s.seq_len, rng),
            lambda model: {"val loss": mean_loss(model, val)})


def setup(seed=0, **kw):
    s = TrainSettings(**{**SETTINGS, **kw}, seed=seed)
    model = ng.GPT(s.model_config(n_positions=s.seq_len), seed=seed)
    opt = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    next_batch, evaluate = text_batches(s)
    return s, model, opt, next_batch, evaluate, np.random.default_rng(seed)


def resume(path):
    ckpt = load_checkpoint(path)
    s = TrainSettings.from_dict(ckpt["extra"]["settings"])
    model = ng.GPT(ckpt["config"], params=ckpt["params"])
    opt = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    opt.load_state_dict(ckpt["optimizer_state"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["rng_state"]
    return s, model, opt, rng, ckpt["step"]


def resume_to_the_end(path):
    """The run resumed from the checkpoint in path and trained to its end:
    (the step it resumed at, train_loop's result, the model)."""
    s, model, opt, rng, step = resume(path)
    next_batch, evaluate = text_batches(s)
    result = train_loop(model, opt, s, next_batch, rng, start_step=step, evaluate=evaluate,
                        log=QUIET)
    return step, result, model


def test_resuming_gives_identical_losses(tmp_path):
    s, model, opt, next_batch, evaluate, rng = setup()
    full = train_loop(model, opt, s, next_batch, rng, evaluate=evaluate, log=QUIET)
    assert len(full["losses"]) == 6

    s, m1, o1, next_batch, evaluate, rng = setup()
    first = train_loop(m1, o1, s, next_batch, rng, out=str(tmp_path), evaluate=evaluate,
                       stop_at=3, log=QUIET)
    assert first["step"] == 3 and first["saved"] == 3 and first["stopped_by"] is None
    del m1, o1, rng                                            # only the checkpoint survives
    step, second, m2 = resume_to_the_end(str(tmp_path))
    assert step == 3
    assert first["losses"] + second["losses"] == full["losses"]      # bit-identical
    assert second["evals"] == [v for v in full["evals"] if v[0] > 3]
    for k, p in model.params.items():
        assert np.array_equal(m2.params[k], p)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_the_step_saves_and_the_run_resumes_exactly(tmp_path, sig):
    """SIGINT/SIGTERM during a step: the step is finished (never half an update), saved, and
    the loop returns; resuming from that checkpoint gives the uninterrupted run bit for bit."""
    s, model, opt, next_batch, evaluate, rng = setup()
    full = train_loop(model, opt, s, next_batch, rng, evaluate=evaluate, log=QUIET)

    s, m1, o1, next_batch, evaluate, rng = setup()
    calls = []

    def next_batch_then_signal(rng):
        calls.append(1)
        if len(calls) == 3:                                    # arrives during the 3rd step
            os.kill(os.getpid(), sig)
        return next_batch(rng)
    handler_before = signal.getsignal(sig)
    first = train_loop(m1, o1, s, next_batch_then_signal, rng, out=str(tmp_path),
                       evaluate=evaluate, log=QUIET)
    assert signal.getsignal(sig) == handler_before             # the handlers are restored
    assert first["stopped_by"] == signal.Signals(sig).name
    assert first["step"] == 3 and first["saved"] == 3 and len(first["losses"]) == 3
    del m1, o1, rng
    step, second, m2 = resume_to_the_end(str(tmp_path))
    assert step == 3
    assert first["losses"] + second["losses"] == full["losses"]      # bit-identical
    for k, p in model.params.items():
        assert np.array_equal(m2.params[k], p)


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nonfinite_loss_or_gradient_stops_and_keeps_the_last_checkpoint(tmp_path, poison):
    s, model, opt, next_batch, evaluate, rng = setup(save_every=2)
    real = model.loss_and_grads
    calls = []

    def poisoned(**batch):
        calls.append(1)
        loss, grads = real(**batch)
        if len(calls) == 5:                                    # the 5th step (step index 4)
            if poison == "loss":
                loss = float("nan")
            else:
                grads["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return loss, grads
    model.loss_and_grads = poisoned
    with pytest.raises(NonFiniteError) as err:
        train_loop(model, opt, s, next_batch, rng, out=str(tmp_path), evaluate=evaluate,
                   log=QUIET)
    message = str(err.value)
    # the loop numbers steps from 1, as its log lines and checkpoints do ("step 4" = 4 steps
    # done): the 5th step is "step 5", and the last good checkpoint is the one after step 4
    what = "loss is nan" if poison == "loss" else "gradient norm is inf"
    assert message.startswith("step 5: ") and what in message.split(";")[0]
    assert f"the last good checkpoint, step 4, is kept in {tmp_path}" in message
    ckpt = load_checkpoint(str(tmp_path))                      # loads, finite, step 4
    assert ckpt["step"] == 4
    assert all(np.isfinite(p).all() for p in model.params.values())   # no update with nan


def test_tour_section_loss_falls():
    lines = []
    section_train(lines.append, seed=0)
    losses = [float(line.split()[-1]) for line in lines if line.startswith("  step")]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5


def run_cli(argv):
    return main(["train", *argv])


def one_line_error(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("numpygpt train: error: ")
    return lines[0]


def test_cli_trains_saves_resumes(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, numpy gpt. " * 200)
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--sample-tokens", "10", "--warmup", "1"]
    assert run_cli(argv + ["--steps", "4", "--out", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "unigram baseline" in out and "final val loss" in out and "sample" in out
    assert load_checkpoint(str(tmp_path / "ck"))["step"] == 4
    assert run_cli(["--resume", str(tmp_path / "ck"), "--steps", "6", "--sample-tokens", "0"]) == 0
    out = capsys.readouterr().out
    resumed = [line for line in out.splitlines() if "resuming from" in line]
    assert len(resumed) == 1 and "--steps 6" in resumed[0]     # the extension is reported
    assert load_checkpoint(str(tmp_path / "ck"))["step"] == 6
    assert run_cli(["--resume", str(tmp_path / "ck"), "--sample-tokens", "0"]) == 2
    assert "not below --steps 6" in one_line_error(capsys)


@pytest.mark.parametrize("argv, words", [
    (["--data", "/nonexistent/x.txt"], ["no such file"]),
    (["--steps", "0"], ["--steps", "integer >= 1", "0"]),
    (["--seq-len", "0"], ["--seq-len", "integer >= 1", "0"]),
    (["--n-embd", "30", "--n-head", "4"], ["not divisible"]),
    (["--resume", "/nonexistent"], ["not a directory"]),
])
def test_cli_user_errors(capsys, argv, words):
    assert run_cli(argv) == 2
    line = one_line_error(capsys)
    for w in words:
        assert w in line


def test_cli_refuses_an_out_holding_a_checkpoint_and_options_contradicting_a_resume(tmp_path, capsys):
    """Deliberate in the restructure: --out never overwrites another run's checkpoint, and an
    option given with --resume must agree with the run (except --steps, which extends it)."""
    text = tmp_path / "t.txt"
    text.write_text("hello world, numpy gpt. " * 200)
    ck = str(tmp_path / "ck")
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--sample-tokens", "0", "--warmup", "1"]
    assert run_cli(argv + ["--steps", "2", "--out", ck]) == 0
    capsys.readouterr()
    assert run_cli(argv + ["--steps", "2", "--out", ck]) == 2
    line = one_line_error(capsys)
    assert "--out" in line and ck in line and "--resume" in line
    for option, value in (("--n-embd", "32"), ("--seq-len", "8"), ("--lr", "0.5"), ("--seed", "3")):
        assert run_cli(["--resume", ck, "--steps", "4", option, value]) == 2
        line = one_line_error(capsys)
        assert f"{option} {value}" in line
    ckpt = load_checkpoint(ck)
    assert ckpt["step"] == 2 and len(ckpt["extra"]["history"]["losses"]) == 2   # untouched
    assert run_cli(["--resume", ck, "--out", ck, "--steps", "3", "--seed", "0"]) == 0  # agreeing: fine
    assert load_checkpoint(ck)["step"] == 3


def test_cli_nonfinite_loss_exits_1_keeping_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    real = ng.GPT.loss_and_grads
    calls = []

    def poisoned(self, *args, **kw):
        loss, grads = real(self, *args, **kw)
        calls.append(1)
        return (float("inf") if len(calls) == 3 else loss), grads     # the 3rd step
    monkeypatch.setattr(ng.GPT, "loss_and_grads", poisoned)
    text = tmp_path / "t.txt"
    text.write_text("hello world, numpy gpt. " * 200)
    ck = str(tmp_path / "ck")
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-batches", "1", "--sample-tokens", "0",
            "--steps", "6", "--save-every", "1", "--out", ck]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("numpygpt train: error: ")]
    assert len(lines) == 1                  # (stderr also carries the progress lines)
    assert lines[0].startswith("numpygpt train: error: step 3: ") and "loss is inf" in lines[0]
    assert f"step 2, is kept in {ck}" in lines[0]
    ckpt = load_checkpoint(ck)
    assert ckpt["step"] == 2 and len(ckpt["extra"]["history"]["losses"]) == 2


def test_cli_stop_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--sample-tokens", "0", "--warmup", "2", "--steps", "6"]
    assert run_cli(argv + ["--out", str(tmp_path / "full")]) == 0
    assert run_cli(argv + ["--out", str(tmp_path / "part"), "--stop-at", "3"]) == 0
    assert load_checkpoint(str(tmp_path / "part"))["step"] == 3
    assert run_cli(["--resume", str(tmp_path / "part"), "--sample-tokens", "0"]) == 0
    full, part = (load_checkpoint(str(tmp_path / d)) for d in ("full", "part"))
    assert part["step"] == 6
    assert part["extra"]["history"]["losses"] == full["extra"]["history"]["losses"]
    for k, p in full["params"].items():
        assert np.array_equal(part["params"][k], p)


def numpygpt_process(argv, **kw):
    root = os.path.dirname(os.path.dirname(os.path.abspath(ng.__file__)))
    return subprocess.Popen([sys.executable, "-m", "numpygpt", *argv], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_cli_sigterm_saves_and_another_process_resumes_as_if_uninterrupted(tmp_path):
    """Across processes: a run killed with SIGTERM mid-training saves the step it finishes and
    exits 143; a new process resumes it, and the result equals one uninterrupted process."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    argv = ["train", "--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-every", "5", "--eval-batches", "1",
            "--sample-tokens", "0", "--warmup", "2", "--steps", "100000", "--save-every", "100000"]
    p = numpygpt_process(argv + ["--out", str(tmp_path / "part")])
    try:
        while True:                                   # the first progress line: training runs
            line = p.stderr.readline()
            assert line, f"the run ended before training started: {p.communicate()}"
            if line.startswith("step "):
                break
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "SIGTERM" in out and "Traceback" not in err
    stopped = load_checkpoint(str(tmp_path / "part"))["step"]
    assert stopped >= 1
    end = stopped + 3
    resumed = numpygpt_process(["train", "--resume", str(tmp_path / "part"), "--stop-at", str(end),
                                "--sample-tokens", "0"])
    uninterrupted = numpygpt_process(argv + ["--out", str(tmp_path / "full"), "--stop-at", str(end)])
    for q in (resumed, uninterrupted):
        out, err = q.communicate(timeout=120)
        assert q.returncode == 0, err
    full, part = (load_checkpoint(str(tmp_path / d)) for d in ("full", "part"))
    assert part["step"] == full["step"] == end
    assert part["extra"]["history"] == full["extra"]["history"]       # losses and evaluations
    assert part["rng_state"] == full["rng_state"]
    for k, p in full["params"].items():
        assert np.array_equal(part["params"][k], p)
        assert np.array_equal(part["optimizer_state"]["m"][k], full["optimizer_state"]["m"][k])


def test_evaluating_more_often_does_not_change_training():
    runs = []
    for every in (1, 4):
        s, model, opt, next_batch, evaluate, rng = setup(eval_every=every)
        runs.append(train_loop(model, opt, s, next_batch, rng, evaluate=evaluate,
                               log=QUIET)["losses"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("steps, eval_every, stop_at, expected", [
    (7, 3, None, [3, 6, 7]),           # each multiple, then the final step once
    (6, 3, None, [3, 6]),              # the final step is a multiple: evaluated once
    (7, 3, 4, [3, 6, 7]),              # resumed from step 4: the same steps
    (7, 3, 3, [3, 6, 7]),              # resumed exactly at an evaluation
    (5, 10, None, [5]),                # eval_every beyond the run: the final step only
])
def test_evaluation_is_at_each_multiple_of_eval_every_and_once_at_the_final_step(
        tmp_path, steps, eval_every, stop_at, expected):
    s, model, opt, next_batch, evaluate, rng = setup(steps=steps, eval_every=eval_every)
    evaluated = []
    counting = lambda m: evaluated.append(None) or evaluate(m)
    result = train_loop(model, opt, s, next_batch, rng, out=str(tmp_path), evaluate=counting,
                        stop_at=stop_at, log=QUIET)
    if stop_at is not None:
        s, model, opt, rng, step = resume(str(tmp_path))
        next_batch, evaluate = text_batches(s)
        later = train_loop(model, opt, s, next_batch, rng, start_step=step, evaluate=counting,
                           log=QUIET)
        result["evals"] += later["evals"]
    assert [step for step, _ in result["evals"]] == expected
    assert len(evaluated) == len(expected)


def test_the_time_left_waits_for_the_first_steps_and_is_estimated_from_the_later_ones(monkeypatch):
    from numpygpt.train import loop
    s, model, opt, next_batch, evaluate, rng = setup(steps=loop.ETA_AFTER + 3)
    lines = []
    progress = type("Lines", (), {"update": lambda self, line: lines.append(line),
                                  "done": lambda self: None})()
    train_loop(model, opt, s, next_batch, rng, log=QUIET, progress=progress)
    assert len(lines) == s.steps
    assert not any("remaining" in line for line in lines[:loop.ETA_AFTER])
    assert all("remaining" in line for line in lines[loop.ETA_AFTER:])
    # 95 s for the first ETA_AFTER steps, then 1 s a step: 90 steps left take 90 s
    monkeypatch.setattr(loop.time, "perf_counter", lambda: 1000.0)
    line = loop.progress_line(loop.ETA_AFTER + 5, 0, loop.ETA_AFTER + 95, 1.0, 1e-3,
                              t_start=1000.0 - 100, t_settled=1000.0 - 5)
    assert line.endswith("| remaining 1m30s"), line


def test_a_windowed_model_trains_resumes_and_refuses_another_window(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--steps", "4", "--sliding-window", "8", "--seq-len", "32", "--n-layer", "1",
            "--n-embd", "16", "--batch-size", "2", "--eval-every", "2", "--save-every", "2",
            "--out", out]
    assert main(argv[:2] + ["2"] + argv[3:]) == 0                  # 2 of the 4 steps
    assert ng.train.load_checkpoint(out)["config"].sliding_window == 8
    assert main(["train", "--resume", out, "--steps", "4", "--sliding-window", "4"]) == 2
    assert "--sliding-window 4 contradicts the run" in capsys.readouterr().err
    assert main(["train", "--resume", out, "--steps", "4"]) == 0
    assert ng.train.load_checkpoint(out)["step"] == 4
    with pytest.raises(ValueError, match="sliding_window must be an integer >= 1 or null, got 0"):
        ng.train.TrainSettings(sliding_window=0)


def test_a_grouped_query_model_trains_resumes_and_refuses_another_head_count(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--steps", "2", "--n-head", "4", "--n-kv-head", "2", "--seq-len", "16",
            "--n-layer", "1", "--n-embd", "16", "--batch-size", "2", "--eval-every", "2",
            "--save-every", "2", "--sample-tokens", "0", "--out", out]
    assert main(argv) == 0
    config = ng.train.load_checkpoint(out)["config"]
    assert config.n_kv_head == 2 and config.kv_heads == 2
    assert main(["train", "--resume", out, "--steps", "4", "--n-kv-head", "1"]) == 2
    assert "--n-kv-head 1 contradicts the run" in capsys.readouterr().err
    assert main(["train", "--resume", out, "--steps", "4", "--n-kv-head", "2"]) == 0
    assert ng.train.load_checkpoint(out)["step"] == 4
    assert main(["train", *argv[1:-2], "--n-kv-head", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--n-kv-head 3 does not divide --n-head 4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_kv_head must be an integer >= 1 or null, got 0"):
        ng.train.TrainSettings(n_kv_head=0)
    assert ng.train.TrainSettings(n_head=4, n_kv_head=4).n_kv_head is None   # K = H: GPT-2's

