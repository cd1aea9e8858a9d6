"""`mochi-lora`: an identity LoRA on Mochi's transformer, rendered by Mochi text-to-video.

Training:
1. cut the train/val/test faces into clips of consecutive frames (lora_dataset.py);
2. encode them once with the frozen VAE and the caption with the frozen text encoder;
3. train the LoRA with the flow-matching objective, checkpointing to storage and resuming
   from the latest checkpoint after a crash (lora_training.py);
4. report train/val/test losses, a quality score, a loss curve; export `lora.safetensors`.

Quality score (0–100): how much of the base model's held-out (test) loss the LoRA removes,
with a 25 % reduction counting as full marks:
    quality = 100 · clamp((base_test_loss − test_loss) / base_test_loss / 0.25, 0, 1)
Losses use fixed noise and noise levels, so the comparison is like for like.

Rendering loads the LoRA at the brief's `avatar_strength` for that render only, and the
avatar's trigger token leads the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.stage import StageContext, StageResult
from functions.backends.base import AvatarBackend, TrainedAvatar
from functions.lora_dataset import Clip, build_clips, load_clip, load_face_records, longest_run, snap_down
from functions.lora_training import (
    TARGET_MODULES,
    Precision,
    TextCondition,
    TrainConfig,
    add_lora,
    encode_caption,
    encode_video,
    evaluate,
    run_training,
    steps_per_epoch,
)
from functions.lora_stage import latest_checkpoint, lora_hooks, quality_score, rounded, run_metrics
from functions.loss_curve import write_loss_curve
from functions.models.mochi import LoadedPipeline, load_training_pipeline
from functions.text_to_video import LoraWeights, render_text_to_video
from schemas.avatar import AvatarManifest
from schemas.brief import RenderBrief, TrainBrief
from schemas.dataset import FaceRecord
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput
from schemas.plan import RenderPlan

CAPTION = "a video of {trigger} talking to the camera"


def trigger_token(avatar_id: str) -> str:
    return f"vs_{avatar_id}"


@dataclass
class ClipSet:
    """The clips of each split, and the frame counts they were cut at."""

    clip_frames: int
    train: list[Clip]
    val: list[Clip]
    test: list[Clip]
    eval_frames: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def cut_clips(records: list[FaceRecord], requested_frames: int) -> ClipSet:
    """Train at the requested length (6k+1); evaluate on what the val/test runs allow."""
    clip_frames = snap_down(requested_frames)
    warnings = []
    if not build_clips(records, "train", clip_frames):
        shorter = snap_down(longest_run(records, "train"))
        if shorter < 1 or not build_clips(records, "train", shorter):
            raise VideostudioError("too_few_clips", "the train split has no run of consecutive faces to train on")
        warnings.append(f"clips shortened from {clip_frames} to {shorter} frames: no longer run of faces in train")
        clip_frames = shorter
    eval_frames = {s: min(clip_frames, snap_down(longest_run(records, s))) for s in ("val", "test")}
    held_out = {s: build_clips(records, s, eval_frames[s]) if longest_run(records, s) else [] for s in ("val", "test")}
    return ClipSet(clip_frames, build_clips(records, "train", clip_frames), held_out["val"], held_out["test"],
                   eval_frames, warnings)


@dataclass
class EncodedClips:
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    text: TextCondition


class MochiLoraBackend(AvatarBackend):
    name = "mochi-lora"
    summary = "A Mochi identity LoRA: renders the person in videos made from prompts (a GPU for real models)."
    brief_options = ("model", "learning_rate", "optimizer", "lora_rank", "lora_alpha", "resolution", "clip_frames",
                     "extract_fps", "preview_steps")

    # -------------------------------------------------------------------------------- train
    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput) -> TrainedAvatar:
        clips = cut_clips(load_face_records(ctx.storage, dataset.metadata_key), brief.clip_frames)
        model_id = brief.model or ctx.settings.model
        ctx.progress(0.0, f"loading {model_id}")
        loaded = load_training_pipeline(model_id, device_setting=ctx.settings.device)
        precision = Precision(device=loaded.device, dtype=loaded.dtype,
                              mixed_precision=self._mixed_precision(brief, loaded, clips.warnings))
        encoded = self._encode(ctx, loaded, clips, brief=brief)
        alpha = brief.lora_alpha or float(brief.lora_rank)
        add_lora(loaded.pipe.transformer, brief.lora_rank, alpha, seed=brief.seed)
        config = TrainConfig(
            epochs=brief.epochs, batch_size=brief.batch_size, learning_rate=brief.learning_rate,
            grad_accumulation=brief.grad_accumulation, mixed_precision=precision.mixed_precision,
            lora_rank=brief.lora_rank, lora_alpha=alpha, seed=brief.seed, checkpoint_every=brief.checkpoint_every,
            max_steps=brief.max_steps, optimizer=brief.optimizer)

        def eval_loss(latents: torch.Tensor) -> float | None:
            return evaluate(loaded.pipe.transformer, latents, text=encoded.text, seed=brief.seed,
                            batch_size=brief.batch_size, precision=precision)

        base_test_loss = eval_loss(encoded.test)  # a fresh LoRA is an identity: this is the base model's loss
        base_train_loss = eval_loss(encoded.train)  # the same on the training clips: how far training moved them
        resume = latest_checkpoint(ctx)
        clock = time.perf_counter()
        state, optimizer_name = run_training(
            loaded.pipe.transformer, encoded.train, encoded.val, text=encoded.text, config=config,
            precision=precision, resume=resume, hooks=lora_hooks(ctx))
        train_s = time.perf_counter() - clock

        # held-out loss, quality, curve, export
        ctx.progress(0.92, "evaluating")
        test_loss, train_fixed_loss = eval_loss(encoded.test), eval_loss(encoded.train)
        curve = write_loss_curve(state.history, steps_per_epoch(len(clips.train), config),
                                 ctx.scratch / "loss_curve.png",
                                 title=f"avatar {brief.avatar}: LoRA rank {brief.lora_rank} on {model_id}")
        curve_key = ctx.put_output_file("loss_curve.png", curve, content_type="image/png")
        lora_key = _export_lora(ctx, loaded.pipe)
        metrics = {
            "train_loss": state.history["train_loss"], "val_loss": state.history["val_loss"],
            "test_loss": rounded(test_loss), "base_test_loss": rounded(base_test_loss),
            # Loss on the training clips with fixed noise, before and after: the overfitting check.
            "train_fixed_noise_loss": {"before": round(base_train_loss, 6), "after": round(train_fixed_loss, 6)},
            "quality_score": quality_score(base_test_loss, test_loss),
            **run_metrics(state, resume=resume is not None, train_s=train_s), "optimizer": optimizer_name,
            "mixed_precision": precision.mixed_precision, "clips": clips.counts(), "clip_frames": clips.clip_frames,
            "eval_frames": clips.eval_frames, "resolution": brief.resolution, "device": loaded.device,
        }
        avatar = AvatarManifest(
            avatar_id=brief.avatar, job_id=ctx.job_id, backend=self.name, base_model=model_id,
            trigger_token=trigger_token(brief.avatar), weights_key=lora_key, lora_key=lora_key,
            lora_rank=brief.lora_rank, lora_alpha=alpha, target_modules=TARGET_MODULES,
            dataset={**dataset.splits, "clips": metrics["clips"]},
            metrics={k: metrics[k] for k in ("test_loss", "base_test_loss", "quality_score", "steps")})
        return TrainedAvatar(avatar=avatar, outputs={"lora": lora_key, "loss_curve": curve_key},
                             job_outputs={"lora": lora_key, "loss_curve": curve_key}, metrics=metrics,
                             warnings=clips.warnings, model_id=model_id)

    @staticmethod
    def _mixed_precision(brief: TrainBrief, loaded: LoadedPipeline, warnings: list[str]) -> str:
        if brief.mixed_precision == "fp16" and loaded.device != "cuda":
            warnings.append("fp16 mixed precision needs CUDA; trained in fp32 on the CPU")
            return "no"
        return brief.mixed_precision

    @staticmethod
    def _encode(ctx: StageContext, loaded: LoadedPipeline, clips: ClipSet, *, brief: TrainBrief) -> EncodedClips:
        """The frozen VAE and text encoder run once: training sees only latents and the caption's embedding."""

        def encode(split: list[Clip], share: tuple[float, float]) -> torch.Tensor:
            if not split:
                return torch.empty(0)
            latents = []
            for n, clip in enumerate(split):
                video = load_clip(ctx.storage, clip, brief.resolution)
                latents.append(encode_video(loaded.pipe.vae, video, loaded.device))
                ctx.progress(share[0] + (share[1] - share[0]) * (n + 1) / len(split), "encoding clips")
            return torch.stack(latents)

        caption = CAPTION.format(trigger=trigger_token(brief.avatar))
        embeds, mask = encode_caption(loaded.pipe, caption, loaded.device, loaded.max_sequence_length)
        return EncodedClips(train=encode(clips.train, (0.0, 0.08)), val=encode(clips.val, (0.08, 0.09)),
                            test=encode(clips.test, (0.09, 0.1)), text=TextCondition(embeds=embeds, mask=mask))

    # -------------------------------------------------------------------------------- render
    def plan_render(self, ctx: StageContext, *, brief: RenderBrief, avatar: AvatarManifest) -> RenderPlan:
        plan = super().plan_render(ctx, brief=brief, avatar=avatar)
        if avatar.base_model != plan.model:
            raise VideostudioError("avatar_model_mismatch", f"avatar {avatar.avatar_id!r} was trained on "
                                   f"{avatar.base_model!r}; this brief renders with {plan.model!r}")
        if avatar.trigger_token and avatar.trigger_token not in plan.prompt:
            plan = plan.model_copy(update={"prompt": f"{avatar.trigger_token}, {plan.prompt}"})
        return plan

    def preview_prompt(self, brief: TrainBrief, avatar: AvatarManifest) -> str:
        return CAPTION.format(trigger=avatar.trigger_token or trigger_token(avatar.avatar_id))

    def render(self, ctx: StageContext, *, plan: RenderPlan) -> StageResult:
        if not plan.weights_key or ctx.storage.stat(plan.weights_key) is None:
            raise VideostudioError("avatar_not_found", f"avatar {plan.avatar!r} is no longer deployed")
        path = ctx.storage.download(plan.weights_key, ctx.scratch / "avatar" / "lora.safetensors")
        return render_text_to_video(ctx, plan, lora=LoraWeights(path=path, strength=plan.avatar_strength))


def _export_lora(ctx: StageContext, pipe) -> str:
    from diffusers import MochiPipeline
    from peft.utils import get_peft_model_state_dict

    folder = ctx.scratch / "lora"
    MochiPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                    weight_name="lora.safetensors")
    return ctx.put_output_file("lora.safetensors", folder / "lora.safetensors", content_type="application/octet-stream")
