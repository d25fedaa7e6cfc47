"""The key/value cache for decoding: each new token attends to the cached keys and values of
every earlier token, so the prefix is never recomputed.

In a causal GPT the hidden state of token t depends only on tokens <= t, so its key and
value in every layer never change once computed. The cache keeps them, per layer:

    k, v      (L, B, H, max_len, D)     preallocated; slots [0, length) are filled
    key_mask  (B, max_len)              False for left-padding slots (never attended to)

gpt_forward(new_ids, ..., kv_cache=cache) runs the ordinary blocks on the n new tokens; each
attention layer stores their keys and values at slots [length, length+n) and attends to all
length+n (layers/attention.py, `past`). The result equals the full forward pass position by
position (tests/decode/test_generate.py checks float64 to 1e-10).
"""
import numpy as np


class KVCache:
    def __init__(self, config, batch_size, max_len, dtype=np.float32):
        if config.pos_encoding == "learned" and max_len > config.n_positions:
            raise ValueError(f"KVCache max_len={max_len} > n_positions={config.n_positions} "
                             f"(learned absolute positions)")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)                        # (L,B,H,max_len,D)
        self.v = np.zeros(shape, dtype=dtype)
        self.key_mask = np.zeros((batch_size, max_len), dtype=bool)  # (B,max_len)
        self.next_pos = np.zeros(batch_size, dtype=np.int64)         # next position id per row
        self.length = 0
        self.max_len = max_len

    def extend(self, key_mask, n):
        """Reserve slots for n new tokens (key_mask (B,n) bool, False = left padding, or None)
        -> their position ids (B,n), the key mask over every slot so far (B,length+n), and
        the first new slot. Positions count real tokens only, so a left-padded row starts
        at 0 like an unpadded one."""
        t0, t1 = self.length, self.length + n
        if t1 > self.max_len:
            raise ValueError(f"KV cache is full: {t0} + {n} tokens > max_len={self.max_len}")
        B = self.key_mask.shape[0]
        mask = np.ones((B, n), dtype=bool) if key_mask is None else key_mask
        pos = np.where(mask, self.next_pos[:, None] + np.cumsum(mask, axis=1) - 1, 0)   # (B,n)
        self.next_pos += mask.sum(axis=1)
        self.key_mask[:, t0:t1] = mask
        self.length = t1
        return pos, self.key_mask[:, :t1], t0
