"""Mochi text-to-video: a resolved plan → an H.264 MP4 at the plan's fps and a poster JPEG.

The plain render of a brief without an avatar, and what the `mochi-lora` backend renders
with its LoRA loaded (`lora=`) for that render only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.avatars import avatar_prefix
from core.device import pick_device
from core.stage import StageContext, StageResult
from core.video import frames_to_uint8, write_mp4, write_poster
from functions.encoder_cache import EncoderCache
from functions.latent_cache import LatentCache, compat_key, store_steps
from functions.mochi_text import encode_prompts
from functions.models.mochi import LoadedPipeline, load_pipeline, resolve_quantization
from functions.quantization.jobs import RenderJob
from functions.quantization.rules import quantization_skip_patterns
from functions.cache_policy import cache_options
from functions.render_key import avatar_identity, mochi_identity
from functions.skip_scheduler import skipping
from schemas.cache import ApproximateRecord, CacheRecord, EncoderCacheStats
from schemas.errors import VideostudioError
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

    # 2. denoise, with the avatar's LoRA loaded for this render only (prompts through the encoder cache)
    with _lora_loaded(loaded.pipe, lora):
        denoised = _denoise(ctx, loaded, plan, method=choice.method)
    frames, denoise_s = denoised.frames, denoised.seconds

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
            "steps_per_s": round(denoised.steps_run / denoise_s, 3) if denoise_s else None,
            "steps_run": denoised.steps_run, "encoder_cache": denoised.encoders.summary(),
            "approximate": denoised.approximate.model_dump() if denoised.approximate else None,
            "device": loaded.device, "dtype": str(loaded.dtype).removeprefix("torch."),
            "random_weights": loaded.random_weights,
            "avatar": plan.avatar, "avatar_strength": plan.avatar_strength if plan.avatar else None,
            "quantization": quantization,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        },
        model_id=plan.model,
        cache=CacheRecord(hit=False, reason="miss", approximate=denoised.approximate) if denoised.approximate else None,
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


@dataclass(frozen=True)
class Denoised:
    frames: np.ndarray
    seconds: float
    steps_run: int
    encoders: EncoderCacheStats
    approximate: ApproximateRecord | None


def _denoise(ctx: StageContext, loaded: LoadedPipeline, plan: RenderPlan, *, method: str) -> Denoised:
    """Steps through the denoising loop, reporting each step (and stopping there if the job is cancelled).

    The prompts come from the encoder cache; with `cache: {approximate: true}` the loop may start from a similar
    earlier prompt's latent, K steps in (functions/latent_cache.py); a full render keeps its latents for that."""
    options = cache_options(ctx)
    encoders = EncoderCache(ctx.storage, ctx.settings)
    clock = time.perf_counter()
    embeds = encode_prompts(loaded, encoders, prompt=plan.prompt, negative_prompt=plan.negative_prompt,
                            guidance_scale=plan.guidance_scale)
    latents = _latent_cache(ctx, loaded, plan, method=method) if options is not None else None
    start = None
    if latents is not None and options.approximate:
        threshold = options.min_similarity if options.min_similarity is not None else \
            ctx.settings.approximate_min_similarity
        start = latents.find(embeds.pooled(), steps=plan.steps, threshold=threshold)
    skip = start.record.steps_saved if start is not None else 0
    keep = set(store_steps(plan.steps)) if latents is not None and skip == 0 else set()
    captured: dict[int, torch.Tensor] = {}

    def on_step_end(pipe, step: int, timestep, callback_kwargs):
        done = skip + step + 1
        if done in keep:
            captured[done] = callback_kwargs["latents"].detach().to("cpu", copy=True)
        ctx.progress(DENOISE_SHARE * done / plan.steps, "denoising", step=done, total=plan.steps)
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(plan.seed)
    with torch.inference_mode(), _scheduler_skipping(loaded.pipe, skip):
        output = loaded.pipe(
            **embeds.pipeline_kwargs(),
            height=plan.height,
            width=plan.width,
            num_frames=plan.num_frames,
            num_inference_steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            generator=generator,
            latents=start.latent if start is not None else None,
            output_type="np",
            max_sequence_length=loaded.max_sequence_length,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    denoise_s = time.perf_counter() - clock
    if captured and latents is not None:
        latents.record(embeds.pooled(), captured, avatar=plan.avatar)
    frames = frames_to_uint8(output.frames[0])
    return Denoised(frames=frames, seconds=denoise_s, steps_run=plan.steps - skip, encoders=encoders.stats,
                    approximate=start.record if start is not None else None)


def _latent_cache(ctx: StageContext, loaded: LoadedPipeline, plan: RenderPlan, *, method: str) -> LatentCache | None:
    """The latent store for renders like this one; None when the model's identity is unknown."""
    model = mochi_identity(plan.model)
    if model is None or ctx.settings.latent_cache_max_bytes <= 0:
        return None
    avatar = avatar_identity(ctx, avatar_prefix(plan.avatar) + "manifest.json") if plan.avatar else None
    identity = {"model": model, "quantization": method, "device": str(loaded.device), "avatar": avatar,
                "scheduler": {k: v for k, v in dict(loaded.pipe.scheduler.config).items() if not k.startswith("_")}}
    return LatentCache(ctx, compat_key(plan, render_identity=identity))


@contextmanager
def _scheduler_skipping(pipe, skip: int):
    """The pipeline's scheduler for one render, starting `skip` steps in (0: as it is)."""
    if skip == 0:
        yield
        return
    original = pipe.scheduler
    skipper = skipping(original, skip)
    if skipper is None:
        raise VideostudioError("approximate_unsupported", f"approximate caching needs the flow-matching Euler "
                               f"scheduler; the model has {type(original).__name__}")
    pipe.scheduler = skipper
    try:
        yield
    finally:
        pipe.scheduler = original
