"""Decoding: the KV cache and sampling, on the model's own gpt_forward."""
from .kv_cache import KVCache
from .generate import generate, sample_next
