"""File formats: safetensors (read and written in NumPy, validated before it is trusted),
HuggingFace GPT-2 directories, GPT-2's byte-level BPE, and the byte tokenizer."""
from .tokenizer import ByteTokenizer
from .bpe import BPETokenizer, load_bpe
