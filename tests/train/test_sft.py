"""SFT: labels, the lesson's prefill == masked-loss identity, the task, exact match, the command
(which runs the one training loop: checkpoints, --resume, --stop-at, NaN stop)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpygpt as ng
from numpygpt.cli import main
from numpygpt.cli.tour import section_sft
from numpygpt.train import sft
from numpygpt.train.checkpoint import load_checkpoint, save_checkpoint

TOK = ng.ByteTokenizer()
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=6)


def tiny_model(pos_encoding="learned", dtype=np.float64, seed=0):
    cfg = ng.GPTConfig(vocab_size=257, n_positions=64, n_embd=16, n_head=2, n_layer=2,
                       pos_encoding=pos_encoding)
    return ng.GPT(cfg, seed=seed, dtype=dtype)


@given(st.sampled_from(["learned", "rope"]),
       st.lists(st.tuples(text.filter(bool), text), min_size=1, max_size=3), st.integers(0, 3))
@settings(max_examples=10)
def test_prefill_then_score_answer_equals_masked_full_sequence_loss(pos_encoding, examples, seed):
    """The lesson's point 5: 'start predicting where the question ends' by prefilling the prompt
    into the KV cache and scoring answer tokens one at a time gives the same loss as the
    full sequence with the prompt labels set to -100 (right padding in the batch)."""
    model = tiny_model(pos_encoding, seed=seed)
    masked = sft.answer_loss_masked(model, examples)
    prefill = sft.answer_loss_by_prefill(model, examples)
    assert abs(masked - prefill) <= 1e-10 * abs(masked)


def test_masked_loss_counts_answers_and_eot_only():
    """Against an independent computation from full logits, one example at a time."""
    model = tiny_model(seed=1)
    examples = [("12+5=", "71"), ("3+4=", "7")]
    total, count = 0.0, 0
    for p, a in examples:
        ids = np.concatenate([TOK.encode(p), TOK.encode(a), [TOK.eot_id]])
        logits = model.logits(ids[None])[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        for t in range(len(p) - 1, len(ids) - 1):             # last prompt token predicts A1
            total -= logp[t, ids[t + 1]]
            count += 1
    assert count == 3 + 2
    assert sft.answer_loss_masked(model, examples) == pytest.approx(total / count, rel=1e-12)


def test_batch_labels_mask_prompt_and_padding_and_keep_eot():
    batch = sft.make_batch([("1+2=", "3"), ("10+20=", "03")])
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids"}
    ids, labels, mask, pos = (batch[k] for k in ("input_ids", "labels", "attention_mask", "position_ids"))
    E = TOK.eot_id
    assert ids[0].tolist() == [ord(c) for c in "1+2=3"] + [E, E, E, E]   # right-padded with eot id
    assert labels[0].tolist() == [-100, -100, -100, ord("3"), E, -100, -100, -100, -100]
    assert labels[1].tolist() == [-100] * 5 + [ord("0"), ord("3"), E, -100]
    assert mask[0].tolist() == [1] * 6 + [0] * 3 and pos[0].tolist() == list(range(6)) + [0] * 3
    full = sft.make_batch([("1+2=", "3"), ("10+20=", "03")], prompt_mask=False)["labels"]
    assert full[0].tolist() == [ord(c) for c in "+2=3"] + [E] + [-100] * 4
    assert (full[1] != -100).sum() == 8                       # every real position but the last


def test_addition_task_holds_out_its_test_problems():
    task = sft.AdditionTask(n_test=300, seed=0)
    assert sft.addition_example(17, 25) == ("017+025=", "24")
    assert sft.addition_example(999, 1) == ("999+001=", "0001")
    assert sft.addition_example(0, 0) == ("000+000=", "0")
    assert len(set(task.test)) == 300
    held_out = set(task.test)
    drawn = task.sample(20000, np.random.default_rng(0))
    assert not held_out & set(drawn)
    for p, a in drawn[:50]:                                    # answers are right, reversed
        x, y = p[:-1].split("+")
        assert int(a[::-1]) == int(x) + int(y)


def test_exact_match_requires_the_whole_answer_and_a_stop(monkeypatch):
    examples = [("1+1=", "2"), ("5+5=", "01"), ("9+9=", "81"), ("2+2=", "4")]
    fake = [TOK.encode("2"), TOK.encode("0"), TOK.encode("81"), TOK.encode("44")]
    # "44": a right answer not followed by eot comes out longer than the answer
    monkeypatch.setattr(sft, "generate", lambda *a, **k: fake)
    acc, results = sft.exact_match(tiny_model(), examples)
    assert acc == 0.5
    assert [got == a for _, a, got in results] == [True, False, True, False]


def test_jsonl_task_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": f"a{i}"}) for i in range(20)))
    task = sft.JsonlTask(str(path), val_fraction=0.25, seed=0)
    assert len(task.test) == 5 and len(task.train) == 15
    assert not set(task.test) & set(task.train)
    for content, message in [('{"prompt": "a", "answer": "b"}\n{"prompt": "a"', "d.jsonl:2: invalid JSON"),
                             ('{"prompt": "a", "answer": 3}', 'd.jsonl:1: "answer" must be a string'),
                             ('[1, 2]', "d.jsonl:1: expected an object"),
                             ('{"prompt": "", "answer": "x"}', 'd.jsonl:1: "prompt" is empty')]:
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            sft.read_jsonl(str(path))
    with pytest.raises(ValueError, match="no such file"):
        sft.read_jsonl(str(tmp_path / "missing.jsonl"))


def run_cli(argv):
    return main(["sft", *argv])


def error_lines(capsys):
    """The command's error lines (stderr also carries progress lines while training)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("numpygpt sft: error: ")]


TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "8", "--steps", "4",
        "--n-test", "10", "--eval-every", "4", "--warmup", "1"]
TINY_JSONL = [a for i, a in enumerate(TINY)            # --n-test belongs to the addition task
              if "--n-test" not in TINY[max(i - 1, 0):i + 1]]


@pytest.mark.parametrize("extra", [[], ["--no-prompt-mask"]])
def test_cli_runs_and_reports_accuracy(capsys, tmp_path, extra):
    assert run_cli(TINY + extra + ["--out", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "before: held-out exact match" in out and "after 4 steps" in out
    assert ("NO prompt mask" in out) == bool(extra)
    assert ng.GPT is not None and (tmp_path / "ck" / "checkpoint.json").exists()
    assert load_checkpoint(str(tmp_path / "ck"))["step"] == 4


def test_cli_on_a_jsonl_file(capsys, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}?", "answer": str(i % 3)}) for i in range(30)))
    assert run_cli(TINY_JSONL + ["--data", str(path)]) == 0
    assert "27 training / 3 held-out records" in capsys.readouterr().out
    assert run_cli(TINY + ["--data", str(path)]) == 2       # --n-test is the addition task's:
    lines = error_lines(capsys)                                 # refused, not ignored
    assert len(lines) == 1 and "--n-test 10" in lines[0] and "--val-fraction" in lines[0]


def test_cli_user_errors(capsys, tmp_path):
    assert run_cli(TINY_JSONL + ["--data", str(tmp_path / "none.jsonl")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "no such file" in lines[0]
    assert run_cli(TINY + ["--steps", "0"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--steps" in lines[0] and "integer >= 1" in lines[0]


def test_tour_section_runs_and_loss_falls():
    lines = []
    section_sft(lines.append, seed=0)
    text = "\n".join(lines)
    assert "-100" in text and "<|eot|>" in text
    losses = [float(line.split()[-1]) for line in lines if line.startswith("  step")]
    assert losses[-1] < losses[0]


def test_cli_starts_from_a_train_checkpoint(capsys, tmp_path):
    cfg = ng.GPTConfig(vocab_size=257, n_positions=32, n_embd=16, n_head=2, n_layer=1)
    start = ng.GPT(cfg, seed=7)
    save_checkpoint(str(tmp_path / "pre"), cfg, start.params, step=10)
    assert run_cli(TINY + ["--init", str(tmp_path / "pre"), "--out", str(tmp_path / "ft")]) == 0
    capsys.readouterr()
    tuned = load_checkpoint(str(tmp_path / "ft"))
    assert tuned["config"] == cfg
    assert not np.array_equal(tuned["params"]["wte.weight"], start.params["wte.weight"])
    small = ng.GPTConfig(vocab_size=257, n_positions=4, n_embd=16, n_head=2, n_layer=1)
    save_checkpoint(str(tmp_path / "short"), small, ng.GPT(small).params)
    assert run_cli(TINY + ["--init", str(tmp_path / "short")]) == 2     # sequences too long
    lines = error_lines(capsys)
    assert len(lines) == 1 and "n_positions=4 is shorter than the longest example" in lines[0]


# ---- SFT runs through the one training loop: --stop-at, --resume, --save-every, NaN stop ----

def test_cli_stop_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    argv = TINY[:TINY.index("--steps")] + ["--steps", "6", "--n-test", "10", "--eval-every", "2",
                                          "--warmup", "1"]
    assert run_cli(argv + ["--out", str(tmp_path / "full"), "--show", "0"]) == 0
    assert run_cli(argv + ["--out", str(tmp_path / "part"), "--stop-at", "3", "--show", "0"]) == 0
    assert load_checkpoint(str(tmp_path / "part"))["step"] == 3
    capsys.readouterr()
    assert run_cli(["--resume", str(tmp_path / "part"), "--show", "0"]) == 0
    assert "at step 3" in capsys.readouterr().out
    full, part = (load_checkpoint(str(tmp_path / d)) for d in ("full", "part"))
    assert part["step"] == full["step"] == 6
    assert part["extra"]["history"] == full["extra"]["history"]        # losses and exact match
    assert part["rng_state"] == full["rng_state"]
    for k, p in full["params"].items():
        assert np.array_equal(part["params"][k], p)


def test_cli_save_every_and_resume_refusals(tmp_path, capsys):
    ck = str(tmp_path / "ck")
    assert run_cli(TINY + ["--out", ck, "--save-every", "2", "--stop-at", "3", "--show", "0"]) == 0
    assert load_checkpoint(ck)["step"] == 3
    capsys.readouterr()
    assert run_cli(TINY + ["--out", ck]) == 2                # another run into the same --out
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--out" in lines[0] and "--resume" in lines[0]
    for option, value in (("--n-embd", "32"), ("--batch-size", "4"), ("--n-test", "20")):
        assert run_cli(["--resume", ck, option, value]) == 2
        lines = error_lines(capsys)
        assert len(lines) == 1 and f"{option} {value}" in lines[0]
    assert run_cli(["--resume", ck, "--no-prompt-mask"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "prompt" in lines[0]
    assert load_checkpoint(ck)["step"] == 3                   # untouched by the refusals
    assert run_cli(["--resume", ck, "--steps", "5", "--show", "0"]) == 0       # extends the run
    assert "--steps 5" in capsys.readouterr().out                              # and says so
    assert load_checkpoint(ck)["step"] == 5


def test_cli_nonfinite_loss_exits_1_keeping_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    real = ng.GPT.loss_and_grads
    calls = []

    def poisoned(self, *args, **kw):
        loss, grads = real(self, *args, **kw)
        calls.append(1)
        return (float("nan") if len(calls) == 3 else loss), grads     # the 3rd step
    monkeypatch.setattr(ng.GPT, "loss_and_grads", poisoned)
    ck = str(tmp_path / "ck")
    assert run_cli(TINY + ["--out", ck, "--save-every", "1"]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("numpygpt sft: error: step 3: ") and "loss is nan" in lines[0]
    assert f"step 2, is kept in {ck}" in lines[0]
    ckpt = load_checkpoint(ck)
    assert ckpt["step"] == 2 and all(np.isfinite(p).all() for p in ckpt["params"].values())


@pytest.mark.parametrize("n_test", [0, 500_001, 10 ** 9, 2.5, True])
def test_addition_task_refuses_more_held_out_problems_than_half(n_test):
    with pytest.raises(ValueError, match="1,000,000 distinct problems"):
        sft.AdditionTask(n_test=n_test)
    assert sft.AdditionTask.n_problems() == 1_000_000
