"""numpygpt: a GPT in pure NumPy with a hand-written, gradient-checked backward for every layer.

    layers/     the layers, each a forward/backward pair (start with layers/__init__.py)
    model.py    the GPT: ids -> logits -> loss, and back
    config.py   what a GPT is (GPTConfig, PRESETS) and how it is computed (Execution)
    labels.py   next-token labels, -100 where nothing is learned
    gradcheck/  finite-difference checks of any layer, your own included
    exercises/  a course: write each backward yourself, checked and diagnosed from the bug zoo
    decode/     the KV cache and sampling
    train/      AdamW, data, the training loop, checkpoints
    io/         safetensors, HuggingFace GPT-2 directories, tokenizers
    bench/      benchmarks (attention scaling, the training step, the PyTorch twin)
    cli/        the `numpygpt` command
"""
from .config import GPTConfig, Execution, PRESETS, GPT2_124M, param_shapes
from .model import GPT, gpt_forward, gpt_backward, block_forward, block_backward, init_params
from .layers import (embedding_forward, embedding_backward, layernorm_forward, layernorm_backward,
                     linear_forward, linear_backward, gelu_forward, gelu_backward, mlp_forward,
                     mlp_backward, rope_cos_sin, rope_forward, rope_backward,
                     causal_attention_forward, causal_attention_backward, attention_forward,
                     attention_backward, tiled_attention_forward, tiled_attention_backward,
                     lm_head_forward, lm_head_backward, cross_entropy, count_targets,
                     lm_head_cross_entropy)
from .labels import (IGNORE_INDEX, causal_lm_labels, sft_labels, sft_labels_hf, labels_from_hf,
                     pad_sequences, position_ids_from_mask, sft_batch)
from .io import ByteTokenizer
from .decode import generate
from . import gradcheck

__version__ = "0.1.0"
