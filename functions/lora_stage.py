"""What a LoRA-training backend's train stage shares (mochi-lora, infinitetalk): live progress and metrics
into the manifest, checkpoints in the job's outputs (the last KEEP_CHECKPOINTS kept) and resuming from them,
and the quality score."""

from __future__ import annotations

import json

from core.stage import StageContext
from functions.lora_training import LoopHooks, TrainState

CHECKPOINTS = "checkpoints/"
KEEP_CHECKPOINTS = 2
FULL_MARKS_REDUCTION = 0.25  # a LoRA that removes a quarter of the base model's held-out loss scores 100


def quality_score(base_test_loss: float | None, test_loss: float | None) -> int | None:
    """0–100: how much of the base model's held-out loss the LoRA removes (fixed noise: like for like)."""
    if not base_test_loss or test_loss is None:
        return None
    reduction = (base_test_loss - test_loss) / base_test_loss
    return round(100 * min(1.0, max(0.0, reduction / FULL_MARKS_REDUCTION)))


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def run_metrics(state: TrainState, *, resume: bool, train_s: float) -> dict:
    return {"steps": state.global_step, "epochs_completed": state.epoch, "resumed": resume,
            "steps_per_s": round(state.global_step / train_s, 4) if train_s and not resume else None,
            "train_s": round(train_s, 3)}


def lora_hooks(ctx: StageContext, *, share: tuple[float, float] = (0.1, 0.9)) -> LoopHooks:
    """Progress (within `share` of the stage) and interim metrics into the manifest; checkpoints into the
    job's outputs."""
    lo, hi = share

    def on_step(state: TrainState, total: int, loss: float, steps_per_s: float) -> None:
        remaining = total - state.global_step
        ctx.progress(lo + (hi - lo) * state.global_step / total, "training", step=state.global_step, total=total)
        ctx.update_metrics(step=state.global_step, total_steps=total, last_loss=round(loss, 6),
                           steps_per_s=round(steps_per_s, 4),
                           eta_s=round(remaining / steps_per_s, 1) if steps_per_s else None)

    def on_epoch(state: TrainState) -> None:
        ctx.update_metrics(epoch=state.epoch, train_loss=state.history["train_loss"], val_loss=state.history["val_loss"])

    def save_checkpoint(step: int, data: bytes) -> None:
        key = ctx.put_output_bytes(f"{CHECKPOINTS}step-{step:07d}.pt", data)
        ctx.put_output_bytes(f"{CHECKPOINTS}latest.json", json.dumps({"step": step, "key": key}).encode())
        for old in ctx.storage.list_keys(ctx.output_key(CHECKPOINTS))[:-KEEP_CHECKPOINTS - 1]:
            if old.endswith(".pt"):
                ctx.storage.delete(old)

    return LoopHooks(on_step=on_step, on_epoch=on_epoch, save_checkpoint=save_checkpoint)


def latest_checkpoint(ctx: StageContext) -> bytes | None:
    """The newest checkpoint a previous attempt of this stage left, or None."""
    pointer = ctx.output_key(f"{CHECKPOINTS}latest.json")
    if ctx.storage.stat(pointer) is None:
        return None
    key = json.loads(ctx.storage.get_bytes(pointer))["key"]
    return ctx.storage.get_bytes(key)
