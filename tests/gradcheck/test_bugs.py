"""The bug zoo: every row of its table holds (each bug caught by the checks the table names and
missed by the others), the right code passes every check, and a swap is undone.

The table and the tensors and properties each check must name are written here, from what each
bug does, not read from the zoo's own declarations (which are checked against them)."""
import subprocess
import sys

import numpy as np
import pytest

import numpygpt as ng
from numpygpt import gradcheck
from numpygpt.cli import main
from numpygpt.gradcheck import BUGS, CHECKS, attention_bugs, bugs, problems, swapped, zoo

HAS_TORCH = gradcheck.torch_version() is not None
C, M = "caught", "missed"

#            bug                          coordinate directional property oracle
TABLE = {"linear-dx-no-transpose":       (C, C, M, C),
         "embedding-assign":             (C, C, C, C),
         "softmax-no-rowsum":            (C, C, M, C),
         "layernorm-no-mean-terms":      (C, C, M, C),
         "attention-no-scale":           (C, C, M, C),
         "causal-mask-grad":             (C, C, M, C),
         "gelu-erf-derivative":          (C, C, M, C),
         "heads-reshaped":               (C, C, M, C),
         "mlp-no-gelu":                  (C, C, M, C),
         "block-no-residual":            (C, C, M, C),
         "tied-one-use":                 (C, C, M, C),
         "loss-grad-ignored-rows":       (C, C, M, C),
         "loss-mean-all-positions":      (M, M, C, C),
         "accumulation-own-count":       (M, M, C, C),
         "labels-not-shifted":           (M, M, C, C),
         "labels-shifted-twice":         (M, M, C, C),
         "sft-last-prompt-masked":       (M, M, C, C),
         "window-off-by-one":            (M, M, M, C),
         "gqa-dk-not-summed":            (C, C, C, C),
         "rolling-cache-wrong-slot":     (M, M, C, C)}

MODEL_TENSORS = ng.param_shapes(gradcheck.problems.ZOO_CONFIG)
# the tensors the coordinate check must fail (the others pass), from what each bug breaks
FAILING_TENSORS = {
    "linear-dx-no-transpose": {"x"},                        # dW and db are right
    "embedding-assign": {"wte.weight", "wpe.weight"},       # positions repeat across the batch too
    "softmax-no-rowsum": {"q", "k"},                        # dv = P^T dy does not use dS
    "layernorm-no-mean-terms": {"x"},
    "attention-no-scale": {"q", "k"},
    "causal-mask-grad": {"q", "k", "v"},                    # P itself is wrong in the backward
    "gelu-erf-derivative": {"x"},
    "tied-one-use": {"wte.weight"},
    "gqa-dk-not-summed": {"x", "c_attn.weight", "c_attn.bias"},   # c_proj's lie above the sum
    # the zoo's GPT has one block: what lies below the wrong line (and wte, wpe) is wrong
    "heads-reshaped": {"h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.0.ln_1.weight",
                       "h.0.ln_1.bias", "wte.weight", "wpe.weight"},      # c_proj's are right
    "mlp-no-gelu": set(MODEL_TENSORS) - {"h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias",
                                         "ln_f.weight", "ln_f.bias"},
    "block-no-residual": {"h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias",
                          "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.ln_1.weight",
                          "h.0.ln_1.bias", "wte.weight", "wpe.weight"},  # ln_2 and the MLP right
    "loss-grad-ignored-rows": set(MODEL_TENSORS),                       # dlogits is wrong
}
# the properties that must fail (the others hold)
FAILING_PROPERTIES = {
    "embedding-assign": {"additivity"},
    "loss-mean-all-positions": {"accumulation", "sum=mean*n", "prefix"},   # num_items is right
    "accumulation-own-count": {"accumulation"},
    "labels-not-shifted": {"shift", "sft-rule", "prefix"},
    "labels-shifted-twice": {"shift", "sft-rule", "prefix"},
    "sft-last-prompt-masked": {"sft-rule", "prefix"},
    "gqa-dk-not-summed": {"tying"},                # additivity: wrong alike on both sides
    "rolling-cache-wrong-slot": {"decode"},
}


@pytest.fixture(scope="module")
def rows():
    return {row.name: row for row in gradcheck.run_zoo()}


def outcome(row, check):
    return row.results[check].outcome


def test_the_zoo_holds_the_issues_bugs_and_declares_this_table():
    assert set(BUGS) == set(TABLE) and len(BUGS) >= 12
    for name, bug in BUGS.items():
        assert tuple(bug.expected(c) for c in CHECKS) == TABLE[name], name
        assert bug.why and bug.description and bug.home in gradcheck.HOMES


@pytest.mark.parametrize("name", list(TABLE))
def test_each_row_of_the_table_holds(rows, name):
    row = rows[name]
    got = tuple(outcome(row, c) for c in CHECKS)
    want = TABLE[name][:3] + ((TABLE[name][3],) if HAS_TORCH else ("n/a",))
    assert got == want, f"{name}: {dict(zip(CHECKS, got))}"
    assert row.ok
    coord = row.results["coordinate"].raw
    if name in FAILING_TENSORS:
        assert {r.name for r in coord if not r.passed} == FAILING_TENSORS[name]
        assert row.results["coordinate"].error > 1e-4          # far above the 1e-6 tolerance
    else:                                                      # a right gradient: at rounding level
        assert all(r.max_rel_error < 1e-7 for r in coord)
    props = row.results["property"].raw
    assert {r.name for r in props if not r.holds} == FAILING_PROPERTIES.get(name, set())
    assert all(r.difference < 1e-12 for r in props if r.holds)


def test_the_right_code_passes_every_check_on_every_home(rows):
    row = rows["(right code)"]
    assert [outcome(row, c) for c in CHECKS] == [M, M, M, M if HAS_TORCH else "n/a"]
    assert row.results["coordinate"].error < 1e-7 and row.results["directional"].error < 1e-7
    assert row.results["property"].error < 1e-12
    if HAS_TORCH:
        assert row.results["oracle"].error < 1e-12
    clean = gradcheck.run_clean(oracle=False)
    assert set(clean) == set(gradcheck.HOMES)
    assert all(r[c].outcome == M for r in clean.values() for c in CHECKS[:3])


def test_the_table_prints_every_row_and_the_headline(rows):
    lines = gradcheck.format_zoo(list(rows.values()))
    text = "\n".join(lines)
    for name in TABLE:
        assert any(line.startswith(name + " ") for line in lines), name
    count = {c: sum(row[i] == C for row in TABLE.values()) for i, c in enumerate(CHECKS)}
    assert (f"{len(TABLE)} bugs: the coordinate gradcheck catches {count['coordinate']}, the "
            f"directional {count['directional']}, the properties {count['property']}") in text
    assert (f"the torch oracle {count['oracle']}" if HAS_TORCH else "the oracle n/a (no torch)") in text
    assert "every row as declared" in text and " !" not in text


def test_a_swap_reaches_every_reference_and_is_undone_even_on_error():
    right = ng.layers.layernorm.layernorm_backward
    wrong = bugs.layernorm_backward_no_mean_terms
    users = [sys.modules["numpygpt.layers.layernorm"], sys.modules["numpygpt.layers"],
             sys.modules["numpygpt.model"], sys.modules["numpygpt.gradcheck.layers"], ng]
    with swapped((right, wrong)) as names:
        assert all(m.layernorm_backward is wrong for m in users)
        assert "numpygpt.model.layernorm_backward" in names
        assert not all(r.passed for r in gradcheck.check_layer("layernorm"))
    assert all(m.layernorm_backward is right for m in users)
    assert all(r.passed for r in gradcheck.check_layer("layernorm"))
    with pytest.raises(RuntimeError):
        with swapped((right, wrong)):
            raise RuntimeError("inside the swap")
    assert all(m.layernorm_backward is right for m in users)


def test_each_wrong_function_really_differs_from_the_right_one():
    """Run on the same input, right and wrong give different numbers (no bug is a no-op)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4))
    y, cache = ng.causal_attention_forward(x, x + 1, x - 1)
    right = ng.causal_attention_backward(x, cache)[0]
    for wrong in (bugs.causal_attention_backward_no_rowsum, bugs.causal_attention_backward_no_scale):
        y, cache = ng.causal_attention_forward(x, x + 1, x - 1)
        assert not np.allclose(right[0], wrong(x, cache)[0][0])
    ids = np.array([[1, 2, 3, 4]])
    assert (bugs.causal_lm_labels_not_shifted(ids) == [[1, 2, 3, -100]]).all()
    assert (bugs.causal_lm_labels_shifted_twice(ids) == [[3, 4, -100, -100]]).all()
    assert (ng.causal_lm_labels(ids) == [[2, 3, 4, -100]]).all()
    _, labels = bugs.sft_labels_last_prompt_masked([5, 6, 7], [8, 9])
    assert labels.tolist() == [-100, -100, -100, 9, -100]
    assert ng.sft_labels([5, 6, 7], [8, 9])[1].tolist() == [-100, -100, 8, 9, -100]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        gradcheck.run_bug("no-such-bug")
    assert main(["gradcheck", "--bug", "no-such-bug"]) == 2


def test_bug_command_prints_the_mutation_and_every_report(capsys):
    assert main(["gradcheck", "--bug", "layernorm-no-mean-terms"]) == 0
    out = capsys.readouterr().out
    assert "-    dx = rstd * (g - g.mean(axis=-1, keepdims=True)" in out
    assert "+    dx = rstd * g" in out
    assert "rebound in" in out and "numpygpt.model" in out
    lines = out.splitlines()
    assert any(line.split()[:1] == ["x"] and line.endswith("FAIL") for line in lines)
    assert any(line.split()[:1] == ["weight"] and line.endswith("pass") for line in lines)
    assert "caught by coordinate, directional" in out and "every check as declared" in out


def test_bugs_command_exits_1_when_a_row_is_not_as_declared(monkeypatch, capsys):
    """A declaration the checks contradict (a label bug declared caught by the gradcheck)."""
    real = BUGS["labels-not-shifted"]
    fake = bugs.Bug(real.name, real.description, real.home, real.swaps,
                    ("coordinate",) + real.caught_by, real.why)
    monkeypatch.setattr(zoo, "BUGS", {real.name: fake})
    assert main(["gradcheck", "--bugs"]) == 1
    out = capsys.readouterr().out
    assert "NOT AS DECLARED (marked !): labels-not-shifted coordinate" in out
    assert "--bugs does not use --layer" in _stderr_of(["gradcheck", "--bugs", "--layer", "gelu"],
                                                        capsys)


def _stderr_of(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_without_torch_the_oracle_column_is_n_a():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from numpygpt.cli import main\n"
            "sys.exit(main(['gradcheck', '--bug', 'tied-one-use']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "oracle: torch autograd on the same weights: N/A (as declared)" in r.stdout
    assert "coordinate gradcheck (eps 1e-05, tolerance 1e-06): CAUGHT (as declared)" in r.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="the oracle column needs torch")
def test_the_oracle_builds_its_own_labels(rows):
    """The oracle disagrees with a label bug because it never sees numpygpt's labels."""
    row = rows["labels-shifted-twice"]
    loss_line = row.results["oracle"].lines[0]
    assert loss_line.startswith("loss") and "FAIL" in loss_line


@pytest.mark.parametrize("name", [n for n, b in BUGS.items() if b.show == "diff"])
def test_each_copied_bug_stays_a_few_lines_from_the_right_function(name):
    """A wrong function written as a copy of the right one differs in its name and the lines
    marked BUG only. When this fails, the right function changed: copy it again into bugs.py
    and re-apply the bug."""
    changed = [line for line in zoo.mutation_lines(BUGS[name])
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert 3 <= len(changed) <= 10, "\n".join(changed)
    assert any("BUG" in line for line in changed if line.startswith("+"))


def test_the_wrong_attention_variants_differ_where_the_bug_says():
    """dk of a group is its first head's, not the sum; the kept slots land one slot late."""
    dk = np.arange(2 * 4 * 1 * 1, dtype=float).reshape(2, 4, 1, 1)      # (B,H,Tk,D), H = 4
    sums = [[[[0 + 1]], [[2 + 3]]], [[[4 + 5]], [[6 + 7]]]]              # groups of 2, by hand
    assert ng.layers.attention.repeat_kv_backward(dk, 2).tolist() == sums
    assert attention_bugs.repeat_kv_backward_one_head(dk, 2).tolist() == [[[[0]], [[2]]],
                                                                           [[[4]], [[6]]]]
    buffer = np.arange(6, dtype=float).reshape(1, 1, 1, 6, 1)           # slots hold 0..5
    kept = slice(3, 5)                                                  # keep slots 3, 4
    right = ng.decode.kv_cache.move_to_front(buffer.copy(), kept, 8)
    wrong = attention_bugs.move_to_front_one_slot_late(buffer.copy(), kept, 8)
    assert right.ravel().tolist() == [3, 4, 0, 0, 0, 0, 0, 0]
    assert wrong.ravel().tolist() == [0, 3, 4, 0, 0, 0, 0, 0]
    moved = ng.decode.kv_cache.move_to_front(buffer, kept, 6)           # same size: within
    assert moved is buffer and moved.ravel().tolist() == [3, 4, 2, 3, 4, 5]


def test_the_rolling_cache_home_slides_the_buffer_it_says():
    """Decoding the home's sequences slides the cache's buffer (2W slots) several times, as
    describe_home says; the swap reaches the method that calls the wrong helper."""
    model, batch = problems.cache_home()
    ids = batch["input_ids"]
    W, T = model.config.sliding_window, ids.shape[1]
    cache = ng.decode.KVCache(model.config, ids.shape[0], T, model.dtype)
    starts = []
    for t in range(T):
        model.forward(ids[:, t:t + 1], model.params, kv_cache=cache)
        starts.append(cache.start)
        assert cache.capacity == 2 * W < T
    slides = len(set(starts)) - 1                                       # start moves at a slide
    assert slides == 3 and f"slid {slides} times" in problems.describe_home("rolling_cache")
    rebound = bugs.rebound(BUGS["rolling-cache-wrong-slot"])
    assert rebound == ["numpygpt.decode.kv_cache.move_to_front"]
    full = model.logits(ids)
    with swapped(*BUGS["rolling-cache-wrong-slot"].swaps):            # as its `why` says:
        wrong = problems.decoded_logits(model, ids)
    first = next(t for t, start in enumerate(starts) if start > 0)    # the token that slid it
    assert np.abs(wrong[:, :first] - full[:, :first]).max() < 1e-12   # right until it
    assert np.abs(wrong[:, first] - full[:, first]).max() > 1e-2      # wrong from it on


def test_the_tying_property_is_a_real_identity():
    """On the right code tying holds to rounding (K < H: the group sum is used); with the
    group sum wrong it fails, though additivity holds: tying does not compare the layer with
    itself but with multi-head attention, which never sums a group."""
    assert problems.GQA_CONFIG.kv_heads < problems.GQA_CONFIG.n_head
    forward, backward, x, p, _ = problems.layer_home("gqa_attention")
    [result] = problems.gqa_tying(forward, backward, x, p)
    assert result.holds and result.difference < 1e-12
    with swapped(*BUGS["gqa-dk-not-summed"].swaps):
        [bad] = problems.gqa_tying(forward, backward, x, p)
    assert not bad.holds and bad.difference > 1e-2
