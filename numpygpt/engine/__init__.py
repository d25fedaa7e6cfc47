"""The engine: the textbook's math, computed fast. Every speed device of numpygpt lives here,
none in numpygpt/layers/, model.py or train/optim.py (the textbook, written to be read):

    parallel.py        threads: the one seam where both cores share NumPy's work
    gelu.py            in-place passes, a cache-sized tile at a time, on every core
    layernorm.py       rows on every core, into buffers made once
    attention.py       the standard core a head at a time on every core, P in one buffer in place
    tiled_attention.py exp2, wide key chunks, sums and shifts folded into matmuls
    chunked_loss.py    one reused logits buffer, dW accumulated in slices
    adamw.py           the AdamW update in place, chunk by chunk, on every core
    model.py           Engine: the GPT's forward and backward from these kernels

Each kernel names its textbook twin in its docstring, and tests/engine/ holds each equal to
its twin (float64 to 1e-12, float32 to rounding) at 1, 2 and 3 threads.

The calling style is the textbook's (out, cache = f(x, p); dx, grads = g(dout, cache)), with
two additions: a kernel may take `out=`, a buffer to write its result into, and what the
Engine returns may be its own buffers, overwritten by its next call (as llm.c's activations
and gradients are allocated once): copy a result to keep it.
"""
from .model import Engine
