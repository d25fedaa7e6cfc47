"""The textbook's solution of each exercise, in the form a learner writes it: a file that
defines the exercise's backward. Most import the textbook's function by its name; the
composite ones are written out, calling the textbook's pieces through their own globals, so
that a zoo bug can be put into them by rebinding one name (see with_bug)."""
import inspect
import os

import pytest

from numpygpt.exercises import COURSE, write_course
from numpygpt.gradcheck import BUGS
from numpygpt.layers import attention_backward
from numpygpt.model import gpt_backward

SOLUTIONS = {
    "linear": "from numpygpt.layers import linear_backward\n",
    "embedding": "from numpygpt.layers import embedding_backward\n",
    "gelu": "from numpygpt.layers import gelu_backward\n",
    "layernorm": "from numpygpt.layers import layernorm_backward\n",
    "cross_entropy": (
        "from numpygpt.layers import cross_entropy\n\n\n"
        "def cross_entropy_backward(cache):\n"
        "    logits, labels, ignore_index = cache\n"
        "    loss, dlogits = cross_entropy(logits, labels, ignore_index)\n"
        "    return dlogits\n"),
    "attention_core": "from numpygpt.layers import causal_attention_backward\n",
    "attention": ("import numpy as np\n\n"
                  "from numpygpt.layers import (linear_backward, split_heads, merge_heads,\n"
                  "                             prefixed, rope_backward, causal_attention_backward,\n"
                  "                             tiled_attention_backward)\n"
                  "from numpygpt.layers.attention import repeat_kv_backward\n\n\n"
                  + inspect.getsource(attention_backward)),
    "mlp": "from numpygpt.layers import mlp_backward\n",
    "block": "from numpygpt.model import block_backward\n",
    "tied_lm_head": (
        "from numpygpt.model import gpt_backward\n\n\n"
        "def tied_backward(dlogits, cache):\n"
        "    emb_cache, ln_f_cache, head_cache = cache\n"
        "    top = ('standard', dlogits, head_cache)\n"
        "    return None, gpt_backward((top, ln_f_cache, [], emb_cache, True))\n"),
    "gpt": ("from numpygpt.layers import (prefixed, lm_head_backward, layernorm_backward,\n"
            "                             embedding_backward)\n"
            "from numpygpt.model import block_backward\n\n\n" + inspect.getsource(gpt_backward)),
    "tiled_attention": "from numpygpt.layers import tiled_attention_backward\n",
}


def with_bug(name, bug):
    """The solution of exercise `name` with the zoo's bug `bug` in it: each right function
    the bug swaps is rebound, in the learner's file, to the wrong one."""
    lines = [f"from numpygpt.gradcheck.bugs import {wrong.__name__} as {right.__name__}"
             for right, wrong in BUGS[bug].swaps]
    return SOLUTIONS[name] + "\n" + "\n".join(lines) + "\n"


def write(directory, files):
    """{exercise name: text} -> the files, in `directory`."""
    os.makedirs(directory, exist_ok=True)
    by_name = {e.name: e for e in COURSE}
    for name, text in files.items():
        with open(os.path.join(directory, by_name[name].filename), "w") as f:
            f.write(text)
    return str(directory)


@pytest.fixture
def stubs(tmp_path):
    directory = str(tmp_path / "course")
    write_course(directory)
    return directory


@pytest.fixture
def solved(tmp_path):
    return write(tmp_path / "solved", SOLUTIONS)
