"""What a GPT is (GPTConfig, the named PRESETS, its parameters' names and shapes) and how
numpygpt computes it (Execution). The two are kept apart: a checkpoint saves the first only.

The lesson's first point: the network (layers, heads, widths) is the same for any sequence
length T, so T is not a field of GPTConfig. Only `n_positions` ties a model with a *learned
absolute* position table to a maximum length; with RoPE (a relative encoding) it is unused.
"""
import math
from dataclasses import dataclass, asdict, fields

POS_ENCODINGS = ("learned", "rope")
ENGINES = ("textbook", "fast")
ATTENTIONS = ("standard", "tiled")
LOSSES = ("standard", "chunked")
SIZE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer")   # positive integers


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    tie_word_embeddings: bool = True
    layer_norm_epsilon: float = 1e-5
    pos_encoding: str = "learned"     # "learned": GPT-2's wpe table; "rope": rotary, no table
    rope_base: float = 10000.0
    n_kv_head: int | None = None      # key/value heads K (grouped-query attention); None: n_head
    sliding_window: int | None = None  # W: query t sees keys t-W < s <= t; None: every s <= t

    def __post_init__(self):
        for name in SIZE_FIELDS:
            _positive_int("GPTConfig", name, getattr(self, name))
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head is not None:
            _positive_int("GPTConfig", "n_kv_head", self.n_kv_head)
            if self.n_head % self.n_kv_head != 0:
                raise ValueError(f"GPTConfig.n_kv_head={self.n_kv_head} does not divide "
                                 f"n_head={self.n_head}")
            if self.n_kv_head == self.n_head:          # GPT-2's attention: one way to say it
                object.__setattr__(self, "n_kv_head", None)
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"GPTConfig.tie_word_embeddings must be True or False, "
                             f"got {self.tie_word_embeddings!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"GPTConfig.pos_encoding={self.pos_encoding!r} is not one of {POS_ENCODINGS}")
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig: rope needs an even head_dim, got n_embd/n_head={self.head_dim}")
        for name, low in (("layer_norm_epsilon", 0), ("rope_base", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low \
                    or value == float("inf"):
                raise ValueError(f"GPTConfig.{name} must be a finite number > {low}, got {value!r}")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise ValueError(f"GPTConfig.sliding_window must be a positive integer or None "
                             f"(full causal attention), got {window!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """K, the key/value heads: n_head (GPT-2's multi-head attention) unless n_kv_head says
        fewer. Query head h uses key/value head h // (n_head // K); K = 1 is multi-query."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """The inverse of to_dict. Execution choices that older checkpoints saved with the
        architecture ("attn_impl", "attn_block_size") do not change the model and are dropped."""
        d = {k: v for k, v in d.items() if k not in ("attn_impl", "attn_block_size")}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {unknown}")
        return cls(**d)


GPT2_124M = GPTConfig(vocab_size=50257, n_positions=1024, n_embd=768, n_head=12, n_layer=12)

# The named models every command and benchmark refers to, defined here only.
PRESETS = {
    "tiny": GPTConfig(vocab_size=256, n_embd=128, n_head=4, n_layer=2),
    "small": GPTConfig(vocab_size=50257, n_embd=256, n_head=4, n_layer=4),
    "gpt2": GPT2_124M,                                   # HuggingFace's "gpt2" config.json
}


@dataclass(frozen=True)
class Execution:
    """How the model is computed; the numbers are the same every way (the tests check it).

    engine:    "textbook" runs numpygpt/layers/ and model.py, the code a reader reads;
               "fast" runs numpygpt/engine/, the same math with its memory reused from call to
               call, threads and in-place passes (each kernel names its textbook twin).
    attention: "standard" holds the (B,H,T,T) probabilities (layers/attention.py);
               "tiled" computes them a tile at a time and never holds them (layers/tiled_attention.py).
    loss:      "standard" computes the (B,T,V) logits, then the loss (layers/lm_head.py,
               layers/cross_entropy.py); "chunked" does both a chunk of rows at a time and
               skips -100 rows (layers/chunked_loss.py).
    q_tile, k_tile: the tiled attention's queries per block and keys per tile.
    loss_chunk: rows per chunk of the chunked loss (None: ~32 MiB of logits per chunk).
    """
    engine: str = "textbook"
    attention: str = "standard"
    loss: str = "standard"
    q_tile: int = 128
    k_tile: int = 1024
    loss_chunk: int | None = None

    def __post_init__(self):
        for name, choices in (("engine", ENGINES), ("attention", ATTENTIONS), ("loss", LOSSES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"Execution.{name}={getattr(self, name)!r} is not one of {choices}")
        _positive_int("Execution", "q_tile", self.q_tile)
        _positive_int("Execution", "k_tile", self.k_tile)
        if self.loss_chunk is not None:
            _positive_int("Execution", "loss_chunk", self.loss_chunk)


# What the commands that train and benchmark run: the engine, and the loss that skips -100 rows.
TRAINING = Execution(engine="fast", loss="chunked")


# ---- the parameters: names (GPT-2's, as HuggingFace's GPT2Model state dict) and shapes --------

BLOCK_PARAM_SHAPES = {   # block-local name -> shape as a function of C (GPT-2's attention)
    "ln_1.weight": lambda C: (C,), "ln_1.bias": lambda C: (C,),
    "attn.c_attn.weight": lambda C: (C, 3 * C), "attn.c_attn.bias": lambda C: (3 * C,),
    "attn.c_proj.weight": lambda C: (C, C), "attn.c_proj.bias": lambda C: (C,),
    "ln_2.weight": lambda C: (C,), "ln_2.bias": lambda C: (C,),
    "mlp.c_fc.weight": lambda C: (C, 4 * C), "mlp.c_fc.bias": lambda C: (4 * C,),
    "mlp.c_proj.weight": lambda C: (4 * C, C), "mlp.c_proj.bias": lambda C: (C,),
}


def block_param_shapes(config):
    """A block's name -> shape. c_attn projects to C + 2*K*D: the queries (C = H*D), then K key
    heads, then K value heads (K = H: GPT-2's 3C)."""
    C = config.n_embd
    shapes = {k: f(C) for k, f in BLOCK_PARAM_SHAPES.items()}
    width = C + 2 * config.kv_heads * config.head_dim
    shapes["attn.c_attn.weight"], shapes["attn.c_attn.bias"] = (C, width), (width,)
    return shapes


def param_shapes(config):
    """name -> shape, in GPT-2's order."""
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C)}
    if config.pos_encoding == "learned":
        shapes["wpe.weight"] = (config.n_positions, C)
    block = block_param_shapes(config)
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{k}": shape for k, shape in block.items()})
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def param_count(config):
    """Exact number of parameters (tied embeddings counted once), without a loop over the
    layers: wte V*C, wpe P*C (learned), L * block, ln_f 2*C, an untied lm_head V*C."""
    V, P, C = config.vocab_size, config.n_positions, config.n_embd
    return (V * C + (P * C if config.pos_encoding == "learned" else 0)
            + config.n_layer * block_param_count(config) + 2 * C
            + (0 if config.tie_word_embeddings else V * C))


def block_param_count(config):
    """12*C^2 + 13*C; with K key/value heads, c_attn's (C+1)*(C + 2*K*D) in place of (C+1)*3C."""
    return sum(math.prod(shape) for shape in block_param_shapes(config).values())


def param_kind(name):
    """What a parameter is, from its name: the one rule behind initialisation and weight decay.
        "embedding"  wte.weight, wpe.weight                     (V,C), (P,C) tables
        "norm"       a LayerNorm weight (ln_1, ln_2, ln_f)      initialised to 1, never decayed
        "bias"       any .bias                                  initialised to 0, never decayed
        "matrix"     the weight of a linear layer (c_attn, c_proj, c_fc, an untied lm_head)
    """
    if name.endswith(".bias"):
        return "bias"
    if name in ("wte.weight", "wpe.weight"):
        return "embedding"
    if name.split(".")[-2].startswith("ln_"):
        return "norm"
    return "matrix"


def is_residual_projection(name):
    """attn.c_proj and mlp.c_proj write into the residual stream: GPT-2 scales their initial
    weights by 1/sqrt(2 n_layer), so the stream's variance does not grow with depth."""
    return name.endswith("c_proj.weight")
