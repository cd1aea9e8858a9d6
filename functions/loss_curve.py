"""The loss-curve PNG people look at after training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt  # noqa: E402


def write_loss_curve(history: dict[str, list], steps_per_epoch: int, path: Path, *, title: str) -> Path:
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = history.get("step_loss", [])
    if steps:
        axis.plot(range(1, len(steps) + 1), steps, color="#9ecae1", linewidth=1, label="train loss (step)")
    epochs = [(n + 1) * steps_per_epoch for n in range(len(history.get("train_loss", [])))]
    if epochs:
        axis.plot(epochs, history["train_loss"], "o-", color="#2171b5", label="train loss (epoch mean)")
    val = [(x, v) for x, v in zip(epochs, history.get("val_loss", [])) if v is not None]
    if val:
        axis.plot(*zip(*val), "s-", color="#e6550d", label="validation loss (fixed noise)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("flow-matching MSE")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
