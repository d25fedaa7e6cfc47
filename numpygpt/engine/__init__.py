"""The engine: the textbook's math, computed fast. Every speed device of numpygpt lives here,
none in numpygpt/layers/, model.py or train/optim.py (the textbook, written to be read):

    workspace.py       Workspace: every buffer of a step made once, reused by every later step
    parallel.py        threads: the one seam where both cores share NumPy's work
    linear.py          rows flattened to one BLAS call, results into the workspace
    embedding.py       np.take into the workspace; the tied wte gradient added where it lands
    gelu.py            in-place passes, a cache-sized tile at a time, on every core
    layernorm.py       rows on every core, into workspace buffers
    attention.py       the standard core a head at a time on every core, q/k/v as views, P in place
    tiled_attention.py exp2, wide key chunks, sums and shifts folded into matmuls
    chunked_loss.py    one reused logits buffer, dW accumulated in slices
    adamw.py           the AdamW update in place, chunk by chunk, on every core
    model.py           Engine: the GPT's forward and backward from these kernels, one workspace

Each kernel names its textbook twin in its docstring, and tests/engine/ holds each equal to
its twin (float64 to 1e-12, float32 to rounding) at 1, 2 and 3 threads.

The calling style, said once: the textbook's (out, cache = f(x, p); dx, grads = g(dout,
cache)), with the kernel's name ending in `_fast` and two more keyword arguments: `ws`, the
Workspace its results and scratch come from (default FRESH: new arrays, as the twin), and
`name`, the prefix of its buffers there (e.g. "h.3.attn"). A few also take `out=`, a buffer
to write into, or `into=`, a gradient to add to. What the Engine returns lives in its
workspace and is overwritten by its next step (as llm.c's activations and gradients are
allocated once): copy a result to keep it.
"""
from .model import Engine
