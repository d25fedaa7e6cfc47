"""`numpygpt tour`: the seed's lesson, run on real numbers, one titled section each.

    dataflow   ids (B,T) -> embedding (B,T,C) -> blocks (B,T,C) -> ln_f -> logits (B,T,V)
    labels     pre-training and SFT labels from real text, aligned and HuggingFace forms
    loss       the cross-entropy on those labels and how many targets count
    masking    the seed's point 5: masked full-sequence loss == prompt given, answer scored
               token by token
    gradcheck  every parameter tensor of a whole model against finite differences (float64)
    attention, train, sft
               sections of other modules (`tour_section(write, seed)`), run when importable

`write(line)` prints one line; everything is deterministic for a given seed.
"""
import importlib

import numpy as np

from .config import GPTConfig
from .embedding import embedding_forward
from .block import block_forward
from .labels import pad_sequences, position_ids_from_mask
from .labels_table import make_example, table_lines, token_repr
from .layernorm import layernorm_forward
from .lm_head import lm_head_forward
from .model import GPT, block_params, lm_head_weight
from .tokenizer import ByteTokenizer

SECTIONS = ("dataflow", "labels", "loss", "masking", "gradcheck", "attention", "train", "sft")
EXTERNAL_SECTIONS = {   # section -> (module, title)
    "attention": ("numpygpt.bench_attention", "Attention cost grows as T^2 (a small sweep)"),
    "train": ("numpygpt.train", "Pre-training: a few steps, the loss falls"),
    "sft": ("numpygpt.sft", "SFT: a few steps on a generated task"),
}

PRETRAIN_TEXT = "The cat sat."
SFT_PROMPT, SFT_ANSWER = "2+2=", "four"     # the answer is followed by <|eot|>: learn to stop

TOK = ByteTokenizer()


def tour_config(seed_sizes=False):
    """The tour's model: byte vocabulary, tiny widths; or the seed's sizes (2 of GPT-2's 12 layers)."""
    if seed_sizes:
        return GPTConfig(vocab_size=50000, n_positions=1024, n_embd=768, n_head=12, n_layer=2)
    return GPTConfig(vocab_size=TOK.vocab_size, n_positions=64, n_embd=32, n_head=4, n_layer=2)


def title(write, number, text):
    write("")
    write(f"== {number}. {text} ==")


def fmt_shape(a):
    return str(tuple(int(d) for d in np.shape(a)))


# ---- 1. data flow -------------------------------------------------------------------------

def section_dataflow(write, seed=0, seed_sizes=False):
    cfg = tour_config(seed_sizes)
    model = GPT(cfg, seed=seed)
    p = model.params
    text = "Hello GPT!"                                      # 10 bytes: the seed's length
    ids = TOK.encode(text)[None]                             # (1, 10)
    B, T = ids.shape
    write(f"model: vocab_size={cfg.vocab_size:,} n_embd={cfg.n_embd} n_head={cfg.n_head} "
          f"n_layer={cfg.n_layer} ({model.num_params():,} parameters, float32)"
          + ("  [the seed's sizes; 2 of GPT-2's 12 layers]" if seed_sizes else
             "  [--seed-sizes: width 768, vocabulary 50,000]"))
    write(f"input: {text!r} -> {T} byte tokens, batch {B}")
    rows = [("ids", fmt_shape(ids), "token ids")]
    x, _ = embedding_forward(ids, p["wte.weight"], p["wpe.weight"])             # (B,T) -> (B,T,C)
    rows.append(("embedding wte[ids] + wpe[t]", fmt_shape(x), "one C-vector per token"))
    for i in range(cfg.n_layer):
        x, _ = block_forward(x, block_params(p, i), cfg.n_head, cfg.layer_norm_epsilon)  # (B,T,C)
        note = (f"attention scores inside: {(B, cfg.n_head, T, T)}, each query against every key"
                if i == 0 else "the width never changes")
        rows.append((f"h.{i} (ln_1, attn, ln_2, mlp)", fmt_shape(x), note))
    x, _ = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])               # (B,T,C)
    rows.append(("ln_f", fmt_shape(x), ""))
    logits, _ = lm_head_forward(x, lm_head_weight(p))                           # (B,T,V)
    rows.append(("lm_head x @ wte^T", fmt_shape(logits), "one next-token distribution per position"))
    for name, shape, note in rows:
        write(f"  {name:<30}{shape:<18}{note}")
    diff = float(np.abs(logits - model.logits(ids)).max())
    write(f"these stage-by-stage logits equal GPT.logits(ids): max |difference| = {diff:.1e}")
    write("sequence length does not change the network, only the cost:")
    for T2 in (5, 20):
        ids2 = np.resize(ids, (1, T2))
        write(f"  T={T2:<3} logits {fmt_shape(model.logits(ids2)):<16} same {model.num_params():,} "
              f"parameters; attention scores {(1, cfg.n_head, T2, T2)}")


# ---- 2. labels ----------------------------------------------------------------------------

def section_labels(write, seed=0):
    ids, aligned, hf, _ = make_example(PRETRAIN_TEXT)
    write(f"pre-training example {PRETRAIN_TEXT!r}: position t predicts token t+1; "
          f"the last has nothing to predict (-100)")
    for line in table_lines(ids, aligned, hf):
        write("  " + line)
    write("")
    ids, aligned, hf, n_prompt = make_example(SFT_PROMPT, SFT_ANSWER, eot=True)
    write(f"SFT example: prompt {SFT_PROMPT!r}, answer {SFT_ANSWER!r} + <|eot|>; the prompt is "
          f"masked with -100, so only the answer is learned")
    write("  (the last prompt token '=' predicts the first answer token: that target counts)")
    for line in table_lines(ids, aligned, hf, n_prompt):
        write("  " + line)


# ---- 3. loss ------------------------------------------------------------------------------

def tour_batch():
    """The two examples as one right-padded batch: ids, aligned labels, attention mask, positions."""
    pre_ids, pre_labels, _, _ = make_example(PRETRAIN_TEXT)
    sft_ids, sft_labels_, _, _ = make_example(SFT_PROMPT, SFT_ANSWER, eot=True)
    ids, mask = pad_sequences([pre_ids, sft_ids], pad_value=TOK.eot_id)
    labels, _ = pad_sequences([pre_labels, sft_labels_], pad_value=-100)
    return ids, labels, mask, position_ids_from_mask(mask)


def section_loss(write, seed=0):
    model = GPT(tour_config(), seed=seed, dtype=np.float64)
    V = model.config.vocab_size
    write(f"an untrained model (seed {seed}); cross-entropy over the positions whose label is not -100")
    write(f"  {'example':<28}{'counted':>8}{'sum of losses':>15}{'mean = sum / counted':>22}")
    for name, (ids, labels) in (
            (f"pre-training {PRETRAIN_TEXT!r}", make_example(PRETRAIN_TEXT)[:2]),
            (f"SFT {SFT_PROMPT!r} -> {SFT_ANSWER!r}", make_example(SFT_PROMPT, SFT_ANSWER, eot=True)[:2])):
        from .cross_entropy import count_targets
        n = count_targets(labels)
        total = model.loss(ids[None], labels[None], reduction="sum")
        mean = model.loss(ids[None], labels[None])
        write(f"  {name:<28}{n:>8}{total:>15.4f}{mean:>22.4f}")
    ids, labels, mask, pos = tour_batch()
    n = int((labels != -100).sum())
    mean = model.loss(ids, labels, attention_mask=mask, position_ids=pos)
    write(f"  {'both, one padded batch':<28}{n:>8}"
          f"{model.loss(ids, labels, mask, pos, reduction='sum'):>15.4f}{mean:>22.4f}")
    write(f"padding is masked twice: its keys by the attention mask, its targets by -100. "
          f"A uniform guess scores ln(V) = ln {V} = {np.log(V):.4f}")


# ---- 4. masking == prompt given, answer scored token by token -----------------------------

def section_masking(write, seed=0):
    model = GPT(tour_config(), seed=seed, dtype=np.float64)
    ids, labels, _, n_prompt = make_example(SFT_PROMPT, SFT_ANSWER, eot=True)
    per_pos = model.loss(ids[None], labels[None], reduction="none")[0]      # (T,), 0 where -100
    masked_sum = model.loss(ids[None], labels[None], reduction="sum")
    write("one forward over the whole masked sequence, against a prompt given first and the answer")
    write("scored one token at a time (each step sees only the prompt and the answer so far):")
    write(f"  {'target':<10}{'context':<18}{'-log p, masked sequence':>25}{'-log p, prefix only':>22}")
    prefix_sum = 0.0
    for t in range(n_prompt - 1, len(ids) - 1):
        context = ids[:t + 1]                                            # prompt + answer so far
        logits = model.logits(context[None])[0, -1].astype(np.float64)   # the last position
        m = logits.max()
        nll = float(np.log(np.exp(logits - m).sum()) + m - logits[ids[t + 1]])
        prefix_sum += nll
        ctx = TOK.decode(context).replace("\n", "\\n")
        write(f"  {token_repr(ids[t + 1]):<10}{ctx!r:<18}{per_pos[t]:>25.12f}{nll:>22.12f}")
    write(f"  {'sum':<28}{masked_sum:>25.12f}{prefix_sum:>22.12f}")
    write(f"|difference| = {abs(masked_sum - prefix_sum):.1e} (float64): the causal mask means position t "
          f"never sees t+1.., so -100 on the prompt is exactly 'start predicting where the prompt ends'")


# ---- 5. gradient check --------------------------------------------------------------------

def section_gradcheck(write, seed=0):
    from .cli import gradcheck_table, unit_scale_params
    from .gradcheck import check_model
    cfg = GPTConfig(vocab_size=TOK.vocab_size, n_positions=16, n_embd=16, n_head=2, n_layer=2)
    model = GPT(cfg, seed=seed, dtype=np.float64)
    unit_scale_params(model.params, np.random.default_rng(seed))
    ids, labels, mask, pos = tour_batch()
    write(f"the padded batch above, a float64 model (n_embd={cfg.n_embd}, n_head={cfg.n_head}, "
          f"n_layer={cfg.n_layer}, V={cfg.vocab_size}, {model.num_params():,} parameters,")
    write("weights at unit scale rather than GPT-2's 0.02, so no gradient is too small to check);")
    write("analytic gradients (hand-written backward) against central differences "
          "(f(p+eps) - f(p-eps)) / 2eps, eps 1e-5,")
    write("on 12 random coordinates per tensor; max|a-n| / max(|a|,|n|) must be <= 1e-6")
    results = check_model(model, ids, labels, attention_mask=mask, position_ids=pos,
                          eps=1e-5, tol=1e-6, max_coords=12, seed=seed)
    lines, ok = gradcheck_table(results, 1e-6)
    for line in lines:
        write("  " + line)
    return ok


# ---- the tour -----------------------------------------------------------------------------

def run_external(write, section, seed):
    """Another module's section, if it is importable; returns False if it failed."""
    module_name, _ = EXTERNAL_SECTIONS[section]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            write(f"(skipped: importing {module_name} failed: {e})")
        else:
            write(f"(skipped: {module_name} is not part of this install yet)")
        return True
    except Exception as e:
        write(f"(skipped: importing {module_name} failed: {type(e).__name__}: {e})")
        return True
    if not hasattr(module, "tour_section"):
        write(f"(skipped: {module_name} has no tour section)")
        return True
    try:
        module.tour_section(write, seed=seed)
    except Exception as e:        # one broken section must not hide the rest of the tour
        write(f"(FAILED: {module_name}.tour_section raised {type(e).__name__}: {e})")
        return False
    return True


def tour(write=print, seed=0, seed_sizes=False, sections=SECTIONS):
    """Run the chosen sections in order; returns the exit code (1 if a check failed)."""
    write(f"numpygpt tour (seed {seed}): how a GPT computes its loss and its gradients, "
          f"in pure NumPy")
    ok = True
    number = 0
    own = {
        "dataflow": ("Data flow: ids (B,T) -> embedding (B,T,C) -> blocks -> ln_f -> logits (B,T,V)",
                     lambda: section_dataflow(write, seed, seed_sizes)),
        "labels": ("Labels: next-token targets, -100 where nothing is learned",
                   lambda: section_labels(write, seed)),
        "loss": ("The loss on those labels", lambda: section_loss(write, seed)),
        "masking": ("Masking the prompt == giving the prompt, then scoring the answer",
                    lambda: section_masking(write, seed)),
        "gradcheck": ("Gradient check of the whole model (float64)",
                      lambda: section_gradcheck(write, seed)),
    }
    for section in sections:
        number += 1
        if section in own:
            heading, fn = own[section]
            title(write, number, heading)
            if fn() is False:
                ok = False
        else:
            title(write, number, EXTERNAL_SECTIONS[section][1])
            ok = run_external(write, section, seed) and ok
    write("")
    write("tour done." if ok else "tour done, but a check FAILED (see above).")
    return 0 if ok else 1
