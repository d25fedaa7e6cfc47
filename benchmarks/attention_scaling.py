"""Attention time and memory against sequence length N: textbook vs tiled (vs PyTorch SDPA).

    python benchmarks/attention_scaling.py                  # N = 128..8192, B=1, H=4, D=64
    python benchmarks/attention_scaling.py --min-n 1024 --max-n 16384 --no-torch

The same as `numpygpt bench-attention`; all the code is in numpygpt/bench_attention.py
(so the test suite runs it on tiny sizes). Writes JSON, CSV and a PNG into --out.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpygpt import bench_attention  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_attention.add_arguments(parser)
    return bench_attention.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
