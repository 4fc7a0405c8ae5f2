"""PNG plots of a LoRA's training: loss curve and identity similarity per checkpoint (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .._atomic import atomic_path
from ..errors import InputError

__all__ = ["plot_loss_curve", "plot_similarity_per_checkpoint"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    return plt, fig, ax


def _save(plt, fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def plot_loss_curve(losses: Sequence[float], path: str | os.PathLike, *, smooth: int = 10) -> Path:
    """Plot per-step loss (and a moving average) to ``path``.

    Raises:
        InputError: no losses.
    """
    losses = [float(v) for v in losses]
    if not losses:
        raise InputError("no losses to plot", field="losses", value=0)
    plt, fig, ax = _figure()
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    k = max(1, min(smooth, len(losses)))
    if k > 1:
        avg = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, avg, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title("training loss")
    ax.legend()
    return _save(plt, fig, path)


def plot_similarity_per_checkpoint(steps: Sequence[int], similarities: Sequence[float | None],
                                   path: str | os.PathLike, *, threshold: float | None = None,
                                   detection_rates: Sequence[float] | None = None) -> Path:
    """Plot identity similarity per checkpoint step (missing values: no face found) to ``path``.

    Raises:
        InputError: lengths differ or nothing to plot.
    """
    if len(steps) != len(similarities) or not steps:
        raise InputError("steps and similarities must be non-empty and of equal length", field="steps",
                         value=[len(steps), len(similarities)])
    plt, fig, ax = _figure()
    xs = [s for s, v in zip(steps, similarities) if v is not None]
    ys = [v for v in similarities if v is not None]
    ax.plot(xs, ys, marker="o", label="identity similarity")
    missing = [s for s, v in zip(steps, similarities) if v is None]
    if missing:
        ax.scatter(missing, [min(ys) if ys else 0.0] * len(missing), marker="x", color="red", label="no face")
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="grey", label="same-person threshold")
    if detection_rates is not None:
        ax2 = ax.twinx()
        ax2.plot(list(steps), list(detection_rates), color="green", alpha=0.4, label="face detection rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("face detection rate")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("cosine to profile")
    ax.set_title("identity per checkpoint")
    ax.legend(loc="lower right")
    return _save(plt, fig, path)
