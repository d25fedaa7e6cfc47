"""Random argument vectors thrown at every subcommand (issue 11): values of every type, signs,
zero, huge, NaN and inf, paths that are files, missing, unwritable, checkpoints and not. For
each: the exit code is 0, 1 or 2; stderr never holds a traceback; an exit 2 wrote nothing.

The functions that start real work (the training loop's model, the benchmarks, generation's
cache, the gradient checks, the tour's sections) are replaced by one that raises STARTED:
reaching one means every check before the work passed, which the property counts as exit 0.
So what runs is the whole validation path of each command, and nothing heavy."""
import contextlib
import io
import os
import shutil
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import numpygpt as ng
from numpygpt.cli import main
from numpygpt.train.checkpoint import save_checkpoint

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class STARTED(BaseException):
    """Validation passed and the real work began (a BaseException: nothing may swallow it)."""


def started(*args, **kwargs):
    raise STARTED


HEAVY = [   # module, attribute: where each command's real work starts
    ("numpygpt.cli.tour", "tour"),
    ("numpygpt.cli.train", "GPT"),                    # train, sft: after every check
    ("numpygpt.decode.generate", "KVCache"),          # generate: after generate()'s own checks
    ("numpygpt.cli.gradcheck", "check_layer"),
    ("numpygpt.cli.gradcheck", "model_check"),
    ("numpygpt.cli.gradcheck", "run_bug"),
    ("numpygpt.cli.gradcheck", "run_zoo"),
    ("numpygpt.cli.gradcheck", "sweep_eps"),
    ("numpygpt.cli.bench", "sweep"),
    ("numpygpt.bench.decode", "sweep"),               # bench-decode
    ("numpygpt.cli.bench", "bench_workload"),
    ("numpygpt.cli.bench", "bench_loss"),
    ("numpygpt.cli.exercise", "write_course"),
    ("numpygpt.cli.exercise", "check_course"),
]

INTS = ["-1", "0", "1", "2", "3", "7", "64", str(10 ** 30), "-0", "2.5", "1e3", "nan", "abc", ""]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "-0.0", "1e-300", "0.5", "1", "3", "1e308", "1e999",
          "abc", ""]
TEXTS = ["", "The ", "a\tb\n", b"\xff".decode("utf-8", "surrogateescape"), "-", "é" * 3,
         "x" * 300]
IDS = ["1,2", "", "a", "-1", "1,,2", "256", "99999999999999999999999", " 3 , 4 "]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Inputs of every kind, in one folder (the fuzzed commands run in it)."""
    w = tmp_path_factory.mktemp("fuzz")
    (w / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    (w / "tiny.txt").write_text("abc")
    (w / "empty.txt").write_text("")
    (w / "binary.bin").write_bytes(bytes(range(256)))
    (w / "data.jsonl").write_text("\n".join('{"prompt": "%d?", "answer": "%d"}' % (i, i % 3)
                                            for i in range(12)))
    (w / "bad.jsonl").write_text('{"prompt": 1}\n')
    (w / "a_dir").mkdir()
    cfg = ng.GPTConfig(vocab_size=257, n_positions=32, n_embd=8, n_head=2, n_layer=1)
    assert main(["train", "--data", str(w / "text.txt"), "--n-layer", "1", "--n-embd", "8",
                 "--n-head", "2", "--seq-len", "16", "--batch-size", "2", "--steps", "2",
                 "--eval-batches", "1", "--sample-tokens", "0", "--out", str(w / "ckpt")]) == 0
    save_checkpoint(str(w / "init"), cfg, ng.GPT(cfg).params)
    ng.GPT(ng.GPTConfig(vocab_size=50, n_positions=16, n_embd=8, n_head=2, n_layer=1)
           ).save_pretrained(str(w / "hf"))
    if ROOT:
        unwritable = "/proc/numpygpt-fuzz/out"
    else:
        (w / "readonly").mkdir()
        (w / "readonly").chmod(0o500)
        unwritable = str(w / "readonly" / "out")
    paths_in = [str(w / n) for n in ("text.txt", "tiny.txt", "empty.txt", "binary.bin",
                                     "data.jsonl", "bad.jsonl", "a_dir", "ckpt", "init", "hf",
                                     "missing", "text.txt/below")] + ["", os.devnull]
    paths_out = [str(w / "new_out"), str(w / "deep" / "er" / "out"), str(w / "a_dir"),
                 str(w / "text.txt"), str(w / "text.txt" / "x"), str(w / "ckpt"), unwritable,
                 os.devnull, "", str(w / ("x" * 300))]
    return {"dir": w, "in": paths_in, "out": paths_out}


def options(ws):
    """subcommand -> {option: the values it may take (None: a flag)}; sizes shared."""
    sizes = {"--n-layer": INTS, "--n-head": INTS, "--n-embd": INTS, "--seq-len": INTS,
             "--batch-size": INTS}
    model_sizes = {**sizes, "--preset": ["tiny", "small", "gpt2", "gpt3"], "--vocab-size": INTS,
                   "--n-positions": INTS, "--pos-encoding": ["learned", "rope", "alibi"],
                   "--untied": None}
    training = {**sizes, "--out": ws["out"], "--resume": ws["in"], "--steps": INTS,
                "--stop-at": INTS, "--pos-encoding": ["learned", "rope", "x"],
                "--val-fraction": FLOATS, "--lr": FLOATS, "--min-lr": FLOATS, "--warmup": INTS,
                "--weight-decay": FLOATS, "--grad-clip": FLOATS, "--eval-every": INTS,
                "--save-every": INTS, "--data": ws["in"], "--seed": INTS}
    return {
        "tour": {"--lesson-sizes": None, "--skip-gradcheck": None, "--seed": INTS,
                 "--sections": ["", ",", "labels", "nosuch", "train,sft", "gradcheck"]},
        "dataflow": {**model_sizes, "--attention": ["standard", "tiled", "naive"],
                     "--loss": ["standard", "chunked", "x"], "--dtype": ["float32", "float16"],
                     "--full": None, "--json": None, "--seed": INTS},
        "labels": {"--eot": None, "--seed": INTS},
        "exercise": {"--seed": INTS},
        "gradcheck": {**model_sizes, "--layer": ["mlp", "attention", "block", "conv"],
                      "--model": None, "--attention": ["standard", "tiled", "x"],
                      "--q-tile": INTS, "--k-tile": INTS, "--dtype": ["float64", "float32", "x"],
                      "--eps": FLOATS, "--tol": FLOATS, "--max-coords": INTS,
                      "--directional": None, "--directions": INTS, "--init": ["unit", "gpt2", "x"],
                      "--bug": ["layernorm-no-mean-terms", "nosuch"], "--bugs": None,
                      "--sweep-eps": None, "--out": ws["out"], "--seed": INTS},
        "bench-attention": {"--batch-size": INTS, "--n-head": INTS, "--head-dim": INTS,
                            "--q-tile": INTS, "--k-tile": INTS, "--repeats": INTS,
                            "--min-n": INTS, "--max-n": INTS, "--memory-budget-gb": FLOATS,
                            "--out": ws["out"], "--no-torch": None, "--seed": INTS},
        "bench-decode": {"--config": ["tiny", "gpt2", "nope", ""], "--min-n": INTS, "--max-n": INTS,
                         "--window": INTS, "--max-prefill-n": INTS, "--repeats": INTS,
                         "--out": ws["out"], "--threads": INTS, "--seed": INTS},
        "bench-step": {"--configs": ["tiny", "nope", "", ",", "tiny,gpt2"], "--repeats": INTS,
                       "--warmup": INTS, "--mask-fraction": FLOATS,
                       "--attention": ["standard", "tiled", "x"], "--no-torch": None,
                       "--loss-memory": None, "--out": ws["out"], "--seed": INTS},
        "train": {**training, "--eval-batches": INTS, "--sample-tokens": INTS,
                  "--sample-prompt": TEXTS},
        "sft": {**training, "--init": ws["in"], "--no-prompt-mask": None, "--n-test": INTS,
                "--show": INTS},
        "generate": {"--checkpoint": ws["in"], "--pretrained": ws["in"], "--prompt": TEXTS,
                     "--prompt-ids": IDS, "--max-new-tokens": INTS, "--temperature": FLOATS,
                     "--top-k": INTS, "--num-samples": INTS, "--seed": INTS},
    }


@st.composite
def argv_for(draw, command, ws):
    opts = options(ws)[command]
    chosen = draw(st.lists(st.sampled_from(sorted(opts)), max_size=5, unique=True))
    argv = [command]
    if command == "labels":                               # positional PROMPT [ANSWER]
        argv += draw(st.lists(st.sampled_from(TEXTS), min_size=0, max_size=3))
    if command == "exercise":                             # positional ACTION DIR [NAME...]
        argv += [draw(st.sampled_from(["start", "check", "list", "nope", ""])),
                 draw(st.sampled_from(ws["out"] + ws["in"]))]
        argv += draw(st.lists(st.sampled_from(["linear", "7", "12_tiled_attention.py", "nope",
                                               "", "0"]), max_size=3))
    if command == "generate" and draw(st.booleans()):     # usually a real source
        argv += [draw(st.sampled_from(["--checkpoint", "--pretrained"])),
                 str(ws["dir"] / draw(st.sampled_from(["ckpt", "hf"])))]
        chosen = [c for c in chosen if c not in ("--checkpoint", "--pretrained")]
    for option in chosen:
        values = opts[option]
        argv += [option] if values is None else [option, draw(st.sampled_from(values))]
    return argv


def snapshot(path):
    """Every file under path with its size and bytes (directories listed too)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.join(root, d)] = None
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


def run(argv, ws):
    """main(argv) with the heavy work cut off -> (exit code, stderr plus any warning's text,
    whether the work was reached)."""
    out, err = io.StringIO(), io.StringIO()
    reached = False
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for module, name in HEAVY:
            mp.setattr(sys.modules[module], name, started)
        mp.chdir(ws["dir"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except STARTED:
                code, reached = 0, True
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return code, err.getvalue() + shown, reached


COMMANDS = ["tour", "dataflow", "labels", "gradcheck", "exercise", "bench-attention", "bench-decode",
            "bench-step",
            "train", "sft", "generate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_random_arguments_exit_0_1_or_2_without_traceback_and_refusals_write_nothing(
        workspace, command):
    @settings(max_examples=max(40, settings.default.max_examples), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(argv_for(command, workspace))
    def check(argv):
        before = snapshot(workspace["dir"])
        code, err, _ = run(argv, workspace)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err and "Warning" not in err, (argv, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"numpygpt {command}: error: "), \
                (argv, err)
            assert snapshot(workspace["dir"]) == before, argv        # nothing written
        for leftover in ("new_out", "deep"):                 # validation never creates --out
            shutil.rmtree(workspace["dir"] / leftover, ignore_errors=True)
    check()


def test_the_sentinel_is_reached_by_valid_arguments(workspace):
    """The property is not vacuous: ordinary arguments of each heavy command get through
    every check to the work (STARTED), and bad ones are refused (exit 2)."""
    w = workspace["dir"]
    for argv in (["tour"], ["gradcheck", "--layer", "mlp"], ["exercise", "start", str(w / "new")],
                 ["exercise", "check", str(w / "a_dir"), "linear"], ["bench-attention"],
                 ["bench-decode"],
                 ["bench-step", "--configs", "tiny"], ["train", "--data", str(w / "text.txt")],
                 ["sft", "--n-test", "3"], ["generate", "--checkpoint", str(w / "ckpt"),
                                            "--prompt", "the"]):
        code, err, reached = run(argv, workspace)
        assert code == 0 and reached, (argv, err)
        assert run(argv + ["--seed", "-1"], workspace)[:2] == (
            2, f"numpygpt {argv[0]}: error: argument --seed: expected an integer in "
               f"[0, 4,294,967,295], got -1 (see 'numpygpt {argv[0]} --help')\n"), argv
