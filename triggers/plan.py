"""`videostudio plan`: will this job fit that GPU, and at which precision? (No weights are loaded.)"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from functions.models.mochi import quiet_library_logs
from functions.models.mochi_configs import MOCHI_1_PREVIEW, model_configs
from functions.models.mochi_spec import model_spec
from functions.presets import PRESETS, snap_frames
from functions.quantization.description import ModelDescription
from functions.quantization.gpus import GiB, GpuSpec, parse_gpu
from functions.quantization.infinitetalk import (
    CHUNK_FRAMES,
    RENDERER_VAE_TILING,
    InfiniteTalkJob,
    infinitetalk_spec,
    resolution_size,
    snap_chunk_frames,
)
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import METHODS
from functions.quantization.planner import RESERVE_BYTES, Plan, plan_render, plan_train
from schemas.defaults import DEFAULT_FPS, DEFAULT_GUIDANCE_SCALE, DEFAULT_HEIGHT, DEFAULT_WIDTH
from schemas.errors import VideostudioError

console = Console()
err = Console(stderr=True)
TRAIN = TrainJob()  # the CLI's train defaults are the train job's
MOCHI_BACKEND, INFINITETALK_BACKEND = "mochi-lora", "infinitetalk"
BACKENDS = (MOCHI_BACKEND, INFINITETALK_BACKEND)
INFINITETALK_NOTE = ("infinitetalk: UMT5, CLIP, wav2vec2 (fp32) and the VAE (fp32) are models too; activations follow "
                     "the renderer (diffusers' Wan attention, SDPA). Layer-by-layer weight streaming (InfiniteTalk's "
                     "num_persistent_param_in_dit=0) is not modelled.")


def plan_command(
    gpu: Annotated[str, typer.Option("--gpu", help="L4, A10G, A100-40GB, A100-80GB, H100, H200, or a size in GiB.")],
    backend: Annotated[str, typer.Option(
        help="mochi-lora (Mochi text-to-video and its LoRA avatars) | infinitetalk (Wan2.1-I2V-14B + audio).",
    )] = MOCHI_BACKEND,
    preset: Annotated[str, typer.Option(help="fast | balanced | quality (sets the frame count).")] = "balanced",
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", help=f"Only these methods ({', '.join(METHODS)}); repeatable.")] = None,
    model: Annotated[str, typer.Option(help="tiny, a diffusers Mochi repo id, or a local folder.")] = MOCHI_1_PREVIEW,
    width: Annotated[Optional[int], typer.Option(
        min=16, help=f"Default {DEFAULT_WIDTH}; infinitetalk: the --resolution bucket's.")] = None,
    height: Annotated[Optional[int], typer.Option(
        min=16, help=f"Default {DEFAULT_HEIGHT}; infinitetalk: the --resolution bucket's.")] = None,
    frames: Annotated[Optional[int], typer.Option(
        min=1, help="Frame count (snapped to 6k+1); default: the preset's. infinitetalk: one chunk, snapped "
        f"to 4n+1, default {CHUNK_FRAMES}.")] = None,
    fps: Annotated[int, typer.Option(min=1)] = DEFAULT_FPS,
    guidance_scale: Annotated[Optional[float], typer.Option(
        help=f"Above 1, cond and uncond run as a batch of 2 (default {DEFAULT_GUIDANCE_SCALE}). infinitetalk: the "
        "text guidance (default 5).")] = None,
    audio_guidance_scale: Annotated[float, typer.Option(help="infinitetalk: the audio guidance.")] = 4.0,
    cfg_batched: Annotated[bool, typer.Option(
        "--cfg-batched/--cfg-sequential",
        help="infinitetalk: run the guidance passes as one batch (the renderer runs them one after another).",
    )] = False,
    vae_tiling: Annotated[bool, typer.Option(
        help="infinitetalk: plan the VAE tiled (the renderer runs it untiled today; Mochi's is always tiled).",
    )] = RENDERER_VAE_TILING,
    audio_seconds: Annotated[Optional[float], typer.Option(
        min=0.1, help="infinitetalk: seconds of speech wav2vec2 encodes at once (the renderer: the whole take); "
        "default: the chunk's.")] = None,
    job: Annotated[str, typer.Option(help="render | train (LoRA training of the avatar).")] = "render",
    batch_size: Annotated[int, typer.Option(min=1, help="train: clips per step.")] = TRAIN.batch_size,
    resolution: Annotated[Optional[str], typer.Option(
        help=f"train: clip resolution (default {TRAIN.resolution}). infinitetalk: 480p | 720p (default 480p).",
    )] = None,
    clip_frames: Annotated[int, typer.Option(min=1, help="train: frames per clip.")] = TRAIN.clip_frames,
    gradient_checkpointing: Annotated[bool, typer.Option(
        help="train: assume gradient checkpointing (the train stage does not enable it today).",
    )] = TRAIN.gradient_checkpointing,
) -> None:
    """Estimate peak GPU memory for each quantization method and recommend the best quality that fits."""
    quiet_library_logs()
    try:
        if backend not in BACKENDS:
            raise VideostudioError("unknown_backend", f"no plan for backend {backend!r}; use {', '.join(BACKENDS)}")
        if preset not in PRESETS:
            raise VideostudioError("unknown_preset", f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
        methods = tuple(method or METHODS)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise VideostudioError("unknown_quantization", f"unknown method {unknown[0]!r}; use {', '.join(METHODS)}")
        target = parse_gpu(gpu)
        if backend == INFINITETALK_BACKEND:
            if job != "render":
                raise VideostudioError("unsupported_job", "--backend infinitetalk plans renders only")
            spec, plan, what = _infinitetalk_plan(target, methods, width=width, height=height, frames=frames,
                                                  resolution=resolution, guidance_scale=guidance_scale,
                                                  audio_guidance_scale=audio_guidance_scale, cfg_batched=cfg_batched,
                                                  vae_tiling=vae_tiling, audio_seconds=audio_seconds)
            print_plan(plan, spec, what, footnote=INFINITETALK_NOTE)
            return
        spec = model_spec(model_configs(model))
        width, height = width or DEFAULT_WIDTH, height or DEFAULT_HEIGHT
        guidance_scale = DEFAULT_GUIDANCE_SCALE if guidance_scale is None else guidance_scale
        if job == "render":
            num_frames = snap_frames(frames or max(1, round(PRESETS[preset].duration_s * fps)))
            render = RenderJob(width=width, height=height, num_frames=num_frames, guidance_scale=guidance_scale)
            plan = plan_render(spec, render, target, methods)
            what = (f"render {width}×{height}, {num_frames} frames ({preset}), batch {render.batch} "
                    f"(CFG), {plan.tokens:,} tokens")
        elif job == "train":
            size = _train_resolution(resolution)
            train = TrainJob(resolution=size, clip_frames=snap_frames(clip_frames), batch_size=batch_size,
                             gradient_checkpointing=gradient_checkpointing)
            plan = plan_train(spec, train, target, methods)
            what = (f"LoRA training {size}², {train.clip_frames} frames × {batch_size} clips, "
                    f"{plan.tokens:,} tokens per step")
        else:
            raise VideostudioError("invalid_job", "job must be render or train")
    except VideostudioError as exc:
        err.print(f"[red]error[/red] {exc.code}: {exc.message}")
        raise typer.Exit(2) from None
    print_plan(plan, spec, what)


def _train_resolution(text: str | None) -> int:
    if text is None:
        return TRAIN.resolution
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 16:
        raise VideostudioError("invalid_resolution", f"train resolution must be a whole number ≥ 16, not {text!r}")
    return size


def _infinitetalk_plan(target: GpuSpec, methods: tuple[str, ...], *, width: int | None, height: int | None,
                       frames: int | None, resolution: str | None, guidance_scale: float | None,
                       audio_guidance_scale: float, cfg_batched: bool, vae_tiling: bool,
                       audio_seconds: float | None) -> tuple[ModelDescription, Plan, str]:
    """One InfiniteTalk chunk: the --resolution bucket (or --width/--height, snapped to multiples of 16)."""
    name = (resolution or "480p").strip().lower()
    bucket_w, bucket_h = resolution_size(name)
    w, h = (((v or default) // 16) * 16 for v, default in ((width, bucket_w), (height, bucket_h)))
    render = InfiniteTalkJob(width=w, height=h, num_frames=snap_chunk_frames(frames or CHUNK_FRAMES),
                             guidance_scale=5.0 if guidance_scale is None else guidance_scale,
                             audio_guidance_scale=audio_guidance_scale, cfg_batched=cfg_batched,
                             audio_seconds=audio_seconds)
    spec = infinitetalk_spec()
    plan = plan_render(spec, render, target, methods, vae_tiling=vae_tiling)
    size = name if (w, h) == (bucket_w, bucket_h) else "custom size"
    how = "in one batch" if cfg_batched else "one after another"
    passes = "1 guidance pass" if render.passes == 1 else f"{render.passes} guidance passes {how}"
    what = f"render {w}×{h} ({size}), one {render.num_frames}-frame chunk, {passes}, {plan.tokens:,} tokens"
    return spec, plan, what


def print_plan(plan: Plan, spec: ModelDescription, what: str, *, footnote: str | None = None) -> None:
    def gib(n: int) -> str:
        return f"{n / GiB:.1f}" if n >= GiB / 10 else f"{n / GiB:.2g}"

    train = plan.job == "train"
    quantized = list(spec.quantization.component_methods)  # the weights a method changes
    table = Table(title=f"{spec.model_id}: {what} on {plan.gpu.name} ({plan.gpu.gib:.1f} GiB)")
    table.add_column("method", no_wrap=True)
    table.add_column("weights GiB\n" + " + ".join(spec.labels[name] for name in quantized), justify="right",
                     no_wrap=True)
    if train:
        table.add_column("peak GiB", justify="right", no_wrap=True)
    else:
        table.add_column("peak GiB\nresident", justify="right", no_wrap=True)
        table.add_column("peak GiB\noffload", justify="right", no_wrap=True)
    table.add_column("fits", no_wrap=True)
    notes: list[str] = []
    for row in plan.rows:
        weights = sum(row.no_offload.weights[name] for name in quantized)
        fit = row.best_fit(plan.gpu.memory_bytes)
        if row.note:
            notes.append(f"{row.method}: {row.note}")
            verdict = "[yellow]n/a[/yellow] (see below)"
        elif fit is None:
            verdict = "[red]no[/red]"
        elif fit.offload == "none" or train:
            verdict = "[green]yes[/green]"
        else:
            verdict = "[green]yes[/green], with offload"
        marker = " ★" if plan.recommended is row else ""
        peaks = [gib(row.no_offload.peak_bytes)] + ([] if train else [gib(row.offload.peak_bytes)])
        table.add_row(row.method + marker, gib(weights), *peaks, verdict)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]n/a[/yellow] {note}")
    tiling = "with tiling" if not plan.rows or plan.rows[0].no_offload.vae_tiling else "untiled"
    console.print(f"resident: all models on the GPU; offload: diffusers model CPU offload (one model at a time).\n"
                  f"fits = estimated peak + {RESERVE_BYTES / GiB:.0f} GiB reserve (CUDA context, allocator) ≤ GPU "
                  f"memory; VAE decode {tiling}. Estimates, not measurements.")
    if footnote:
        console.print(footnote)
    colour = "green" if plan.recommended else "red"
    label = "recommended" if plan.recommended else "none fits"
    console.print(f"[{colour}]{label}[/{colour}]: {plan.reason}")
