"""The zoo's oracle: the same losses and gradients computed by PyTorch autograd (float64) on
the same weights, written here a second time from the definitions, sharing no numpygpt code.

For a layer home, torch differentiates sum(layer(x) * R) and its gradients are compared with
the layer's backward(R). For a model home, torch computes the loss the HuggingFace way from the
raw (prompt, answer) pairs: labels = the inputs with the prompt and padding set to -100,
shifted inside the loss (logits[:, :-1] against labels[:, 1:]), mean over the counted targets
of the whole batch. It builds its own labels on purpose: an oracle handed numpygpt's labels
would agree with a label bug. For the rolling_cache home, torch computes the training loss of
plain sequences (each token predicts the next) and the full forward's logits, which numpygpt's
token-by-token decode must equal. torch is optional: torch_version() is None without it.
"""
from contextlib import contextmanager

import numpy as np

ORACLE_TOL = 1e-9    # float64, as the oracle tests (tests/test_oracle.py)


def torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


@contextmanager
def one_thread():
    """Tensors this small run fastest on one thread (and several threads spin for ~0.1 s a call
    when the cores are busy); torch's setting is restored after."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def layer_oracle(home, x, p, R, input_names, ln_eps=1e-5, window=None, heads=None):
    """d sum(layer(x) * R) / d (inputs, params) by torch -> {name: ndarray}.
    window: the sliding window of the window_attention home; heads: (H, K) of gqa_attention."""
    with one_thread():
        return _layer_oracle(home, x, p, R, input_names, ln_eps, window, heads)


def _layer_oracle(home, x, p, R, input_names, ln_eps, window, heads):
    import torch
    import torch.nn.functional as F

    xs = x if isinstance(x, tuple) else (x,)
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
    inputs = {n: (t(a) if np.issubdtype(np.asarray(a).dtype, np.floating) else torch.tensor(a))
              for n, a in zip(input_names, xs)}
    params = {k: t(v) for k, v in p.items()}
    a = [inputs[n] for n in input_names]
    if home == "linear-square":
        out = a[0] @ params["weight"] + params["bias"]
    elif home == "embedding":
        out = params["wte.weight"][a[0]] + params["wpe.weight"][torch.arange(a[0].shape[1])]
    elif home == "layernorm":
        out = F.layer_norm(a[0], a[0].shape[-1:], params["weight"], params["bias"], ln_eps)
    elif home == "gelu":
        out = F.gelu(a[0], approximate="tanh")
    elif home in ("attention_core", "tiled_attention"):
        out = causal_attention(*a)
    elif home == "window_attention":
        out = causal_attention(*a, window=window)
    elif home == "gqa_attention":
        out = attention_layer(a[0], params["c_attn.weight"], params["c_attn.bias"],
                              params["c_proj.weight"], params["c_proj.bias"], *heads)
    else:
        raise ValueError(f"no torch version of the layer home {home!r}")
    (out * torch.tensor(R)).sum().backward()
    leaves = {**{n: v for n, v in inputs.items() if v.requires_grad}, **params}
    return {n: v.grad.numpy() for n, v in leaves.items()}


def causal_attention(q, k, v, window=None):
    """Query i sees key j <= i, and with a window W only j > i - W: torch's
    scaled_dot_product_attention with that boolean band as its mask (True = may attend)."""
    import torch
    import torch.nn.functional as F
    T = q.shape[-2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (j <= i) if window is None else (j <= i) & (i - j < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band)


def attention_layer(x, w_attn, b_attn, w_proj, b_proj, H, K, window=None):
    """x (B,T,C) -> (B,T,C): q, k, v projected (C, K*D, K*D wide), the K key/value heads
    repeated for their H/K query heads (torch's repeat_interleave), causal attention."""
    B, T, C = x.shape
    D = C // H
    heads = lambda t, n: t.view(B, T, n, D).transpose(1, 2)              # (B,n,T,D)
    q, k, v = (x @ w_attn + b_attn).split([C, K * D, K * D], dim=-1)
    k, v = (heads(t, K).repeat_interleave(H // K, dim=1) for t in (k, v))   # (B,H,T,D)
    y = causal_attention(heads(q, H), k, v, window=window)
    return y.transpose(1, 2).reshape(B, T, C) @ w_proj + b_proj


def model_oracle(params, config, examples, pad_id):
    """The full batch's mean loss over the answers (and the end-of-text after each), from the
    raw examples, and d loss / d params by torch -> (loss, {name: ndarray})."""
    with one_thread():
        return _model_oracle(params, config, examples, pad_id)


def _model_oracle(params, config, examples, pad_id):
    import torch
    import torch.nn.functional as F

    seqs = [list(prompt) + list(answer) + [pad_id] for prompt, answer in examples]
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)       # HF form: unshifted
    for b, ((prompt, _), seq) in enumerate(zip(examples, seqs)):
        ids[b, :len(seq)] = torch.tensor(seq)
        labels[b, len(prompt):len(seq)] = torch.tensor(seq[len(prompt):])
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
         for k, v in params.items()}
    logits = gpt_logits(P, config, ids)                                   # (B,T,V)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, config.vocab_size),
                           labels[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in P.items()}


def gpt_logits(P, config, ids):
    """The GPT's logits (B,T,V) by torch, from its parameters P (torch tensors), learned
    positions 0..T-1, no padding."""
    import torch
    import torch.nn.functional as F

    T = ids.shape[1]
    C, eps = config.n_embd, config.layer_norm_epsilon
    ln = lambda x, pre: F.layer_norm(x, (C,), P[pre + ".weight"], P[pre + ".bias"], eps)
    x = P["wte.weight"][ids] + P["wpe.weight"][torch.arange(T)]
    for i in range(config.n_layer):
        h = f"h.{i}."
        x = x + attention_layer(ln(x, h + "ln_1"), P[h + "attn.c_attn.weight"],
                                P[h + "attn.c_attn.bias"], P[h + "attn.c_proj.weight"],
                                P[h + "attn.c_proj.bias"], config.n_head, config.kv_heads,
                                config.sliding_window)
        m = F.gelu(ln(x, h + "ln_2") @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"],
                   approximate="tanh")
        x = x + m @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]
    head = P["wte.weight" if config.tie_word_embeddings else "lm_head.weight"]
    return ln(x, "ln_f") @ head.T                                         # (B,T,V)


def sequence_oracle(params, config, input_ids):
    """Sequences without padding, each token predicting the next: torch's mean loss, its
    gradients and the full forward's logits -> (loss, {name: ndarray, "logits": (B,T,V)})."""
    with one_thread():
        import torch
        import torch.nn.functional as F

        ids = torch.tensor(np.asarray(input_ids), dtype=torch.long)
        P = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
             for k, v in params.items()}
        logits = gpt_logits(P, config, ids)                               # (B,T,V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, config.vocab_size),
                               ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), {**{k: v.grad.numpy() for k, v in P.items()},
                             "logits": logits.detach().numpy()}
