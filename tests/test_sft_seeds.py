"""The SFT recipe's claim over seeds, wired end to end without the training: the sweep saved
in docs/sft_seeds.json is the recipe `numpygpt sft` runs now and meets SFT_CLAIM on every seed
of SFT_SEEDS; docs/sft_seeds.py reads what the command prints, shows each seed and the spread,
keeps finished runs and says FAILS when a seed misses the claim. (The sweep itself takes
20 minutes: `python docs/make_outputs.py --slow --only runs/pretrain --only sft-seeds
README.md`.)"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from numpygpt.cli import main
from numpygpt.train import SFT, SFT_CLAIM, SFT_SEEDS

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "docs" / "sft_seeds.json"
_spec = importlib.util.spec_from_file_location("sft_seeds", ROOT / "docs" / "sft_seeds.py")
sft_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sft_seeds)

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
        "--n-test", "6", "--steps", "2"]


def test_the_saved_sweep_is_the_recipe_sft_runs_now():
    saved = json.loads(SAVED.read_text(encoding="utf-8"))
    assert saved["recipe"] == {k: getattr(SFT, k) for k in sft_seeds.RECIPE}, \
        "the SFT defaults changed since the sweep: run docs/make_outputs.py --slow (see above)"
    assert saved["recipe"]["lr"] == SFT.lr == 1e-3
    assert saved["seeds"] == list(SFT_SEEDS) and saved["claim"] == SFT_CLAIM
    runs = {(r["objective"], r["seed"]): r for r in saved["runs"]}
    assert set(runs) == {(o, s) for o in ("masked", "nomask") for s in SFT_SEEDS}
    assert all(r["steps"] == SFT.steps for r in runs.values())


def test_the_saved_sweep_meets_the_claim_on_every_seed():
    saved = json.loads(SAVED.read_text(encoding="utf-8"))
    masked = {r["seed"]: r["exact_match"] for r in saved["runs"] if r["objective"] == "masked"}
    assert all(em >= 100 * SFT_CLAIM for em in masked.values()), masked


def sweep_of(masked, nomask):
    runs = [{"seed": s, "objective": o, "steps": 2000, "time": "1m", "exact_match": em,
             "answer_loss": 0.5} for o, ems in (("masked", masked), ("nomask", nomask))
            for s, em in enumerate(ems)]
    return {"recipe": {k: getattr(SFT, k) for k in sft_seeds.RECIPE}, "threads": 1,
            "seeds": list(range(len(masked))), "claim": 0.9, "runs": runs}


def test_table_shows_each_seed_then_min_median_max():
    lines = sft_seeds.table(sweep_of([99.0, 100.0, 91.2, 100.0, 99.8],
                                     [10.4, 97.0, 100.0, 3.0, 50.0]))
    masked = next(line for line in lines if line.startswith("  prompt masked"))
    nomask = next(line for line in lines if line.startswith("  whole sequence"))
    assert masked.split()[3:] == ["99.0%", "100.0%", "91.2%", "100.0%", "99.8%",
                                  "91.2%", "99.8%", "100.0%"]
    assert nomask.split()[4:] == ["10.4%", "97.0%", "100.0%", "3.0%", "50.0%",
                                  "3.0%", "50.0%", "100.0%"]
    assert lines[1].split()[-3:] == ["min", "median", "max"]
    assert lines[-1].endswith("holds (lowest 91.2%)")


def test_a_seed_below_the_claim_fails_the_sweep(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep_of([99.0, 100.0, 89.8, 100.0, 99.8], [100.0] * 5)))
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "sft_seeds.py"), "--table",
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].endswith("FAILS (lowest 89.8%)")


def test_the_result_is_read_from_what_numpygpt_sft_prints(capsys):
    assert main(["sft", *TINY, "--show", "0", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("after "))
    result = sft_seeds.read_result(printed)
    assert result is not None, line
    assert result["steps"] == 2
    assert f"-> {result['exact_match']:.1f}%" in line
    assert line.endswith(f"-> {result['answer_loss']:.4f}")


def test_a_finished_run_is_kept_and_an_interrupted_one_run_again(tmp_path, monkeypatch):
    recipe_argv = sft_seeds.sft_argv                 # the recipe's command, made tiny
    monkeypatch.setattr(sft_seeds, "sft_argv", lambda *a: [*recipe_argv(*a), *TINY])
    first = sft_seeds.sweep([0], 1, tmp_path)
    assert [(r["objective"], r["seed"], r["steps"]) for r in first["runs"]] == \
        [("masked", 0, 2), ("nomask", 0, 2)]
    log = (tmp_path / "nomask-seed0.log").read_text()
    assert log.startswith("$ numpygpt sft --show 0 --seed 0 --no-prompt-mask --out ")
    assert "--no-prompt-mask" not in (tmp_path / "masked-seed0.log").read_text().splitlines()[0]
    # interrupted: the log holds the command but no result, the checkpoint is partial
    (tmp_path / "nomask-seed0.log").write_text(log.splitlines()[0] + "\n")
    ran = []
    real_run = subprocess.run
    monkeypatch.setattr(sft_seeds.subprocess, "run",
                        lambda argv, **kw: ran.append(argv) or real_run(argv, **kw))
    again = sft_seeds.sweep([0], 1, tmp_path)
    assert len(ran) == 1 and "--no-prompt-mask" in ran[0]
    assert [r["exact_match"] for r in again["runs"]] == [r["exact_match"] for r in first["runs"]]


def test_a_directory_that_is_not_the_sweeps_is_refused(tmp_path):
    (tmp_path / "masked-seed0").mkdir()
    with pytest.raises(SystemExit, match="masked-seed0 exists but is not a run of this sweep"):
        sft_seeds.sweep([0], 1, tmp_path)
