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
from functions.quantization.gpus import GiB, parse_gpu
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import METHODS
from functions.quantization.planner import RESERVE_BYTES, Plan, plan_render, plan_train
from schemas.defaults import DEFAULT_FPS, DEFAULT_GUIDANCE_SCALE, DEFAULT_HEIGHT, DEFAULT_WIDTH
from schemas.errors import VideostudioError

console = Console()
err = Console(stderr=True)
TRAIN = TrainJob()  # the CLI's train defaults are the train job's


def plan_command(
    gpu: Annotated[str, typer.Option("--gpu", help="L4, A10G, A100-40GB, A100-80GB, H100, H200, or a size in GiB.")],
    preset: Annotated[str, typer.Option(help="fast | balanced | quality (sets the frame count).")] = "balanced",
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", help=f"Only these methods ({', '.join(METHODS)}); repeatable.")] = None,
    model: Annotated[str, typer.Option(help="tiny, a diffusers Mochi repo id, or a local folder.")] = MOCHI_1_PREVIEW,
    width: Annotated[int, typer.Option(min=16)] = DEFAULT_WIDTH,
    height: Annotated[int, typer.Option(min=16)] = DEFAULT_HEIGHT,
    frames: Annotated[Optional[int], typer.Option(
        min=1, help="Frame count (snapped to 6k+1); default: the preset's.")] = None,
    fps: Annotated[int, typer.Option(min=1)] = DEFAULT_FPS,
    guidance_scale: Annotated[float, typer.Option(
        help="Above 1, cond and uncond run as a batch of 2.")] = DEFAULT_GUIDANCE_SCALE,
    job: Annotated[str, typer.Option(help="render | train (LoRA training of the avatar).")] = "render",
    batch_size: Annotated[int, typer.Option(min=1, help="train: clips per step.")] = TRAIN.batch_size,
    resolution: Annotated[int, typer.Option(min=16, help="train: clip resolution.")] = TRAIN.resolution,
    clip_frames: Annotated[int, typer.Option(min=1, help="train: frames per clip.")] = TRAIN.clip_frames,
    gradient_checkpointing: Annotated[bool, typer.Option(
        help="train: assume gradient checkpointing (the train stage does not enable it today).",
    )] = TRAIN.gradient_checkpointing,
) -> None:
    """Estimate peak GPU memory for each quantization method and recommend the best quality that fits."""
    quiet_library_logs()
    try:
        if preset not in PRESETS:
            raise VideostudioError("unknown_preset", f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
        methods = tuple(method or METHODS)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise VideostudioError("unknown_quantization", f"unknown method {unknown[0]!r}; use {', '.join(METHODS)}")
        target = parse_gpu(gpu)
        spec = model_spec(model_configs(model))
        if job == "render":
            num_frames = snap_frames(frames or max(1, round(PRESETS[preset].duration_s * fps)))
            render = RenderJob(width=width, height=height, num_frames=num_frames, guidance_scale=guidance_scale)
            plan = plan_render(spec, render, target, methods)
            what = (f"render {width}×{height}, {num_frames} frames ({preset}), batch {render.batch} "
                    f"(CFG), {plan.tokens:,} tokens")
        elif job == "train":
            train = TrainJob(resolution=resolution, clip_frames=snap_frames(clip_frames), batch_size=batch_size,
                             gradient_checkpointing=gradient_checkpointing)
            plan = plan_train(spec, train, target, methods)
            what = (f"LoRA training {resolution}², {train.clip_frames} frames × {batch_size} clips, "
                    f"{plan.tokens:,} tokens per step")
        else:
            raise VideostudioError("invalid_job", "job must be render or train")
    except VideostudioError as exc:
        err.print(f"[red]error[/red] {exc.code}: {exc.message}")
        raise typer.Exit(2) from None
    print_plan(plan, spec, what)


def print_plan(plan: Plan, spec: ModelDescription, what: str) -> None:
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
    console.print(f"resident: all models on the GPU; offload: diffusers model CPU offload (one model at a time).\n"
                  f"fits = estimated peak + {RESERVE_BYTES / GiB:.0f} GiB reserve (CUDA context, allocator) ≤ GPU "
                  "memory; VAE decode with tiling. Estimates, not measurements.")
    colour = "green" if plan.recommended else "red"
    label = "recommended" if plan.recommended else "none fits"
    console.print(f"[{colour}]{label}[/{colour}]: {plan.reason}")
