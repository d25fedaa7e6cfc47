"""Training-step time, FLOP/s and memory of numpygpt against PyTorch eager.

    python benchmarks/step_time.py --configs tiny,small,gpt2,gpt2-1k --repeats 3 --out results/

Same as `numpygpt bench-step`; see numpygpt/bench_step.py for what is measured.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numpygpt.bench_step import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
