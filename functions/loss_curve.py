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


def write_talking_loss_curves(expert: dict[str, list], generator: dict[str, list], path: Path, *, title: str) -> Path:
    """Wav2Lip's two loops side by side: the expert's BCE and accuracy, the generator's L1 and sync loss
    (per step, thin; per-epoch validation, markers)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)

    def panel(axis, history: dict[str, list], lines: list[tuple[str, str, str]], ylabel: str, what: str) -> None:
        for key, label, style in lines:
            values = [(n + 1, v) for n, v in enumerate(history.get(key, [])) if v is not None]
            if values:
                xs, ys = zip(*values)
                if key.startswith("val_"):  # per epoch: place at the epoch's last step
                    per_epoch = max(1, len(history.get("step_loss", [])) // max(1, len(history.get(key, []))))
                    xs = [x * per_epoch for x in xs]
                axis.plot(xs, ys, style, label=label, linewidth=1)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(ylabel)
        axis.set_title(what)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()

    panel(left, expert, [("step_loss", "train BCE (step)", "-"), ("val_loss", "validation BCE", "s-"),
                         ("val_accuracy", "validation accuracy", "o-")], "BCE / accuracy", "lip-sync expert")
    panel(right, generator, [("step_l1", "train L1 (step)", "-"), ("step_sync", "train sync loss (step)", "-"),
                             ("val_l1", "validation L1", "s-"), ("val_sync", "validation sync loss", "o-")],
          "loss", "generator")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
