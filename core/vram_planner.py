"""VRAM planner: peak GPU memory of a render or train job, from the model config alone.

Nothing is loaded. The transformer, the T5 text encoder and the VAE are built on the `meta`
device (shapes only, no storage) to count parameters and to find the Linear layers a
quantization method replaces (`core.quantization.quantization_targets`, the same rule the
methods use). Weight bytes per method follow from each layer's shape and the method's
storage format (`linear_bytes`). Activations follow from the job's resolution, frames and
batch with the per-token constants below. Every constant is an estimate; the bench
(`bench/quantization.py`) checks the weight figures against measured bytes.

Peak of a render = the largest of its three phases (text encoding, denoising, VAE decode):
- `offload="none"`: all weights resident + the phase's activations;
- `offload="model"` (diffusers `enable_model_cpu_offload`): only that phase's model resident.
A job fits a GPU when peak + `RESERVE_BYTES` (CUDA context, allocator slack) ≤ its memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from core.quantization import (
    FP8_DYNAMIC_MIN_CAPABILITY,
    METHODS,
    NF4_BLOCKSIZE,
    TEXT_ENCODER_METHOD,
    quantization_targets,
)
from schemas.errors import VideostudioError

GiB = 1024**3
MiB = 1024**2
RESERVE_BYTES = int(1.0 * GiB)  # CUDA context + caching-allocator fragmentation
# Best quality first, from bench/quantization.py's relative errors (int8 per-channel weights are
# more precise than fp8's 3-bit mantissa; plain fp8 casting has no scale; nf4 has 16 levels).
QUALITY_ORDER: tuple[str, ...] = ("bf16", "int8", "fp8-per-channel", "fp8-dynamic", "fp8-static", "fp8", "nf4")

# -- activation constants (elements per token unless noted; bf16 = 2 bytes) ------------------
FF_PHASE_ELEMS = (4, 3)      # (× hidden, × ff_inner): residual, norm out, swiglu proj (2·inner) + its output
ATTN_PHASE_BYTES_PER_HIDDEN = 20  # q, k, v, out, residual, norm in bf16 (12) + rotary temporaries in fp32 (8)
VAE_DECODE_COPIES = 3        # live copies of the widest decoder activation (input, norm/act, conv output)
VAE_TILE = 256               # diffusers' Mochi tile_sample_min_height/width (pixels)
VAE_TILE_STRIDE = 192
TRAIN_SAVED_ELEMS = (12, 4)  # per token per block kept for backward: (× hidden, × ff_inner)


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    capability: tuple[int, int] | None = None  # None: unknown (a bare size)

    @property
    def gib(self) -> float:
        return self.memory_bytes / GiB


# Total memory as the driver reports it (nvidia-smi, MiB); compute capability for fp8 support.
KNOWN_GPUS: dict[str, GpuSpec] = {
    "L4": GpuSpec("L4", 23034 * MiB, (8, 9)),
    "A10G": GpuSpec("A10G", 23028 * MiB, (8, 6)),
    "A100-40GB": GpuSpec("A100-40GB", 40960 * MiB, (8, 0)),
    "A100-80GB": GpuSpec("A100-80GB", 81920 * MiB, (8, 0)),
    "H100": GpuSpec("H100", 81559 * MiB, (9, 0)),
    "H200": GpuSpec("H200", 143771 * MiB, (9, 0)),
}
_ALIASES = {"A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB", "H100-80GB": "H100",
            "H200-141GB": "H200"}


def parse_gpu(text: str) -> GpuSpec:
    """A known GPU name (L4, A10G, A100-40GB, A100-80GB, H100, H200) or a size in GiB ("24", "24GiB")."""
    key = text.strip().upper().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in KNOWN_GPUS:
        return KNOWN_GPUS[key]
    number = key.removesuffix("GIB").removesuffix("GB").removesuffix("G").strip()
    try:
        gib = float(number)
    except ValueError:
        raise VideostudioError("unknown_gpu", f"unknown GPU {text!r}; use one of {', '.join(KNOWN_GPUS)} "
                               "or a size in GiB such as 24") from None
    if not 0 < gib <= 4096:
        raise VideostudioError("unknown_gpu", f"GPU size {gib} GiB is out of range")
    return GpuSpec(f"{gib:g} GiB", int(gib * GiB), None)


# -- model shapes from configs ------------------------------------------------------------------
@dataclass
class ModelConfigs:
    """The three component configs of a Mochi pipeline (diffusers / transformers kwargs)."""

    model_id: str
    transformer: dict
    text_encoder: dict
    vae: dict
    max_sequence_length: int = 256

    def key(self) -> tuple:
        return (self.model_id, repr(sorted(self.transformer.items())), repr(sorted(self.text_encoder.items())),
                repr(sorted(self.vae.items())), self.max_sequence_length)


@dataclass(frozen=True)
class LinearShape:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def elems(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ComponentShape:
    """Parameter counts of one model and the Linear layers quantization replaces."""

    params: int                     # floating-point parameters and buffers
    targets: tuple[LinearShape, ...]

    @property
    def target_elems(self) -> int:
        return sum(t.elems for t in self.targets)

    def weight_bytes(self, method: str, *, int8_backend: str = "torchao") -> int:
        """Bytes of this model's weights with `method` (non-target tensors stay bf16)."""
        other = (self.params - self.target_elems) * 2
        return other + sum(linear_bytes(t, method, int8_backend=int8_backend) for t in self.targets)

    @property
    def largest_target(self) -> LinearShape | None:
        return max(self.targets, key=lambda t: t.in_features * t.out_features, default=None)


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    transformer: ComponentShape
    text_encoder: ComponentShape
    vae: ComponentShape
    hidden: int
    ff_inner: int
    heads: int
    head_dim: int
    patch_size: int
    num_layers: int
    max_sequence_length: int
    text_hidden: int
    text_ff: int
    vae_channels: tuple[int, ...]          # decoder_block_out_channels (shallow → deep)
    vae_temporal: tuple[int, ...]
    vae_spatial: tuple[int, ...]


def linear_bytes(shape: LinearShape, method: str, *, int8_backend: str = "torchao") -> int:
    """Storage of one Linear quantized with `method` (see core.quantization for the formats)."""
    o, i, b = shape.out_features, shape.in_features, shape.bias
    bias_bf16 = 2 * o if b else 0
    n = o * i
    if method == "bf16":
        return 2 * n + bias_bf16
    if method == "fp8":  # layerwise casting stores weight and bias in fp8
        return n + (o if b else 0)
    if method == "fp8-per-channel":
        return n + 4 * o + bias_bf16
    if method == "fp8-static":
        return n + 4 * o + 4 + bias_bf16
    if method == "fp8-dynamic":  # torchao Float8Tensor, PerRow: fp8 data + fp32 scale per row
        return n + 4 * o + bias_bf16
    if method == "int8":
        # torchao Int8Tensor: int8 data, fp32 scale and int8 zero point per row; bitsandbytes: fp32 SCB per row
        return n + (5 * o if int8_backend == "torchao" else 4 * o) + bias_bf16
    if method == "nf4":
        blocks = math.ceil(n / NF4_BLOCKSIZE)
        # packed 4-bit data, 8-bit double-quantised absmax per block, fp32 absmax per 256 blocks,
        # the 256-entry fp32 code of the second level, the 16-entry nf4 code and an fp32 offset
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4 * 16 + 4 + bias_bf16
    raise VideostudioError("unknown_quantization", f"unknown quantization {method!r}")


def _component_shape(module: torch.nn.Module, skip: Iterable[str]) -> ComponentShape:
    params = sum(t.numel() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())
    targets = tuple(LinearShape(name, lin.in_features, lin.out_features, lin.bias is not None)
                    for name, lin in quantization_targets(module, skip))
    return ComponentShape(params, targets)


def _build_spec(configs: ModelConfigs, skip: tuple[str, ...]) -> ModelSpec:
    from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = MochiTransformer3DModel.from_config(configs.transformer)
        text_encoder = T5EncoderModel(T5Config(**configs.text_encoder))
        vae = AutoencoderKLMochi.from_config(configs.vae)
    tc, vc = transformer.config, vae.config
    ff = transformer.transformer_blocks[0].ff.net[0].proj.out_features  # swiglu: 2 × inner
    t5 = text_encoder.config
    return ModelSpec(
        model_id=configs.model_id,
        transformer=_component_shape(transformer, skip), text_encoder=_component_shape(text_encoder, skip),
        vae=_component_shape(vae, ("",)),  # the VAE is never quantized
        hidden=tc.num_attention_heads * tc.attention_head_dim, ff_inner=ff // 2, heads=tc.num_attention_heads,
        head_dim=tc.attention_head_dim, patch_size=tc.patch_size, num_layers=tc.num_layers,
        max_sequence_length=configs.max_sequence_length, text_hidden=t5.d_model, text_ff=t5.d_ff,
        vae_channels=tuple(vc.decoder_block_out_channels), vae_temporal=tuple(vc.temporal_expansions),
        vae_spatial=tuple(vc.spatial_expansions),
    )


def model_spec(configs: ModelConfigs, skip: Iterable[str] = ()) -> ModelSpec:
    """Shapes of a Mochi pipeline from its configs, built on the meta device (no weights)."""
    key = (configs.key(), tuple(skip))
    if key not in _SPECS:
        _SPECS[key] = _build_spec(configs, tuple(skip))
    return _SPECS[key]


_SPECS: dict[tuple, ModelSpec] = {}


# -- jobs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderJob:
    width: int = 848
    height: int = 480
    num_frames: int = 163
    guidance_scale: float = 4.5
    videos: int = 1

    @property
    def batch(self) -> int:  # classifier-free guidance runs cond and uncond in one batch
        return self.videos * (2 if self.guidance_scale > 1.0 else 1)


@dataclass(frozen=True)
class TrainJob:
    resolution: int = 512
    clip_frames: int = 25
    batch_size: int = 4
    lora_rank: int = 16
    optimizer_bytes_per_param: int = 8   # AdamW: two fp32 moments (AdamW8bit: 2)
    gradient_checkpointing: bool = False  # functions/lora_training.py does not enable it


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    return (frames - 1) // 6 + 1, height // 8, width // 8


def image_tokens(spec: ModelSpec, frames: int, height: int, width: int) -> int:
    t, h, w = latent_shape(frames, height, width)
    return t * (h // spec.patch_size) * (w // spec.patch_size)


def transformer_activation_bytes(spec: ModelSpec, tokens: int, batch: int) -> int:
    """Inference peak inside one block (blocks run one after another; nothing is kept)."""
    ff_phase = (FF_PHASE_ELEMS[0] * spec.hidden + FF_PHASE_ELEMS[1] * spec.ff_inner) * 2
    attn_phase = ATTN_PHASE_BYTES_PER_HIDDEN * spec.hidden
    rows = tokens * batch
    rope = tokens * spec.heads * spec.head_dim * 4  # cos and sin, fp32, heads × dim/2 each
    text = batch * spec.max_sequence_length * (FF_PHASE_ELEMS[0] * spec.hidden + spec.ff_inner) * 2
    return rows * max(ff_phase, attn_phase) + rope + text


def method_transient_bytes(spec: ModelSpec, method: str, rows: int, *, int8_backend: str) -> int:
    """Temporaries a method adds inside one Linear: a dequantised weight, or LLM.int8's int32 output."""
    largest = spec.transformer.largest_target
    if largest is None or method == "bf16":
        return 0
    dequantised = largest.in_features * largest.out_features * 2
    if method == "int8" and int8_backend == "bitsandbytes":
        return rows * largest.out_features * (4 + 2) + rows * largest.in_features  # int32 out, fp16 out, int8 in
    if method in ("fp8-static", "fp8-dynamic"):
        return dequantised + rows * largest.in_features  # fp8 copy of the input
    return dequantised


def vae_decode_bytes(spec: ModelSpec, job: RenderJob, *, tiling: bool) -> int:
    """The widest decoder stage × live copies; with tiling, one spatial tile at a time."""
    t, h, w = latent_shape(job.num_frames, job.height, job.width)
    channels = spec.vae_channels[::-1]       # deep → shallow
    temporal = (1, *spec.vae_temporal[::-1])  # up block i uses expansions[-i-1]
    spatial = (1, *spec.vae_spatial[::-1])
    peak, frames, scale = 0, t, 1
    for i, c in enumerate(channels):
        frames *= temporal[i] if i < len(temporal) else 1
        scale *= spatial[i] if i < len(spatial) else 1
        sh, sw = h * scale, w * scale
        if tiling:
            full = 8  # decoder output is 8× the latent
            sh, sw = min(sh, VAE_TILE * scale // full), min(sw, VAE_TILE * scale // full)
        peak = max(peak, c * frames * sh * sw)
    output = 3 * job.num_frames * job.height * job.width * (2 + 4)  # decoded video (bf16) + postprocess (fp32)
    return peak * VAE_DECODE_COPIES * 2 * job.videos + output


def text_encoder_activation_bytes(spec: ModelSpec, batch: int) -> int:
    seq = spec.max_sequence_length
    return batch * seq * (4 * spec.text_hidden + 3 * spec.text_ff) * 2 + batch * 64 * seq * seq * 4


# -- estimates ------------------------------------------------------------------------------------
@dataclass
class Estimate:
    method: str
    offload: str                       # none | model
    vae_tiling: bool
    weights: dict[str, int]            # per component
    phases: dict[str, int]             # peak bytes per phase
    peak_bytes: int
    job: str = "render"

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    def fits(self, memory_bytes: int) -> bool:
        return self.peak_bytes + RESERVE_BYTES <= memory_bytes


def weight_bytes(spec: ModelSpec, method: str, *, int8_backend: str = "torchao") -> dict[str, int]:
    return {
        "transformer": spec.transformer.weight_bytes(method, int8_backend=int8_backend),
        "text_encoder": spec.text_encoder.weight_bytes(TEXT_ENCODER_METHOD[method], int8_backend=int8_backend),
        "vae": spec.vae.params * 2,
    }


def estimate_render(spec: ModelSpec, job: RenderJob, method: str, *, offload: str = "none", vae_tiling: bool = True,
                    int8_backend: str = "bitsandbytes") -> Estimate:
    """Peak memory of one render on a GPU (int8 there runs on bitsandbytes)."""
    weights = weight_bytes(spec, method, int8_backend=int8_backend)
    tokens = image_tokens(spec, job.num_frames, job.height, job.width)
    activations = {
        "text_encode": text_encoder_activation_bytes(spec, job.batch),
        "denoise": transformer_activation_bytes(spec, tokens, job.batch)
        + method_transient_bytes(spec, method, tokens * job.batch, int8_backend=int8_backend),
        "vae_decode": vae_decode_bytes(spec, job, tiling=vae_tiling),
    }
    owner = {"text_encode": "text_encoder", "denoise": "transformer", "vae_decode": "vae"}
    resident_all = sum(weights.values())
    phases = {phase: (resident_all if offload == "none" else weights[owner[phase]]) + act
              for phase, act in activations.items()}
    return Estimate(method, offload, vae_tiling, weights, phases, max(phases.values()))


def estimate_train(spec: ModelSpec, job: TrainJob, method: str = "bf16") -> Estimate:
    """LoRA training of the transformer (frozen base at `method`, adapters in fp32 with AdamW)."""
    weights = weight_bytes(spec, method, int8_backend="bitsandbytes")
    attention = [t for t in spec.transformer.targets if ".attn1." in t.name]
    lora_params = sum(job.lora_rank * (t.in_features + t.out_features) for t in attention)
    lora_bytes = lora_params * (4 + 4 + job.optimizer_bytes_per_param)  # weights, grads, optimizer state
    tokens = image_tokens(spec, job.clip_frames, job.resolution, job.resolution) * job.batch_size
    per_block = (TRAIN_SAVED_ELEMS[0] * spec.hidden + TRAIN_SAVED_ELEMS[1] * spec.ff_inner) * 2 * tokens
    if job.gradient_checkpointing:
        saved = spec.num_layers * spec.hidden * 2 * tokens + per_block
    else:
        saved = spec.num_layers * per_block
    phases = {"train_step": weights["transformer"] + lora_bytes + saved
              + method_transient_bytes(spec, method, tokens, int8_backend="bitsandbytes"),
              "encode": weights["text_encoder"] + weights["vae"]
              + text_encoder_activation_bytes(spec, 1)}
    return Estimate(method, "model", True, weights | {"lora": lora_bytes}, phases, max(phases.values()), job="train")


def method_note(method: str, gpu: GpuSpec | None) -> str | None:
    """Why a method cannot run on this GPU (None when it can)."""
    if method == "fp8-dynamic":
        if gpu is None or gpu.capability is None:
            return "needs compute capability ≥ 8.9 (unknown for a bare size)"
        if gpu.capability < FP8_DYNAMIC_MIN_CAPABILITY:
            return f"needs compute capability ≥ 8.9 ({gpu.name} has {gpu.capability[0]}.{gpu.capability[1]})"
    return None


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
    extra: dict = field(default_factory=dict)


def plan_render(spec: ModelSpec, job: RenderJob, gpu: GpuSpec, methods: Sequence[str] = METHODS) -> Plan:
    """Every method's estimate on `gpu`, and the best-quality one that fits (no offload first)."""
    rows = [PlanRow(m, estimate_render(spec, job, m, offload="none"), estimate_render(spec, job, m, offload="model"),
                    method_note(m, gpu)) for m in methods]
    return _recommend(rows, gpu, "render", image_tokens(spec, job.num_frames, job.height, job.width))


def plan_train(spec: ModelSpec, job: TrainJob, gpu: GpuSpec, methods: Sequence[str] = METHODS) -> Plan:
    rows = []
    for m in methods:
        estimate = estimate_train(spec, job, m)
        rows.append(PlanRow(m, estimate, estimate, method_note(m, gpu)))
    tokens = image_tokens(spec, job.clip_frames, job.resolution, job.resolution) * job.batch_size
    return _recommend(rows, gpu, "train", tokens)


def _recommend(rows: list[PlanRow], gpu: GpuSpec, kind: str, tokens: int) -> Plan:
    for method in QUALITY_ORDER:
        row = next((r for r in rows if r.method == method), None)
        if row is None:
            continue
        fit = row.best_fit(gpu.memory_bytes)
        if fit is not None:
            how = "without offload" if fit.offload == "none" else "with model CPU offload"
            return Plan(gpu, rows, row, fit, f"{method} {how}: best quality that fits {gpu.name} "
                        f"({fit.peak_bytes / GiB:.1f} GiB estimated + {RESERVE_BYTES / GiB:.0f} GiB reserve "
                        f"of {gpu.gib:.1f} GiB)", kind, tokens)
    smallest = min((r.offload.peak_bytes for r in rows if not r.note), default=0)
    return Plan(gpu, rows, None, None, f"no method fits {gpu.name} ({gpu.gib:.1f} GiB); the smallest estimate "
                f"is {smallest / GiB:.1f} GiB + {RESERVE_BYTES / GiB:.0f} GiB reserve", kind, tokens)


@dataclass(frozen=True)
class AutoChoice:
    method: str
    offload: bool
    reason: str
    estimated_peak_bytes: int | None = None


def choose_for_device(spec: ModelSpec, job: RenderJob, *, free_bytes: int, capability: tuple[int, int] | None,
                      device_name: str = "cuda") -> AutoChoice:
    """`quantization: auto` on a GPU: the best-quality method that fits the free memory now.
    If none does, the smallest one with offload (the estimate may be pessimistic)."""
    gpu = GpuSpec(device_name, free_bytes, capability)
    plan = plan_render(spec, job, gpu)
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
