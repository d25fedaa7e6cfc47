"""The course: the stubs read "not started", the textbook's solutions pass every exercise,
every zoo bug of an exercise put into the learner's file is named, a wrong answer the zoo
does not know is still reported with the right tensors and what is seen in them, and a crash
is told at the learner's line with the shapes there."""
import os

import numpy as np
import pytest

from numpygpt.exercises import COURSE, BY_NAME, check_course, check_file, diagnose, file_text
from numpygpt.exercises import write_course, run_reference
from numpygpt.gradcheck import BUGS, swapped

from conftest import SOLUTIONS, with_bug, write


def check_one(directory, name):
    e = BY_NAME[name]
    outcome = check_file(e, os.path.join(directory, e.filename))
    return outcome, (diagnose(outcome) if outcome.status == "wrong" else [])


def verdicts(outcome):
    return {r.name: r.verdict for r in outcome.tensors}


def test_the_course_is_in_the_issues_order():
    assert [e.name for e in COURSE] == [
        "linear", "embedding", "gelu", "layernorm", "cross_entropy", "attention_core",
        "attention", "mlp", "block", "tied_lm_head", "gpt", "tiled_attention"]
    assert [e.number for e in COURSE] == list(range(1, 13))


def test_every_stub_reads_not_started(stubs):
    outcomes = check_course(stubs)
    assert [o.status for o, _ in outcomes] == ["not started"] * len(COURSE)
    assert all(d == [] for _, d in outcomes)


def test_each_file_says_what_to_compute_and_where_the_solution_is(stubs):
    for e in COURSE:
        text = open(os.path.join(stubs, e.filename)).read()
        assert f"def {e.function}(" in text and "raise NotImplementedError" in text
        assert f"The solution is the textbook tier: {e.solution}" in text
        assert f"numpygpt exercise check {stubs} {e.name}" in text
        assert "->" in text.split(f"def {e.function}(")[1]       # the docstring's shapes


def test_the_copied_forward_runs_and_is_the_textbooks(stubs):
    """Each file's forward, swapped in for the textbook's, builds the same problem and answer
    (so its imports are complete and it is a true copy)."""
    from numpygpt.exercises.check import load
    for e in COURSE:
        copy = load(os.path.join(stubs, e.filename), e.forward.__name__)
        assert copy is not e.forward
        problem, want = run_reference(e)
        with swapped((e.forward, copy)):
            problem2, want2 = run_reference(e)
        assert want.keys() == want2.keys()
        assert all(np.array_equal(want[k], want2[k]) for k in want), e.name


def test_start_never_overwrites_a_learners_file(tmp_path):
    directory = str(tmp_path / "c")
    first = write_course(directory)
    assert all(what == "wrote" for _, what in first) and len(first) == len(COURSE)
    mine = os.path.join(directory, COURSE[0].filename)
    with open(mine, "w") as f:
        f.write("# my work\n")
    os.remove(os.path.join(directory, COURSE[1].filename))
    again = dict(write_course(directory))
    assert open(mine).read() == "# my work\n"
    assert again[COURSE[0].filename] == "kept" and again[COURSE[1].filename] == "wrote"
    assert all(again[e.filename] == "kept" for e in COURSE[2:])


def test_the_textbook_solution_passes_every_exercise(solved):
    outcomes = check_course(solved)
    assert [o.status for o, _ in outcomes] == ["passed"] * len(COURSE)
    for o, _ in outcomes:
        assert all(r.verdict in ("exact", "close") for r in o.tensors), o.exercise.name
    # the named intermediates are found (the textbook's own names) and compared
    assert verdicts(outcomes[3][0])["dxhat"] == "exact"
    assert verdicts(outcomes[5][0])["dP"] == verdicts(outcomes[5][0])["dS"] == "exact"


ZOO_CASES = [(e.name, bug) for e in COURSE for bug in e.bugs]


@pytest.mark.parametrize("name,bug", ZOO_CASES, ids=[f"{n}-{b}" for n, b in ZOO_CASES])
def test_every_zoo_bug_of_an_exercise_is_named(tmp_path, name, bug):
    directory = write(tmp_path, {name: with_bug(name, bug)})
    outcome, diagnosis = check_one(directory, name)
    assert outcome.status == "wrong", outcome.message
    assert diagnosis[0] == f"the zoo knows this one: {bug}: {BUGS[bug].description}"


def test_every_backward_bug_of_the_zoo_is_in_an_exercise():
    in_course = {b for e in COURSE for b in e.bugs}
    gradient_bugs = {n for n, b in BUGS.items() if "coordinate" in b.caught_by}
    assert gradient_bugs <= in_course | {"loss-mean-all-positions"}
    assert "loss-mean-all-positions" in in_course   # a loss bug, a wrong dlogits here


# ---- wrong answers the zoo does not know -----------------------------------------------------

LINEAR = "import numpy as np\n\n\ndef linear_backward(dout, cache):\n    x, weight = cache\n{}\n"
RIGHT_LINEAR = ["    dx = dout @ weight.T", "    dW = x.reshape(-1, 4).T @ dout.reshape(-1, 4)",
                "    db = dout.reshape(-1, 4).sum(axis=0)",
                "    return dx, {'weight': dW, 'bias': db}"]


def linear_with(**lines):
    body = list(RIGHT_LINEAR)
    for i, key in enumerate(("dx", "dW", "db")):
        if key in lines:
            body[i] = "    " + lines[key]
    return LINEAR.format("\n".join(body))


@pytest.mark.parametrize("change,wrong,seen", [
    (dict(db="db = dout.reshape(-1, 4).mean(axis=0)"), "grads['bias']",
     "a constant factor off: 0.1667 x the answer (= 1/N)"),
    (dict(dW="dW = dout.reshape(-1, 4).T @ x.reshape(-1, 4)"), "grads['weight']",
     "the answer transposed"),
    (dict(dx="dx = -(dout @ weight.T)"), "dx", "the answer with its sign flipped"),
    (dict(dW="dW = x[0].T @ dout[0]"), "grads['weight']",
     "only batch row 0's share of the answer: a missing sum over the batch"),
    (dict(db="db = dout"), "grads['bias']",
     "a missing sum over the leading axes (the batch and positions); summed, it is the answer"),
])
def test_a_wrong_linear_is_reported_with_the_right_tensors(tmp_path, change, wrong, seen):
    directory = write(tmp_path, {"linear": linear_with(**change)})
    outcome, diagnosis = check_one(directory, "linear")
    assert outcome.status == "wrong"
    assert [n for n, v in verdicts(outcome).items() if v == "wrong"] == [wrong]
    assert not any("zoo knows" in d for d in diagnosis)
    assert diagnosis[0].startswith(f"wrong: {wrong}; right: ")
    assert any(d.startswith(f"{wrong}: ") and seen in d for d in diagnosis), diagnosis


def test_a_wrong_intermediate_is_the_first_wrong_line(tmp_path):
    """LayerNorm with dxhat = dout (the weight forgotten): dxhat and dx wrong, dxhat first."""
    text = ("import numpy as np\n\n\ndef layernorm_backward(dout, cache):\n"
            "    xhat, rstd, weight = cache\n"
            "    dweight = (dout * xhat).reshape(-1, 6).sum(axis=0)\n"
            "    dbias = dout.reshape(-1, 6).sum(axis=0)\n"
            "    dxhat = dout\n"
            "    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)\n"
            "                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))\n"
            "    return dx, {'weight': dweight, 'bias': dbias}\n")
    outcome, diagnosis = check_one(write(tmp_path, {"layernorm": text}), "layernorm")
    assert [r.name for r in outcome.tensors] == ["grads['weight']", "grads['bias']", "dxhat", "dx"]
    assert verdicts(outcome) == {"grads['weight']": "exact", "grads['bias']": "exact",
                                 "dxhat": "wrong", "dx": "wrong"}
    assert "the first wrong in the order the backward computes them: dxhat" in diagnosis


def test_a_wrong_intermediate_is_described_too(tmp_path):
    text = ("import numpy as np\n\n\ndef layernorm_backward(dout, cache):\n"
            "    xhat, rstd, weight = cache\n"
            "    dxhat = -dout * weight\n"
            "    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)\n"
            "                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))\n"
            "    return dx, {'weight': (dout * xhat).sum(axis=(0, 1)), 'bias': dout.sum(axis=(0, 1))}\n")
    outcome, diagnosis = check_one(write(tmp_path, {"layernorm": text}), "layernorm")
    assert "dxhat: the answer with its sign flipped" in diagnosis
    assert "dx: the answer with its sign flipped" in diagnosis


def test_a_float32_answer_is_told_to_stay_float64(tmp_path):
    text = SOLUTIONS["gelu"] + ("\nright = gelu_backward\n\n\ndef gelu_backward(dout, cache):\n"
                                "    dx, g = right(dout.astype('float32'), cache)\n"
                                "    return dx.astype('float32'), g\n")
    outcome, _ = check_one(write(tmp_path, {"gelu": text}), "gelu")
    assert outcome.status == "wrong"
    assert outcome.tensors[0].note.startswith("float32, relative error ")
    assert outcome.tensors[0].note.endswith("the problem is float64, keep it so")


def test_an_unnamed_intermediate_is_said_not_failed(tmp_path):
    text = SOLUTIONS["attention_core"].replace("causal_attention_backward",
                                               "causal_attention_backward as right")
    text += "\n\ndef causal_attention_backward(dy, cache):\n    return right(dy, cache)\n"
    outcome, _ = check_one(write(tmp_path, {"attention_core": text}), "attention_core")
    assert outcome.status == "passed"
    assert verdicts(outcome)["dP"] == verdicts(outcome)["dS"] == "not named"


def test_gradient_on_masked_rows_is_called_a_wrong_mask(tmp_path):
    """Cross-entropy whose ignored rows keep softmax - onehot(0): not the zoo's bug (which
    keeps softmax alone), seen as gradient where the answer is exactly 0."""
    text = ("import numpy as np\n\n\ndef cross_entropy_backward(cache):\n"
            "    logits, labels, ignore_index = cache\n"
            "    z = logits - logits.max(axis=-1, keepdims=True)\n"
            "    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)\n"
            "    counted = labels != ignore_index\n"
            "    onehot = np.eye(logits.shape[-1])[np.where(counted, labels, 0)]\n"
            "    return (p - onehot) / counted.sum()\n")
    outcome, diagnosis = check_one(write(tmp_path, {"cross_entropy": text}), "cross_entropy")
    assert verdicts(outcome) == {"dlogits": "wrong"}
    assert not any("zoo knows" in d for d in diagnosis)
    line = next(d for d in diagnosis if d.startswith("dlogits: "))
    assert "gradient at 21 entries where the answer is exactly 0" in line     # 3 rows x V=7
    assert "a wrong mask; right everywhere else" in line


# ---- crashes and files that are not what they should be ------------------------------------

def test_a_crash_shows_the_learners_line_and_shapes_not_numpygpts_traceback(tmp_path):
    directory = write(tmp_path, {"linear": linear_with(dx="dx = dout @ x")})
    outcome, _ = check_one(directory, "linear")
    assert outcome.status == "crashed"
    text = "\n".join(outcome.message)
    assert outcome.message[0].startswith("ValueError: matmul")
    assert "at 01_linear.py line 6, in linear_backward:" in text
    assert "    dx = dout @ x" in text and "where dout (2, 3, 4), x (2, 3, 4)" in text
    assert "Traceback" not in text and "numpygpt/" not in text


@pytest.mark.parametrize("text,said", [
    ("def linear_backward(dout, cache)\n    pass\n", "01_linear.py does not parse: "),
    ("import numpy\n", "01_linear.py defines no function linear_backward"),
    ("raise SystemExit(3)\n", "SystemExit: 3"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError: No module named"),
])
def test_a_file_that_does_not_load_is_told_in_the_learners_terms(tmp_path, text, said):
    outcome, _ = check_one(write(tmp_path, {"linear": text}), "linear")
    assert outcome.status == "crashed" and outcome.message[0].startswith(said), outcome.message


def test_an_endless_loop_is_stopped_at_the_learners_line(tmp_path, monkeypatch):
    import numpygpt.exercises.check as check
    monkeypatch.setattr(check, "TIME_LIMIT", 0.2)
    text = "def linear_backward(dout, cache):\n    while True:\n        pass\n"
    outcome, _ = check_one(write(tmp_path, {"linear": text}), "linear")
    assert outcome.status == "crashed"
    assert outcome.message[0] == "TimeLimit: still running after 0.2 s (an endless loop?)"
    assert outcome.message[1].startswith("at 01_linear.py line ")


def test_a_return_of_the_wrong_form_is_told(tmp_path):
    text = "def linear_backward(dout, cache):\n    return dout\n"
    outcome, _ = check_one(write(tmp_path, {"linear": text}), "linear")
    assert outcome.status == "wrong"
    assert outcome.message == ["linear_backward returned an array (2, 3, 4); expected a pair "
                               "(dx, grads)"]


def test_a_missing_gradient_and_an_extra_one_are_named(tmp_path):
    text = SOLUTIONS["linear"] + ("\nright = linear_backward\n\n\ndef linear_backward(dout, cache):\n"
                                  "    dx, g = right(dout, cache)\n"
                                  "    return dx, {'weight': g['weight'], 'b': g['bias']}\n")
    outcome, diagnosis = check_one(write(tmp_path, {"linear": text}), "linear")
    assert verdicts(outcome)["grads['bias']"] == "missing"
    assert outcome.message == ["linear_backward returned grads['b'], which the textbook does not"]


def test_the_file_text_is_what_start_writes(stubs):
    e = COURSE[0]
    assert open(os.path.join(stubs, e.filename)).read() == file_text(e, stubs)


# ---- answers written another way than the textbook's pass ----------------------------------

OWN = {
    "layernorm": '''import numpy as np


def layernorm_backward(dout, cache):
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    dweight = np.einsum("btc,btc->c", dout, xhat)
    dbias = np.einsum("btc->c", dout)
    dxhat = dout * weight
    dx = rstd / C * (C * dxhat - dxhat.sum(-1, keepdims=True)
                     - xhat * (dxhat * xhat).sum(-1, keepdims=True))
    return dx, {"weight": dweight, "bias": dbias}
''',
    "cross_entropy": '''import numpy as np


def cross_entropy_backward(cache):
    logits, labels, ignore_index = cache
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    dlogits = e / e.sum(axis=-1, keepdims=True)
    b, t = np.nonzero(labels != ignore_index)
    dlogits[b, t, labels[b, t]] -= 1
    dlogits[labels == ignore_index] = 0
    return dlogits / len(b)
''',
    "attention_core": '''import math

import numpy as np


def causal_attention_backward(dy, cache):
    q, k, v, P = cache
    dv = np.einsum("bhts,bhtd->bhsd", P, dy)
    dP = np.einsum("bhtd,bhsd->bhts", dy, v)
    dS = P * dP - P * np.einsum("bhts,bhts->bht", P, dP)[..., None]
    dq = np.einsum("bhts,bhsd->bhtd", dS, k) / math.sqrt(q.shape[-1])
    dk = np.einsum("bhts,bhtd->bhsd", dS, q) / math.sqrt(q.shape[-1])
    return (dq, dk, dv), {}
''',
    "tied_lm_head": '''import numpy as np

from numpygpt.layers import embedding_backward, layernorm_backward, lm_head_backward


def tied_backward(dlogits, cache):
    emb_cache, ln_f_cache, head_cache = cache
    dh, g_head = lm_head_backward(dlogits, head_cache)
    dx, g_ln = layernorm_backward(dh, ln_f_cache)
    _, g_emb = embedding_backward(dx, emb_cache)
    return None, {"wte.weight": g_emb["wte.weight"] + g_head["weight"],
                  "wpe.weight": g_emb["wpe.weight"],
                  "ln_f.weight": g_ln["weight"], "ln_f.bias": g_ln["bias"]}
''',
}


@pytest.mark.parametrize("name", list(OWN))
def test_an_answer_written_another_way_passes(tmp_path, name):
    outcome, _ = check_one(write(tmp_path, {name: OWN[name]}), name)
    assert outcome.status == "passed", (outcome.message, verdicts(outcome))
    assert all(r.verdict in ("exact", "close") for r in outcome.tensors)
    assert all(r.error < 1e-13 for r in outcome.tensors)     # rounding, far below CLOSE


@pytest.mark.parametrize("dq,seen", [
    ("dS @ k", "1.732 x the answer (= sqrt(D))"),                # dk scaled, dq not: not the zoo's
    ("dS @ k * math.sqrt(D)", "3 x the answer (= D)"),
])
def test_a_factor_is_named_by_the_problems_sizes(tmp_path, dq, seen):
    text = OWN["attention_core"].replace(
        'dq = np.einsum("bhts,bhsd->bhtd", dS, k) / math.sqrt(q.shape[-1])',
        f"D = q.shape[-1]\n    dq = {dq}")
    outcome, diagnosis = check_one(write(tmp_path, {"attention_core": text}), "attention_core")
    assert [n for n, v in verdicts(outcome).items() if v == "wrong"] == ["dq"]
    assert f"dq: a constant factor off: {seen}" in diagnosis


@pytest.mark.parametrize("value", ["None", "(None, None)", "({}, {})", "'hello'",
                                   "(np.zeros(3), {'weight': 'abc', 1: object()})",
                                   "((1, 2, 3), {})", "(np.full((2, 3, 4), np.nan), {})"])
def test_whatever_a_backward_returns_is_reported_never_raised(tmp_path, value):
    for e in COURSE:
        text = f"import numpy as np\n\n\ndef {e.function}(*args):\n    return {value}\n"
        outcome, diagnosis = check_one(write(tmp_path, {e.name: text}), e.name)
        assert outcome.status == "wrong", (e.name, outcome.status, outcome.message)
        assert outcome.message or any(r.verdict in ("wrong", "missing") for r in outcome.tensors)
