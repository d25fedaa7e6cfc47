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
A closed stdout (the log's reader went away) stops it the same way ("SIGPIPE").

Nothing non-finite is saved: a NaN/inf loss or gradient norm, or parameters that an update
pushed out of the floating-point range, stop the run before the step is saved.

Data-parallel (world: train/distributed.py, under mpiexec): every rank runs this loop on the
same global batches; the step's loss and gradients come from one Allreduce, so every rank
applies the same update. Rank 0 alone evaluates, logs and saves; a stop signal on any rank
travels in the same Allreduce, so all ranks stop after the same step; the parameters'
checksums are compared across ranks every eval_every steps.
"""
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, asdict, fields

import numpy as np

from ..checks import NonFiniteError
from ..config import GPTConfig, POS_ENCODINGS
from ..io import ByteTokenizer
from .checkpoint import save_checkpoint, load_checkpoint, rng_from_state
from .distributed import (ReplicaDrift, SingleProcess, data_parallel_loss_and_grads,
                          params_checksum)
from .optim import clip_grad_norm, lr_at

TASKS = ("text", "sft")
# field -> (kind, lowest, highest, low_open, high_open) for the numbers of TrainSettings
_NUMBERS = {
    "n_layer": ("int", 1), "n_head": ("int", 1), "n_embd": ("int", 1), "seq_len": ("int", 1),
    "batch_size": ("int", 1), "n_test": ("int", 1), "steps": ("int", 1), "warmup": ("int", 0),
    "eval_every": ("int", 1), "eval_batches": ("int", 1), "save_every": ("int", 1),
    "seed": ("int", 0),
    "val_fraction": ("float", 0, 1, True, True), "lr": ("float", 0, math.inf, True),
    "min_lr": ("float", 0), "weight_decay": ("float", 0), "beta1": ("float", 0, 1, False, True),
    "beta2": ("float", 0, 1, False, True), "grad_clip": ("float", 0, math.inf, True),
}


def _check_number(name, value, kind, low, high=math.inf, low_open=False, high_open=False):
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        where = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf else
                 f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")


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

    def __post_init__(self):
        """Every field checked (a checkpoint's settings are read back through here)."""
        for name, spec in _NUMBERS.items():
            _check_number(name, getattr(self, name), *spec)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr!r} is above lr={self.lr!r} (the schedule "
                             f"decays from lr down to min_lr)")
        for name, choices in (("task", TASKS), ("pos_encoding", POS_ENCODINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.data is not None and not isinstance(self.data, str):
            raise ValueError(f"data must be a file path or null, got {self.data!r}")
        if not isinstance(self.prompt_mask, bool):
            raise ValueError(f"prompt_mask must be true or false, got {self.prompt_mask!r}")

    def model_config(self, n_positions):
        return GPTConfig(vocab_size=ByteTokenizer.vocab_size, n_positions=n_positions,
                         n_embd=self.n_embd, n_head=self.n_head, n_layer=self.n_layer,
                         pos_encoding=self.pos_encoding)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """From a checkpoint's settings; names of earlier versions are read too. Every
        field is checked: a ValueError names the first bad one."""
        if not isinstance(d, dict):
            raise ValueError(f"must be an object of training settings, got {type(d).__name__}")
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
               evaluate=None, stop_at=None, history=None, extra=None, log=print, progress=None,
               world=None):
    """Steps start_step .. settings.steps - 1 (or until stop_at, or a stop signal).
    next_batch(rng) -> a batch (the keyword arguments of model.loss_and_grads);
    evaluate(model) -> {metric: value}, logged every eval_every steps and at the end.
    world: the ranks of a data-parallel run (train/distributed.py); None: this process alone.
    Returns {"losses": train losses of the steps run here, "evals": [(step, metrics)],
    "step": steps done, "history": the run's whole history, "saved": the last step saved
    or None, "stopped_by": a signal's name or None}.
    Raises NonFiniteError (numpygpt.checks) on NaN, inf or a floating-point overflow;
    checkpoints saved before it are kept."""
    s = settings
    world = world or SingleProcess()
    lead = world.rank == 0                 # evaluates, logs and saves
    if not lead:
        evaluate, log, progress, out = None, (lambda line: None), None, None
    history = history if history is not None else {"losses": [], "evals": []}
    losses, evals = [], []
    step, saved, t_start = start_step, None, time.perf_counter()

    def kept():
        if saved is not None:
            return f"the last good checkpoint, step {saved}, is kept in {out}"
        if out is not None and start_step > 0:
            return f"the checkpoint of step {start_step} in {out} is unchanged"
        return "no checkpoint was saved in this run"

    def save():
        nonlocal saved
        if out is not None and saved != step:
            try:
                save_checkpoint(out, model.config, model.params, optimizer.state_dict(), step,
                                rng.bit_generator.state,
                                {"settings": s.to_dict(), "history": history, **(extra or {})})
            except OSError as e:
                if progress is not None:
                    progress.done()
                raise SaveError(f"step {step}: could not save a checkpoint in {out} ({e}); "
                                f"{kept()}") from None
            saved = step

    def say(line):
        try:
            log(line)
        except BrokenPipeError:          # nobody reads the log any more: stop as if signalled
            signals.received = signals.received or "SIGPIPE"

    with StopSignals() as signals:
        while step < s.steps and (stop_at is None or step < stop_at):
            if signals.received and world.size == 1:
                break                      # (ranks agree on stopping through the Allreduce)
            lr = lr_at(step, s.lr, s.warmup, s.steps, s.min_lr)
            try:
                if world.size == 1:
                    loss, grads = model.loss_and_grads(**next_batch(rng))
                else:
                    loss, grads, stop = data_parallel_loss_and_grads(
                        model, next_batch(rng), world, stop=bool(signals.received))
                    if stop and not signals.received:
                        signals.received = "a stop signal on another rank"
                norm = clip_grad_norm(grads, s.grad_clip)   # scales nothing if nan/inf
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise NonFiniteError(f"the loss is {loss}" if not math.isfinite(loss)
                                         else f"the gradient norm is {norm}")
                with np.errstate(over="ignore", invalid="ignore"):    # checked just below
                    optimizer.step(model.params, grads, lr)
                bad = next((name for name, p in model.params.items()
                            if not np.isfinite(p).all()), None)
                if bad is not None:
                    raise NonFiniteError(f"the update (lr {lr:.3g}) made {bad!r} NaN or inf")
            except NonFiniteError as e:
                if progress is not None:
                    progress.done()
                raise NonFiniteError(f"step {step + 1}: {e}; training stopped ({kept()}); "
                                     f"try a lower --lr") from None
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
                say(f"step {step}: train loss {loss:.4f}, " + format_metrics(metrics))
            if world.size > 1 and (step % s.eval_every == 0 or step == s.steps) \
                    and not world.all_equal(params_checksum(model.params)):
                raise ReplicaDrift(f"step {step}: the ranks' parameters differ (checksums); "
                                   f"training stopped ({kept()})")
            if step % s.save_every == 0 or step == s.steps or step == stop_at:
                save()
            if signals.received:
                break
        if signals.received and step > start_step:       # nothing new trained: nothing to save
            save()
    if progress is not None:
        progress.done()
    return {"losses": losses, "evals": evals, "step": step, "history": history, "saved": saved,
            "stopped_by": signals.received}


class SaveError(OSError):
    """A checkpoint could not be written (disk full, directory gone...); the message says
    which step and which earlier checkpoint is intact."""


def check_history(history):
    """A run's history as a checkpoint holds it: {"losses": [finite numbers], "evals":
    [[step, {metric: finite number}]]} -> the same, with lists copied. ValueError naming
    the field otherwise."""
    if not isinstance(history, dict):
        raise ValueError(f"history must be an object, got {type(history).__name__}")
    losses, evals = history.get("losses", []), history.get("evals", [])

    def number(v):
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if not isinstance(losses, list) or not all(number(v) for v in losses):
        raise ValueError(f"history.losses must be a list of finite numbers, got "
                         f"{_short(losses)}")
    for i, e in enumerate(evals if isinstance(evals, list) else [None]):
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int)
                and not isinstance(e[0], bool) and isinstance(e[1], dict)
                and all(isinstance(k, str) and number(v) for k, v in e[1].items())):
            raise ValueError(f"history.evals[{i}] must be [step, {{metric: finite number}}], "
                             f"got {_short(e if isinstance(evals, list) else evals)}")
    return {"losses": list(losses), "evals": [tuple(e) for e in evals]}


def _short(value, n=60):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def load_training_checkpoint(path, task):
    """A checkpoint saved by train_loop, checked for continuing it: the generic checks of
    load_checkpoint, then its training settings (every field), their agreement with the
    model's config, the loss history, and the RNG state. Returns {"checkpoint": the
    load_checkpoint dict, "settings": TrainSettings, "history": dict, "rng": Generator}."""
    ckpt = load_checkpoint(path)
    state_file = os.path.join(ckpt["dir"], "state.json")
    extra = ckpt["extra"]
    if "settings" not in extra or ckpt["optimizer_state"] is None or ckpt["rng_state"] is None:
        missing = [what for what, absent in (("settings", "settings" not in extra),
                                             ("optimizer state", ckpt["optimizer_state"] is None),
                                             ("rng_state", ckpt["rng_state"] is None)) if absent]
        raise ValueError(f"checkpoint {path!r} is not a checkpoint of a training run (no "
                         f"{', '.join(missing)})")
    try:
        settings = TrainSettings.from_dict(extra["settings"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {state_file}: settings: {e}") from None
    if settings.task != task:
        raise ValueError(f"checkpoint {path!r} is a '{settings.task}' run, not '{task}'")
    config = ckpt["config"]
    for name in ("n_layer", "n_head", "n_embd", "pos_encoding"):
        if getattr(settings, name) != getattr(config, name):
            raise ValueError(f"checkpoint file {state_file}: settings.{name}="
                             f"{getattr(settings, name)!r} disagrees with config.json "
                             f"({name}={getattr(config, name)!r})")
    if config.vocab_size != ByteTokenizer.vocab_size:
        raise ValueError(f"checkpoint {path!r}: vocab_size={config.vocab_size}, not the byte "
                         f"tokenizer's {ByteTokenizer.vocab_size}")
    if task == "text" and config.pos_encoding == "learned" and settings.seq_len > config.n_positions:
        raise ValueError(f"checkpoint file {state_file}: settings.seq_len={settings.seq_len} is "
                         f"longer than n_positions={config.n_positions} in config.json")
    try:
        history = check_history(extra.get("history", {"losses": [], "evals": []}))
    except ValueError as e:
        raise ValueError(f"checkpoint file {state_file}: {e}") from None
    return {"checkpoint": ckpt, "settings": settings, "history": history,
            "rng": rng_from_state(ckpt["rng_state"], f"checkpoint file {state_file}")}


def mean_loss(model, batches):
    """Mean of each batch's mean loss (a metric for batches of equal token counts)."""
    return float(np.mean([model.loss(**batch) for batch in batches]))


def format_metrics(metrics):
    return ", ".join(f"{name} {value:.1%}" if "accuracy" in name or "match" in name
                     else f"{name} {value:.4f}" for name, value in metrics.items())


def format_seconds(s):
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
