"""Training-step time, FLOP/s and memory of numpygpt against PyTorch eager.

    python benchmarks/step_time.py --configs tiny,small,gpt2,gpt2-1k --repeats 3 --out results/

The same as `numpygpt bench-step` (same options, same errors, same exit codes); see
numpygpt/bench/step.py for what is measured and numpygpt/cli/bench.py for the command.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpygpt.cli import main as numpygpt_main  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return numpygpt_main(["bench-step", *argv])


if __name__ == "__main__":
    sys.exit(main())
