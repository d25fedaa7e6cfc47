"""`numpygpt tour`: the lesson, run on real numbers, one titled section each.

    dataflow   ids (B,T) -> embedding (B,T,C) -> blocks (B,T,C) -> ln_f -> logits (B,T,V)
    labels     pre-training and SFT labels from real text, aligned and HuggingFace forms
    loss       the cross-entropy on those labels and how many targets count
    masking    the lesson's point 5: masked full-sequence loss == prompt given, answer scored
               token by token
    gradcheck  every parameter tensor of a whole model against finite differences (float64)
    attention  the cost of attention as T grows (a small sweep)
    train, sft a few steps of each: the loss falls

With --plots DIR it also draws the attention probabilities P and their gradient dS, per
block and head, for its pre-training and its SFT example (numpygpt/pictures/).

`write(line)` prints one line; everything is deterministic for a given seed.
"""
import argparse
import os

import numpy as np

from ..bench.attention import sweep, table_header, table_row, summary_lines
from ..config import GPTConfig, TRAINING
from ..gradcheck import check_model, format_report, unit_scale_params
from ..io import ByteTokenizer
from ..labels import pad_sequences, position_ids_from_mask
from ..layers import sub, count_targets, embedding_forward, layernorm_forward, lm_head_forward
from ..model import GPT, block_forward
from ..pictures import attention_maps, draw_attention_maps
from ..train import AdamW, SFT, SFT_CLAIM, SFT_SEEDS, TrainSettings, train_loop
from ..train.data import load_dataset, get_batch, eval_batches, unigram_entropy
from ..train.loop import mean_loss
from ..train.sft import AdditionTask, make_batch, answer_loss_masked, answer_loss_by_prefill
from .labels import make_example, table_lines
from .train_setup import check_plots

PRETRAIN_TEXT = "The cat sat."
SFT_PROMPT, SFT_ANSWER = "2+2=", "four"     # the answer is followed by <|eot|>: learn to stop
TOK = ByteTokenizer()


def add_arguments(p):
    p.add_argument("--lesson-sizes", action="store_true",
                   help="data flow at the lesson's sizes: batch 1, length 10, width 768, vocabulary 50,000")
    p.add_argument("--skip-gradcheck", action="store_true", help="leave out the whole-model gradient check")
    p.add_argument("--sections", metavar="NAME[,NAME]",
                   help=f"only these sections, comma-separated, from: {', '.join(SECTIONS)}")
    p.add_argument("--plots", metavar="DIR",
                   help="also draw the attention maps (P and dS per head) as PNGs in DIR")


def run(args):
    sections = list(SECTIONS)
    if args.sections is not None:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown or not sections:
            what = f"unknown section(s) {', '.join(unknown)}" if unknown else "names no section"
            raise ValueError(f"--sections {args.sections!r}: {what}; choose from "
                             f"{', '.join(SECTIONS)}")
    if args.skip_gradcheck and "gradcheck" in sections:
        sections.remove("gradcheck")
        if not sections:
            raise ValueError(f"--skip-gradcheck leaves --sections {args.sections!r} with "
                             f"nothing to run")
    check_plots(args)                         # before any work: a writable DIR, matplotlib
    code = tour(print, seed=args.seed, lesson_sizes=args.lesson_sizes, sections=sections)
    if args.plots is not None:
        draw_pictures(print, args.plots, seed=args.seed)
    return code


def draw_pictures(write, plots, seed=0):
    """--plots DIR: P and dS of every block and head of the tour's model (at initialisation,
    float64) on its two examples, one PNG each: the causal triangle, the padding, and the
    SFT prompt whose rows count for nothing."""
    os.makedirs(plots, exist_ok=True)
    model = GPT(tour_config(), seed=seed, dtype=np.float64)
    ids, labels, mask, pos = tour_batch()
    maps = attention_maps(model, ids, labels, mask, pos)
    for example, name, what in ((0, "pretrain", repr(PRETRAIN_TEXT)),
                                (1, "sft", f"{SFT_PROMPT!r} -> {SFT_ANSWER!r}")):
        path = os.path.join(plots, f"tour_attention_{name}.png")
        tokens = [TOK.token_str(i) for i in ids[example]]
        draw_attention_maps(maps, example, path, tokens,
                            title=f"attention at initialisation, {name} example {what}")
        write(f"wrote {path}")


def tour(write=print, seed=0, lesson_sizes=False, sections=None):
    """Run the chosen sections (default: all) in order; returns the exit code (1 if a check
    failed)."""
    sections = list(SECTIONS) if sections is None else sections
    write(f"numpygpt tour (seed {seed}): how a GPT computes its loss and its gradients, "
          f"in pure NumPy")
    ok = True
    for name in sections:                     # numbered as in the whole tour, run alone or not
        number = list(SECTIONS).index(name) + 1
        title, section = SECTIONS[name]
        write("")
        write(f"== {number}. {title} ==")
        result = section(write, seed, lesson_sizes) if name == "dataflow" else section(write, seed)
        ok = result is not False and ok
    write("")
    write("tour done." if ok else "tour done, but a check FAILED (see above).")
    return 0 if ok else 1


def tour_config(lesson_sizes=False):
    """The tour's model: byte vocabulary, tiny widths; or the lesson's sizes (2 of GPT-2's 12 layers)."""
    if lesson_sizes:
        return GPTConfig(vocab_size=50000, n_positions=1024, n_embd=768, n_head=12, n_layer=2)
    return GPTConfig(vocab_size=TOK.vocab_size, n_positions=64, n_embd=32, n_head=4, n_layer=2)


def fmt_shape(a):
    return str(tuple(int(d) for d in np.shape(a)))


def section_dataflow(write, seed=0, lesson_sizes=False):
    cfg = tour_config(lesson_sizes)
    model = GPT(cfg, seed=seed)
    p = model.params
    text = "Hello GPT!"                                      # 10 bytes: the lesson's length
    ids = TOK.encode(text)[None]                             # (1, 10)
    B, T = ids.shape
    write(f"model: vocab_size={cfg.vocab_size:,} n_embd={cfg.n_embd} n_head={cfg.n_head} "
          f"n_layer={cfg.n_layer} ({model.num_params():,} parameters, float32)"
          + ("  [the lesson's sizes; 2 of GPT-2's 12 layers]" if lesson_sizes else
             "  [--lesson-sizes: width 768, vocabulary 50,000]"))
    write(f"input: {text!r} -> {T} byte tokens, batch {B}")
    rows = [("ids", fmt_shape(ids), "token ids")]
    x, _ = embedding_forward(ids, {k: p[k] for k in ("wte.weight", "wpe.weight")})  # (B,T) -> (B,T,C)
    rows.append(("embedding wte[ids] + wpe[t]", fmt_shape(x), "one C-vector per token"))
    for i in range(cfg.n_layer):
        x, _ = block_forward(x, sub(p, f"h.{i}"), cfg)                                # (B,T,C)
        note = (f"attention scores inside: {(B, cfg.n_head, T, T)}, each query against every key"
                if i == 0 else "the width never changes")
        rows.append((f"h.{i} (ln_1, attn, ln_2, mlp)", fmt_shape(x), note))
    x, _ = layernorm_forward(x, sub(p, "ln_f"))                                      # (B,T,C)
    rows.append(("ln_f", fmt_shape(x), ""))
    logits, _ = lm_head_forward(x, {"weight": p["wte.weight"]})                      # (B,T,V)
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
        total = model.loss(ids[None], labels[None], reduction="sum")
        mean = model.loss(ids[None], labels[None])
        write(f"  {name:<28}{count_targets(labels):>8}{total:>15.4f}{mean:>22.4f}")
    ids, labels, mask, pos = tour_batch()
    mean = model.loss(ids, labels, attention_mask=mask, position_ids=pos)
    write(f"  {'both, one padded batch':<28}{count_targets(labels):>8}"
          f"{model.loss(ids, labels, mask, pos, reduction='sum'):>15.4f}{mean:>22.4f}")
    write(f"padding is masked twice: its keys by the attention mask, its targets by -100. "
          f"A uniform guess scores ln(V) = ln {V} = {np.log(V):.4f}")


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
        logits = model.logits(context[None])[0, -1]                     # the last position
        m = logits.max()
        nll = float(np.log(np.exp(logits - m).sum()) + m - logits[ids[t + 1]])
        prefix_sum += nll
        ctx = TOK.decode(context).replace("\n", "\\n")
        write(f"  {TOK.token_str(ids[t + 1]):<10}{ctx!r:<18}{per_pos[t]:>25.12f}{nll:>22.12f}")
    write(f"  {'sum':<28}{masked_sum:>25.12f}{prefix_sum:>22.12f}")
    write(f"|difference| = {abs(masked_sum - prefix_sum):.1e} (float64): the causal mask means position t "
          f"never sees t+1.., so -100 on the prompt is exactly 'start predicting where the prompt ends'")


def section_gradcheck(write, seed=0):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, n_positions=16, n_embd=16, n_head=2, n_layer=2)
    model = GPT(cfg, seed=seed, dtype=np.float64)
    unit_scale_params(model.params, np.random.default_rng(seed))
    ids, labels, mask, pos = tour_batch()
    write(f"the padded batch of section 3, a float64 model (n_embd={cfg.n_embd}, n_head={cfg.n_head}, "
          f"n_layer={cfg.n_layer}, V={cfg.vocab_size}, {model.num_params():,} parameters,")
    write("weights at unit scale rather than GPT-2's 0.02, so no gradient is too small to check);")
    write("analytic gradients (hand-written backward) against central differences "
          "(f(p+eps) - f(p-eps)) / 2eps, eps 1e-5,")
    write("on 12 random coordinates per tensor; max|a-n| / max(|a|,|n|) must be <= 1e-6")
    results = check_model(model, ids, labels, attention_mask=mask, position_ids=pos,
                          eps=1e-5, tol=1e-6, max_coords=12, seed=seed)
    lines, ok = format_report(results, 1e-6)
    for line in lines:
        write("  " + line)
    return ok


def section_attention(write, seed=0):
    args = argparse.Namespace(batch_size=1, n_head=2, head_dim=32, q_tile=256, k_tile=1024,
                              repeats=3, min_n=32, max_n=512, memory_budget_gb=1.0,
                              no_torch=True, seed=seed, engine="textbook")
    write("Same layer, longer sequence: the standard core holds (B,H,N,N) probabilities, the")
    write("tiled core one tile at a time. Doubling N: time x4 for both (O(N^2) FLOPs), memory")
    write("x4 for the standard core but x2 for the tiled one. (The textbook's code:")
    write("numpygpt bench-attention times the engine's, and PyTorch's.)")
    result = sweep(args)
    write(table_header(result["impls"]))
    for n in result["config"]["sizes"]:
        write(table_row(n, [r for r in result["rows"] if r["n"] == n], result["impls"]))
    for line in summary_lines(result):
        if not line.startswith("note: torch"):
            write(line)
    write("Full sweep: numpygpt bench-attention (N = 128..8192, JSON, CSV and a plot).")


def section_train(write, seed=0):
    s = TrainSettings(n_layer=2, n_head=2, n_embd=64, seq_len=64, batch_size=8, steps=40,
                      lr=1e-2, min_lr=1e-3, warmup=5, eval_every=40, eval_batches=2, seed=seed)
    train_ids, val_ids = load_dataset(None, s.val_fraction, s.seq_len)
    model = GPT(s.model_config(n_positions=s.seq_len), seed=seed, execution=TRAINING)   # the engine
    optimizer = AdamW(model.params, s.lr, (s.beta1, s.beta2), weight_decay=s.weight_decay,
                      engine=TRAINING.engine)
    val = eval_batches(val_ids, s.batch_size, s.seq_len, s.eval_batches)
    write(f"A {model.num_params():,}-parameter GPT learns bytes of Python's pydoc topics "
          f"(B={s.batch_size}, T={s.seq_len}, AdamW, warm-up + cosine), computed by the engine "
          f"(numpygpt/engine/: the textbook's numbers, faster).")
    write(f"unigram baseline {unigram_entropy(val_ids):.3f} nats; "
          f"val loss before {mean_loss(model, val):.3f}")
    result = train_loop(model, optimizer, s, lambda rng: get_batch(train_ids, s.batch_size,
                                                                   s.seq_len, rng),
                        np.random.default_rng(seed), evaluate=lambda m: {"val loss": mean_loss(m, val)},
                        log=lambda line: None)
    for i in range(0, s.steps, 5):
        write(f"  step {i + 1:3d}  train loss {result['losses'][i]:.3f}")
    write(f"val loss after {s.steps} steps: {result['evals'][-1][1]['val loss']:.3f} "
          f"(`numpygpt train` runs longer and goes well below the baseline)")


def section_sft(write, seed=0):
    task = AdditionTask(n_test=50, seed=seed)
    s = TrainSettings(task="sft", n_layer=1, n_head=2, n_embd=64, steps=30, batch_size=32,
                      lr=1e-2, warmup=5, seed=seed)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_positions=32, n_embd=s.n_embd,
                          n_head=s.n_head, n_layer=s.n_layer), seed=seed,
                execution=TRAINING)                                                 # the engine
    example = make_batch(task.sample(1, np.random.default_rng(seed)))
    write("One SFT example (prompt, answer reversed, eot), aligned labels; -100 = not counted:")
    write("  input : " + " ".join(f"{TOK.token_str(t):>7}" for t in example["input_ids"][0]))
    write("  labels: " + " ".join(f"{TOK.token_str(t) if t >= 0 else t:>7}"
                                  for t in example["labels"][0]))
    before = answer_loss_masked(model, task.test)
    out = train_loop(model, AdamW(model.params, s.lr, engine=TRAINING.engine), s,
                     lambda rng: make_batch(task.sample(s.batch_size, rng)),
                     np.random.default_rng(seed), log=lambda line: None)
    for i in range(0, s.steps, 6):
        write(f"  step {i + 1:3d}  answer loss {out['losses'][i]:.3f}")
    write(f"held-out answer loss {before:.3f} -> {answer_loss_masked(model, task.test):.3f} "
          f"after {s.steps} steps; `numpygpt sft` ({SFT.steps} steps) reaches >= "
          f"{SFT_CLAIM:.0%} held-out exact match on each of seeds "
          f"{SFT_SEEDS[0]}-{SFT_SEEDS[-1]} (docs/training.md).")
    write(f"prefilling the prompt into the KV cache and scoring the answer token by token gives "
          f"{answer_loss_by_prefill(model, task.test[:5]):.6f}; the masked full-sequence loss "
          f"on the same 5 problems is {answer_loss_masked(model, task.test[:5]):.6f}")


SECTIONS = {   # name -> (title, the function that writes it)
    "dataflow": ("Data flow: ids (B,T) -> embedding (B,T,C) -> blocks -> ln_f -> logits (B,T,V)",
                 section_dataflow),
    "labels": ("Labels: next-token targets, -100 where nothing is learned", section_labels),
    "loss": ("The loss on the labels of section 2", section_loss),
    "masking": ("Masking the prompt == giving the prompt, then scoring the answer", section_masking),
    "gradcheck": ("Gradient check of the whole model (float64)", section_gradcheck),
    "attention": ("Attention cost grows as T^2 (a small sweep)", section_attention),
    "train": ("Pre-training: a few steps, the loss falls", section_train),
    "sft": ("SFT: a few steps on a generated task", section_sft),
}
