"""The causal mask: which keys a query may see, the one rule both attention cores apply.

Query i of n_query sits at position n_key - n_query + i: the queries are the *last* n_query
of the n_key positions (n_query = n_key in training; with a KV cache the new tokens come
after the cached ones). It sees key s when

    s <= its position               (causal: nothing after it)
    and s > its position - window   (sliding window: only the last `window` keys, itself
                                     included; no such limit when window is None)
    and key s is not padding        (key_mask[b, s] is True)

Everything else gets the score -inf, so softmax gives it probability 0.
With a window W, query t sees the band t - W < s <= t: W keys at most, so attention costs
O(T W) instead of O(T^2) for a core that skips what lies outside the band.
"""
import numpy as np


def allowed_keys(n_query, n_key, key_mask=None, queries=None, keys=None, window=None):
    """Which keys each query may see: the one masking rule of both cores.
    Query i sits at position n_key - n_query + i (the queries are the last n_query of the
    n_key positions) and sees key s when position - window < s <= position (no lower limit
    when window is None) and key s is not padding.
    queries, keys: (start, stop) ranges to return a tile of; default all of them.
    -> bool (nq,nk), or (B,1,nq,nk) with key_mask (B,n_key)."""
    i0, i1 = queries or (0, n_query)
    j0, j1 = keys or (0, n_key)
    position = np.arange(i0, i1)[:, None] + (n_key - n_query)      # (nq,1) the queries' positions
    key = np.arange(j0, j1)[None, :]                                # (1,nk) the keys' positions
    allowed = key <= position                                       # (nq,nk) causal
    if window is not None:
        allowed = allowed & (key > position - window)               # (nq,nk) within the window
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, j0:j1]          # (B,1,nq,nk) and not padding
    return allowed
