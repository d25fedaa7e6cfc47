"""GPTConfig: the sizes that define a GPT. Sequence length is *not* one of them.

The seed's first point: the network (layers, heads, widths) is the same for any
sequence length N. Only `n_positions` ties a model with a *learned absolute*
position table to a maximum length; with RoPE (a relative encoding) it is unused.
"""
from dataclasses import dataclass, asdict

ATTN_IMPLS = ("naive", "tiled")
POS_ENCODINGS = ("learned", "rope")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    tie_word_embeddings: bool = True
    layer_norm_epsilon: float = 1e-5
    attn_impl: str = "naive"          # "naive": textbook (B,H,T,T) scores; "tiled": FlashAttention-style
    attn_block_size: int = 128        # query/key block size of the tiled attention
    pos_encoding: str = "learned"     # "learned": GPT-2's wpe table; "rope": rotary, no table
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer", "attn_block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"GPTConfig.attn_impl={self.attn_impl!r} is not one of {ATTN_IMPLS}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"GPTConfig.pos_encoding={self.pos_encoding!r} is not one of {POS_ENCODINGS}")
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig: rope needs an even head_dim, got n_embd/n_head={self.head_dim}")
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0):
            raise ValueError(
                f"GPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if not (isinstance(self.rope_base, (int, float)) and self.rope_base > 1):
            raise ValueError(f"GPTConfig.rope_base must be > 1, got {self.rope_base!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {unknown}")
        return cls(**d)


# GPT-2 124M, as HuggingFace's "gpt2" config.json
GPT2_SMALL = GPTConfig(vocab_size=50257, n_positions=1024, n_embd=768, n_head=12, n_layer=12)
