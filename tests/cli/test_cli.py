"""The numpygpt command: every subcommand through main(argv), its output and exit code,
wrong arguments (exit 2, one line "numpygpt <command>: error: ...", no traceback), and
failing gradient checks (exit 1)."""
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest

import numpygpt as ng
from numpygpt.cli import main, tour
from numpygpt.gradcheck import LAYERS

# the command table and main() live in numpygpt.cli.commands
cli_main = importlib.import_module("numpygpt.cli.commands")


def one_line_error(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ---- the command itself ---------------------------------------------------------------------

def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ["tour", "dataflow", "labels", "gradcheck", "bench-attention", "bench-step",
                 "train", "sft", "generate"]:
        assert name in out


@pytest.mark.parametrize("name", ["tour", "dataflow", "labels", "gradcheck"])
def test_help_of_each_subcommand(capsys, name):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"numpygpt {name}" in out and "--seed" in out


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "numpygpt", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: numpygpt" in r.stdout and "tour" in r.stdout


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: numpygpt" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["nosuch"], ["invalid choice", "nosuch"]),
    (["dataflow", "--n-layer", "0"], ["--n-layer", "integer >= 1", "0"]),
    (["dataflow", "--n-layer", "two"], ["--n-layer", "'two'"]),
    (["dataflow", "--preset", "gpt3"], ["--preset", "gpt3"]),
    (["gradcheck", "--layer", "conv"], ["--layer", "conv"]),
    (["gradcheck", "--layer", "mlp", "--model"], ["not allowed with"]),
    (["gradcheck", "--eps", "-1"], ["--eps", "-1"]),
    (["labels"], ["PROMPT"]),
    (["labels", "a", "b", "c"], ["unrecognized arguments", "c"]),
    (["tour", "--seed", "x"], ["--seed", "'x'"]),
    (["tour", "--seed-sizes"], ["unrecognized arguments", "--seed-sizes"]),      # now --lesson-sizes
    (["gradcheck", "--attn-impl", "naive"], ["unrecognized arguments", "--attn-impl"]),  # --attention
    (["gradcheck", "--attention", "naive"], ["--attention", "naive"]),          # now "standard"
    (["train", "--block-size", "16"], ["unrecognized arguments", "--block-size"]),  # now --seq-len
])
def test_wrong_arguments_exit_2_with_one_line(capsys, argv, words):
    assert main(argv) == 2
    line = one_line_error(capsys)
    command = "" if argv[0] == "nosuch" else f" {argv[0]}"
    assert line.startswith(f"numpygpt{command}: error: ")
    assert line.endswith(f"(see 'numpygpt{command} --help')")
    for w in words:
        assert w in line


@pytest.mark.parametrize("argv, words", [
    (["dataflow", "--n-embd", "10", "--n-head", "3"], ["--n-embd 10", "--n-head 3"]),
    (["dataflow", "--seq-len", "64", "--n-positions", "32"], ["--seq-len 64", "n_positions=32"]),
    # the learned position table is no longer grown to fit --seq-len: refused, as with --n-positions
    (["dataflow", "--seq-len", "2048"], ["--seq-len 2048", "n_positions=1024"]),
    (["dataflow", "--preset", "tiny", "--seq-len", "2048"], ["--seq-len 2048", "n_positions=1024"]),
    (["labels", ""], ["PROMPT is empty"]),
    (["labels", "Q", ""], ["ANSWER is empty"]),
    (["gradcheck", "--seq-len", "1"], ["--seq-len 1", "T >= 2"]),
    (["tour", "--sections", "labels,nosuch"], ["--sections", "nosuch"]),
])
def test_library_value_errors_exit_2_with_one_line(capsys, argv, words):
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"numpygpt {argv[0]}: error: ")
    for w in words:
        assert w in line


# ---- the command table: explicit wiring; a command module that cannot import -----------------

def fake_command(monkeypatch, name, run):
    """Command `name` of the table replaced by one with a --steps option that calls `run`."""
    add_arguments = lambda p: p.add_argument("--steps", type=int, default=3)
    monkeypatch.setattr(cli_main, "COMMANDS", [(n, h, add_arguments, run) if n == name else (n, h, a, r)
                                               for n, h, a, r in cli_main.COMMANDS])


def test_every_command_is_wired():
    assert [c[0] for c in cli_main.COMMANDS] == ["tour", "dataflow", "labels", "gradcheck",
                                                  "exercise", "bench-attention", "bench-decode",
                                                  "bench-step",
                                                  "train", "sft", "generate"]


def test_external_subcommand_is_wired(monkeypatch, capsys):
    seen = {}

    def run(args):
        seen.update(steps=args.steps, seed=args.seed)
        print("trained")
        return 0
    fake_command(monkeypatch, "train", run)
    assert main(["train", "--steps", "7", "--seed", "4"]) == 0
    assert seen == {"steps": 7, "seed": 4}
    assert "trained" in capsys.readouterr().out


def test_external_value_error_is_one_line(monkeypatch, capsys):
    def run(args):
        raise ValueError("--data /nope: no such file")
    fake_command(monkeypatch, "sft", run)
    assert main(["sft"]) == 2
    assert one_line_error(capsys) == "numpygpt sft: error: --data /nope: no such file"


# ---- labels ---------------------------------------------------------------------------------

def table_rows(out):
    """pos -> the row's cells, from a label table."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+(.*)$", line)
        if m and "|" in line:
            rows[int(m.group(1))] = line
    return rows


def test_labels_pretraining(capsys):
    assert main(["labels", "abcd"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert len(rows) == 4
    # position t predicts t+1; the last position -100 and not counted; HF labels = inputs
    assert re.search(r"'a' 97\s+'b' 98\s+yes\s+\| 'a' 97", rows[0])
    assert re.search(r"'c' 99\s+'d' 100\s+yes\s+\| 'c' 99", rows[2])
    assert re.search(r"'d' 100\s+-100\s+no\s+\| 'd' 100", rows[3])
    assert "counted targets: 3 of 4 positions" in out
    assert "labels_from_hf(HF labels) == aligned labels: yes" in out


def test_labels_sft_like_the_seed(capsys):
    """[Q1,Q2,Q3,A1,A2,A3]: aligned [-100,-100,A1,A2,A3,-100], HF [-100,-100,-100,A1,A2,A3]."""
    assert main(["labels", "Q?!", "xyz"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    aligned = [re.split(r"\s{2,}", r.split("|")[0].strip())[3] for _, r in sorted(rows.items())]
    hf = [r.split("|")[1].strip() for _, r in sorted(rows.items())]
    assert aligned == ["-100", "-100", "'x' 120", "'y' 121", "'z' 122", "-100"]
    assert hf == ["-100", "-100", "-100", "'x' 120", "'y' 121", "'z' 122"]
    assert "counted targets: 3 of 6 positions" in out


def test_labels_eot_is_a_target(capsys):
    assert main(["labels", "1+1=", "2", "--eot"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert re.search(r"'2' 50\s+<\|eot\|> 256\s+yes", rows[4])
    assert "counted targets: 2 of 6 positions" in out


def test_labels_non_ascii_bytes(capsys):
    assert main(["labels", "é"]) == 0                    # two UTF-8 bytes, shown as bytes
    out = capsys.readouterr().out
    assert "'\\xc3' 195" in out and "'\\xa9' 169" in out


# ---- gradcheck ------------------------------------------------------------------------------

def test_gradcheck_layer_choices():
    assert LAYERS == ("linear", "embedding", "layernorm", "gelu", "mlp", "rope", "attention_core",
                      "tiled_attention", "attention", "block", "lm_head", "cross_entropy",
                      "chunked_loss")


@pytest.mark.parametrize("layer", LAYERS)
def test_gradcheck_each_layer_passes(capsys, layer):
    assert main(["gradcheck", "--layer", layer, "--max-coords", "8"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and re.search(r"all \d+ tensors pass|the 1 tensor passes", out)
    errors = [float(e) for e in re.findall(r"\s(\d\.\d\de-\d\d)\s+pass", out)]
    assert errors and max(errors) <= 1e-6


def test_gradcheck_model_table(capsys):
    assert main(["gradcheck", "--model", "--n-layer", "1", "--max-coords", "4"]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"^(\S+)\s+\(", out, flags=re.M)
    cfg = ng.GPTConfig(vocab_size=11, n_positions=16, n_embd=8, n_head=2, n_layer=1)
    assert names == list(ng.param_shapes(cfg))
    assert "all 16 tensors pass" in out


def test_gradcheck_float32_uses_the_looser_tolerance(capsys):
    assert main(["gradcheck", "--layer", "mlp", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "eps 0.001" in out and "tolerance 0.01" in out
    assert "6e-8 |f| / eps" in out


def test_gradcheck_directional(capsys):
    assert main(["gradcheck", "--model", "--directional", "--directions", "2"]) == 0
    out = capsys.readouterr().out
    assert "all 2 directions pass" in out
    rows = re.findall(r"^\s+\d\s+(\S+)\s+(\S+)\s+(\S+)\s+pass", out, flags=re.M)
    assert len(rows) == 2
    for analytic, numeric, _ in rows:
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)


def test_gradcheck_rope_block(capsys):
    assert main(["gradcheck", "--layer", "block", "--pos-encoding", "rope", "--max-coords", "6"]) == 0
    assert "pos rope" in capsys.readouterr().out


def test_gradcheck_tiled_attention_over_several_tiles(capsys):
    argv = ["gradcheck", "--layer", "attention", "--attention", "tiled", "--seq-len", "7",
            "--q-tile", "3", "--k-tile", "3", "--max-coords", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "attention tiled (tiles 3 x 3)" in out and "all 5 tensors pass" in out


def wrong_layernorm_backward(dout, cache):
    from numpygpt.layers.layernorm import layernorm_backward
    dx, grads = layernorm_backward(dout, cache)
    grads["weight"] = grads["weight"] * 1.01              # a 1% error in one gradient
    return dx, grads


def test_gradcheck_fails_with_exit_1_on_a_wrong_layer_backward(monkeypatch, capsys):
    from numpygpt.gradcheck import layers as gradcheck_layers     # the pair the check runs
    monkeypatch.setattr(gradcheck_layers, "layernorm_backward", wrong_layernorm_backward)
    assert main(["gradcheck", "--layer", "layernorm"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^weight\s.*FAIL$", out, flags=re.M)
    assert re.search(r"^x\s.*pass$", out, flags=re.M)
    assert "FAILED: 1 of 3 tensors" in out


def test_gradcheck_fails_with_exit_1_on_a_wrong_model_backward(monkeypatch, capsys):
    from numpygpt import model
    from numpygpt.layers import mlp

    def wrong_mlp_backward(dout, cache):
        dx, grads = mlp.mlp_backward(dout, cache)
        return dx * 0.999, grads                          # the gradient into ln_2 is off

    monkeypatch.setattr(model, "mlp_backward", wrong_mlp_backward)   # block_backward's
    assert main(["gradcheck", "--model", "--n-layer", "1", "--max-coords", "8"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^h\.0\.ln_2\.weight\s.*FAIL$", out, flags=re.M)
    assert re.search(r"^h\.0\.mlp\.c_fc\.weight\s.*pass$", out, flags=re.M)   # above the bug: fine
    assert "FAILED" in out
    assert main(["gradcheck", "--model", "--n-layer", "1", "--directional"]) == 1


# ---- tour -----------------------------------------------------------------------------------

OWN_SECTIONS = "dataflow,labels,loss,masking,gradcheck"


def stub_other_sections(monkeypatch):
    """The attention, train and sft sections are tested with their code (tests/train,
    tests/bench) and take seconds each: stand-ins here."""
    for section in ("attention", "train", "sft"):
        title, _ = tour.SECTIONS[section]
        stub = lambda write, seed=0, s=section: write(f"[{s} section, seed {seed}]")
        monkeypatch.setitem(tour.SECTIONS, section, (title, stub))


def test_tour_default(monkeypatch, capsys):
    """The README's main job, with its defaults."""
    stub_other_sections(monkeypatch)
    code = main(["tour"])
    out = capsys.readouterr().out
    assert code == 0, out
    titles = re.findall(r"^== (\d+)\. (.*) ==$", out, flags=re.M)
    assert [int(n) for n, _ in titles] == list(range(1, 9))
    assert "Data flow" in titles[0][1] and "Gradient check" in titles[4][1]
    assert out.rstrip().endswith("tour done.")
    # the data flow, stage by stage, with the lesson's batch 1 and length 10
    for shape in ["(1, 10)", "(1, 10, 32)", "(1, 10, 257)", "(1, 4, 10, 10)"]:
        assert shape in out
    assert "max |difference| = 0.0e+00" in out
    # labels: both forms, pre-training and SFT
    assert out.count("labels_from_hf(HF labels) == aligned labels: yes") == 2
    assert "counted targets: 11 of 12 positions" in out and "counted targets: 5 of 9 positions" in out
    # the loss: mean = sum / counted, per example
    for counted, total, mean in re.findall(r"^\s+(?:pre-training|SFT|both).*?\s(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$",
                                           out, flags=re.M):
        assert float(total) / int(counted) == pytest.approx(float(mean), abs=1e-4)
    # masking == prefix: the two columns agree and the stated difference is tiny
    pairs = re.findall(r"^\s+\S+\s+'.*?'\s+(\d+\.\d{12})\s+(\d+\.\d{12})$", out, flags=re.M)
    assert len(pairs) == 5 and all(a == b for a, b in pairs)
    assert float(re.search(r"\|difference\| = (\S+) \(float64\)", out).group(1)) < 1e-12
    # the whole-model gradient check: one row per parameter tensor, all pass
    assert "all 28 tensors pass" in out
    for section in ("attention", "train", "sft"):
        assert f"[{section} section, seed 0]" in out


def test_tour_is_deterministic_and_follows_the_seed(capsys):
    argv = ["tour", "--sections", "loss,masking,gradcheck"]
    outs = []
    for extra in ([], [], ["--seed", "1"]):
        assert main(argv + extra) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_tour_lesson_sizes(capsys):
    assert main(["tour", "--lesson-sizes", "--sections", "dataflow"]) == 0
    out = capsys.readouterr().out
    for shape in ["(1, 10)", "(1, 10, 768)", "(1, 10, 50000)", "(1, 12, 10, 10)"]:
        assert shape in out


def test_tour_skip_gradcheck(capsys):
    assert main(["tour", "--skip-gradcheck", "--sections", "labels,gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "Gradient check" not in out and "Labels" in out


def test_tour_fails_when_the_model_gradient_is_wrong(monkeypatch, capsys):
    from numpygpt import model
    from numpygpt.layers import mlp
    monkeypatch.setattr(model, "mlp_backward",
                        lambda d, c: (lambda dx, g: (dx * 1.01, g))(*mlp.mlp_backward(d, c)))
    assert main(["tour", "--sections", "gradcheck"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("rank_var", ["PMI_RANK", "OMPI_COMM_WORLD_RANK"])
def test_under_mpiexec_a_command_that_is_not_data_parallel_runs_on_rank_0_alone(
        monkeypatch, capsys, rank_var):
    monkeypatch.setenv("PMI_SIZE", "3")
    monkeypatch.setenv(rank_var, "1")
    assert main(["dataflow", "--preset", "gpt2"]) == 0
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(rank_var, "0")
    assert main(["dataflow", "--preset", "gpt2"]) == 0
    assert "124,439,808" in capsys.readouterr().out


def test_mpiexec_n_3_of_a_command_that_is_not_data_parallel_prints_once():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")     # the mpich wheel's
    mpiexec = here if os.path.exists(here) else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (the mpi extra)")
    r = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "numpygpt", "dataflow",
                        "--preset", "gpt2"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("numpygpt dataflow --preset gpt2\n") == 1, r.stdout


def test_tour_plots_draws_the_attention_maps_of_both_examples(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert main(["tour", "--sections", "loss", "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    for name in ("pretrain", "sft"):
        path = plots / f"tour_attention_{name}.png"
        assert f"wrote {path}" in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tour_without_plots_draws_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["tour", "--sections", "loss"]) == 0
    assert "wrote" not in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_tour_plots_refused_before_any_section_when_matplotlib_is_missing(tmp_path, capsys,
                                                                          monkeypatch):
    import numpygpt.cli.train_setup as setup
    monkeypatch.setattr(setup, "have_matplotlib", lambda: False)
    assert main(["tour", "--sections", "loss", "--plots", str(tmp_path / "p")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--plots" in captured.err and "matplotlib" in captured.err
    assert not (tmp_path / "p").exists()
