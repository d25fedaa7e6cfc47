"""Attention time and memory against sequence length N: standard vs tiled (vs PyTorch SDPA).

    python benchmarks/attention_scaling.py                  # N = 128..8192, B=1, H=4, D=64
    python benchmarks/attention_scaling.py --min-n 1024 --max-n 16384 --no-torch

The same as `numpygpt bench-attention` (same options, same errors, same exit codes); the
measuring is in numpygpt/bench/attention.py, the command in numpygpt/cli/bench.py (so the
test suite runs it on tiny sizes). Writes JSON, CSV and a PNG into --out.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpygpt.cli import main as numpygpt_main  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return numpygpt_main(["bench-attention", *argv])


if __name__ == "__main__":
    sys.exit(main())
