"""train: the aligned face dataset → a LoRA on Mochi's transformer, exported, described and (by default) deployed.

1. cut the train/val/test faces into clips of consecutive frames (lora_dataset.py);
2. encode them once with the frozen VAE and the caption with the frozen text encoder;
3. train the LoRA with the flow-matching objective, checkpointing to storage and resuming
   from the latest checkpoint after a crash (lora_training.py);
4. report train/val/test losses, a quality score, a loss curve; export `lora.safetensors`;
5. deploy the avatar and leave a preview plan for the render stage.

Quality score (0–100): how much of the base model's held-out (test) loss the LoRA removes,
with a 25 % reduction counting as full marks:
    quality = 100 · clamp((base_test_loss − test_loss) / base_test_loss / 0.25, 0, 1)
Losses use fixed noise and noise levels, so the comparison is like for like.
"""

from __future__ import annotations

import json
import time

import torch

from core.avatars import AvatarRegistry
from core.stage import StageContext, StageResult
from functions.lora_dataset import build_clips, load_clip, load_face_records, longest_run, snap_down
from functions.lora_training import (
    TARGET_MODULES,
    LoopHooks,
    TrainConfig,
    add_lora,
    encode_caption,
    encode_video,
    evaluate,
    run_training,
    steps_per_epoch,
)
from functions.loss_curve import write_loss_curve
from functions.models.mochi import load_training_pipeline
from schemas.avatar import AvatarManifest
from schemas.brief import TrainBrief
from schemas.errors import VideostudioError

CHECKPOINTS = "checkpoints/"
KEEP_CHECKPOINTS = 2
FULL_MARKS_REDUCTION = 0.25
PREVIEW_FRAMES = 13
CAPTION = "a video of {trigger} talking to the camera"


def trigger_token(avatar_id: str) -> str:
    return f"vs_{avatar_id}"


def quality_score(base_test_loss: float | None, test_loss: float | None) -> int | None:
    if not base_test_loss or test_loss is None:
        return None
    reduction = (base_test_loss - test_loss) / base_test_loss
    return round(100 * min(1.0, max(0.0, reduction / FULL_MARKS_REDUCTION)))


def _brief(request: dict) -> TrainBrief:
    return TrainBrief.model_validate({k: v for k, v in request.items() if k in TrainBrief.model_fields})


def _encode_split(ctx: StageContext, pipe, clips, resolution: int, device: str, share: tuple[float, float]) -> torch.Tensor:
    if not clips:
        return torch.empty(0)
    latents = []
    for n, clip in enumerate(clips):
        latents.append(encode_video(pipe.vae, load_clip(ctx.storage, clip, resolution), device))
        ctx.progress(share[0] + (share[1] - share[0]) * (n + 1) / len(clips), "encoding clips")
    return torch.stack(latents)


def train(ctx: StageContext) -> StageResult:
    request = ctx.request or {}
    brief = _brief(request)
    align_outputs = ctx.manifest.stages["align"].outputs
    records = load_face_records(ctx.storage, align_outputs["metadata"])

    # 1. clips: train at the requested length (6k+1); evaluate on what val/test runs allow
    clip_frames = snap_down(brief.clip_frames)
    warnings = []
    if not build_clips(records, "train", clip_frames):
        shorter = snap_down(longest_run(records, "train"))
        if shorter < 1 or not build_clips(records, "train", shorter):
            raise VideostudioError("too_few_clips", "the train split has no run of consecutive faces to train on")
        warnings.append(f"clips shortened from {clip_frames} to {shorter} frames: no longer run of faces in train")
        clip_frames = shorter
    train_clips = build_clips(records, "train", clip_frames)
    eval_frames = {s: min(clip_frames, snap_down(longest_run(records, s))) for s in ("val", "test")}
    val_clips = build_clips(records, "val", eval_frames["val"]) if longest_run(records, "val") else []
    test_clips = build_clips(records, "test", eval_frames["test"]) if longest_run(records, "test") else []

    # 2. frozen encoders, once
    ctx.progress(0.0, f"loading {brief.model or ctx.settings.model}")
    model_id = brief.model or ctx.settings.model
    loaded = load_training_pipeline(model_id, device_setting=ctx.settings.device)
    pipe, device, dtype = loaded.pipe, loaded.device, loaded.dtype
    mixed_precision = brief.mixed_precision
    if mixed_precision == "fp16" and device != "cuda":
        warnings.append("fp16 mixed precision needs CUDA; trained in fp32 on the CPU")
        mixed_precision = "no"
    train_latents = _encode_split(ctx, pipe, train_clips, brief.resolution, device, (0.0, 0.08))
    val_latents = _encode_split(ctx, pipe, val_clips, brief.resolution, device, (0.08, 0.09))
    test_latents = _encode_split(ctx, pipe, test_clips, brief.resolution, device, (0.09, 0.1))
    trigger = trigger_token(brief.avatar)
    caption = CAPTION.format(trigger=trigger)
    embeds, mask = encode_caption(pipe, caption, device, loaded.max_sequence_length)

    # 3. LoRA training (resuming if a checkpoint exists)
    alpha = brief.lora_alpha or float(brief.lora_rank)
    add_lora(pipe.transformer, brief.lora_rank, alpha, seed=brief.seed)
    config = TrainConfig(
        epochs=brief.epochs, batch_size=brief.batch_size, learning_rate=brief.learning_rate,
        grad_accumulation=brief.grad_accumulation, mixed_precision=mixed_precision, lora_rank=brief.lora_rank,
        lora_alpha=alpha, seed=brief.seed, checkpoint_every=brief.checkpoint_every, max_steps=brief.max_steps,
        optimizer=brief.optimizer,
    )

    def eval_loss(latents: torch.Tensor) -> float | None:
        return evaluate(pipe.transformer, latents, embeds, mask, seed=brief.seed, batch_size=brief.batch_size,
                        device=device, dtype=dtype, mixed_precision=mixed_precision)

    base_test_loss = eval_loss(test_latents)  # a fresh LoRA is an identity: this is the base model's loss
    base_train_loss = eval_loss(train_latents)  # the same on the training clips: how far training moved them
    resume = _latest_checkpoint(ctx)
    per_epoch = steps_per_epoch(len(train_clips), config)

    def on_step(state, total, loss, steps_per_s):
        remaining = total - state.global_step
        ctx.progress(0.1 + 0.8 * state.global_step / total, "training", step=state.global_step, total=total)
        ctx.update_metrics(step=state.global_step, total_steps=total, last_loss=round(loss, 6),
                           steps_per_s=round(steps_per_s, 4), eta_s=round(remaining / steps_per_s, 1) if steps_per_s else None)

    def on_epoch(state):
        ctx.update_metrics(epoch=state.epoch, train_loss=state.history["train_loss"], val_loss=state.history["val_loss"])

    def save_checkpoint(step: int, data: bytes) -> None:
        key = ctx.put_output_bytes(f"{CHECKPOINTS}step-{step:07d}.pt", data)
        ctx.put_output_bytes(f"{CHECKPOINTS}latest.json", json.dumps({"step": step, "key": key}).encode())
        for old in ctx.storage.list_keys(ctx.output_key(CHECKPOINTS))[:-KEEP_CHECKPOINTS - 1]:
            if old.endswith(".pt"):
                ctx.storage.delete(old)

    clock = time.perf_counter()
    state, optimizer_name = run_training(
        pipe.transformer, train_latents, val_latents, embeds, mask, config=config, device=device, dtype=dtype,
        resume=resume, hooks=LoopHooks(on_step=on_step, on_epoch=on_epoch, save_checkpoint=save_checkpoint))
    train_s = time.perf_counter() - clock

    # 4. held-out loss, quality, curve, export
    ctx.progress(0.92, "evaluating")
    test_loss = eval_loss(test_latents)
    train_fixed_loss = eval_loss(train_latents)
    quality = quality_score(base_test_loss, test_loss)
    curve = write_loss_curve(state.history, per_epoch, ctx.scratch / "loss_curve.png",
                             title=f"avatar {brief.avatar}: LoRA rank {brief.lora_rank} on {model_id}")
    curve_key = ctx.put_output_file("loss_curve.png", curve, content_type="image/png")
    lora_key = _export_lora(ctx, pipe)
    metrics = {
        "train_loss": state.history["train_loss"], "val_loss": state.history["val_loss"],
        "test_loss": None if test_loss is None else round(test_loss, 6),
        "base_test_loss": None if base_test_loss is None else round(base_test_loss, 6),
        # Loss on the training clips with fixed noise, before and after: the overfitting check.
        "train_fixed_noise_loss": {"before": round(base_train_loss, 6), "after": round(train_fixed_loss, 6)},
        "quality_score": quality,
        "steps": state.global_step, "epochs_completed": state.epoch, "resumed": resume is not None,
        "steps_per_s": round(state.global_step / train_s, 4) if train_s and resume is None else None,
        "train_s": round(train_s, 3), "optimizer": optimizer_name, "mixed_precision": mixed_precision,
        "clips": {"train": len(train_clips), "val": len(val_clips), "test": len(test_clips)},
        "clip_frames": clip_frames, "eval_frames": eval_frames, "resolution": brief.resolution,
        "device": device,
    }
    avatar = AvatarManifest(
        avatar_id=brief.avatar, job_id=ctx.job_id, base_model=model_id, trigger_token=trigger, lora_key=lora_key,
        lora_rank=brief.lora_rank, lora_alpha=alpha, target_modules=TARGET_MODULES,
        dataset={**ctx.manifest.stages["align"].metrics.get("splits", {}), "clips": metrics["clips"]},
        metrics={k: metrics[k] for k in ("test_loss", "base_test_loss", "quality_score", "steps")},
    )
    avatar_key = ctx.put_output_bytes("avatar.json", avatar.model_dump_json(indent=2).encode(),
                                      content_type="application/json")

    # 5. deploy, and hand the render stage a short preview with the new LoRA
    if brief.deploy:
        AvatarRegistry(ctx.storage).deploy(avatar, lora_key)
    metrics["deployed"] = brief.deploy
    size = min(brief.resolution, 512)
    request = dict(request)
    request["plan"] = {
        "prompt": caption, "negative_prompt": "", "preset": "fast", "model": model_id, "seed": brief.seed,
        "steps": brief.preview_steps, "fps": 12, "width": size, "height": size, "num_frames": PREVIEW_FRAMES,
        "frames_requested": PREVIEW_FRAMES, "frames_snapped": False, "duration_s": round(PREVIEW_FRAMES / 12, 4),
        "guidance_scale": 4.5, "quantization": "auto", "avatar": brief.avatar, "avatar_strength": 1.0,
        "lora_key": lora_key, "random_weights": loaded.random_weights,
    }
    ctx.progress(1.0, "done")
    return StageResult(
        outputs={"lora": lora_key, "avatar": avatar_key, "loss_curve": curve_key},
        job_outputs={"lora": lora_key, "loss_curve": curve_key},
        metrics=metrics, request=request, warnings=warnings, model_id=model_id,
    )


def _latest_checkpoint(ctx: StageContext) -> bytes | None:
    pointer = ctx.output_key(f"{CHECKPOINTS}latest.json")
    if ctx.storage.stat(pointer) is None:
        return None
    key = json.loads(ctx.storage.get_bytes(pointer))["key"]
    return ctx.storage.get_bytes(key)


def _export_lora(ctx: StageContext, pipe) -> str:
    from diffusers import MochiPipeline
    from peft.utils import get_peft_model_state_dict

    folder = ctx.scratch / "lora"
    MochiPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                    weight_name="lora.safetensors")
    return ctx.put_output_file("lora.safetensors", folder / "lora.safetensors", content_type="application/octet-stream")
