"""numpygpt: a GPT in pure NumPy with a hand-written, gradient-checked backward for every layer."""
from .config import GPTConfig, GPT2_SMALL
from .model import GPT, gpt_forward, gpt_backward, init_params, param_shapes, lm_head_loss
from .embedding import embedding_forward, embedding_backward
from .layernorm import layernorm_forward, layernorm_backward
from .attention import (attention_forward, attention_backward, causal_attention_forward,
                        causal_attention_backward, split_heads, merge_heads)
from .rope import rope_cos_sin, rope_forward, rope_backward
from .mlp import mlp_forward, mlp_backward, gelu_forward, gelu_backward, linear_forward, linear_backward
from .block import block_forward, block_backward
from .lm_head import lm_head_forward, lm_head_backward
from .cross_entropy import cross_entropy, count_targets
from .labels import (IGNORE_INDEX, causal_lm_labels, sft_labels, sft_labels_hf, labels_from_hf,
                     pad_sequences, position_ids_from_mask, sft_batch)
from .tokenizer import ByteTokenizer
from . import gradcheck

__version__ = "0.1.0"
