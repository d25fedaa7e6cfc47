"""The key/value cache for decoding: each new token attends to the cached keys and values of
every earlier token, so the prefix is never recomputed.

In a causal GPT the hidden state of token t depends only on tokens <= t, so its key and
value in every layer never change once computed. The cache keeps them, per layer:

    k, v      (L, B, K, capacity, D)    slots [0, length) are filled; capacity grows (doubling)
    key_mask  (B, capacity)             up to max_len. False for left-padding slots

gpt_forward(new_ids, ..., kv_cache=cache) runs the ordinary blocks on the n new tokens; each
attention layer stores their keys and values at slots [length, length+n) and attends to all
length+n (layers/attention.py, `past`). The result equals the full forward pass position by
position (tests/decode/test_generate.py checks float64 to 1e-10).
"""
import numpy as np


class KVCache:
    """max_len: the most tokens the cache will hold. The buffers start at `initial` slots
    (default: max_len) and double as tokens arrive, up to max_len, so a long generation
    allocates what it uses, not what it might."""

    def __init__(self, config, batch_size, max_len, dtype=np.float32, initial=None):
        for name, value in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"KVCache {name} must be an integer >= 1, got {value!r}")
        if config.pos_encoding == "learned" and max_len > config.n_positions:
            raise ValueError(f"KVCache max_len={max_len} > n_positions={config.n_positions} "
                             f"(learned absolute positions)")
        capacity = max_len if initial is None else max(1, min(int(initial), max_len))
        shape = (config.n_layer, batch_size, config.kv_heads, capacity, config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)                        # (L,B,K,capacity,D)
        self.v = np.zeros(shape, dtype=dtype)
        self.key_mask = np.zeros((batch_size, capacity), dtype=bool)  # (B,capacity)
        self.next_pos = np.zeros(batch_size, dtype=np.int64)         # next position id per row
        self.length = 0
        self.max_len = max_len

    @property
    def capacity(self):
        return self.k.shape[3]

    def _grow(self, needed):
        """Reallocate to hold `needed` slots (at least double, at most max_len)."""
        new = min(self.max_len, max(needed, 2 * self.capacity))
        for name in ("k", "v"):
            old = getattr(self, name)
            grown = np.zeros(old.shape[:3] + (new,) + old.shape[4:], dtype=old.dtype)
            grown[:, :, :, :self.length] = old[:, :, :, :self.length]
            setattr(self, name, grown)
        mask = np.zeros((self.key_mask.shape[0], new), dtype=bool)
        mask[:, :self.length] = self.key_mask[:, :self.length]
        self.key_mask = mask

    def extend(self, key_mask, n):
        """Reserve slots for n new tokens (key_mask (B,n) bool, False = left padding, or None)
        -> their position ids (B,n), the key mask over every slot so far (B,length+n), and
        the first new slot. Positions count real tokens only, so a left-padded row starts
        at 0 like an unpadded one."""
        t0, t1 = self.length, self.length + n
        if t1 > self.max_len:
            raise ValueError(f"KV cache is full: {t0} + {n} tokens > max_len={self.max_len}")
        if t1 > self.capacity:
            self._grow(t1)
        B = self.key_mask.shape[0]
        mask = np.ones((B, n), dtype=bool) if key_mask is None else key_mask
        pos = np.where(mask, self.next_pos[:, None] + np.cumsum(mask, axis=1) - 1, 0)   # (B,n)
        self.next_pos += mask.sum(axis=1)
        self.key_mask[:, t0:t1] = mask
        self.length = t1
        return pos, self.key_mask[:, :t1], t0
