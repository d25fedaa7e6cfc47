"""The loss curve of a training run, drawn from its history (the train loss of every step
and the evaluations), as a PNG: `numpygpt train/sft --plots DIR`. Needs matplotlib (the
`plot` extra), imported only when a curve is drawn."""

from ..pictures.draw import PLOT_EXTRA, have_matplotlib, pyplot

__all__ = ["PLOT_EXTRA", "have_matplotlib", "plot_loss_curve"]


def plot_loss_curve(history, path, title):
    """history {"losses": [loss of step 1, 2, ...], "evals": [(step, {metric: value})]}
    -> a PNG at path: the train loss against the step (left), each evaluated metric against
    the step (right). Raises ValueError when matplotlib is missing."""
    plt = pyplot()
    losses = history["losses"]
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    ax_loss.plot(range(1, len(losses) + 1), losses, lw=1, label="train loss (one batch)")
    metrics = sorted({name for _, m in history["evals"] for name in m})
    for name in metrics:
        points = [(step, m[name]) for step, m in history["evals"] if name in m]
        ax = ax_loss if "loss" in name else ax_eval
        ax.plot([s for s, _ in points], [v for _, v in points], "o-", ms=3, label=name)
    for ax in (ax_loss, ax_eval):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_loss.set_ylabel("loss")
    ax_eval.set_title("held-out metrics" if any("loss" not in n for n in metrics)
                      else "no other metric", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
