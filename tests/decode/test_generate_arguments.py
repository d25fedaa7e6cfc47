"""decode.generate refuses bad arguments before any work, naming the argument, the value and
where it is (an id >= V would index out of range; -1 would silently read the last row; a NaN
temperature would sample token 0 forever); the KV cache grows with the tokens made."""
import pytest

import numpygpt as ng
from numpygpt.decode import KVCache

CFG = ng.GPTConfig(vocab_size=17, n_positions=8, n_embd=8, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def model():
    return ng.GPT(CFG, seed=0)


@pytest.mark.parametrize("prompts, words", [
    ([[1, 2, 17]], "prompts[0][2] = 17 is outside [0, vocab_size=17)"),
    ([[3], [1, 99, 2]], "prompts[1][1] = 99 is outside [0, vocab_size=17)"),
    ([[-1, 2]], "prompts[0][0] = -1 is outside [0, vocab_size=17)"),
    ([[1.5]], "prompts[0] must be an integer array"),
    ([[]], "prompts[0] is empty"),
    ([], "prompts must be a non-empty list"),
    ([[1] * 9], "prompts[0] has 9 tokens, more than n_positions=8"),
])
def test_generate_refuses_bad_prompts_naming_the_id(model, prompts, words):
    with pytest.raises(ValueError) as e:
        ng.generate(model, prompts, 3)
    assert words in str(e.value)


@pytest.mark.parametrize("kw, words", [
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0, got -1"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"eot_id": -3}, "eot_id"),
])
def test_generate_refuses_bad_sampling_arguments(model, kw, words):
    args = {"max_new_tokens": 3, **kw}
    with pytest.raises(ValueError) as e:
        ng.generate(model, [[1, 2]], **args)
    assert words in str(e.value)


def test_a_long_rope_generation_allocates_as_it_goes():
    """max_new_tokens is a bound, not an allocation: the cache grows with the tokens made."""
    cfg = ng.GPTConfig(vocab_size=17, n_positions=8, n_embd=8, n_head=2, n_layer=1,
                       pos_encoding="rope")
    cache = KVCache(cfg, 1, 10 ** 12, initial=4)          # 10^12 slots would need terabytes
    assert cache.capacity == 4
    cache.extend(None, 3)
    cache.extend(None, 5)
    assert cache.length == 8 and cache.capacity == 8
    m = ng.GPT(cfg, seed=0)
    out = ng.generate(m, [[1, 2]], 40, eot_id=None)[0]
    assert len(out) == 40
