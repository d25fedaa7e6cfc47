# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The lesson, on real numbers
#
# numpygpt grew from a short lesson, *LLM basics 01: GPT data flow and loss computation, and
# how SFT handles it*. This notebook runs each of its claims on a real model and checks each
# with an `assert`, so a claim that stopped holding would stop the notebook:
#
# 1. sequence length does not change the network, only its cost;
# 2. the data flow `(1, 10) -> (1, 10, 768) -> ... -> (1, 10, 50000)`;
# 3. pre-training labels `[x2, x3, x4, -100]`;
# 4. SFT labels, in the two forms the lesson writes them;
# 5. masking the prompt with -100 equals "start predicting where the prompt ends".
#
# The same, from the shell: `numpygpt tour`, `numpygpt dataflow`, `numpygpt labels`.

# %%
import numpy as np
import numpygpt as ng
from numpygpt.layers import sub, embedding_forward, layernorm_forward, lm_head_forward, cross_entropy

tok = ng.ByteTokenizer()          # 256 bytes + <|eot|> (256): a vocabulary of 257

# %% [markdown]
# ## 1. Sequence length does not change the network
#
# A `GPTConfig` says how wide and how deep the network is; it has no sequence length. The same
# parameters run on 5, 10 or 20 tokens; only the attention scores, one per (query, key) pair,
# grow as T^2. (`n_positions` is the size of GPT-2's learned position table: the one thing that
# ties a model to a maximum length; `pos_encoding="rope"` has no table.)

# %%
config = ng.GPTConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_head=4, n_layer=2)
model = ng.GPT(config, seed=0)
n_params = model.num_params()
for T in (5, 10, 20):
    ids = np.resize(tok.encode("Hello GPT!"), (1, T))
    logits = model.logits(ids)
    print(f"T={T:<3} logits {logits.shape}  parameters {n_params:,}  attention scores "
          f"{(1, config.n_head, T, T)}: {config.n_head * T * T} numbers per layer")
    assert logits.shape == (1, T, config.vocab_size) and model.num_params() == n_params

# %% [markdown]
# The position table is the one exception: GPT-2's learned `wpe` has `n_positions` rows, and a
# longer sequence has no row to read. A relative encoding (RoPE: q and k rotated by an angle
# that grows with the position) has no table, and the same parameters run at any length.

# %%
import dataclasses

short = dataclasses.replace(config, n_positions=16)
learned, rope = ng.GPT(short, seed=0), ng.GPT(dataclasses.replace(short, pos_encoding="rope"), seed=0)
long_ids = np.resize(tok.encode("Hello GPT!"), (1, 40))
try:
    learned.logits(long_ids)
    raise AssertionError("a learned table of 16 rows ran 40 positions")
except ValueError as e:
    print("learned positions:", e)
print("rope positions: logits", rope.logits(long_ids).shape, "from", f"{rope.num_params():,}", "parameters")
assert "wpe.weight" not in rope.params and rope.logits(long_ids).shape == (1, 40, config.vocab_size)

# %% [markdown]
# ## 2. The data flow at the lesson's sizes
#
# Batch 1, 10 tokens, width 768, vocabulary 50,000 (GPT-2's width; 2 of its 12 blocks, which is
# enough to see that every block keeps the shape). Each stage is run by hand with the layer
# functions of `numpygpt/layers/`, and the result must equal `GPT.logits`.

# %%
lesson = ng.GPTConfig(vocab_size=50000, n_positions=1024, n_embd=768, n_head=12, n_layer=2)
big = ng.GPT(lesson, seed=0)
p = big.params
ids = tok.encode("Hello GPT!")[None]                                   # 10 bytes
print(f"{'ids':<28}{ids.shape}")
assert ids.shape == (1, 10)

x, _ = embedding_forward(ids, {k: p[k] for k in ("wte.weight", "wpe.weight")})
print(f"{'embedding wte[ids] + wpe[t]':<28}{x.shape}")
assert x.shape == (1, 10, 768)

for i in range(lesson.n_layer):
    x, _ = ng.block_forward(x, sub(p, f"h.{i}"), lesson)
    print(f"{f'block h.{i}':<28}{x.shape}")
    assert x.shape == (1, 10, 768)                                     # every layer keeps it

x, _ = layernorm_forward(x, sub(p, "ln_f"))
logits, _ = lm_head_forward(x, {"weight": p["wte.weight"]})            # tied: lm_head = wte
print(f"{'lm_head x @ wte^T':<28}{logits.shape}")
assert logits.shape == (1, 10, 50000)                                  # one distribution per position

assert np.array_equal(logits, big.logits(ids))
print("the stage-by-stage logits equal GPT.logits(ids) exactly")

# %% [markdown]
# `numpygpt.dataflow` counts the same stages without running them: shapes, parameters, FLOPs
# and the bytes each keeps for the backward (`numpygpt dataflow` prints this table).

# %%
from numpygpt.dataflow import stages

rows = stages(lesson, batch_size=1, seq_len=10)
for r in rows:
    print(f"{r['name']:<26}{str(r['shape']):<16}{r['params']:>12,} params {r['fwd_flops']:>14,} FLOPs")
assert [r["shape"] for r in rows[:4]] == [(1, 10), (1, 10, 768), (1, 10, 768), (1, 10, 768)]
assert (1, 10, 50000) in [r["shape"] for r in rows]
assert sum(r["params"] for r in rows) == big.num_params()
del big, p, x, logits                                                  # ~200 MB

# %% [markdown]
# ## 3. Pre-training labels
#
# Position t predicts token t+1; the last position has nothing to predict, so its label is
# -100, the value the loss ignores. numpygpt's labels are **aligned**: label t is the target
# of logits t.

# %%
x1, x2, x3, x4 = 11, 12, 13, 14
ids = np.array([[x1, x2, x3, x4]])
labels = ng.causal_lm_labels(ids)
print("input ", ids[0])
print("labels", labels[0])
assert labels.tolist() == [[x2, x3, x4, -100]]
assert ng.count_targets(labels) == 3

# %% [markdown]
# ## 4. SFT labels, in both forms
#
# Question and answer are one sequence `[Q1, Q2, Q3, A1, A2, A3]`. The lesson writes the SFT
# labels as HuggingFace does, **unshifted** (the model shifts them itself):
# `[-100, -100, -100, A1, A2, A3]`. In numpygpt's aligned form the same targets read
# `[-100, -100, A1, A2, A3, -100]`: the last question token Q3 predicts A1, and that target
# counts. (More in docs/labels.md.)

# %%
Q1, Q2, Q3, A1, A2, A3 = 81, 82, 83, 65, 66, 67
prompt, answer = np.array([Q1, Q2, Q3]), np.array([A1, A2, A3])
ids, aligned = ng.sft_labels(prompt, answer)
_, hf = ng.sft_labels_hf(prompt, answer)
print("input  ", ids)
print("aligned", aligned)
print("HF     ", hf)
assert ids.tolist() == [Q1, Q2, Q3, A1, A2, A3]
assert aligned.tolist() == [-100, -100, A1, A2, A3, -100]
assert hf.tolist() == [-100, -100, -100, A1, A2, A3]
assert np.array_equal(ng.labels_from_hf(hf), aligned)                  # one shift apart

# %% [markdown]
# Both forms give the same loss: HuggingFace drops the last row of logits and the first label
# (`logits[:, :-1]` against `labels[:, 1:]`); the aligned form scores every row as it is.

# %%
model64 = ng.GPT(config, seed=0, dtype=np.float64)
logits = model64.logits(ids[None])                                     # (1, 6, 257)
loss_aligned, _ = cross_entropy(logits, aligned[None])
loss_hf, _ = cross_entropy(logits[:, :-1], hf[None, 1:])
print(f"aligned form {loss_aligned:.12f}   HuggingFace form {loss_hf:.12f}")
assert abs(loss_aligned - loss_hf) < 1e-12
assert ng.count_targets(aligned[None]) == 3

# %% [markdown]
# The two classic mistakes raise no error; they only change what is learned:
#
# - masking Q3 as well ("the whole question is -100") drops the target A1: the first answer
#   token is never taught;
# - shifting aligned labels again trains position t to predict token t+2.

# %%
off_by_one = aligned.copy()
off_by_one[2] = -100
print("Q3 masked too:", off_by_one, "->", ng.count_targets(off_by_one[None]), "targets, A1 never learned")
assert A1 not in off_by_one

shifted_twice = ng.labels_from_hf(aligned)
print("shifted twice:", shifted_twice, "-> position 2 (Q3) now predicts", shifted_twice[2], "= A2")
assert shifted_twice[2] == A2

# %% [markdown]
# ## 5. Masking the prompt = starting to predict where the prompt ends
#
# The lesson asks why SFT masks the question with -100 instead of "seeing the whole question,
# then predicting from where it ends". They are the same computation. The causal mask means
# position t never sees t+1, t+2, ...: so the loss of one forward pass over the whole masked
# sequence equals scoring each answer token after a forward pass over its prefix alone.

# %%
prompt, answer = tok.encode("2+2="), tok.encode("four")
ids, labels = ng.sft_labels(prompt, answer, eot_id=tok.eot_id)          # answer + <|eot|>
masked_sum = model64.loss(ids[None], labels[None], reduction="sum")      # one forward pass

prefix_sum = 0.0
for t in range(len(prompt) - 1, len(ids) - 1):                         # the last prompt token on
    context = ids[:t + 1]                                              # the prompt, the answer so far
    z = model64.logits(context[None])[0, -1]                           # the next-token logits
    nll = np.log(np.exp(z - z.max()).sum()) + z.max() - z[ids[t + 1]]   # -log p(next token)
    prefix_sum += nll
    print(f"context {tok.decode(context)!r:<12} target {tok.token_str(ids[t + 1]):<8} -log p {nll:.12f}")
print(f"masked sequence, one pass: {masked_sum:.12f}")
print(f"prefix by prefix:          {prefix_sum:.12f}")
assert abs(masked_sum - prefix_sum) < 1e-10

# %% [markdown]
# The inference way computes the same: prefill the prompt into the KV cache, then feed the
# answer one token at a time (`answer_loss_by_prefill` in numpygpt/train/sft.py), against the
# masked full-sequence loss of a batch of SFT examples.

# %%
from numpygpt.train.sft import AdditionTask, answer_loss_by_prefill, answer_loss_masked

examples = AdditionTask(n_test=4, seed=0).test
by_prefill = answer_loss_by_prefill(model64, examples)
masked = answer_loss_masked(model64, examples)
print(examples)
print(f"masked batch {masked:.12f}   prefill + one token at a time {by_prefill:.12f}")
assert abs(masked - by_prefill) < 1e-10

# %% [markdown]
# ## 6. The picture: attention, and what the -100 labels do to its gradient
#
# `numpygpt.pictures.attention_maps` runs one forward and backward and keeps, for every block
# and head, the attention probabilities P (query t in row t, key s in column s) and their
# gradient dS. Two examples in one right-padded batch: a pre-training text, and the SFT
# example above. (Weights at unit scale, `gradcheck.unit_scale_params`, so that P shows some
# contrast: at GPT-2's initialisation each row is nearly uniform.) What to see:
#
# - **the causal triangle**: a query never sees a later key, so P and dS are 0 above the diagonal;
# - **the padding**: the pre-training row is shorter; its padding keys get no attention;
# - **the prompt counts for nothing**: in the last block, the rows of dS of the positions whose
#   label is -100 are exactly 0: their outputs reach no counted logit. In the first block they
#   are not: the answer reads the prompt through them.

# %%
import tempfile
from pathlib import Path
from IPython.display import Image, display
from numpygpt import gradcheck
from numpygpt.pictures import attention_maps, draw_attention_maps

pretrain_ids = tok.encode("To be or not")
sft_ids, sft_labels = ng.sft_labels(tok.encode("2+2="), tok.encode("four"), eot_id=tok.eot_id)
batch_ids, mask = ng.pad_sequences([pretrain_ids, sft_ids], pad_value=tok.eot_id)
batch_labels, _ = ng.pad_sequences([ng.causal_lm_labels(pretrain_ids[None])[0], sft_labels], pad_value=-100)
pictured = ng.GPT(config, seed=0, dtype=np.float64)
gradcheck.unit_scale_params(pictured.params, np.random.default_rng(0))
maps = attention_maps(pictured, batch_ids, batch_labels, attention_mask=mask)
P, dS = maps["probs"], maps["dscores"]                                  # (L, B, H, T, T)
print("P", P.shape, " dS", dS.shape)

later = ~np.tril(np.ones(P.shape[-2:], dtype=bool))
assert np.all(P[..., later] == 0) and np.all(dS[..., later] == 0)     # the causal triangle
real = mask.astype(bool)
rows = P.sum(axis=-1)                                                  # (L, B, H, T)
assert np.allclose(np.where(real[None, :, None, :], rows, 1), 1)       # each real query's row: a distribution
assert np.all(P[:, 0][..., ~real[0]] == 0)                            # padding keys: no attention
uncounted = (batch_labels[1] == -100) & real[1]                        # the SFT example's prompt (and its last token)
assert np.all(dS[-1, 1][:, uncounted] == 0)                            # last block: count for nothing
assert np.abs(dS[0, 1][:, uncounted]).max() > 0                        # first block: read by the answer

out_dir = Path(tempfile.mkdtemp())
for example, name in ((0, "pre-training"), (1, "SFT")):
    names = [tok.token_str(t) for t in batch_ids[example]]
    path = draw_attention_maps(maps, example, out_dir / f"{name}.png", tokens=names,
                               title=f"{name} example: P and dS per block and head")
    display(Image(filename=str(path)))
