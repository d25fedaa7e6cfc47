"""Tokenizer round trip, data, the training loop: exact resumption, NaN stop, the command."""
import argparse
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import numpygpt as ng
from numpygpt import data, train
from numpygpt.checkpoint import load_checkpoint
from numpygpt.optim import AdamW

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
    x, y = data.get_batch(ids, 4, 16, np.random.default_rng(0))
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
        data.load_dataset(str(tmp_path / "short.txt"), 0.1, block_size=32)


SETTINGS = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, steps=6,
                lr=1e-2, min_lr=1e-3, warmup=2, eval_every=2, eval_batches=1, save_every=100)


def setup(seed=0, **kw):
    s = train.TrainSettings(**{**SETTINGS, **kw}, seed=seed)
    ids = np.random.default_rng(1).integers(97, 123, 4000).astype(np.uint16)
    model = ng.GPT(s.model_config(), seed=seed)
    opt = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    return s, model, opt, ids[:3000], ids[3000:], np.random.default_rng(seed)


def resume(path):
    ckpt = load_checkpoint(path)
    s = train.TrainSettings.from_dict(ckpt["extra"]["settings"])
    model = ng.GPT(ckpt["config"], params=ckpt["params"])
    opt = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay)
    opt.load_state_dict(ckpt["optimizer_state"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["rng_state"]
    return s, model, opt, rng, ckpt["step"]


def test_resuming_gives_identical_losses(tmp_path):
    s, model, opt, tr, va, rng = setup()
    full = train.train_loop(model, opt, s, tr, va, rng, log=lambda _: None)
    assert len(full["losses"]) == 6

    s, m1, o1, tr, va, rng = setup()
    first = train.train_loop(m1, o1, s, tr, va, rng, out=str(tmp_path), stop_at=3,
                             log=lambda _: None)
    del m1, o1, rng                                            # only the checkpoint survives
    s2, m2, o2, rng2, step = resume(str(tmp_path))
    assert step == 3
    second = train.train_loop(m2, o2, s2, tr, va, rng2, start_step=step, log=lambda _: None)
    assert first["losses"] + second["losses"] == full["losses"]      # bit-identical
    assert second["val"] == [v for v in full["val"] if v[0] > 3]
    for k, p in model.params.items():
        assert np.array_equal(m2.params[k], p)


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nonfinite_loss_or_gradient_stops_and_keeps_the_last_checkpoint(tmp_path, poison):
    s, model, opt, tr, va, rng = setup(save_every=2)
    real = model.loss_and_grads
    calls = []

    def poisoned(x, y, **kw):
        calls.append(1)
        loss, grads = real(x, y, **kw)
        if len(calls) == 5:                                    # the 5th step (step index 4)
            if poison == "loss":
                loss = float("nan")
            else:
                grads["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return loss, grads
    model.loss_and_grads = poisoned
    with pytest.raises(train.NonFiniteError) as err:
        train.train_loop(model, opt, s, tr, va, rng, out=str(tmp_path), log=lambda _: None)
    message = str(err.value)
    assert message.startswith("step 4: " + ("loss is nan" if poison == "loss" else "gradient norm is inf"))
    assert f"the last good checkpoint, step 4, is kept in {tmp_path}" in message
    ckpt = load_checkpoint(str(tmp_path))                      # loads, finite, step 4
    assert ckpt["step"] == 4
    assert all(np.isfinite(p).all() for p in model.params.values())   # no update with nan


def test_tour_section_loss_falls():
    lines = []
    train.tour_section(lines.append, seed=0)
    losses = [float(line.split()[-1]) for line in lines if line.startswith("  step")]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5


def run_cli(argv):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(p.parse_args(argv))


def test_cli_trains_saves_resumes(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, numpy gpt. " * 200)
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--block-size", "16", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--sample-tokens", "10", "--warmup", "1"]
    assert run_cli(argv + ["--steps", "4", "--out", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "unigram baseline" in out and "final val loss" in out and "sample" in out
    assert load_checkpoint(str(tmp_path / "ck"))["step"] == 4
    assert run_cli(["--resume", str(tmp_path / "ck"), "--steps", "6", "--sample-tokens", "0"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert load_checkpoint(str(tmp_path / "ck"))["step"] == 6
    assert run_cli(["--resume", str(tmp_path / "ck"), "--sample-tokens", "0"]) == 2
    assert "not below --steps 6" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--data", "/nonexistent/x.txt"], "no such file"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--n-embd", "30", "--n-head", "4"], "not divisible"),
    (["--resume", "/nonexistent"], "not a directory"),
])
def test_cli_user_errors(capsys, argv, message):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_stop_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    argv = ["--data", str(text), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--block-size", "16", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
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


def test_evaluating_more_often_does_not_change_training():
    runs = []
    for every in (1, 4):
        s, model, opt, tr, va, rng = setup(eval_every=every)
        runs.append(train.train_loop(model, opt, s, tr, va, rng, log=lambda _: None)["losses"])
    assert runs[0] == runs[1]
