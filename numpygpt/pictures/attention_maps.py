"""The attention probabilities P and their gradient dS, per block and head: the heatmaps.

    S = q @ k^T / sqrt(D),  masked             (B,H,T,T)   query t (row) against key s (column)
    P = softmax(S)                             (B,H,T,T)   each allowed row sums to 1
    dP = dy @ v^T                              (B,H,T,T)
    dS = P * (dP - rowsum(dP * P))             (B,H,T,T)   each row sums to 0

What a learner sees in them:
- the causal triangle: P[t, s] = 0 above the diagonal (s > t), and so dS too;
- padding: a padding key's column is 0 in P (and dS); a padding query's row is 0 in dS
  (its label is -100 and no real token sees it);
- SFT's prompt: in the last block the prompt's rows of dS are 0 (their labels are -100:
  they count for nothing); in earlier blocks they are not, as the answer reads the prompt.

P comes from the standard core's cache (layers/attention.py). dS is computed here from that
cache and the gradient at the core's output, with the lines of causal_attention_backward
(tests/pictures/test_attention_maps.py holds dq = dS @ k / sqrt(D) equal to its dq).
"""
import numpy as np

from ..layers import allowed_keys
from .probe import probe


def attention_dscores(core_cache, dy):
    """The attention core's cache (q, k, v, P) and dy (B,H,T,D), the gradient at its output
    y = P @ v -> dS (B,H,T,Tk), the gradient at the scores: the softmax backward of
    layers/attention.py's causal_attention_backward, line for line."""
    q, k, v, probs = core_cache
    dprobs = dy @ v.swapaxes(-1, -2)                                # (B,H,T,D) @ (B,H,D,Tk) -> (B,H,T,Tk)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))   # (B,H,T,Tk)
    return dscores


def attention_maps(model, input_ids, labels, attention_mask=None, position_ids=None):
    """A GPT and one batch (aligned labels, -100 not counted) -> {
        "probs"   (L,B,H,T,T)  P of every block (L = n_layer) and head
        "dscores" (L,B,H,T,T)  dS, the gradient of the mean loss at the scores
        "allowed" (B,T,T) bool which keys each query may see (the causal mask and padding)
        "key_mask" (B,T) bool  True for real tokens, False for padding
        "counted" (B,T) bool   True where the label counts (not -100)
        "loss"    float}.
    Computed by the textbook (numpygpt/layers/) in the model's dtype, whatever its engine."""
    run = probe(model, input_ids, labels, attention_mask, position_ids)
    probs = [b["attn_core"][3] for b in run["blocks"]]
    dscores = [attention_dscores(b["attn_core"], b["d_core_out"]) for b in run["blocks"]]
    key_mask = run["key_mask"]
    B, T = key_mask.shape
    allowed = np.broadcast_to(allowed_keys(T, T, key_mask), (B, 1, T, T))[:, 0]
    return {"probs": np.stack(probs), "dscores": np.stack(dscores), "allowed": allowed,
            "key_mask": key_mask, "counted": run["labels"] != -100, "loss": run["loss"]}
