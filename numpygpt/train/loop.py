"""One training loop, for pre-training and SFT alike: only the batches differ.

One step:
    lr    = warm-up then cosine (optim.lr_at)
    batch = next_batch(rng)                  input_ids, labels (aligned, -100 not counted), ...
    loss, grads = model.loss_and_grads(**batch)          mean over the batch's counted targets
    stop if the loss or the gradient norm is NaN/inf: the last checkpoint saved stays as it is
    clip the global gradient norm; AdamW step
Every `eval_every` steps `evaluate(model)` reports held-out metrics; every `save_every` steps,
at the end and when stopped, a checkpoint is saved atomically (train/checkpoint.py).

Exact resumption: a checkpoint holds the parameters, AdamW's moments and step count, the
step, the training RNG's state and the settings, so a resumed run draws the same batches and
computes bit-identical losses to an uninterrupted one. Evaluation uses its own fixed batches:
how often you evaluate does not change training.

SIGINT (Ctrl-C) and SIGTERM ask the loop to stop at the end of the current step (never in the
middle of an optimiser update); it saves that step and returns. A second signal stops at once.
"""
import math
import signal
import threading
import time
from dataclasses import dataclass, asdict, fields

import numpy as np

from ..checks import NonFiniteError
from ..config import GPTConfig
from ..io import ByteTokenizer
from .checkpoint import save_checkpoint
from .optim import clip_grad_norm, lr_at


@dataclass
class TrainSettings:
    """Everything a run is made of; saved in every checkpoint so `--resume` continues it.
    task "text": pre-training on windows of seq_len bytes; "sft": prompt/answer pairs."""
    task: str = "text"
    data: str | None = None          # a text file / a JSONL file; None: the built-in default
    # the model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    pos_encoding: str = "learned"
    # the data
    seq_len: int = 128               # text: the context length T of every training window
    batch_size: int = 16
    val_fraction: float = 0.1
    prompt_mask: bool = True         # sft: the prompt's labels are -100
    n_test: int = 500                # sft, addition task: held-out problems
    # the optimisation
    steps: int = 600
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # bookkeeping
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 0

    def model_config(self, n_positions):
        return GPTConfig(vocab_size=ByteTokenizer.vocab_size, n_positions=n_positions,
                         n_embd=self.n_embd, n_head=self.n_head, n_layer=self.n_layer,
                         pos_encoding=self.pos_encoding)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """From a checkpoint's settings; names of earlier versions are read too."""
        d = dict(d)
        if "block_size" in d:
            d.setdefault("seq_len", d.pop("block_size"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"training settings: unknown keys {unknown}")
        return cls(**d)


PRETRAIN = TrainSettings()
SFT = TrainSettings(task="sft", n_layer=2, steps=2000, batch_size=64, min_lr=1e-4, warmup=100,
                    eval_every=500, save_every=500)


class StopSignals:
    """While active, SIGINT and SIGTERM set `received` instead of interrupting; a second
    signal raises KeyboardInterrupt. Only the main thread can install signal handlers;
    elsewhere this does nothing."""

    def __init__(self):
        self.received = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def train_loop(model, optimizer, settings, next_batch, rng, start_step=0, out=None,
               evaluate=None, stop_at=None, history=None, extra=None, log=print, progress=None):
    """Steps start_step .. settings.steps - 1 (or until stop_at, or a stop signal).
    next_batch(rng) -> a batch (the keyword arguments of model.loss_and_grads);
    evaluate(model) -> {metric: value}, logged every eval_every steps and at the end.
    Returns {"losses": train losses of the steps run here, "evals": [(step, metrics)],
    "step": steps done, "history": the run's whole history, "saved": the last step saved
    or None, "stopped_by": a signal's name or None}.
    Raises NonFiniteError (numpygpt.checks) on NaN, inf or a floating-point overflow;
    checkpoints saved before it are kept."""
    s = settings
    history = history if history is not None else {"losses": [], "evals": []}
    losses, evals = [], []
    step, saved, t_start = start_step, None, time.perf_counter()

    def save():
        nonlocal saved
        if out is not None and saved != step:
            save_checkpoint(out, model.config, model.params, optimizer.state_dict(), step,
                            rng.bit_generator.state,
                            {"settings": s.to_dict(), "history": history, **(extra or {})})
            saved = step

    with StopSignals() as signals:
        while step < s.steps and (stop_at is None or step < stop_at) and not signals.received:
            lr = lr_at(step, s.lr, s.warmup, s.steps, s.min_lr)
            try:
                loss, grads = model.loss_and_grads(**next_batch(rng))
                norm = clip_grad_norm(grads, s.grad_clip)   # scales nothing if nan/inf
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise NonFiniteError(f"the loss is {loss}" if not math.isfinite(loss)
                                         else f"the gradient norm is {norm}")
            except NonFiniteError as e:
                if progress is not None:
                    progress.done()
                kept = (f"the last good checkpoint, step {saved}, is kept in {out}"
                        if saved is not None else "no checkpoint was saved in this run")
                raise NonFiniteError(f"step {step + 1}: {e}; training stopped ({kept}); "
                                     f"try a lower --lr") from None
            optimizer.step(model.params, grads, lr)
            step += 1
            losses.append(loss)
            history["losses"].append(loss)
            if progress is not None:
                elapsed = time.perf_counter() - t_start
                done_here = step - start_step
                progress.update(f"step {step}/{s.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                                f"{done_here / elapsed:.1f} steps/s | elapsed "
                                f"{format_seconds(elapsed)} | remaining "
                                f"{format_seconds(elapsed / done_here * (s.steps - step))}")
            if evaluate is not None and (step % s.eval_every == 0 or step == s.steps):
                metrics = evaluate(model)
                evals.append((step, metrics))
                history["evals"].append((step, metrics))
                if progress is not None:
                    progress.done()
                log(f"step {step}: train loss {loss:.4f}, " + format_metrics(metrics))
            if step % s.save_every == 0 or step == s.steps or step == stop_at:
                save()
        if signals.received:
            save()
    if progress is not None:
        progress.done()
    return {"losses": losses, "evals": evals, "step": step, "history": history, "saved": saved,
            "stopped_by": signals.received}


def mean_loss(model, batches):
    """Mean of each batch's mean loss (a metric for batches of equal token counts)."""
    return float(np.mean([model.loss(**batch) for batch in batches]))


def format_metrics(metrics):
    return ", ".join(f"{name} {value:.1%}" if "accuracy" in name or "match" in name
                     else f"{name} {value:.4f}" for name, value in metrics.items())


def format_seconds(s):
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
