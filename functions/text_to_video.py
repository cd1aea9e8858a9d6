"""Mochi text-to-video: a resolved plan → an H.264 MP4 at the plan's fps and a poster JPEG.

The plain render of a brief without an avatar, and what the `mochi-lora` backend renders
with its LoRA loaded (`lora=`) for that render only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from core.device import pick_device
from core.stage import StageContext, StageResult
from core.video import frames_to_uint8, write_mp4, write_poster
from functions.models.mochi import LoadedPipeline, load_pipeline, resolve_quantization
from functions.quantization.jobs import RenderJob
from functions.quantization.rules import quantization_skip_patterns
from schemas.plan import RenderPlan

DENOISE_SHARE = 0.9  # of the stage's progress bar; decoding and encoding take the rest
LORA_ADAPTER = "avatar"


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA file on local disk and the strength it is applied at."""

    path: Path
    strength: float


def render_text_to_video(ctx: StageContext, plan: RenderPlan, *, lora: LoraWeights | None = None) -> StageResult:
    # 1. choose the precision (the planner, for `auto` on a GPU) and load the pipeline (cached per process)
    device = pick_device(ctx.settings.device)
    skip = quantization_skip_patterns(ctx.settings)
    job = RenderJob(width=plan.width, height=plan.height, num_frames=plan.num_frames,
                    guidance_scale=plan.guidance_scale)
    choice = resolve_quantization(plan.model, plan.quantization, device, job, skip=skip)
    ctx.progress(0.0, f"loading model {plan.model} ({choice.method})")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    loaded = load_pipeline(plan.model, device_setting=device, method=choice.method, offload=choice.offload, skip=skip)
    load_s = time.perf_counter() - clock
    quantization = {"requested": plan.quantization, **(loaded.quantization or {}), "reason": choice.reason,
                    "offload": loaded.offload, "estimated_peak_bytes": choice.estimated_peak_bytes}

    # 2. denoise, with the avatar's LoRA loaded for this render only
    with _lora_loaded(loaded.pipe, lora):
        frames, denoise_s = _denoise(ctx, loaded, plan)

    # 3. encode at the plan's fps (not diffusers' default 10 fps) and write a poster
    ctx.progress(DENOISE_SHARE, "encoding")
    clock = time.perf_counter()
    video_path = write_mp4(frames, ctx.scratch / "video.mp4", fps=plan.fps)
    poster_path = write_poster(frames[len(frames) // 2], ctx.scratch / "poster.jpg")
    encode_s = time.perf_counter() - clock

    # 4. outputs first; the runner writes the manifest after them
    video_key = ctx.put_output_file("video.mp4", video_path, content_type="video/mp4")
    poster_key = ctx.put_output_file("poster.jpg", poster_path, content_type="image/jpeg")
    ctx.progress(1.0, "done")
    return StageResult(
        outputs={"video": video_key, "poster": poster_key},
        job_outputs={"video": video_key, "poster": poster_key},
        metrics={
            "frames": int(frames.shape[0]), "width": int(frames.shape[2]), "height": int(frames.shape[1]),
            "fps": plan.fps, "steps": plan.steps, "seed": plan.seed,
            "load_s": round(load_s, 3), "denoise_s": round(denoise_s, 3), "encode_s": round(encode_s, 3),
            "steps_per_s": round(plan.steps / denoise_s, 3) if denoise_s else None,
            "device": loaded.device, "dtype": str(loaded.dtype).removeprefix("torch."),
            "random_weights": loaded.random_weights,
            "avatar": plan.avatar, "avatar_strength": plan.avatar_strength if plan.avatar else None,
            "quantization": quantization,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        },
        model_id=plan.model,
    )


@contextmanager
def _lora_loaded(pipe, lora: LoraWeights | None):
    """Load a LoRA at its strength for this render only (the pipeline is cached and shared)."""
    if lora is None:
        yield
        return
    pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=LORA_ADAPTER)
    try:
        pipe.set_adapters([LORA_ADAPTER], [lora.strength])
        yield
    finally:
        pipe.delete_adapters(LORA_ADAPTER)


def _denoise(ctx: StageContext, loaded: LoadedPipeline, plan: RenderPlan):
    """Steps through the denoising loop, reporting each step (and stopping there if the job is cancelled)."""

    def on_step_end(pipe, step: int, timestep, callback_kwargs):
        ctx.progress(DENOISE_SHARE * (step + 1) / plan.steps, "denoising", step=step + 1, total=plan.steps)
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(plan.seed)
    clock = time.perf_counter()
    with torch.inference_mode():
        output = loaded.pipe(
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt or None,
            height=plan.height,
            width=plan.width,
            num_frames=plan.num_frames,
            num_inference_steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            generator=generator,
            output_type="np",
            max_sequence_length=loaded.max_sequence_length,
            callback_on_step_end=on_step_end,
        )
    denoise_s = time.perf_counter() - clock
    frames = frames_to_uint8(output.frames[0])
    return frames, denoise_s
