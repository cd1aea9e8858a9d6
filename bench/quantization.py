"""Quantization benchmark: every method available here on a Mochi-shaped transformer, side by side.

The model is diffusers' `MochiTransformer3DModel` at Mochi 1's real widths (24 heads × 128 =
3072 hidden, 1536 pooled/text stream, 4096 text embedding, swiglu FF of 8192) with reduced
depth (`--layers`, default 2 of 48) and random weights (seeded). For each method it reports:

- parameter bytes (`functions.quantization.targets.storage_bytes`: packed data, scales, quantization state),
  and the ratio to bf16 over the quantized Linear layers, over all Linear layers, over the
  whole model, and for the whole model extrapolated to the full 48 layers (non-block bytes +
  48 × one block's measured bytes);
- the planner's weight estimate from the config alone (`functions.quantization.planner` with
  Mochi's description, `functions.models.mochi_spec`, built on the meta device) against the measured bytes;
- relative output error against the bf16 model on the same inputs, ‖y − y_bf16‖ / ‖y_bf16‖;
- time per forward (median of `--repeats` after one warm-up) on this machine.

A second table shows when fp8 needs a scale per output channel: one 3072×3072 Linear whose row
magnitudes span 2 to 8 orders of magnitude, quantized with a plain cast (what `fp8` stores), one
scale for the tensor, and one scale per row.

Methods that cannot run here are listed with the reason (fp8-dynamic needs a CUDA GPU with
compute capability ≥ 8.9). With CUDA, it also runs one denoising step of the full-depth
transformer at 848×480 (`--gpu-step-frames`, default 181) per method and records
`torch.cuda.max_memory_allocated` against the planner's estimate for that phase. This is a benchmark: it asserts nothing, and writes
bench/out/quantization.json.

    .venv/bin/python bench/quantization.py                 # defaults: 2 layers, 3 repeats
    .venv/bin/python bench/quantization.py --layers 1 --repeats 1 --methods bf16 int8
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from functions.models.mochi import quiet_library_logs
from functions.models.mochi_configs import MOCHI_1_PREVIEW, ModelConfigs, model_configs
from functions.models.mochi_spec import latent_shape, model_spec, quantization_targets, quantize_module
from functions.quantization.jobs import RenderJob
from functions.quantization.layers import fp8_per_channel, fp8_per_tensor
from functions.quantization.methods import METHODS, unsupported_reason
from functions.quantization.planner import estimate_render
from functions.quantization.targets import storage_bytes
from schemas.defaults import DEFAULT_HEIGHT, DEFAULT_WIDTH
from runinfo import cpu_model, git_commit  # bench/, on the path of a script run from it

OUT = Path(__file__).resolve().parent / "out" / "quantization.json"
FULL_DEPTH = 48
console = Console()


def mochi_config(layers: int) -> dict:
    """diffusers' defaults are Mochi 1's shapes; only the depth is reduced."""
    return {"num_layers": layers}


def build(layers: int, seed: int) -> torch.nn.Module:
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(**mochi_config(layers)).eval()
    return model.to(torch.bfloat16)


def inputs(model, *, frames: int, size: int, text_tokens: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    batch = 2
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, frames, size, size, generator=g).to(torch.bfloat16),
        "encoder_hidden_states": torch.randn(batch, text_tokens, cfg.text_embed_dim, generator=g).to(torch.bfloat16),
        "timestep": torch.tensor([250.0, 750.0]),
        "encoder_attention_mask": torch.ones(batch, text_tokens, dtype=torch.bool),
        "return_dict": False,
    }


def forward(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch)[0].float()


def linear_bytes(model, names) -> int:
    return sum(storage_bytes(model.get_submodule(n)) for n in names)


def block_split(model) -> tuple[int, int]:
    """(bytes outside the blocks, bytes of one block) as stored now."""
    block = storage_bytes(model.transformer_blocks[0])
    total = storage_bytes(model)
    return total - block * len(model.transformer_blocks), block


SPANS = (1e-2, 1e-4, 1e-6, 1e-8)


def skewed_rows(seed: int = 0) -> list[dict]:
    """One 3072×3072 weight (std 0.02) whose row scales run log-spaced from 1 down to each span."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3072, 3072, generator=g) * 0.02
    x = torch.randn(64, 3072, generator=g)
    out = []
    for span in SPANS:
        w = base * torch.logspace(0, torch.log10(torch.tensor(span)).item(), 3072).unsqueeze(1)
        ref = x @ w.t()

        def err(deq: torch.Tensor) -> tuple[float, float]:
            y = x @ deq.t()
            per_row = (y - ref).norm(dim=0) / ref.norm(dim=0).clamp(min=1e-30)
            return float((y - ref).norm() / ref.norm()), float(per_row.quantile(0.9))

        q_t, s_t = fp8_per_tensor(w)
        q_c, s_c = fp8_per_channel(w)
        for name, deq in (("plain cast (`fp8`)", w.to(torch.float8_e4m3fn).float()),
                          ("one scale per tensor", q_t.float() * s_t),
                          ("one scale per output channel (`fp8-per-channel`)", q_c.float() * s_c)):
            total, row = err(deq)
            out.append({"span": span, "format": name, "relative_error": total, "p90_row_relative_error": row})
    return out


def gpu_render_step(method: str, *, frames: int, width: int, height: int) -> dict:
    """One denoising step of the full-depth transformer (random weights) at a real render shape on CUDA:
    `torch.cuda.max_memory_allocated` against the planner's denoise-phase estimate (model offload:
    transformer weights + activations). Not run on this machine (no GPU); kept for a GPU session."""
    from diffusers import MochiTransformer3DModel

    with torch.device("meta"):
        model = MochiTransformer3DModel()
    model = model.to_empty(device="cuda").to(torch.bfloat16).eval()
    generator = torch.Generator("cuda").manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    calib_shape = (1, 12, 2, 16, 16)

    def calibrate() -> None:
        model(hidden_states=torch.randn(calib_shape, device="cuda", dtype=torch.bfloat16),
              encoder_hidden_states=torch.randn(1, 256, 4096, device="cuda", dtype=torch.bfloat16),
              timestep=torch.tensor([500.0], device="cuda"),
              encoder_attention_mask=torch.ones(1, 256, dtype=torch.bool, device="cuda"))

    quantize_module(model, method, device="cuda", calibrate=calibrate if method == "fp8-static" else None)
    t, h, w = latent_shape(frames, height, width)
    batch = {"hidden_states": torch.randn(2, 12, t, h, w, device="cuda", dtype=torch.bfloat16),
             "encoder_hidden_states": torch.randn(2, 256, 4096, device="cuda", dtype=torch.bfloat16),
             "timestep": torch.tensor([250.0, 750.0], device="cuda"),
             "encoder_attention_mask": torch.ones(2, 256, dtype=torch.bool, device="cuda"), "return_dict": False}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    clock = time.perf_counter()
    with torch.inference_mode():
        model(**batch)
    torch.cuda.synchronize()
    step_s = time.perf_counter() - clock
    peak = torch.cuda.max_memory_allocated()
    spec = model_spec(model_configs(MOCHI_1_PREVIEW))
    estimate = estimate_render(spec, RenderJob(width=width, height=height, num_frames=frames), method,
                               offload="model").phases["denoise"]
    del model, batch
    torch.cuda.empty_cache()
    return {"method": method, "frames": frames, "width": width, "height": height, "allocated_before_step": before,
            "max_memory_allocated": peak, "planner_denoise_estimate": estimate, "planner_error": estimate / peak - 1,
            "step_s": step_s}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=2, help="latent frames of the input")
    parser.add_argument("--size", type=int, default=16, help="latent height = width of the input")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-step-frames", type=int, default=181,
                        help="with CUDA: frames of the full-depth render step (0 skips it)")
    return parser.parse_args(argv)


def bf16_sizes(base, *, targets: list[str], all_linear: list[str]) -> dict:
    """The bf16 model's bytes: in all, in the target and all Linear layers, and at full depth."""
    outside, block = block_split(base)
    return {"bytes": storage_bytes(base), "target_linear_bytes": linear_bytes(base, targets),
            "all_linear_bytes": linear_bytes(base, all_linear), "full_depth_bytes": outside + FULL_DEPTH * block}


def measure(method: str, *, base, batch: dict, calib: list[dict], reference: torch.Tensor, repeats: int,
            device: torch.device, spec, targets: list[str], all_linear: list[str], bf16: dict) -> dict:
    """One method on a copy of `base`: bytes, planner estimate, output error and time per forward."""
    model = copy.deepcopy(base)
    calibrate = (lambda m=model: [forward(m, b) for b in calib]) if method == "fp8-static" else None
    clock = time.perf_counter()
    report = quantize_module(model, method, device=device, calibrate=calibrate)
    quantize_s = time.perf_counter() - clock
    output = forward(model, batch)  # warm-up (and the error)
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        forward(model, batch)
        times.append(time.perf_counter() - clock)
    error = float((output - reference).norm() / reference.norm())
    measured = storage_bytes(model)
    backend = report.backend
    estimate = spec.transformer.weight_bytes(method, int8_backend="torchao" if "torchao" in backend else
                                             "bitsandbytes")
    outside, block = block_split(model)
    full = outside + FULL_DEPTH * block
    return {
        "method": method, "available": True, "backend": backend, "layers_quantized": report.layers,
        "bytes": measured, "target_linear_bytes": linear_bytes(model, targets),
        "ratio_target_linear": linear_bytes(model, targets) / bf16["target_linear_bytes"],
        "ratio_all_linear": linear_bytes(model, all_linear) / bf16["all_linear_bytes"],
        "ratio_total": measured / bf16["bytes"],
        "full_depth_bytes": full, "ratio_total_full_depth": full / bf16["full_depth_bytes"],
        "planner_estimate_bytes": estimate, "planner_error": estimate / measured - 1,
        "relative_error": error, "forward_s_median": statistics.median(times), "forward_s": times,
        "quantize_s": quantize_s, "output_dtype": str(output.dtype), "output_shape": list(output.shape),
    }


def gpu_steps(results: list[dict], frames: int) -> list[dict]:
    """`gpu_render_step` for every method that ran here (an out-of-memory step is recorded as such)."""
    steps = []
    for row in results:
        if row["available"]:
            try:
                steps.append(gpu_render_step(row["method"], frames=frames, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT))
            except torch.cuda.OutOfMemoryError as exc:
                steps.append({"method": row["method"], "error": f"out of memory: {str(exc)[:200]}"})
                torch.cuda.empty_cache()
            console.print(steps[-1])
    return steps


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quiet_library_logs()
    torch.set_grad_enabled(False)
    started = time.time()

    base = build(args.layers, args.seed)
    batch = inputs(base, frames=args.frames, size=args.size, text_tokens=args.text_tokens, seed=args.seed + 1)
    calib = [inputs(base, frames=args.frames, size=args.size, text_tokens=args.text_tokens, seed=args.seed + 10 + i)
             for i in range(3)]
    reference = forward(base, batch)
    all_linear = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
    targets = [n for n, _ in quantization_targets(base)]
    bf16 = bf16_sizes(base, targets=targets, all_linear=all_linear)
    transformer_params = sum(p.numel() for p in base.parameters())
    spec = model_spec(ModelConfigs("bench", mochi_config(args.layers), {"num_layers": 1}, {}))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    results = []
    for method in args.methods:
        reason = unsupported_reason(method, device)
        if reason:
            results.append({"method": method, "available": False, "reason": reason})
            console.print(f"[yellow]skip[/yellow] {method}: {reason}")
            continue
        row = measure(method, base=base, batch=batch, calib=calib, reference=reference, repeats=args.repeats,
                      device=device, spec=spec, targets=targets, all_linear=all_linear, bf16=bf16)
        results.append(row)
        console.print(f"{method}: {row['bytes'] / 2**20:.1f} MiB, error {row['relative_error']:.4f}, "
                      f"{row['forward_s_median']:.3f} s")

    steps: list[dict] | str = "not run: no CUDA device on this machine"
    if torch.cuda.is_available() and args.gpu_step_frames:
        del base
        steps = gpu_steps(results, args.gpu_step_frames)
    skew = skewed_rows(args.seed)
    _print(results, skew, args, bf16["bytes"])
    record = {
        "benchmark": "quantization", "command": "bench/quantization.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "machine": _machine(), "device": str(device),
        "versions": _versions(), "config": {**vars(args), "full_depth": FULL_DEPTH,
                                            "transformer_params": transformer_params},
        "bf16": bf16, "methods": results, "per_channel_vs_per_tensor": skew, "gpu_render_step": steps,
        "wall_s": round(time.time() - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {OUT} ({record['wall_s']} s)")
    return 0


def _print(results, skew, args, bf16_total) -> None:
    table = Table(title=f"Mochi-shaped transformer, {args.layers} of {FULL_DEPTH} layers, random weights "
                  f"({bf16_total / 2**20:.0f} MiB in bf16)")
    for col in ("method", "MiB", "÷bf16 quantized linears", "÷bf16 all linears", "÷bf16 total",
                f"÷bf16 total @{FULL_DEPTH} layers", "planner vs measured", "rel. error", "s / forward"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        if not r["available"]:
            table.add_row(r["method"], *["—"] * 7, "n/a here")
            continue
        table.add_row(r["method"], f"{r['bytes'] / 2**20:.1f}", f"{r['ratio_target_linear']:.3f}",
                      f"{r['ratio_all_linear']:.3f}", f"{r['ratio_total']:.3f}", f"{r['ratio_total_full_depth']:.3f}",
                      f"{r['planner_error']:+.2%}", f"{r['relative_error']:.4f}", f"{r['forward_s_median']:.3f}")
    console.print(table)
    second = Table(title="fp8 on one 3072×3072 Linear whose row scales span 1 … span (relative error; "
                   "90th percentile over output channels in brackets)")
    second.add_column("span")
    formats = list(dict.fromkeys(v["format"] for v in skew))
    for name in formats:
        second.add_column(name, justify="right")
    for span in dict.fromkeys(v["span"] for v in skew):
        cells = [next(v for v in skew if v["span"] == span and v["format"] == f) for f in formats]
        second.add_row(f"{span:g}", *(f"{c['relative_error']:.4f} ({c['p90_row_relative_error']:.4f})" for c in cells))
    console.print(second)


def _machine() -> dict:
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _versions() -> dict:
    import bitsandbytes
    import diffusers
    import torchao

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "torchao": torchao.__version__,
            "bitsandbytes": bitsandbytes.__version__}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
