"""Learn by doing: a course through the backward passes, checked tensor by tensor and
diagnosed from the bug zoo.

    course.py     the twelve exercises in order: problems, references, the zoo's bugs of each
    stubs.py      what each stub's docstring asks for, with the shapes
    files.py      write_course(DIR): one file per exercise, never overwriting one
    check.py      check_file(exercise, path): load the learner's file, run, compare
    diagnose.py   diagnose(outcome): the zoo's bug it matches, or what the numbers show
    report.py     the lines `numpygpt exercise check` and `list` print

The textbook tier (numpygpt/layers/, model.py) is every exercise's solution and reference.
"""
from .course import COURSE, BY_NAME, Exercise, Problem, find
from .files import file_text, write_course
from .check import CLOSE, Outcome, TensorResult, check_file, run_reference
from .diagnose import diagnose
from .report import check_course, format_check, format_outcome, format_list
