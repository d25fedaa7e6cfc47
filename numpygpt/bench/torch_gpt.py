"""The same GPT in PyTorch eager, for the benchmarks' same-run comparison (and their check
that both compute the same loss). The one place the block is written a second time: in
PyTorch, on purpose, as the reference.

    scaled_dot_product_attention(is_causal=True), tied lm_head, cross_entropy with
    ignore_index=-100, GELU tanh; numpygpt's x @ W becomes F.linear(x, W^T).
"""
import numpy as np


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_torch_gpt(params, config):
    """A GPT-2 in PyTorch eager holding a float32 copy of numpygpt's params (nn.Linear
    layout: numpygpt's x @ W becomes F.linear(x, W^T))."""
    import torch
    import torch.nn.functional as F

    class TorchGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            p = {}
            for name, value in params.items():
                a = np.asarray(value, dtype=np.float32)
                if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                    a = a.T                                   # (Cin,Cout) -> (Cout,Cin)
                p[name.replace(".", "_")] = torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a)))
            self.p = torch.nn.ParameterDict(p)

        def forward(self, ids, labels):
            P, cfg = self.p, config
            B, T = ids.shape
            C, H = cfg.n_embd, cfg.n_head
            x = P["wte_weight"][ids] + P["wpe_weight"][:T]
            for i in range(cfg.n_layer):
                b = lambda k: P[f"h_{i}_{k}"]                  # noqa: E731
                h = F.layer_norm(x, (C,), b("ln_1_weight"), b("ln_1_bias"), cfg.layer_norm_epsilon)
                q, k, v = F.linear(h, b("attn_c_attn_weight"), b("attn_c_attn_bias")).split(C, dim=2)
                q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                y = y.transpose(1, 2).reshape(B, T, C)
                x = x + F.linear(y, b("attn_c_proj_weight"), b("attn_c_proj_bias"))
                h = F.layer_norm(x, (C,), b("ln_2_weight"), b("ln_2_bias"), cfg.layer_norm_epsilon)
                h = F.gelu(F.linear(h, b("mlp_c_fc_weight"), b("mlp_c_fc_bias")), approximate="tanh")
                x = x + F.linear(h, b("mlp_c_proj_weight"), b("mlp_c_proj_bias"))
            x = F.layer_norm(x, (C,), P["ln_f_weight"], P["ln_f_bias"], cfg.layer_norm_epsilon)
            logits = F.linear(x, P["wte_weight"])              # tied lm_head: (B,T,C) -> (B,T,V)
            return F.cross_entropy(logits.view(-1, cfg.vocab_size), labels.view(-1),
                                   ignore_index=-100)

    if config.pos_encoding != "learned" or not config.tie_word_embeddings:
        raise ValueError("the PyTorch reference is GPT-2: learned positions, tied lm_head")
    return TorchGPT()


def torch_step_fn(model, ids, labels):
    import torch
    ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(ids_t, labels_t)
        loss.backward()
        return float(loss.detach())
    step.reset = lambda: model.zero_grad(set_to_none=True)    # numpygpt's grads die with its step
    return step




def torch_adamw_fn(model, decays, max_norm, lr, betas, eps, weight_decay):
    """clip_grad_norm_ to max_norm, then torch.optim.AdamW on the model built by
    build_torch_gpt, with numpygpt's weight-decay groups (decays: numpygpt name -> bool);
    fused=True, PyTorch's fastest CPU variant, where this build has it, else foreach.
    Returns (step function, the variant's name). The step uses the .grad the model's last
    backward left."""
    import torch
    groups = [{"params": [model.p[n.replace(".", "_")] for n, d in decays.items() if d == decay],
               "weight_decay": weight_decay if decay else 0.0} for decay in (True, False)]
    for variant in ("fused", "foreach"):
        try:
            opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **{variant: True})
            break
        except (RuntimeError, ValueError):
            continue

    params = [p for group in groups for p in group["params"]]

    def step():
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
    return step, variant
