"""One training loop, for pre-training and SFT alike: only the batches differ.

Each step (train/step.py): lr from the schedule (optim.lr_at), a batch from next_batch(rng),
forward and backward, clip, AdamW. Around it, here: every `eval_every` steps
`evaluate(model)` reports held-out metrics; every `save_every` steps, at the end and when
stopped, a checkpoint is saved atomically (train/checkpoint.py).

Exact resumption: a checkpoint holds the parameters, AdamW's moments and step count, the
step, the training RNG's state and the settings, so a resumed run draws the same batches and
computes bit-identical losses to an uninterrupted one. Evaluation uses its own fixed batches:
how often you evaluate does not change training.

SIGINT (Ctrl-C) and SIGTERM ask the loop to stop at the end of the current step
(train/signals.py); it saves that step and returns. A closed stdout (the log's reader went
away) stops it the same way ("SIGPIPE").

Nothing non-finite is saved: a NaN/inf loss or gradient norm, or an update that leaves the
floating-point range, stops the run before the step is saved.

Data-parallel (world: train/distributed.py, under mpiexec): every rank runs this loop on the
same global batches; the step's loss and gradients come from one Allreduce, so every rank
applies the same update. Rank 0 alone evaluates, logs and saves. A stop signal on any rank
travels in the next Allreduce, and every rank stops on that agreed flag, never on its own
signal alone, so all ranks stop after the same step. The parameters' checksums are compared
across ranks every eval_every steps.
"""
import time

import numpy as np

from ..checks import NonFiniteError
from ..pictures.update_ratio import snapshot, update_ratios
from .checkpoint import save_checkpoint
from .distributed import DataParallelGradients, ReplicaDrift, SingleProcess, params_checksum
from .optim import lr_at
from .signals import StopSignals
from .step import train_step


class SaveError(OSError):
    """A checkpoint could not be written (disk full, directory gone...); the message says
    which step and which earlier checkpoint is intact."""


class Checkpoints:
    """Where a run saves (out, or None: nowhere) and what it has saved."""

    def __init__(self, out, model, optimizer, rng, settings, history, extra, start_step):
        self.out, self.model, self.optimizer, self.rng = out, model, optimizer, rng
        self.settings, self.history, self.extra = settings, history, extra or {}
        self.start_step, self.saved = start_step, None

    def save(self, step):
        if self.out is None or self.saved == step:
            return
        try:
            save_checkpoint(self.out, self.model.config, self.model.params,
                            self.optimizer.state_dict(), step, self.rng.bit_generator.state,
                            {"settings": self.settings.to_dict(), "history": self.history,
                             **self.extra})
        except OSError as e:
            raise SaveError(f"step {step}: could not save a checkpoint in {self.out} ({e}); "
                            f"{self.kept()}") from None
        self.saved = step

    def kept(self):
        """What a failed run leaves behind."""
        if self.saved is not None:
            return f"the last good checkpoint, step {self.saved}, is kept in {self.out}"
        if self.out is not None and self.start_step > 0:
            return f"the checkpoint of step {self.start_step} in {self.out} is unchanged"
        return "no checkpoint was saved in this run"


def train_loop(model, optimizer, settings, next_batch, rng, start_step=0, out=None,
               evaluate=None, stop_at=None, history=None, extra=None, log=print, progress=None,
               world=None, update_ratio=False):
    """Steps start_step .. settings.steps - 1 (or until stop_at, or a stop signal).
    next_batch(rng) -> a batch (the keyword arguments of model.loss_and_grads);
    evaluate(model) -> {metric: value}, logged every eval_every steps and at the end.
    world: the ranks of a data-parallel run (train/distributed.py); None: this process alone.
    update_ratio: keep each step's update-to-weight ratios in history["update_ratio"] as
    [step, {tensor: std(update) / std(weight)}] (pictures/update_ratio.py); they cost a copy
    of the weights per step, so they are kept only when asked.
    Returns {"losses": train losses of the steps run here, "evals": [(step, metrics)],
    "step": steps done, "history": the run's whole history, "saved": the last step saved
    or None, "stopped_by": a signal's name or None}.
    Raises NonFiniteError (numpygpt.checks) on NaN, inf or a floating-point overflow;
    checkpoints saved before it are kept."""
    s = settings
    world = world or SingleProcess()
    if world.rank != 0:                    # rank 0 alone evaluates, logs and saves
        evaluate, log, progress, out = None, (lambda line: None), None, None
    history = history if history is not None else {"losses": [], "evals": []}
    checkpoints = Checkpoints(out, model, optimizer, rng, s, history, extra, start_step)
    gradients = None if world.size == 1 else DataParallelGradients(model, world)
    losses, evals = [], []
    step, t_start, t_settled = start_step, time.perf_counter(), None
    with StopSignals() as signals:
        while step < s.steps and (stop_at is None or step < stop_at):
            if gradients is None and signals.received:
                break
            lr = lr_at(step, s.lr, s.warmup, s.steps, s.min_lr)
            try:
                if gradients is not None:           # this rank's signal goes with the sums
                    gradients.stop_here = signals.received is not None
                before = snapshot(model.params) if update_ratio else None
                loss, _ = train_step(model, optimizer, next_batch(rng), lr, s.grad_clip, gradients)
            except NonFiniteError as e:
                if progress is not None:
                    progress.done()
                raise NonFiniteError(f"step {step + 1}: {e}; training stopped "
                                     f"({checkpoints.kept()}); try a lower --lr") from None
            step += 1
            losses.append(loss)
            history["losses"].append(loss)
            if before is not None:
                history.setdefault("update_ratio", []).append(
                    [step, update_ratios(before, model.params)])
            if step - start_step == ETA_AFTER:
                t_settled = time.perf_counter()
            if progress is not None:
                progress.update(progress_line(step, start_step, s.steps, loss, lr, t_start,
                                              t_settled))
            at_eval = step % s.eval_every == 0 or step == s.steps
            if evaluate is not None and at_eval:
                metrics = evaluate(model)
                evals.append((step, metrics))
                history["evals"].append((step, metrics))
                if progress is not None:
                    progress.done()
                if not say(log, f"step {step}: train loss {loss:.4f}, " + format_metrics(metrics)):
                    signals.received = signals.received or "SIGPIPE"
            if world.size > 1 and at_eval and not world.all_equal(params_checksum(model.params)):
                raise ReplicaDrift(f"step {step}: the ranks' parameters differ (checksums); "
                                   f"training stopped ({checkpoints.kept()})")
            if step % s.save_every == 0 or step == s.steps or step == stop_at:
                save(checkpoints, step, progress)
            if gradients is not None and gradients.stop_agreed:    # every rank, after this step
                signals.received = signals.received or "a stop signal on another rank"
                break
        if signals.received and step > start_step:       # nothing new trained: nothing to save
            save(checkpoints, step, progress)
    if progress is not None:
        progress.done()
    return {"losses": losses, "evals": evals, "step": step, "history": history,
            "saved": checkpoints.saved, "stopped_by": signals.received}


def save(checkpoints, step, progress):
    try:
        checkpoints.save(step)
    except SaveError:
        if progress is not None:
            progress.done()
        raise


def say(log, line):
    """log(line); False when nobody reads the log any more (a closed pipe)."""
    try:
        log(line)
    except BrokenPipeError:
        return False
    return True


def progress_line(step, start_step, steps, loss, lr, t_start, t_settled):
    """The live line: the step, the loss, the rate, and the time left, estimated from the
    steps after the first ETA_AFTER (t_settled: when they were done; the first steps are
    slower, allocating and warming up)."""
    now = time.perf_counter()
    elapsed = now - t_start
    done = step - start_step
    remaining = ""
    if t_settled is not None and done > ETA_AFTER:
        per_step = (now - t_settled) / (done - ETA_AFTER)
        remaining = f" | remaining {format_seconds(per_step * (steps - step))}"
    return (f"step {step}/{steps} | loss {loss:.4f} | lr {lr:.2e} | {done / elapsed:.1f} "
            f"steps/s | elapsed {format_seconds(elapsed)}{remaining}")


ETA_AFTER = 5        # steps before the time left is estimated


def mean_loss(model, batches):
    """Mean of each batch's mean loss (a metric for batches of equal token counts)."""
    return float(np.mean([model.loss(**batch) for batch in batches]))


def format_metrics(metrics):
    return ", ".join(f"{name} {value:.1%}" if "accuracy" in name or "match" in name
                     else f"{name} {value:.4f}" for name, value in metrics.items())


def format_seconds(s):
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
