"""The workspace: every array a step needs, made once and handed out again at every later step,
as llm.c allocates its activations and gradients once.

Why: a fresh NumPy array of more than a few hundred KiB is new memory from the system, and each
of its 4 KiB pages costs a page fault the first time it is written (a GPT-2 step that makes its
arrays afresh takes tens of thousands). A buffer reused from the step before costs none.

    ws = Workspace()
    a = ws("h.0.ln_1.out", (B, T, C), np.float32)     # made at the first call
    a = ws("h.0.ln_1.out", (B, T, C), np.float32)     # the same memory at every later one

A name is one buffer. A request for fewer elements than the buffer holds (a shorter batch, a
decoding step) is a view of its start; a larger one replaces it. What a kernel returns from
the workspace is therefore valid until the same name is asked for again: the next step.

FRESH is the workspace that keeps nothing: each request a new array. It is every kernel's
default, so a kernel called alone behaves as its textbook twin does.
"""
import math

import numpy as np


class Workspace:
    """Named buffers, each made once (or when a request outgrows it) and reused after."""

    def __init__(self, keep=True):
        self.keep = keep
        self.buffers = {}        # name -> flat array
        self.allocations = 0     # arrays made so far: constant from the second step on

    def __call__(self, name, shape, dtype):
        """An uninitialised array of this shape and dtype, the buffer `name`'s memory."""
        dtype = np.dtype(dtype)
        size = math.prod(shape)                       # a Python int (np.prod costs ~10 us a call)
        flat = self.buffers.get(name)
        if flat is None or flat.dtype != dtype or flat.size < size:
            flat = np.empty(size, dtype)
            self.allocations += 1
            if self.keep:
                self.buffers[name] = flat
        return flat[:size].reshape(shape)

    def zeros(self, name, shape, dtype):
        """As a call, filled with zeros."""
        a = self(name, shape, dtype)
        a.fill(0)
        return a

    def nbytes(self):
        return sum(a.nbytes for a in self.buffers.values())


FRESH = Workspace(keep=False)
