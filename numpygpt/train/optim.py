"""AdamW, global gradient-norm clipping, and a warm-up + cosine learning-rate schedule.

AdamW (Loshchilov & Hutter; as torch.optim.AdamW), for each parameter p with gradient g, step t >= 1:
    p = p - lr * wd * p                                  decoupled weight decay (not added to g)
    m = b1 * m + (1 - b1) * g                            first moment
    v = b2 * v + (1 - b2) * g^2                          second moment
    m_hat = m / (1 - b1^t);   v_hat = v / (1 - b2^t)     bias correction
    p = p - lr * m_hat / (sqrt(v_hat) + eps)

With engine="fast" the same step is done by the engine (engine/adamw.py: in place, chunk by
chunk, on every core), with the same numbers.

Which parameters decay (GPT-2 / nanoGPT recipe): only the matrices of linear layers.
Biases, LayerNorm weights and the embeddings (wte, wpe) are not decayed by default.

Clipping: with N = sqrt(sum over all tensors of sum(g^2)), every gradient is scaled by
min(1, max_norm / (N + 1e-6)), as PyTorch's clip_grad_norm_: a norm above max_norm - 1e-6
(max_norm itself included) comes out just under max_norm.

Schedule: linear warm-up from 0 to max_lr over `warmup` steps, then cosine decay to
min_lr at `total` steps, min_lr after that.
"""
import math

import numpy as np

from ..config import ENGINES, param_kind
from ..engine.adamw import adamw_step_fast


def default_decay(name):
    """True for the weights that AdamW decays: the matrices of linear layers (an untied
    lm_head.weight among them), not biases, LayerNorm weights or embeddings."""
    return param_kind(name) == "matrix"


class AdamW:
    """State (m, v per parameter, step count t) lives in plain dicts so a checkpoint can save it."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                 decay=default_decay, engine="textbook"):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AdamW: {name} must be a finite number >= 0, got {value!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}")
        if engine not in ENGINES:
            raise ValueError(f"AdamW: engine={engine!r} is not one of {ENGINES}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.engine = engine
        self.decays = {name: bool(decay(name)) for name in params}
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.t = 0

    def step(self, params, grads, lr=None):
        """Update params in place with grads (same keys); lr overrides self.lr (schedules)."""
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        if self.engine == "fast":       # the same update, in place and on every core
            adamw_step_fast(params, grads, self.m, self.v, self.t, lr, self.betas, self.eps,
                            self.weight_decay, self.decays)
            return
        for name, p in params.items():
            g = grads[name]
            if self.decays[name]:
                p -= lr * self.weight_decay * p                     # decoupled weight decay
            self.m[name] = b1 * self.m[name] + (1 - b1) * g         # first moment
            self.v[name] = b2 * self.v[name] + (1 - b2) * g ** 2    # second moment
            m_hat = self.m[name] / (1 - b1 ** self.t)               # bias correction
            v_hat = self.v[name] / (1 - b2 ** self.t)
            p -= lr * m_hat / (np.sqrt(v_hat) + self.eps)           # in place: the model's array

    def state_dict(self):
        """Arrays and scalars needed to continue exactly where this optimiser is."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state):
        for key in ("m", "v"):
            src = state[key]
            if set(src) != set(self.m):
                raise ValueError(f"AdamW state {key!r} has tensors {sorted(set(src) ^ set(self.m))} "
                                 f"that do not match the parameters")
            for name, arr in src.items():
                if arr.shape != self.m[name].shape:
                    raise ValueError(f"AdamW state {key}[{name!r}] has shape {arr.shape}, "
                                     f"expected {self.m[name].shape}")
        self.m = {k: np.array(a, dtype=self.m[k].dtype) for k, a in state["m"].items()}
        self.v = {k: np.array(a, dtype=self.v[k].dtype) for k, a in state["v"].items()}
        self.t = int(state["t"])


def global_grad_norm(grads):
    """sqrt(sum over tensors of sum(g^2)), accumulated in float64 (a scalar per tensor, so no
    large upcast copies)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global norm is <= max_norm; return the norm before
    clipping (inf/nan is returned as is and nothing is scaled, so the caller can stop)."""
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ValueError(f"max_norm must be a number > 0, got {max_norm!r}")
    norm = global_grad_norm(grads)
    scale = max_norm / (norm + 1e-6)         # PyTorch's clip_grad_norm_: min(1, this)
    if math.isfinite(norm) and scale < 1:    # so a norm at max_norm is scaled too, just under
        for g in grads.values():
            g *= scale
    return norm


def lr_at(step, max_lr, warmup, total, min_lr=0.0):
    """Learning rate for 0-based `step`: linear warm-up over `warmup` steps (step 0 gets
    max_lr/warmup, not 0), then cosine from max_lr down to min_lr at step `total`."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(total - warmup, 1)        # 0 -> 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
