"""VRAM planner: peak GPU memory of a render or train job, from a model description alone.

Nothing is loaded. A `ModelDescription` gives each component's parameter count and the Linear
layers a method replaces (the quantizer's own rule); weight bytes per method follow from those
shapes (`shapes.linear_bytes`). The description's formulas give each phase's activations. Every
figure is an estimate; bench/quantization.py checks the weight part against measured bytes.

Peak of a job = the largest of its phases (a render: text encoding, denoising, VAE decode):
- `offload="none"`: all weights resident + the phase's activations;
- `offload="model"` (diffusers `enable_model_cpu_offload`): only that phase's components resident.
A job fits a GPU when peak + `RESERVE_BYTES` (CUDA context, allocator slack) ≤ its memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from functions.quantization.description import ModelDescription
from functions.quantization.gpus import GiB, GpuSpec, method_note
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import METHODS

RESERVE_BYTES = int(1.0 * GiB)  # CUDA context + caching-allocator fragmentation
# Best quality first, from bench/quantization.py's relative errors (int8 per-channel weights are
# more precise than fp8's 3-bit mantissa; plain fp8 casting has no scale; nf4 has 16 levels).
QUALITY_ORDER: tuple[str, ...] = ("bf16", "int8", "fp8-per-channel", "fp8-dynamic", "fp8-static", "fp8", "nf4")
TRAIN_INT8_BACKEND = "bitsandbytes"  # training runs on CUDA, where int8 is bitsandbytes' LLM.int8


@dataclass
class Estimate:
    method: str
    offload: str                       # none | model
    vae_tiling: bool
    weights: dict[str, int]            # per component
    phases: dict[str, int]             # peak bytes per phase
    peak_bytes: int
    job: str = "render"

    def fits(self, memory_bytes: int) -> bool:
        return self.peak_bytes + RESERVE_BYTES <= memory_bytes


def render_tokens(spec: ModelDescription, job: RenderJob) -> int:
    return spec.tokens(job.num_frames, job.height, job.width)


def train_tokens(spec: ModelDescription, job: TrainJob) -> int:
    """Tokens of one train step: every clip of the batch."""
    return spec.tokens(job.clip_frames, job.resolution, job.resolution) * job.batch_size


def weight_bytes(spec: ModelDescription, method: str, *, int8_backend: str = "torchao") -> dict[str, int]:
    """Each component's weights when `method` is requested (each gets its own method by the rules)."""
    return {name: shape.weight_bytes(spec.quantization.method_for(name, method), int8_backend=int8_backend)
            for name, shape in spec.components.items()}


def method_transient_bytes(spec: ModelDescription, method: str, rows: int, *, int8_backend: str) -> int:
    """Temporaries a method adds inside one denoiser Linear: a dequantised weight, or LLM.int8's int32 output."""
    largest = spec.components[spec.denoiser].largest_target
    if largest is None or method == "bf16":
        return 0
    dequantised = largest.in_features * largest.out_features * 2
    if method == "int8" and int8_backend == "bitsandbytes":
        return rows * largest.out_features * (4 + 2) + rows * largest.in_features  # int32 out, fp16 out, int8 in
    if method in ("fp8-static", "fp8-dynamic"):
        return dequantised + rows * largest.in_features  # fp8 copy of the input
    return dequantised


def estimate_render(spec: ModelDescription, job: RenderJob, method: str, *, offload: str = "none",
                    vae_tiling: bool = True, int8_backend: str = "bitsandbytes") -> Estimate:
    """Peak memory of one render on a GPU (int8 there runs on bitsandbytes)."""
    weights = weight_bytes(spec, method, int8_backend=int8_backend)
    tokens = render_tokens(spec, job)
    activations = spec.render_activation_bytes(job, tokens=tokens, vae_tiling=vae_tiling)
    transient = method_transient_bytes(spec, method, tokens * job.batch, int8_backend=int8_backend)
    resident_all = sum(weights.values())
    phases = {}
    for phase, needs in spec.render_phases.items():
        resident = resident_all if offload == "none" else sum(weights[name] for name in needs)
        phases[phase] = resident + activations[phase] + (transient if spec.denoiser in needs else 0)
    return Estimate(method=method, offload=offload, vae_tiling=vae_tiling, weights=weights, phases=phases,
                    peak_bytes=max(phases.values()))


def lora_bytes(spec: ModelDescription, job: TrainJob) -> int:
    """LoRA adapters on the description's `lora_targets`: fp32 weights, grads and optimizer state."""
    pattern = re.compile(spec.lora_targets)
    params = sum(job.lora_rank * (t.in_features + t.out_features)
                 for t in spec.components[spec.denoiser].targets if pattern.search(t.name))
    return params * (4 + 4 + job.optimizer_bytes_per_param)


def estimate_train(spec: ModelDescription, job: TrainJob, method: str = "bf16") -> Estimate:
    """LoRA training of the denoiser (frozen base at `method`, adapters in fp32 with AdamW); one
    phase's components at a time on the GPU."""
    weights = weight_bytes(spec, method, int8_backend=TRAIN_INT8_BACKEND)
    adapters = lora_bytes(spec, job)
    tokens = train_tokens(spec, job)
    activations = spec.train_activation_bytes(job, tokens=tokens)
    transient = method_transient_bytes(spec, method, tokens, int8_backend=TRAIN_INT8_BACKEND)
    phases = {}
    for phase, needs in spec.train_phases.items():
        phases[phase] = (sum(weights[name] for name in needs) + activations[phase]
                         + (adapters + transient if spec.denoiser in needs else 0))
    return Estimate(method=method, offload="model", vae_tiling=True, weights=weights | {"lora": adapters},
                    phases=phases, peak_bytes=max(phases.values()), job="train")


@dataclass
class PlanRow:
    method: str
    no_offload: Estimate
    offload: Estimate
    note: str | None = None

    def best_fit(self, memory_bytes: int) -> Estimate | None:
        if self.note:
            return None
        for estimate in (self.no_offload, self.offload):
            if estimate.fits(memory_bytes):
                return estimate
        return None


@dataclass
class Plan:
    gpu: GpuSpec
    rows: list[PlanRow]
    recommended: PlanRow | None
    recommended_estimate: Estimate | None
    reason: str
    job: str = "render"
    tokens: int = 0


def plan_render(spec: ModelDescription, job: RenderJob, gpu: GpuSpec, methods: Sequence[str] = METHODS, *,
                vae_tiling: bool = True) -> Plan:
    """Every method's estimate on `gpu`, and the best-quality one that fits (no offload first)."""
    rows = [PlanRow(m, estimate_render(spec, job, m, offload="none", vae_tiling=vae_tiling),
                    estimate_render(spec, job, m, offload="model", vae_tiling=vae_tiling),
                    method_note(m, gpu)) for m in methods]
    return _recommend(rows, gpu, kind="render", tokens=render_tokens(spec, job))


def plan_train(spec: ModelDescription, job: TrainJob, gpu: GpuSpec, methods: Sequence[str] = METHODS) -> Plan:
    rows = []
    for m in methods:
        estimate = estimate_train(spec, job, m)
        rows.append(PlanRow(m, estimate, estimate, method_note(m, gpu)))
    return _recommend(rows, gpu, kind="train", tokens=train_tokens(spec, job))


def _recommend(rows: list[PlanRow], gpu: GpuSpec, *, kind: str, tokens: int) -> Plan:
    for method in QUALITY_ORDER:
        row = next((r for r in rows if r.method == method), None)
        if row is None:
            continue
        fit = row.best_fit(gpu.memory_bytes)
        if fit is not None:
            how = "without offload" if fit.offload == "none" else "with model CPU offload"
            return Plan(gpu=gpu, rows=rows, recommended=row, recommended_estimate=fit, job=kind, tokens=tokens,
                        reason=f"{method} {how}: best quality that fits {gpu.name} "
                        f"({fit.peak_bytes / GiB:.1f} GiB estimated + {RESERVE_BYTES / GiB:.0f} GiB reserve "
                        f"of {gpu.gib:.1f} GiB)")
    smallest = min((r.offload.peak_bytes for r in rows if not r.note), default=0)
    return Plan(gpu=gpu, rows=rows, recommended=None, recommended_estimate=None, job=kind, tokens=tokens,
                reason=f"no method fits {gpu.name} ({gpu.gib:.1f} GiB); the smallest estimate "
                f"is {smallest / GiB:.1f} GiB + {RESERVE_BYTES / GiB:.0f} GiB reserve")


@dataclass(frozen=True)
class AutoChoice:
    method: str
    offload: bool
    reason: str
    estimated_peak_bytes: int | None = None


def choose_for_device(spec: ModelDescription, job: RenderJob, *, free_bytes: int,
                      capability: tuple[int, int] | None, device_name: str = "cuda",
                      vae_tiling: bool = True) -> AutoChoice:
    """`quantization: auto` on a GPU: the best-quality method that fits the free memory now.
    If none does, the smallest one with offload (the estimate may be pessimistic)."""
    gpu = GpuSpec(device_name, free_bytes, capability)
    plan = plan_render(spec, job, gpu, vae_tiling=vae_tiling)
    free = f"{free_bytes / GiB:.1f} GiB free on {device_name}"
    if plan.recommended_estimate is not None:
        e = plan.recommended_estimate
        how = "" if e.offload == "none" else " with model CPU offload"
        return AutoChoice(e.method, e.offload == "model",
                          f"auto: {e.method}{how} is the best quality estimated to fit "
                          f"({e.peak_bytes / GiB:.1f} GiB peak + {RESERVE_BYTES / GiB:.0f} GiB reserve; {free})",
                          e.peak_bytes)
    candidates = [r for r in plan.rows if not r.note]
    smallest = min(candidates, key=lambda r: r.offload.peak_bytes)
    return AutoChoice(smallest.method, True,
                      f"auto: no method is estimated to fit ({free}); trying the smallest, {smallest.method} with "
                      f"model CPU offload ({smallest.offload.peak_bytes / GiB:.1f} GiB estimated)",
                      smallest.offload.peak_bytes)


def choose_offload(spec: ModelDescription, job: RenderJob, method: str, *, free_bytes: int,
                   vae_tiling: bool = True) -> AutoChoice:
    """A method named in the brief, on a GPU: resident when it is estimated to fit, else with model CPU offload."""
    resident = estimate_render(spec, job, method, offload="none", vae_tiling=vae_tiling)
    if resident.fits(free_bytes):
        return AutoChoice(method, False, f"{method}: named in the brief; fits without offload "
                          f"({resident.peak_bytes / GiB:.1f} GiB estimated)", resident.peak_bytes)
    offloaded = estimate_render(spec, job, method, offload="model", vae_tiling=vae_tiling)
    return AutoChoice(method, True, f"{method}: named in the brief; model CPU offload "
                      f"({offloaded.peak_bytes / GiB:.1f} GiB estimated, {free_bytes / GiB:.1f} GiB free)",
                      offloaded.peak_bytes)
