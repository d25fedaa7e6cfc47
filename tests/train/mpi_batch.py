"""The batch the data-parallel tests split: float64, an SFT batch whose rows count very
different numbers of targets, and whose first three rows count none (their answers are
masked too), so that with 2 or 3 ranks rank 0 has nothing to count at all."""
import numpy as np

import numpygpt as ng


def model_and_batch():
    config = ng.GPTConfig(vocab_size=31, n_positions=24, n_embd=16, n_head=2, n_layer=2)
    model = ng.GPT(config, seed=3, dtype=np.float64)
    rng = np.random.default_rng(7)
    examples = [(rng.integers(0, 30, 14), rng.integers(0, 30, 1)),    # 1 counted target
                (rng.integers(0, 30, 2), rng.integers(0, 30, 9)),     # 9
                (rng.integers(0, 30, 5), rng.integers(0, 30, 4)),     # 4
                (rng.integers(0, 30, 3), rng.integers(0, 30, 12)),    # 12
                (rng.integers(0, 30, 6), rng.integers(0, 30, 2))]     # 2
    ids, labels, mask, pos = ng.sft_batch(examples, pad_id=30)
    labels[:3] = -100                                                 # rows 0-2 count nothing
    return model, {"input_ids": ids, "labels": labels, "attention_mask": mask,
                   "position_ids": pos}
