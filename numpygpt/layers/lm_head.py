"""lm_head: project the final hidden states onto the vocabulary.

    logits = x @ W^T            (B,T,C) @ (C,V) -> (B,T,V)
    dx = dlogits @ W,  dW = dlogits^T @ x

W is (V,C), the layout of the token embedding, so that GPT-2 can *tie* them (W is wte):
the same matrix reads tokens in and scores tokens out, and its gradient is the sum of both
uses (numpygpt/model.py adds the two).
"""


def lm_head_forward(x, p):
    """x (B,T,C), p {"weight": (V,C)} -> logits (B,T,V)."""
    return x @ p["weight"].T, (x, p["weight"])


def lm_head_backward(dlogits, cache):
    """dlogits (B,T,V) -> dx (B,T,C), {"weight": (V,C)}."""
    x, weight = cache
    C, V = x.shape[-1], weight.shape[0]
    dx = dlogits @ weight                                            # (B,T,V) @ (V,C)
    dweight = dlogits.reshape(-1, V).T @ x.reshape(-1, C)            # (V,N) @ (N,C)
    return dx, {"weight": dweight}
