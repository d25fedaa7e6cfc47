"""`numpygpt exercise`: the course through the backward passes (numpygpt/exercises/).

    numpygpt exercise start DIR           one file per exercise, a stub to fill in each
    numpygpt exercise check DIR [NAME..]  every tensor against the textbook's, and the diagnosis
    numpygpt exercise list DIR            the course and what is done
"""
import os

from ..exercises import COURSE, find, write_course, check_course, format_check, format_list
from .common import check_output_dir

ACTIONS = ("start", "check", "list")


def add_arguments(p):
    p.add_argument("action", choices=ACTIONS, metavar="ACTION",
                   help="start: write the exercise files into DIR (never overwriting one); "
                        "check: run your backwards against the textbook's (exit 1 unless every "
                        "one checked passes); list: the course and what is done")
    p.add_argument("directory", metavar="DIR", help="the directory of your exercise files")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="check: only these exercises (name or number: "
                        + ", ".join(e.name for e in COURSE) + ")")


def run(args):
    if args.names and args.action != "check":
        raise ValueError(f"NAME ({' '.join(args.names)}) is only used with check")
    if args.action == "start":
        return start(args.directory)
    if not os.path.isdir(args.directory):
        raise ValueError(f"DIR {args.directory!r} is not a directory; write the exercises "
                         f"first: numpygpt exercise start {args.directory}")
    exercises = [find(n) for n in args.names] if args.names else COURSE
    outcomes = check_course(args.directory, list(dict.fromkeys(exercises)), seed=args.seed)
    if args.action == "list":
        print("\n".join(format_list(args.directory, outcomes)))
        return 0
    print("\n".join(format_check(args.directory, outcomes)))
    return 0 if all(o.passed for o, _ in outcomes) else 1


def start(directory):
    check_output_dir("DIR", directory)
    done = write_course(directory)
    print(f"numpygpt exercise start {directory}: {len(COURSE)} exercises, one file each; a "
          f"file that exists is yours and is kept")
    for name, what in done:
        print(f"  {what} {os.path.join(directory, name)}")
    first = COURSE[0]
    print(f"begin with {os.path.join(directory, first.filename)}, then: numpygpt exercise "
          f"check {directory} {first.name}")
    return 0
