"""GPU check: InfiniteTalk's and Mochi's real-shape transformers (random weights) on one GPU, per quantization
method: time per transformer pass and per denoising step, `torch.cuda.max_memory_allocated` against the VRAM
planner's estimate, and one LoRA training step each.

Meant for one short call on a lent H200 (bench/gpu_check.sh installs the carried wheels, runs this and keeps
the log and the JSON under $OUT; docs/benchmarks.md, "GPU check"). `--tiny` runs the same code with the tiny
configs on the CPU (perf_counter instead of CUDA events, no peak memory), so every path but the CUDA-only ones
is exercised here before a GPU is lent.

What runs, in order (each part has a time slot; a method that is predicted not to fit what is left is skipped
with a note, and anything that fails is recorded with its error and the run goes on):

1. InfiniteTalk render: `functions.models.infinitetalk.InfiniteTalkTransformer(**INFINITETALK_14B_CONFIG)`
   built on the meta device, materialised on the GPU in bf16 (`to_empty`, a fast init, Wan's RoPE tables
   recomputed), quantized by `INFINITETALK_QUANTIZATION` (`quantize_module`); one warm-up pass, then one
   denoising step as the renderer runs it (`infinitetalk_pipeline.guided_velocity`: cond, no text, neither =
   3 passes) on the planner's 480p chunk: 896×448, 81 frames → latent [1, 36, 21, 56, 112], text [1, 512, 4096],
   CLIP [1, 257, 1280], audio windows [1, 81, 5, 12, 768]. Against `planner.estimate_render(...,
   offload="model").phases["denoise"]` (transformer weights + that phase's activations + method temporaries).
2. InfiniteTalk LoRA: rank 16 on `functions.backends.infinitetalk.TARGET_MODULES`, gradient checkpointing,
   bf16 autocast, `lora_training.flow_matching_loss` with `infinitetalk_dataset.InfiniteTalkCondition` on a
   33-frame clip (latent [1, 16, 9, 56, 112]); two optimizer steps (the first allocates the optimizer state).
   The planner sizes InfiniteTalk renders only, so there is no estimate to compare with (the note says so).
3. Mochi render: diffusers' `MochiTransformer3DModel` at Mochi 1's shapes (48 layers), one CFG-batched pass
   (batch 2) a step at 848×480 (`--mochi-frames`, default 61 → latent [2, 12, 11, 60, 106]), against the
   Mochi planner's denoise phase.
4. Mochi LoRA: rank 16 on `lora_training.TARGET_MODULES`, no checkpointing (as the mochi-lora backend), latents
   [1, 12, 5, 64, 64] (25 frames at 512²), against `estimate_train(...).phases["train_step"]`.

Weights are random (std 1/√fan_in), so the timings hold for real weights except where a method's speed depends
on the values: bitsandbytes' LLM.int8 (`int8` on CUDA) splits out activation columns above 6.0, which random
unit-scale activations almost never have and real ones do.

    python bench/gpu_check.py --tiny                 # here, on the CPU
    bash bench/gpu_check.sh                          # on the GPU machine (through the device tool)
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the device machine has no editable install: import the repo from its root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

GiB = 1024 ** 3
IT_METHODS = ("bf16", "fp8", "fp8-per-channel", "int8", "fp8-dynamic", "nf4", "fp8-static")
MOCHI_METHODS = ("bf16", "fp8", "fp8-per-channel", "int8", "fp8-dynamic", "nf4", "fp8-static")
# Each part ends by this fraction of the budget (absolute: time a part leaves unused goes to the next ones).
SLOTS = {"infinitetalk_render": 0.52, "infinitetalk_train": 0.66, "mochi_render": 0.90, "mochi_train": 1.0}
# Guessed pass time of a method over bf16's, only to decide whether a method fits the time left.
SLOWDOWN = {"bf16": 1.0, "fp8": 1.3, "fp8-per-channel": 1.3, "fp8-static": 1.3, "fp8-dynamic": 1.1, "int8": 3.0,
            "nf4": 2.0}
BNB_QUANTIZE_S_PER_GIB = 0.6   # bitsandbytes quantizes through a CPU copy of each weight
LORA_RANK = 16
IT_TEXT_GUIDANCE, IT_AUDIO_GUIDANCE = 5.0, 4.0   # the renderer's defaults (3 passes a step)
MOCHI_GUIDANCE = 4.5
MOCHI_TEXT_TOKENS_TRAIN = 32                      # unmasked caption tokens of a train step (as bench/train.py)

log = logging.getLogger("gpu_check")


# ----------------------------------------------------------------------------------------------- run state
@dataclass
class Run:
    tiny: bool
    device: torch.device
    budget_s: float
    have_bnb: bool
    bnb_note: str | None
    out: Path
    record: dict
    started: float = field(default_factory=time.monotonic)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def min_left_s(self) -> float:
        """Seconds a part must have left to start a measurement whose cost is not known yet."""
        return 0.5 if self.tiny else 20.0

    @property
    def int8_backend(self) -> str:
        """bitsandbytes' LLM.int8 where it is there (the CUDA default; also on the CPU under --tiny, to run the
        GPU's code path), else torchao's int8 weight-only."""
        return "bitsandbytes" if self.have_bnb else "torchao"

    def left(self, slot: str) -> float:
        return self.started + self.budget_s * SLOTS[slot] - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # timing: CUDA events on the GPU, perf_counter on the CPU
    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def save(self) -> None:
        self.record["wall_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.record, indent=2, default=str))


def say(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def gib(value: int | float | None) -> float | None:
    return None if value is None else round(value / GiB, 3)


def add_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def size_text(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / GiB:.2f} GiB" if value >= GiB / 8 else f"{value / 1024 ** 2:.3f} MiB"


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


# ----------------------------------------------------------------------------------------------- building
def materialise(build: Callable[[], nn.Module], run: Run, seed: int) -> nn.Module:
    """`build()` on the meta device (bf16 parameters, no storage), storage on the run's device (`to_empty`),
    a fast random init and the buffers `to_empty` left uninitialised recomputed."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = build()
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=run.device)
    fast_init(model, run.device, seed)
    refresh_buffers(model)
    return model.eval()


@torch.no_grad()
def fast_init(model: nn.Module, device: torch.device, seed: int) -> None:
    """Weights N(0, 1/fan_in) (activations keep unit scale through the blocks), 1-D weights (norms) 1, biases 0."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.ndim >= 2:
            parameter.normal_(0.0, parameter[0].numel() ** -0.5, generator=generator)
        elif name.endswith("weight"):
            parameter.fill_(1.0)
        else:
            parameter.zero_()


@torch.no_grad()
def refresh_buffers(model: nn.Module) -> list[str]:
    """Recompute the buffers the models hold (Wan's RoPE tables: `WanRotaryPosEmbed`, built again on the CPU
    with the module's own arguments); any other buffer is an error (it would hold uninitialised memory)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    done = []
    for prefix, module in model.named_modules():
        if isinstance(module, WanRotaryPosEmbed):
            with torch.device("cpu"):
                fresh = WanRotaryPosEmbed(module.attention_head_dim, module.patch_size, module.max_seq_len)
            for name, buffer in fresh.named_buffers():
                getattr(module, name).copy_(buffer)
                done.append(f"{prefix}.{name}" if prefix else name)
    left = [name for name, _ in model.named_buffers() if name not in done]
    if left:
        raise RuntimeError(f"buffers left uninitialised by to_empty: {left[:5]}")
    return done


def linear_flops_hooks(model: nn.Module, counter: list[float]) -> list:
    """Forward hooks adding 2·rows·in·out for every nn.Linear call (the matmul FLOPs of a pass)."""
    def hook(module, args, _output):
        x = args[0]
        counter[0] += 2.0 * (x.numel() // module.in_features) * module.in_features * module.out_features
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------------------------- families
@dataclass
class Family:
    """What the generic measurements need from one model family."""

    name: str
    passes_per_step: int
    build: Callable[[], nn.Module]
    quantize: Callable[..., Any]                    # (model, method, *, device, calibrate, int8_backend) → report
    inputs: Callable[[Run], dict]
    one_pass: Callable[[nn.Module, dict], torch.Tensor]
    step: Callable[[nn.Module, dict, Run], tuple[list[float], float, bool]]  # → pass s, step s, finite output
    calibrate: Callable[[nn.Module, Run], Callable[[], None]]
    estimate: Callable[[str, str], dict]           # (method, int8_backend) → planner figures
    attention_flops: float                          # per pass, analytic
    shapes: dict


def infinitetalk_family(run: Run, *, frames: int, width: int, height: int) -> Family:
    from functions.infinitetalk_pipeline import guided_velocity
    from functions.models.infinitetalk import INFINITETALK_14B_CONFIG, InfiniteTalkTransformer, tiny_infinitetalk_config
    from functions.quantization.infinitetalk import (
        INFINITETALK_QUANTIZATION,
        RENDERER_VAE_TILING,
        WAN21_I2V_14B,
        InfiniteTalkJob,
        infinitetalk_spec,
    )
    from functions.quantization.planner import estimate_render

    config = tiny_infinitetalk_config() if run.tiny else dict(INFINITETALK_14B_CONFIG)
    planner_config = infinitetalk_planner_config(config)
    if not run.tiny and planner_config != WAN21_I2V_14B:
        raise RuntimeError("INFINITETALK_14B_CONFIG no longer maps onto the planner's WAN21_I2V_14B")
    spec = infinitetalk_spec(config=planner_config)
    job = InfiniteTalkJob(width=width, height=height, num_frames=frames, guidance_scale=IT_TEXT_GUIDANCE,
                          audio_guidance_scale=IT_AUDIO_GUIDANCE)
    t, h, w = spec.latent_shape(frames, height, width)
    tokens = spec.tokens(frames, height, width)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    text_len, image_tokens = planner_config.text_len, planner_config.image_tokens
    shapes = {"width": width, "height": height, "frames": frames, "tokens": tokens,
              "latent": [1, config["in_channels"], t, h, w], "text": [1, text_len, config["text_dim"]],
              "image": [1, image_tokens, config["image_dim"]],
              "audio": [1, frames, config["audio_window"], config["audio_layers"], config["audio_dim"]],
              "passes_per_step": job.passes}
    # self-attention (QKᵀ and PV), the text + image cross-attention, the frame-local audio attention (32 tokens)
    attention = config["num_layers"] * 4.0 * dim * (tokens * tokens + tokens * (text_len + image_tokens)
                                                    + tokens * config["audio_tokens"])

    def inputs(run: Run) -> dict:
        g = torch.Generator(device=run.device).manual_seed(1)
        dev = run.device

        def randn(*shape, dtype=torch.bfloat16):
            return torch.randn(*shape, generator=g, device=dev).to(dtype)

        return {"latent": randn(1, config["out_channels"], t, h, w, dtype=torch.float32),
                "condition": randn(1, config["in_channels"] - config["out_channels"], t, h, w, dtype=torch.float32),
                "text": randn(*shapes["text"]), "null_text": randn(*shapes["text"]),
                "image": randn(*shapes["image"]), "audio": randn(*shapes["audio"]),
                "timestep": torch.tensor([999.0], device=dev)}

    def forward(model, x, b, *, with_text=True, with_audio=True, null_audio=None):
        return model(hidden_states=x, timestep=b["timestep"].expand(x.shape[0]),
                     encoder_hidden_states=b["text"] if with_text else b["null_text"],
                     encoder_hidden_states_image=b["image"],
                     audio_embeds=b["audio"] if with_audio else null_audio, return_dict=False)[0].float()

    def one_pass(model, b):
        x = torch.cat([b["latent"], b["condition"]], dim=1).to(torch.bfloat16)
        return forward(model, x, b)

    def step(model, b, run: Run):
        """One step as `Sampler.velocity` runs it: x = [latent, condition] in bf16, then guided_velocity's passes."""
        marks = []
        start = run.mark()
        x = torch.cat([b["latent"], b["condition"]], dim=1).to(torch.bfloat16)
        null_audio = torch.zeros_like(b["audio"])

        def predict(with_text: bool, with_audio: bool) -> torch.Tensor:
            a = run.mark()
            out = forward(model, x, b, with_text=with_text, with_audio=with_audio, null_audio=null_audio)
            marks.append((a, run.mark()))
            return out

        velocity = guided_velocity(predict, IT_TEXT_GUIDANCE, IT_AUDIO_GUIDANCE)
        end = run.mark()
        step_s = run.seconds(start, end)
        return [run.seconds(a, z) for a, z in marks], step_s, bool(torch.isfinite(velocity).all())

    def calibrate(model, run: Run):
        """fp8-static's calibration passes: a small clip (2 latent frames, 16² latent pixels)."""
        g = torch.Generator(device=run.device).manual_seed(2)

        def randn(*shape):
            return torch.randn(*shape, generator=g, device=run.device).to(torch.bfloat16)

        small = {"x": randn(1, config["in_channels"], 2, 16, 16), "text": randn(*shapes["text"]),
                 "null_text": None, "image": randn(*shapes["image"]),
                 "audio": randn(1, 5, config["audio_window"], config["audio_layers"], config["audio_dim"]),
                 "timestep": torch.tensor([500.0], device=run.device)}
        return lambda: forward(model, small["x"], small)

    def quantize(model, method, **options):
        return INFINITETALK_QUANTIZATION.quantize_module(
            model, INFINITETALK_QUANTIZATION.method_for("transformer", method), **options)

    def estimate(method: str, int8_backend: str) -> dict:
        e = estimate_render(spec, job, method, offload="model", vae_tiling=RENDERER_VAE_TILING,
                            int8_backend=int8_backend)
        return {"planner_peak_bytes": e.phases["denoise"], "planner_weight_bytes": e.weights["transformer"]}

    return Family(name="infinitetalk", passes_per_step=job.passes, build=lambda: InfiniteTalkTransformer(**config),
                  quantize=quantize, inputs=inputs, one_pass=one_pass, step=step, calibrate=calibrate,
                  estimate=estimate, attention_flops=attention, shapes=shapes)


def infinitetalk_planner_config(config: dict):
    """The planner's `InfiniteTalkConfig` for a renderer config (the tiny one too; the real one must map onto
    WAN21_I2V_14B)."""
    from functions.quantization.infinitetalk import InfiniteTalkConfig

    return InfiniteTalkConfig(
        dim=config["num_attention_heads"] * config["attention_head_dim"], ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"], num_heads=config["num_attention_heads"], in_channels=config["in_channels"],
        out_channels=config["out_channels"], patch_size=tuple(config["patch_size"]), text_dim=config["text_dim"],
        freq_dim=config["freq_dim"], image_dim=config["image_dim"], audio_dim=config["audio_dim"],
        audio_layers=config["audio_layers"], audio_window=config["audio_window"],
        audio_intermediate=config["audio_inner_dim"], audio_tokens=config["audio_tokens"],
        vae_scale=config["vae_time_stride"])


def mochi_family(run: Run, *, frames: int, width: int, height: int) -> Family:
    from diffusers import MochiTransformer3DModel

    from functions.models.mochi_configs import MOCHI_1_PREVIEW, TINY_MODEL, model_configs
    from functions.models.mochi_spec import latent_shape, model_spec, quantize_module
    from functions.quantization.jobs import RenderJob
    from functions.quantization.planner import estimate_render

    configs = model_configs(TINY_MODEL if run.tiny else MOCHI_1_PREVIEW)
    spec = model_spec(configs)
    job = RenderJob(width=width, height=height, num_frames=frames, guidance_scale=MOCHI_GUIDANCE)
    t, h, w = latent_shape(frames, height, width)
    text_len = configs.max_sequence_length
    tokens = spec.tokens(frames, height, width)
    with torch.device("meta"):
        meta = MochiTransformer3DModel.from_config(configs.transformer)
    mc = meta.config
    in_channels, text_dim = mc.in_channels, mc.text_embed_dim
    shapes = {"width": width, "height": height, "frames": frames, "tokens": tokens, "batch": job.batch,
              "latent": [job.batch, in_channels, t, h, w], "text": [job.batch, text_len, text_dim],
              "passes_per_step": 1}
    # joint attention over the visual and caption tokens, per sample of the CFG batch
    attention = mc.num_layers * job.batch * 4.0 * spec.hidden * (tokens + text_len) ** 2
    del meta

    def inputs(run: Run) -> dict:
        g = torch.Generator(device=run.device).manual_seed(1)
        dev = run.device
        return {"latents": torch.randn(1, in_channels, t, h, w, generator=g, device=dev).to(torch.bfloat16),
                "text": torch.randn(*shapes["text"], generator=g, device=dev).to(torch.bfloat16),
                "mask": torch.ones(job.batch, text_len, dtype=torch.bool, device=dev),
                "timestep": torch.tensor(750.0, device=dev)}

    def one_pass(model, b):
        latent = torch.cat([b["latents"]] * 2)
        return model(hidden_states=latent, encoder_hidden_states=b["text"],
                     timestep=b["timestep"].expand(latent.shape[0]).to(latent.dtype),
                     encoder_attention_mask=b["mask"], return_dict=False)[0].float()

    def step(model, b, run: Run):
        """MochiPipeline's step: the CFG batch in one pass, the guidance in fp32."""
        start = run.mark()
        prediction = one_pass(model, b)
        uncond, text = prediction.chunk(2)
        velocity = uncond + MOCHI_GUIDANCE * (text - uncond)
        end = run.mark()
        step_s = run.seconds(start, end)
        return [step_s], step_s, bool(torch.isfinite(velocity).all())

    def calibrate(model, run: Run):
        g = torch.Generator(device=run.device).manual_seed(2)
        small = {"latents": torch.randn(1, in_channels, 2, 16, 16, generator=g, device=run.device).to(torch.bfloat16),
                 "text": torch.randn(2, text_len, text_dim, generator=g, device=run.device).to(torch.bfloat16),
                 "mask": torch.ones(2, text_len, dtype=torch.bool, device=run.device),
                 "timestep": torch.tensor(500.0, device=run.device)}
        return lambda: one_pass(model, small)

    def estimate(method: str, int8_backend: str) -> dict:
        e = estimate_render(spec, job, method, offload="model", int8_backend=int8_backend)
        return {"planner_peak_bytes": e.phases["denoise"], "planner_weight_bytes": e.weights["transformer"]}

    return Family(name="mochi", passes_per_step=1,
                  build=lambda: MochiTransformer3DModel.from_config(configs.transformer),
                  quantize=lambda model, method, **options: quantize_module(model, method, **options), inputs=inputs,
                  one_pass=one_pass, step=step, calibrate=calibrate, estimate=estimate, attention_flops=attention,
                  shapes=shapes)


# ----------------------------------------------------------------------------------------------- render
@dataclass
class Reference:
    """bf16's figures, once measured: what the time guard predicts the other methods from."""

    pass_s: float | None = None
    overhead_s: float | None = None
    linear_flops: float | None = None
    bf16_gib: float = 0.0

    def predict(self, method: str, passes: int) -> float | None:
        if self.pass_s is None or self.overhead_s is None:
            return None
        extra = BNB_QUANTIZE_S_PER_GIB * self.bf16_gib if method in ("int8", "nf4") else 0.0
        return self.overhead_s + extra + (1 + passes) * self.pass_s * SLOWDOWN.get(method, 1.5)


def render_method(run: Run, family: Family, method: str, slot: str, ref: Reference, row: dict) -> None:
    """Build, quantize, one warm-up pass, one step; fills `row` as it goes (kept as far as it got on an error)."""
    from functions.quantization.methods import unsupported_reason

    reason = unsupported_reason(method, run.device)
    if reason is None and method == "nf4" and not run.have_bnb:
        reason = f"nf4 needs bitsandbytes, which is not here ({run.bnb_note})"
    if reason:
        row.update(status="skipped", note=reason)
        return
    predicted, left = ref.predict(method, family.passes_per_step), run.left(slot)
    if predicted is None and left < run.min_left_s:
        row.update(status="skipped", note=f"time budget: {left:.0f} s left in this part")
        return
    if predicted is not None and predicted > left:
        row.update(status="skipped", note=f"time budget: {left:.0f} s left in this part, ~{predicted:.0f} s needed")
        return
    row["int8_backend"] = run.int8_backend if method == "int8" else None
    row.update(family.estimate(method, run.int8_backend))
    clock = time.perf_counter()
    model = materialise(family.build, run, seed=0)
    run.sync()
    row["build_s"] = round(time.perf_counter() - clock, 2)
    row["allocated_bf16_bytes"] = run.allocated()
    calibrate = family.calibrate(model, run) if method == "fp8-static" else None
    clock = time.perf_counter()
    report = family.quantize(model, method, device=run.device, calibrate=calibrate, int8_backend=run.int8_backend)
    run.sync()
    row["quantize_s"] = round(time.perf_counter() - clock, 2)
    run.free()
    row.update(backend=report.backend, layers_quantized=report.layers, weight_bytes=report.weight_bytes,
               bf16_weight_bytes=report.bf16_weight_bytes, allocated_after_quantize=run.allocated())
    row["weight_ratio"] = round(report.weight_bytes / row["planner_weight_bytes"], 4)
    ref.bf16_gib = report.bf16_weight_bytes / GiB
    batch = family.inputs(run)
    hooks, flops = [], [0.0]
    if ref.linear_flops is None and method == "bf16":
        hooks = linear_flops_hooks(model, flops)
    with torch.no_grad():
        run.reset_peak()
        start = run.mark()
        out = family.one_pass(model, batch)
        end = run.mark()
        row["warmup_pass_s"] = round(run.seconds(start, end), 4)
        row["warmup_peak_bytes"] = run.peak()
        row["output_finite"] = bool(torch.isfinite(out).all())
        del out
        for handle in hooks:
            handle.remove()
        if hooks:
            ref.linear_flops = flops[0]
        need = family.passes_per_step * row["warmup_pass_s"] * 1.15
        if need > run.left(slot):
            row.update(status="partial", s_per_pass=row["warmup_pass_s"], peak_bytes=row["warmup_peak_bytes"],
                       note=f"time budget: warm-up pass only (a step needs ~{need:.0f} s, "
                       f"{run.left(slot):.0f} s left)")
        else:
            run.reset_peak()
            pass_s, step_s, finite = family.step(model, batch, run)
            row.update(pass_s=[round(s, 4) for s in pass_s], s_per_pass=round(sum(pass_s) / len(pass_s), 4),
                       s_per_step=round(step_s, 4), peak_bytes=run.peak(), step_output_finite=finite)
    if ref.linear_flops is not None and row.get("s_per_pass"):
        row["approx_tflops"] = round((ref.linear_flops + family.attention_flops) / row["s_per_pass"] / 1e12, 1)
    if row.get("peak_bytes"):
        row["ratio"] = round(row["peak_bytes"] / row["planner_peak_bytes"], 4)
    if ref.pass_s is None and row.get("s_per_pass") and row["status"] == "ok":  # bf16, or the first that ran
        ref.pass_s = row["s_per_pass"] / SLOWDOWN.get(method, 1.5)
        ref.overhead_s = row["build_s"] + row["quantize_s"]
    del model, batch


def render_part(run: Run, family: Family, methods: list[str], slot: str) -> list[dict]:
    rows: list[dict] = []
    ref = Reference()
    for method in methods:
        say(f"{family.name} render {method} ({run.elapsed():.0f} s in, {run.left(slot):.0f} s left in this part)")
        row: dict[str, Any] = {"model": family.name, "job": "render", "method": method, "status": "ok"}
        try:
            render_method(run, family, method, slot, ref, row)
        except Exception as exc:  # out of memory, a kernel missing on this GPU, a library mismatch...
            row.update(status="error", error=error_text(exc), peak_bytes_at_error=run.peak(),
                       traceback=traceback.format_exc()[-3000:])
        run.free()
        row["allocated_after_free"] = run.allocated()
        rows.append(row)
        say("  " + summary(row))
        run.save()
    return rows


# ----------------------------------------------------------------------------------------------- train
def train_part(run: Run, row: dict, slot: str, *, build: Callable[[], nn.Module], latents: torch.Tensor,
               condition, target_modules: str, checkpointing: bool, estimate: Callable[[str], dict],
               shapes: dict) -> None:
    """Two LoRA optimizer steps (the first allocates the optimizer state) as `lora_training._TrainingLoop._step`
    runs one: flow-matching loss under autocast, backward, gradient clipping, the optimizer."""
    from functions.lora_training import (Precision, TrainConfig, add_lora, flow_matching_loss, lora_parameters,
                                         make_optimizer, sample_noise)

    row.update(lora_rank=LORA_RANK, gradient_checkpointing=checkpointing, shapes=shapes)
    if run.left(slot) < run.min_left_s:
        row.update(status="skipped", note=f"time budget: {run.left(slot):.0f} s left in this part")
        return
    clock = time.perf_counter()
    model = materialise(build, run, seed=0)
    add_lora(model, LORA_RANK, float(LORA_RANK), seed=0, target_modules=target_modules)
    if checkpointing:
        model.enable_gradient_checkpointing()
    params = lora_parameters(model)
    config = TrainConfig(epochs=1, batch_size=1, learning_rate=1e-4, grad_accumulation=1, mixed_precision="bf16",
                         lora_rank=LORA_RANK, lora_alpha=float(LORA_RANK), seed=0, checkpoint_every=1000,
                         optimizer="auto" if run.have_bnb else "adamw")
    optimizer, optimizer_name = make_optimizer(params, config)
    precision = Precision(device=run.device.type, dtype=torch.bfloat16, mixed_precision="bf16")
    run.sync()
    row.update(build_s=round(time.perf_counter() - clock, 2), optimizer=optimizer_name,
               lora_params=sum(p.numel() for p in params), allocated_before_steps=run.allocated())
    figures = estimate(optimizer_name)
    if figures.get("planner_note"):
        add_note(row, figures.pop("planner_note"))
    row.update(figures)
    model.train()
    steps, peaks, losses = [], [], []
    with torch.enable_grad():
        for index in range(2):
            if index and steps[0] * 1.2 > run.left(slot):
                add_note(row, f"time budget: one step only ({run.left(slot):.0f} s left)")
                break
            run.reset_peak()
            start = run.mark()
            optimizer.zero_grad(set_to_none=True)
            sigma, noise = sample_noise(latents, 0, index)
            loss = flow_matching_loss(model, latents, noise=noise, sigma=sigma, text=condition, precision=precision,
                                      clips=torch.arange(latents.shape[0]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            end = run.mark()
            steps.append(run.seconds(start, end))
            peaks.append(run.peak())
            losses.append(float(loss.detach()))
    model.eval()
    row.update(step_s=[round(s, 4) for s in steps], s_per_step=round(steps[-1], 4), peak_bytes=peaks[-1],
               step_peaks=peaks, losses=[round(x, 5) for x in losses],
               loss_finite=all(math.isfinite(x) for x in losses))
    if row.get("planner_peak_bytes") and row["peak_bytes"]:
        row["ratio"] = round(row["peak_bytes"] / row["planner_peak_bytes"], 4)
    del model, optimizer, params


def guarded_train(run: Run, name: str, slot: str, make: Callable[[dict], None]) -> dict:
    say(f"{name} LoRA train step ({run.elapsed():.0f} s in, {run.left(slot):.0f} s left in this part)")
    row: dict[str, Any] = {"model": name, "job": "train", "method": "bf16", "status": "ok"}
    try:
        make(row)
    except Exception as exc:
        row.update(status="error", error=error_text(exc), peak_bytes_at_error=run.peak(),
                   traceback=traceback.format_exc()[-3000:])
    run.free()
    row["allocated_after_free"] = run.allocated()
    say("  " + summary(row))
    run.save()
    return row


def infinitetalk_target_modules(row: dict) -> str:
    """`functions.backends.infinitetalk.TARGET_MODULES`; if the backend module cannot be imported here (it pulls in
    the whole stage stack), the constant read from its source, with a note."""
    try:
        from functions.backends.infinitetalk import TARGET_MODULES

        return TARGET_MODULES
    except ImportError as exc:
        import ast

        tree = ast.parse((ROOT / "functions" / "backends" / "infinitetalk.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TARGET_MODULES" for t in node.targets):
                add_note(row, f"TARGET_MODULES read from the backend's source ({error_text(exc)})")
                return ast.literal_eval(node.value)
        raise


def infinitetalk_train(run: Run, row: dict, *, frames: int, width: int, height: int) -> None:
    from functions.infinitetalk_dataset import ClipSpan, EncodedClips, InfiniteTalkCondition
    from functions.models.infinitetalk import INFINITETALK_14B_CONFIG, InfiniteTalkTransformer, tiny_infinitetalk_config
    from functions.quantization.infinitetalk import infinitetalk_spec
    from functions.quantization.jobs import TrainJob
    from functions.quantization.planner import estimate_train
    from schemas.errors import VideostudioError

    config = tiny_infinitetalk_config() if run.tiny else dict(INFINITETALK_14B_CONFIG)
    planner_config = infinitetalk_planner_config(config)
    spec = infinitetalk_spec(config=planner_config)
    t, h, w = spec.latent_shape(frames, height, width)
    g = torch.Generator().manual_seed(3)
    out_ch, in_ch = config["out_channels"], config["in_channels"]
    # What `encode_clips` keeps on the CPU (fp32); InfiniteTalkCondition moves each batch to the device.
    encoded = EncodedClips(
        latents=torch.randn(1, out_ch, t, h, w, generator=g),
        condition=torch.randn(1, in_ch - out_ch, t, h, w, generator=g),
        image=torch.randn(1, planner_config.image_tokens, config["image_dim"], generator=g),
        audio=torch.randn(1, frames, config["audio_window"], config["audio_layers"], config["audio_dim"], generator=g),
        spans=[ClipSpan("train", 0, frames)])
    condition = InfiniteTalkCondition(text=torch.randn(1, planner_config.text_len, config["text_dim"], generator=g),
                                      encoded=encoded)
    shapes = {"width": width, "height": height, "frames": frames, "latent": [1, out_ch, t, h, w],
              "tokens": spec.tokens(frames, height, width)}

    def estimate(optimizer_name: str) -> dict:
        job = TrainJob(resolution=height, clip_frames=frames, batch_size=1, lora_rank=LORA_RANK,
                       optimizer_bytes_per_param=2 if optimizer_name == "adamw8bit" else 8, gradient_checkpointing=True)
        try:
            e = estimate_train(spec, job, "bf16")
            return {"planner_peak_bytes": max(e.phases.values())}
        except VideostudioError as exc:
            return {"planner_peak_bytes": None, "planner_note": f"no planner estimate: {exc.message}"}

    train_part(run, row, "infinitetalk_train", build=lambda: InfiniteTalkTransformer(**config),
                      latents=encoded.latents, condition=condition, target_modules=infinitetalk_target_modules(row),
                      checkpointing=True,
                      estimate=estimate, shapes=shapes)


def mochi_train(run: Run, row: dict, *, frames: int, resolution: int) -> None:
    from diffusers import MochiTransformer3DModel

    from functions.lora_training import TARGET_MODULES, TextCondition
    from functions.models.mochi_configs import MOCHI_1_PREVIEW, TINY_MODEL, model_configs
    from functions.models.mochi_spec import latent_shape, model_spec
    from functions.quantization.jobs import TrainJob
    from functions.quantization.planner import estimate_train

    configs = model_configs(TINY_MODEL if run.tiny else MOCHI_1_PREVIEW)
    spec = model_spec(configs)
    with torch.device("meta"):
        mc = MochiTransformer3DModel.from_config(configs.transformer).config
    t, h, w = latent_shape(frames, resolution, resolution)
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, mc.in_channels, t, h, w, generator=g)
    text_len = configs.max_sequence_length
    mask = torch.zeros(1, text_len, dtype=torch.bool)
    mask[:, :min(MOCHI_TEXT_TOKENS_TRAIN, text_len)] = True
    condition = TextCondition(embeds=torch.randn(1, text_len, mc.text_embed_dim, generator=g), mask=mask)
    shapes = {"resolution": resolution, "frames": frames, "latent": list(latents.shape),
              "tokens": spec.tokens(frames, resolution, resolution)}

    def estimate(optimizer_name: str) -> dict:
        job = TrainJob(resolution=resolution, clip_frames=frames, batch_size=1, lora_rank=LORA_RANK,
                       optimizer_bytes_per_param=2 if optimizer_name == "adamw8bit" else 8,
                       gradient_checkpointing=False)
        e = estimate_train(spec, job, "bf16")
        return {"planner_peak_bytes": e.phases["train_step"]}

    train_part(run, row, "mochi_train", build=lambda: MochiTransformer3DModel.from_config(configs.transformer),
                      latents=latents, condition=condition, target_modules=TARGET_MODULES, checkpointing=False,
                      estimate=estimate, shapes=shapes)


# ----------------------------------------------------------------------------------------------- report
def summary(row: dict) -> str:
    name = f"{row['model']} {row['job']} {row['method']}"
    if row["status"] in ("skipped", "error"):
        return f"{name}: {row['status']}: {row.get('note') or row.get('error')}"
    parts = [f"{row.get('s_per_pass', '-')} s/pass" if row["job"] == "render" else "",
             f"{row.get('s_per_step', '-')} s/step", f"peak {size_text(row.get('peak_bytes'))}",
             f"planner {size_text(row.get('planner_peak_bytes'))}", f"ratio {row.get('ratio')}"]
    return f"{name}: " + ", ".join(p for p in parts if p) + (f" ({row['note']})" if row.get("note") else "")


def table(rows: list[dict], *, unit: str = "GiB") -> str:
    """The markdown table printed last (MiB for the tiny dry run, whose models are a few KiB)."""
    scale = GiB if unit == "GiB" else 1024 ** 2

    def cell(value, digits=3):
        if value is None or value == "":
            return "—"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    def size(value):
        return None if value is None else value / scale

    lines = [f"| model | job | method | s/pass | s/step | peak {unit} | planner {unit} | ratio | TFLOP/s | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        note = r.get("note") or r.get("error") or ""
        lines.append("| " + " | ".join([
            r["model"], r["job"], r["method"] + (f" ({r['int8_backend']})" if r.get("int8_backend") else ""),
            cell(r.get("s_per_pass")), cell(r.get("s_per_step")), cell(size(r.get("peak_bytes"))),
            cell(size(r.get("planner_peak_bytes"))), cell(r.get("ratio")), cell(r.get("approx_tflops"), 1),
            (r["status"] + ": " if r["status"] not in ("ok", "partial") else "") + note.replace("|", "/")[:160],
        ]) + " |")
    return "\n".join(lines)


def check_rope_refresh() -> bool:
    """`refresh_buffers` gives the RoPE tables a normally built model has (tiny config, CPU)."""
    from functions.models.infinitetalk import InfiniteTalkTransformer, tiny_infinitetalk_config

    config = tiny_infinitetalk_config()
    reference = InfiniteTalkTransformer(**config)
    with torch.device("meta"):
        model = InfiniteTalkTransformer(**config)
    model = model.to_empty(device="cpu")
    refresh_buffers(model)
    return all(torch.equal(b, dict(reference.named_buffers())[n]) for n, b in model.named_buffers())


def matmul_ceiling(run: Run) -> dict:
    """bf16 matmul rate on random data (n³ products, median of 10 after 3 warm-ups): the ceiling to read the
    transformers' TFLOP/s against."""
    n = 256 if run.tiny else 8192
    g = torch.Generator(device=run.device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=run.device).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g, device=run.device).to(torch.bfloat16)
    times = []
    for i in range(13):
        start = run.mark()
        a @ b
        end = run.mark()
        if i >= 3:
            times.append(run.seconds(start, end))
    times.sort()
    median = times[len(times) // 2]
    return {"n": n, "median_s": median, "tflops": round(2 * n ** 3 / median / 1e12, 1)}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("diffusers", "transformers", "peft", "accelerate", "torchao", "bitsandbytes", "pydantic",
                 "safetensors", "huggingface_hub", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"name": platform.processor() or platform.machine(), "type": "cpu", "threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(device)
    return {"name": torch.cuda.get_device_name(device), "type": "cuda",
            "capability": list(torch.cuda.get_device_capability(device)), "total_memory_bytes": p.total_memory,
            "multiprocessors": p.multi_processor_count, "free_bytes_at_start": torch.cuda.mem_get_info(device)[0]}


def commit() -> str | None:
    """The checkout's HEAD, read from .git without running git (the device machine's copy may have no .git)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return None


def bitsandbytes_state(disabled: bool) -> tuple[bool, str | None]:
    if disabled:
        return False, "left out by --no-bitsandbytes"
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "not installed (bench/gpu_wheels.sh --no-bitsandbytes?)"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # its native library failed to load for this CUDA
        return False, f"import failed: {error_text(exc)}"
    return True, None


def quiet() -> None:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (a dry run of every path)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the measurements (default 400 on a GPU, 600 with --tiny)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default $OUT/gpu_check.json, else bench/out/gpu_check[_tiny].json)")
    parser.add_argument("--it-methods", nargs="*", default=list(IT_METHODS), choices=IT_METHODS)
    parser.add_argument("--mochi-methods", nargs="*", default=list(MOCHI_METHODS), choices=MOCHI_METHODS)
    parser.add_argument("--parts", nargs="*", default=list(SLOTS), choices=list(SLOTS))
    parser.add_argument("--mochi-frames", type=int, default=None, help="Mochi render frames (6k+1; default 61)")
    parser.add_argument("--it-train-frames", type=int, default=None, help="InfiniteTalk LoRA clip (4n+1; default 33)")
    parser.add_argument("--no-bitsandbytes", action="store_true", help="run as if bitsandbytes were not there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quiet()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        say("no CUDA device: run with --tiny for the CPU dry run")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else
                       ROOT / "bench" / "out" / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json"))
    have_bnb, bnb_note = bitsandbytes_state(args.no_bitsandbytes)
    budget = args.budget_s if args.budget_s is not None else (600.0 if args.tiny else 400.0)
    # Sizes: the planner's 480p InfiniteTalk chunk (RESOLUTIONS["480p"] = 896×448), Mochi's 848×480.
    from functions.quantization.infinitetalk import CHUNK_FRAMES, RESOLUTIONS

    it_w, it_h = (64, 32) if args.tiny else RESOLUTIONS["480p"]
    it_frames = 9 if args.tiny else CHUNK_FRAMES
    it_train_frames = args.it_train_frames or (5 if args.tiny else 33)
    mochi_w, mochi_h = (64, 64) if args.tiny else (848, 480)
    mochi_frames = args.mochi_frames or (13 if args.tiny else 61)
    mochi_train_frames, mochi_train_res = (7, 64) if args.tiny else (25, 512)

    record: dict[str, Any] = {
        "benchmark": "gpu_check", "mode": "tiny (CPU dry run)" if args.tiny else "gpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
        "command": "bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_info(device), "versions": versions(), "budget_s": budget, "slots": SLOTS,
        "bitsandbytes": {"available": have_bnb, "note": bnb_note},
        "int8_backend": "bitsandbytes" if have_bnb else "torchao", "rows": [], "notes": [],
    }
    run = Run(tiny=args.tiny, device=device, budget_s=budget, have_bnb=have_bnb, bnb_note=bnb_note, out=out,
              record=record)
    say(f"device {record['device']['name']} {record['device'].get('capability', '')}, torch {torch.__version__}, "
        f"budget {budget:.0f} s, bitsandbytes {'yes' if have_bnb else 'no: ' + str(bnb_note)}")
    if not have_bnb:
        record["notes"].append(f"bitsandbytes: {bnb_note}; nf4 skipped, int8 on torchao, AdamW for the LoRA steps")
    rows = record["rows"]
    try:
        record["checks"] = {"rope_tables_recomputed_exactly": check_rope_refresh()}
        if not record["checks"]["rope_tables_recomputed_exactly"]:
            record["notes"].append("refresh_buffers did not reproduce Wan's RoPE tables: the passes ran on wrong ones")
        record["matmul_ceiling"] = matmul_ceiling(run)
        say(f"bf16 matmul {record['matmul_ceiling']['n']}³: {record['matmul_ceiling']['tflops']} TFLOP/s")
        if "infinitetalk_render" in args.parts:
            family = infinitetalk_family(run, frames=it_frames, width=it_w, height=it_h)
            record["infinitetalk_render_shapes"] = family.shapes
            rows += render_part(run, family, args.it_methods, "infinitetalk_render")
        if "infinitetalk_train" in args.parts:
            rows.append(guarded_train(run, "infinitetalk", "infinitetalk_train", lambda row: infinitetalk_train(
                run, row, frames=it_train_frames, width=it_w, height=it_h)))
        if "mochi_render" in args.parts:
            family = mochi_family(run, frames=mochi_frames, width=mochi_w, height=mochi_h)
            record["mochi_render_shapes"] = family.shapes
            rows += render_part(run, family, args.mochi_methods, "mochi_render")
        if "mochi_train" in args.parts:
            rows.append(guarded_train(run, "mochi", "mochi_train", lambda row: mochi_train(
                run, row, frames=mochi_train_frames, resolution=mochi_train_res)))
    except KeyboardInterrupt:  # gpu_check.sh's outer timeout: keep what was measured
        record["notes"].append(f"interrupted after {run.elapsed():.0f} s")
    except Exception as exc:
        record["notes"].append(f"stopped: {error_text(exc)}")
        record["traceback"] = traceback.format_exc()[-3000:]
        traceback.print_exc()
    if args.tiny:
        record["notes"].append("tiny configs on the CPU: times are not GPU times, peaks are None")
    run.save()
    print()
    print(f"## GPU check: {record['device']['name']} {record['device'].get('capability', '')}, torch "
          f"{torch.__version__}, {record['mode']}")
    print()
    print(table(rows, unit="MiB" if args.tiny else "GiB"))
    print()
    for note in record["notes"]:
        print(f"- {note}")
    errors = [r for r in rows if r["status"] == "error"]
    print(f"\n{len(rows)} rows ({len(errors)} errors) in {run.elapsed():.0f} s; wrote {out}")
    return 1 if errors or "traceback" in record else 0


if __name__ == "__main__":
    sys.exit(main())
