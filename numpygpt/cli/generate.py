"""`numpygpt generate`: sample text from a checkpoint or a HuggingFace GPT-2 directory, with
the KV cache (numpygpt/decode/)."""
import numpy as np

from ..decode import generate
from ..io import ByteTokenizer, load_bpe
from ..model import GPT
from ..train import load_checkpoint
from .common import check_memory, float_in, int_at_least, positive_int, utf8_text

GPT2_EOT = 50256                                     # GPT-2's <|endoftext|>


def add_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="a numpygpt checkpoint (train / sft --out)")
    src.add_argument("--pretrained", metavar="DIR",
                     help="a HuggingFace GPT-2 directory (config.json + model.safetensors)")
    p.add_argument("--prompt", default=None, help="prompt text")
    p.add_argument("--prompt-ids", default=None, metavar="IDS",
                   help='prompt as comma-separated token ids, e.g. "464,3290" '
                        '(for a pretrained directory without vocab.json/merges.txt)')
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="(>= 1, default 200)")
    p.add_argument("--temperature", type=float_in(0), default=0.8,
                   help="(>= 0; 0 = greedy; default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None, help="keep the k likeliest tokens (>= 1)")
    p.add_argument("--num-samples", type=int_at_least(1), default=1,
                   help="samples drawn in one batch (>= 1)")


def run(args):
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-ids IDS")
    if args.prompt is not None:
        utf8_text("--prompt", args.prompt)
    source = "--checkpoint" if args.checkpoint is not None else "--pretrained"
    path = args.checkpoint if args.checkpoint is not None else args.pretrained
    try:
        if args.checkpoint is not None:
            ckpt = load_checkpoint(args.checkpoint)
            model = GPT(ckpt["config"], params=ckpt["params"])
            tokenizer = ByteTokenizer() if model.config.vocab_size == ByteTokenizer.vocab_size else None
        else:
            model = GPT.from_pretrained(args.pretrained)
            tokenizer = load_bpe(args.pretrained)
    except ValueError as e:
        raise ValueError(f"{source} {path}: {e}") from None
    except OSError as e:
        raise ValueError(f"{source} {path}: cannot be read ({e})") from None
    V = model.config.vocab_size
    eot_id = getattr(tokenizer, "eot_id", None)
    if eot_id is None and args.pretrained is not None and V == GPT2_EOT + 1:
        eot_id = GPT2_EOT
    if args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids, V)
    else:
        if tokenizer is None:
            raise ValueError(f"--prompt needs a tokenizer, and {path} has none (no "
                             f"vocab.json/merges.txt); use --prompt-ids")
        prompt = np.asarray(tokenizer.encode(args.prompt), dtype=np.int64)
        if prompt.size == 0:
            raise ValueError("--prompt is empty")
    check_memory("generating", decoding_bytes(model, len(prompt), args.num_samples,
                                              args.max_new_tokens),
                 [f"--num-samples {args.num_samples}"] if args.num_samples > 1 else [])
    try:
        outs = generate(model, [prompt] * args.num_samples, args.max_new_tokens,
                        args.temperature, args.top_k, args.seed, eot_id)
    except ValueError as e:            # the one prompt, repeated: name the option given
        option = "--prompt" if args.prompt is not None else "--prompt-ids"
        raise ValueError(str(e).replace("prompts[0]", option)) from None
    for i, out in enumerate(outs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        ids = [int(t) for t in np.concatenate([prompt, out])]
        print(",".join(map(str, ids)) if tokenizer is None else tokenizer.decode(ids))
    return 0


def decoding_bytes(model, prompt_len, batch_size, max_new_tokens):
    """A rough estimate of generation's memory beyond the weights: the prefill's activations
    and logits, and the KV cache of its first stretch (it grows only as tokens come)."""
    c = model.config
    T = prompt_len + min(max_new_tokens, 256)
    if c.pos_encoding == "learned":
        T = min(T, c.n_positions)
    s = model.dtype.itemsize
    return [("KV cache", 2 * c.n_layer * batch_size * T * c.n_embd * s),
            ("prefill activations and logits",
             batch_size * prompt_len * (16 * c.n_embd + c.n_head * prompt_len + c.vocab_size) * s)]


def parse_ids(text, vocab_size):
    ids = []
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            ids.append(int(part))
        except ValueError:
            raise ValueError(f"--prompt-ids: item {i} = {part!r} is not an integer") from None
        if not 0 <= ids[-1] < vocab_size:
            raise ValueError(f"--prompt-ids: item {i} = {ids[-1]} is outside [0, vocab_size={vocab_size})")
    return np.array(ids, dtype=np.int64)
