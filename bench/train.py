"""Training-step benchmark: LoRA optimizer steps on a Mochi-shaped transformer, per optimizer and accumulation.

The model is diffusers' `MochiTransformer3DModel` at Mochi 1's real widths (its constructor
defaults: 24 heads × 128 = 3072 hidden, 1536 pooled/text stream, 4096 text embedding, 256 time
embedding, 12 latent channels, patch 2, swiglu) with reduced depth (`--layers`, default 2 of 48)
and random weights (seeded). `functions.lora_training.add_lora` adds the rank-16 LoRA the train
stage uses, and `functions.lora_training.run_training` runs the real loop (flow-matching loss,
backward, grad clipping, optimizer step) on synthetic latents [B, 12, F, H, W] and a synthetic
caption embedding [1, 256, 4096] whose mask keeps the first `--text-tokens` tokens.

Variants, side by side in one run:

    adamw        torch AdamW,               grad_accumulation 1
    adamw8bit    bitsandbytes AdamW8bit,    grad_accumulation 1
    adamw-acc4   torch AdamW,               grad_accumulation 4
    adamw8bit-acc4  AdamW8bit,              grad_accumulation 4
    adamw-bf16   torch AdamW, grad_accumulation 1, bf16 autocast (optional; not in the default set)

Each variant runs in its own subprocess (`bench/train.py --worker VARIANT ...`), so its peak RSS
(`ru_maxrss`) is its own and nothing is shared between variants. For each it reports optimizer
steps/s and samples/s (median step time over `--steps` timed steps after `--warmup` warm-up
steps, timed from `LoopHooks.on_step`), peak RSS (and RSS after imports, after the model build and
after adding LoRA, to show what the peak is made of), the process's CPU seconds per step (less
sensitive than wall time to other load on the machine), the time of `optimizer.step()` alone,
optimizer-state bytes (sum of tensor nbytes in the optimizer's state, read from the loop's final
checkpoint) and the LoRA parameter count.

On a CUDA machine the same variants run on the GPU (bf16 base weights, bf16 autocast,
`torch.cuda.max_memory_allocated` as the peak), and a second set times the full-depth model
(48 layers) at a real training clip shape (`--full-*`: 25 frames at 512×512 → latents
[1, 12, 5, 64, 64]). Out-of-memory is reported, not raised.

This is a benchmark: it asserts nothing, and writes bench/out/train.json.

    .venv/bin/python bench/train.py       # defaults: 2 layers, 1 warm-up + 3 timed steps (2 with accum 4)
    .venv/bin/python bench/train.py --variants adamw adamw-bf16 --steps 2
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from runinfo import cpu_model, git_commit  # bench/, on the path of a script run from it

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "train.json"
FULL_DEPTH = 48

VARIANTS = {
    "adamw": {"optimizer": "adamw", "grad_accumulation": 1, "mixed_precision": "no"},
    "adamw8bit": {"optimizer": "adamw8bit", "grad_accumulation": 1, "mixed_precision": "no"},
    "adamw-acc4": {"optimizer": "adamw", "grad_accumulation": 4, "mixed_precision": "no"},
    "adamw8bit-acc4": {"optimizer": "adamw8bit", "grad_accumulation": 4, "mixed_precision": "no"},
    "adamw-bf16": {"optimizer": "adamw", "grad_accumulation": 1, "mixed_precision": "bf16"},
}
DEFAULT_VARIANTS = ["adamw", "adamw8bit", "adamw-acc4", "adamw8bit-acc4"]


def quiet() -> None:
    """Expected chatter: bitsandbytes' optional CPU kernels, torchao's pytree notes, CPU autocast of fp32."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def tensor_bytes(value) -> int:
    """Bytes of every tensor in a (nested) optimizer state: bitsandbytes keeps its 8-bit states, quantile maps
    and block absmax in a nested dict of its state_dict."""
    import torch

    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


# --------------------------------------------------------------------------- one variant (subprocess)
def worker(args: argparse.Namespace) -> dict:
    import torch

    quiet()
    from diffusers import MochiTransformer3DModel

    from functions.lora_training import (LoopHooks, Precision, TextCondition, TrainConfig, add_lora, lora_parameters,
                                         run_training)

    variant = VARIANTS[args.worker]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # What the train stage does: bf16 base + bf16 autocast on CUDA, fp32 on the CPU (LoRA weights are fp32 always).
    dtype = torch.bfloat16 if cuda else torch.float32
    mixed_precision = "bf16" if cuda else variant["mixed_precision"]
    record: dict = {"variant": args.worker, **variant, "mixed_precision": mixed_precision, "device": device,
                    "dtype": str(dtype).removeprefix("torch."), "layers": args.layers,
                    "latents": [args.batch, 12, args.frames, args.size, args.size],
                    "text": [1, 256, 4096], "text_tokens_unmasked": args.text_tokens,
                    "rss_after_imports": rss_bytes()}

    clock = time.perf_counter()
    torch.manual_seed(args.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the base straight in its dtype on its device: no fp32 copy on the GPU
    try:
        with torch.device(device):
            model = MochiTransformer3DModel(num_layers=args.layers)
    finally:
        torch.set_default_dtype(previous)
    if cuda:
        torch.cuda.synchronize()
    record["build_s"] = round(time.perf_counter() - clock, 2)
    record["base_params"] = sum(p.numel() for p in model.parameters())
    record["base_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    record["rss_after_build"] = rss_bytes()

    add_lora(model, args.rank, float(args.rank), seed=args.seed)
    params = lora_parameters(model)
    record["lora_params"] = sum(p.numel() for p in params)
    record["lora_params_per_layer"] = record["lora_params"] // args.layers
    record["rss_after_lora"] = rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        record["cuda_allocated_before_training"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    accumulation = variant["grad_accumulation"]
    timed_steps = args.steps if accumulation == 1 else args.steps_accum
    total_steps = args.warmup + timed_steps
    clips = total_steps * accumulation * args.batch
    generator = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(clips, 12, args.frames, args.size, args.size, generator=generator)
    embeds = torch.randn(1, 256, 4096, generator=generator)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :args.text_tokens] = True
    config = TrainConfig(epochs=1, batch_size=args.batch, learning_rate=1e-4, grad_accumulation=accumulation,
                         mixed_precision=mixed_precision, lora_rank=args.rank, lora_alpha=float(args.rank),
                         seed=args.seed, checkpoint_every=total_steps, max_steps=total_steps,
                         optimizer=variant["optimizer"])

    stamps, cpu_stamps = [time.perf_counter()], [time.process_time()]
    losses: list[float] = []
    saved: dict = {}

    def on_step(state, total, loss, _steps_per_s) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        losses.append(loss)
        print(f"PROGRESS {state.global_step} {total}", flush=True)

    def save_checkpoint(step: int, data: bytes) -> None:
        saved["optimizer"] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["optimizer"]
        saved["checkpoint_bytes"] = len(data)

    try:
        _state, optimizer_name = run_training(
            model, latents, latents[:0], text=TextCondition(embeds=embeds, mask=mask), config=config,
            precision=Precision(device=device, dtype=dtype, mixed_precision=mixed_precision),
            hooks=LoopHooks(on_step=on_step, save_checkpoint=save_checkpoint))
    except torch.cuda.OutOfMemoryError as exc:
        record.update(status="oom", error=str(exc).splitlines()[0][:300],
                      cuda_max_allocated=torch.cuda.max_memory_allocated(), peak_rss=maxrss_bytes(),
                      steps_done=len(stamps) - 1)
        return record

    peak_rss = maxrss_bytes()  # before the optimizer-only timing below, which allocates a second optimizer
    cuda_peak = torch.cuda.max_memory_allocated() if cuda else None
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = durations[args.warmup:]
    median = statistics.median(timed)
    cpu_timed = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])][args.warmup:]
    state_bytes = tensor_bytes(saved["optimizer"]["state"])
    record.update(
        status="ok", optimizer_used=optimizer_name,
        step_s=[round(d, 3) for d in durations], warmup_steps=args.warmup, timed_steps=len(timed),
        median_step_s=round(median, 4), steps_per_s=round(1.0 / median, 4),
        samples_per_s=round(accumulation * args.batch / median, 4),
        min_step_s=round(min(timed), 4), max_step_s=round(max(timed), 4),
        # CPU seconds of this process per step (all threads): less sensitive than wall time to other load.
        median_step_cpu_s=round(statistics.median(cpu_timed), 4),
        losses=[round(x, 5) for x in losses],
        optimizer_state_bytes=state_bytes,
        optimizer_state_bytes_per_lora_param=round(state_bytes / record["lora_params"], 3),
        checkpoint_bytes=saved["checkpoint_bytes"], peak_rss=peak_rss,
        optimizer_step_ms=optimizer_step_ms(params, config, cuda, repeats=20),
    )
    if cuda:
        record["cuda_max_allocated"] = cuda_peak
    return record


def optimizer_step_ms(params, config, cuda: bool, *, repeats: int) -> float:
    """Median time of `optimizer.step()` alone (a fresh optimizer of the same kind, random gradients, 2 warm-up
    steps): what the optimizer itself costs inside a training step."""
    import torch

    from functions.lora_training import make_optimizer

    optimizer, _ = make_optimizer(params, config)
    for p in params:
        p.grad = torch.randn_like(p)
    times = []
    for _ in range(repeats + 2):
        clock = time.perf_counter()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - clock)
    optimizer.zero_grad(set_to_none=True)
    return round(statistics.median(times[2:]) * 1000, 3)


# --------------------------------------------------------------------------- the driver
def run_variant(name: str, args: argparse.Namespace, *, layers: int, batch: int, frames: int, size: int,
                progress, label: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result_path),
               "--layers", str(layers), "--batch", str(batch), "--frames", str(frames), "--size", str(size),
               "--text-tokens", str(args.text_tokens), "--rank", str(args.rank), "--seed", str(args.seed),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--steps-accum", str(args.steps_accum)]
    task = progress.add_task(label, total=None)
    clock = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # The worker's stderr (import-time notes from bitsandbytes and torchao) is shown only if it fails.
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT, env=env) as child:
            for line in child.stdout:
                if line.startswith("PROGRESS "):
                    done, total = map(int, line.split()[1:3])
                    progress.update(task, completed=done, total=total)
                else:
                    progress.console.print(line.rstrip())
        wall = time.perf_counter() - clock
        try:
            record = json.loads(result_path.read_text()) if child.returncode == 0 else None
        finally:
            result_path.unlink(missing_ok=True)
        if record is None:
            errors.seek(0)
            tail = errors.read()[-2000:]
            progress.console.print(f"[red]{name} failed (exit {child.returncode})[/red]\n{tail}")
            record = {"variant": name, "status": f"failed (exit {child.returncode})", "layers": layers,
                      "stderr_tail": tail}
    record["subprocess_wall_s"] = round(wall, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (Mochi 1 has 48)")
    parser.add_argument("--batch", type=int, default=1, help="clips per micro-batch")
    parser.add_argument("--frames", type=int, default=2, help="latent frames")
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--text-tokens", type=int, default=32, help="unmasked tokens of the 256-token caption")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps not timed")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (grad_accumulation 1)")
    parser.add_argument("--steps-accum", type=int, default=2,
                        help="timed optimizer steps of the grad_accumulation 4 variants (each is 4 micro-batches)")
    parser.add_argument("--full-variants", nargs="*", choices=list(VARIANTS), default=DEFAULT_VARIANTS,
                        help="CUDA only: variants of the full-depth run (none: skip it)")
    parser.add_argument("--full-batch", type=int, default=1)
    parser.add_argument("--full-frames", type=int, default=5, help="latent frames: 25 video frames")
    parser.add_argument("--full-size", type=int, default=64, help="latent size: 512 px / 8")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        record = worker(args)
        args.result.write_text(json.dumps(record))
        return 0

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(width=None if sys.stdout.isatty() else 200)
    cuda = torch.cuda.is_available()
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    load_start = os.getloadavg()
    results, full_results = [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for name in args.variants:
            results.append(run_variant(name, args, layers=args.layers, batch=args.batch, frames=args.frames,
                                       size=args.size, progress=progress, label=f"{name} ({args.layers} layers)"))
        if cuda:
            for name in args.full_variants:
                full_results.append(run_variant(name, args, layers=FULL_DEPTH, batch=args.full_batch,
                                                frames=args.full_frames, size=args.full_size, progress=progress,
                                                label=f"{name} ({FULL_DEPTH} layers, real shape)"))
    record = {
        "benchmark": "train", "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": _machine(), "versions": _versions(), "load_average_start": load_start,
        "load_average_end": os.getloadavg(), "wall_s": round(time.perf_counter() - clock, 1),
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
        "results": results, "full_depth_results": full_results if cuda else "not run: no CUDA device",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2))
    _print(console, results, f"{args.layers} layers, latents [{args.batch}, 12, {args.frames}, {args.size}, "
           f"{args.size}], text [1, 256, 4096]", cuda)
    if full_results:
        _print(console, full_results, f"{FULL_DEPTH} layers, latents [{args.full_batch}, 12, {args.full_frames}, "
               f"{args.full_size}, {args.full_size}]", cuda)
    load_end = record["load_average_end"][0]
    console.print(f"wall {record['wall_s']} s, load average {load_start[0]:.2f} → {load_end:.2f}; "
                  f"wrote {OUT.relative_to(ROOT)}")
    return 0


def _print(console, results: list[dict], title: str, cuda: bool) -> None:
    from rich.table import Table

    mib = 1024**2
    table = Table(title=f"LoRA training step: {title}")
    headers = ["variant", "accum", "precision", "steps/s", "samples/s", "step s: median (min–max)", "CPU s/step",
               "optimizer.step ms", "peak RSS MiB", "RSS after build MiB"] + (["CUDA peak MiB"] if cuda else []) + \
              ["optimizer state KiB", "LoRA params"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("variant", "precision") else "right")
    for r in results:
        memory = [f"{r['peak_rss'] / mib:,.0f}" if "peak_rss" in r else "",
                  f"{r['rss_after_build'] / mib:,.0f}" if "rss_after_build" in r else ""]
        if cuda:
            memory.append(f"{r['cuda_max_allocated'] / mib:,.0f}" if "cuda_max_allocated" in r else "")
        head = [r["variant"], str(r.get("grad_accumulation", "")), r.get("mixed_precision", "")]
        if r.get("status") != "ok":
            table.add_row(*head, r.get("status", "?"), "", "", "", "", *memory, "", f"{r.get('lora_params', 0):,}")
            continue
        table.add_row(*head, f"{r['steps_per_s']:.4f}", f"{r['samples_per_s']:.4f}",
                      f"{r['median_step_s']:.2f} ({r['min_step_s']:.2f}–{r['max_step_s']:.2f})",
                      f"{r['median_step_cpu_s']:.2f}", f"{r['optimizer_step_ms']:.2f}", *memory,
                      f"{r['optimizer_state_bytes'] / 1024:,.1f}", f"{r['lora_params']:,}")
    console.print(table)




def _machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _versions() -> dict:
    from importlib.metadata import version  # no imports: bitsandbytes and diffusers print notes when imported

    return {name: version(name) for name in ("torch", "diffusers", "peft", "bitsandbytes")}


if __name__ == "__main__":
    sys.exit(main())
