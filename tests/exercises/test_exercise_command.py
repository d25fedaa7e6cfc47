"""`numpygpt exercise start|check|list`: what it prints and its exit codes."""
import os

import pytest

from numpygpt.cli import main
from numpygpt.exercises import COURSE

from conftest import SOLUTIONS, with_bug, write


def run(capsys, *argv):
    code = main(["exercise", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_start_writes_the_course_and_keeps_what_exists(tmp_path, capsys):
    d = str(tmp_path / "course")
    code, out, _ = run(capsys, "start", d)
    assert code == 0 and sorted(os.listdir(d)) == sorted(e.filename for e in COURSE)
    assert out.count("  wrote ") == len(COURSE)
    code, out, _ = run(capsys, "start", d)
    assert code == 0 and out.count("  kept ") == len(COURSE) and "wrote" not in out


def test_check_stubs_exits_1_and_says_not_started(stubs, capsys):
    code, out, _ = run(capsys, "check", stubs)
    assert code == 1
    assert " 1 linear (01_linear.py): not started" in out
    assert out.rstrip().endswith(f"passed 0 of {len(COURSE)}; not started {len(COURSE)}")


def test_check_the_solutions_exits_0(solved, capsys):
    code, out, _ = run(capsys, "check", solved)
    assert code == 0, out
    assert out.rstrip().endswith(f"passed {len(COURSE)} of {len(COURSE)}")


def test_check_names_only_those_and_passes_on_them(tmp_path, stubs, capsys):
    write(stubs, {"gelu": SOLUTIONS["gelu"], "layernorm": with_bug("layernorm",
                                                                   "layernorm-no-mean-terms")})
    code, out, _ = run(capsys, "check", stubs, "gelu", "3")      # a name and its number: once
    assert code == 0 and out.count("gelu (03_gelu.py): passed") == 1 and "linear" not in out
    code, out, _ = run(capsys, "check", stubs, "04_layernorm.py")
    assert code == 1
    assert "4 layernorm (04_layernorm.py): wrong" in out
    assert "    dx               wrong  relative error" in out
    assert "the zoo knows this one: layernorm-no-mean-terms:" in out


def test_list_shows_the_course_what_is_done_and_the_solutions(stubs, capsys):
    write(stubs, {"linear": SOLUTIONS["linear"]})
    code, out, _ = run(capsys, "list", stubs)
    assert code == 0
    assert f"1 of {len(COURSE)} done" in out
    assert " 1  01_linear.py" in out and "done" in out.splitlines()[2]
    for e in COURSE:
        assert f"solution: {e.solution}" in out
    assert "next: 02_embedding.py" in out


@pytest.mark.parametrize("argv,said", [
    (["check", "DIR", "nope"], "NAME 'nope' is not an exercise"),
    (["list", "DIR", "linear"], "NAME (linear) is only used with check"),
    (["check", "MISSING"], "is not a directory; write the exercises first"),
    (["start", "FILE"], "exists and is not a directory"),
])
def test_bad_arguments_are_one_line_and_exit_2(stubs, tmp_path, capsys, argv, said):
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [{"DIR": stubs, "MISSING": str(tmp_path / "none"), "FILE": str(f)}.get(a, a)
            for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("numpygpt exercise: error: ") and said in err and err.count("\n") == 1
