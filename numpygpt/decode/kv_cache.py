"""The key/value cache for decoding: each new token attends to the cached keys and values of
every earlier token, so the prefix is never recomputed.

In a causal GPT the hidden state of token t depends only on tokens <= t, so its key and
value in every layer never change once computed. The cache keeps them, per layer:

    k, v      (L, B, K, capacity, D)    token start + j in slot j; capacity grows (doubling)
    key_mask  (B, capacity)             as tokens arrive. False for left-padding slots

gpt_forward(new_ids, ..., kv_cache=cache) runs the ordinary blocks on the n new tokens; each
attention layer stores their keys and values in the slots after the cached ones and attends
to the slots it is handed (`layer(i)`, layers/attention.py's `past`): the new tokens are
always the last n of them, the alignment the causal mask assumes (layers/causal_mask.py).
The result equals the full forward pass position by position (tests/decode/test_generate.py
checks float64 to 1e-10).

With a sliding window W (config.sliding_window) no new query sees a token more than W - 1
before it, so the cache is a rolling buffer: it holds at most 2W slots between calls, and
when the new tokens do not fit it drops the tokens no new query can see, moving the last
W - 1 to slot 0 (a copy of W - 1 slots once every W + 1 decoded tokens, not at every token).
Decoding then holds O(W) memory however long the text, and each new token reads W keys.
A prefill of n > W tokens grows the buffers to W - 1 + n for that call; the next slide
shrinks them back.
"""
import numpy as np


class KVCache:
    """max_len: the most tokens the cache will take in all (with learned positions at most
    n_positions). The buffers start at `initial` slots (default: as many as they may hold
    between calls: max_len, or min(max_len, 2W) with a window) and double as tokens arrive,
    so a long generation allocates what it uses, not what it might."""

    def __init__(self, config, batch_size, max_len, dtype=np.float32, initial=None):
        for name, value in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"KVCache {name} must be an integer >= 1, got {value!r}")
        if config.pos_encoding == "learned" and max_len > config.n_positions:
            raise ValueError(f"KVCache max_len={max_len} > n_positions={config.n_positions} "
                             f"(learned absolute positions)")
        self.window = config.sliding_window
        self.slots = max_len if self.window is None else min(max_len, 2 * self.window)
        capacity = self.slots if initial is None else max(1, min(int(initial), self.slots))
        shape = (config.n_layer, batch_size, config.kv_heads, capacity, config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)                        # (L,B,K,capacity,D)
        self.v = np.zeros(shape, dtype=dtype)
        self.key_mask = np.zeros((batch_size, capacity), dtype=bool)  # (B,capacity)
        self.next_pos = np.zeros(batch_size, dtype=np.int64)         # next position id per row
        self.length = 0          # tokens taken so far
        self.start = 0           # the token in slot 0: the ones before it were dropped (window)
        self.seen = (0, 0)       # the newest tokens' view: its first slot, their first slot
        self.max_len = max_len

    @property
    def capacity(self):
        return self.k.shape[3]

    def _move(self, keep_from, capacity):
        """Keep the tokens [keep_from, length) in slots [0, length - keep_from) of buffers of
        `capacity` slots: new buffers when the size changes, else moved within them."""
        kept = slice(keep_from - self.start, self.length - self.start)
        n = self.length - keep_from
        self.k = move_to_front(self.k, kept, capacity)       # (L,B,K,capacity,D)
        self.v = move_to_front(self.v, kept, capacity)
        mask = np.zeros((self.key_mask.shape[0], capacity), dtype=bool)
        mask[:, :n] = self.key_mask[:, kept]
        self.key_mask = mask
        self.start = keep_from

    def _first_seen(self, t0):
        """The oldest token that a query at t0 or later can see."""
        return self.start if self.window is None else max(t0 - self.window + 1, self.start)

    def extend(self, key_mask, n):
        """Reserve slots for n new tokens (key_mask (B,n) bool, False = left padding, or None)
        -> their position ids (B,n), the key mask over the slots they see (B,Tk), and the
        first new slot among those Tk. Positions count real tokens only, so a left-padded row
        starts at 0 like an unpadded one."""
        t0, t1 = self.length, self.length + n
        if t1 > self.max_len:
            raise ValueError(f"KV cache is full: {t0} + {n} tokens > max_len={self.max_len}")
        if t1 - self.start > self.capacity:                  # no room: drop what no one sees, grow
            keep_from = self._first_seen(t0)
            self._move(keep_from, max(t1 - keep_from, min(self.slots, 2 * self.capacity)))
        B = self.key_mask.shape[0]
        mask = np.ones((B, n), dtype=bool) if key_mask is None else key_mask
        pos = np.where(mask, self.next_pos[:, None] + np.cumsum(mask, axis=1) - 1, 0)   # (B,n)
        self.next_pos += mask.sum(axis=1)
        first, new = self._first_seen(t0) - self.start, t0 - self.start
        self.key_mask[:, new:t1 - self.start] = mask
        self.length = t1
        self.seen = (first, new)
        return pos, self.key_mask[:, first:t1 - self.start], new - first

    def layer(self, i):
        """Layer i's part for the tokens extend() just reserved, as layers/attention.py's
        `past`: (k, v, t0), views of the slots they see, their own from slot t0 on."""
        first, new = self.seen
        return self.k[i][:, :, first:], self.v[i][:, :, first:], new - first


def move_to_front(buffer, kept, capacity):
    """buffer (L,B,K,slots,D) -> (L,B,K,capacity,D) whose slots [0, n) hold buffer's slots
    `kept` (a slice of n): buffer itself, moved within, when it has capacity slots already."""
    new = buffer if buffer.shape[3] == capacity else np.zeros(
        buffer.shape[:3] + (capacity,) + buffer.shape[4:], dtype=buffer.dtype)
    n = kept.stop - kept.start
    new[:, :, :, :n] = buffer[:, :, :, kept]                 # overlapping moves are safe in NumPy
    return new
