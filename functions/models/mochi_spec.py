"""Mochi's description for the quantizers and the VRAM planner.

Quantization rules: besides the generic skip patterns, Mochi keeps its patch embedding, its
timestep embedder and caption pooler, the final adaLN and the output projection in bf16. Its
adaLN modulation projections (`norm1.linear`, `norm1_context.linear`) are Linear layers holding
about 28 % of the transformer's weights, so they are quantized too (add `norm1` to the skip
patterns to keep them in bf16). The T5 text encoder gets the weight-only counterpart of each
method: T5's activations have large outliers. The VAE is never quantized.

Planner description (`MochiSpec`): the transformer, T5 and the VAE built on the meta device from
their configs, and Mochi's activation formulas (per-token constants below, every one an estimate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from functions.models.mochi_configs import TEMPORAL_COMPRESSION, ModelConfigs
from functions.quantization.description import ModelDescription, meta_components
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import AS_REQUESTED, WEIGHT_ONLY_METHOD
from functions.quantization.rules import QuantizationRules
from functions.quantization.shapes import ComponentShape

SKIP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)patch_embed(\.|$)",   # patch embedding (a conv, listed for clarity)
    r"(^|\.)time_embed(\.|$)",    # timestep embedder and caption pooler
    r"(^|\.)norm_out(\.|$)",      # the final adaLN before the output projection
    r"(^|\.)proj_out$",           # output projection (tiny, precision-critical)
)
TEXT_ENCODER_METHOD = WEIGHT_ONLY_METHOD
MOCHI_QUANTIZATION = QuantizationRules(
    skip_patterns=SKIP_PATTERNS,
    component_methods={"transformer": AS_REQUESTED, "text_encoder": TEXT_ENCODER_METHOD},
    denoiser="transformer",
)
# Mochi's rules bound: what the render stage, the tests and the bench call.
quantization_targets = MOCHI_QUANTIZATION.targets
quantize_module = MOCHI_QUANTIZATION.quantize_module
quantize_pipeline = MOCHI_QUANTIZATION.quantize_pipeline

# -- activation constants (elements per token unless noted; bf16 = 2 bytes) ------------------
FF_PHASE_ELEMS = (4, 3)      # (× hidden, × ff_inner): residual, norm out, swiglu proj (2·inner) + its output
ATTN_PHASE_BYTES_PER_HIDDEN = 20  # q, k, v, out, residual, norm in bf16 (12) + rotary temporaries in fp32 (8)
VAE_DECODE_COPIES = 3        # live copies of the widest decoder activation (input, norm/act, conv output)
VAE_TILE = 256               # diffusers' Mochi tile_sample_min_height/width (pixels)
VAE_SCALE = 8                # decoded pixels per latent pixel
TRAIN_SAVED_ELEMS = (12, 4)  # per token per block kept for backward: (× hidden, × ff_inner)


@dataclass(frozen=True, kw_only=True)
class MochiSpec(ModelDescription):
    """Shapes of one Mochi pipeline, and the widths its activation formulas use."""

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

    quantization: ClassVar[QuantizationRules] = MOCHI_QUANTIZATION
    render_phases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "text_encode": ("text_encoder",), "denoise": ("transformer",), "vae_decode": ("vae",)}
    train_phases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "train_step": ("transformer",), "encode": ("text_encoder", "vae")}  # latents and embeddings first
    lora_targets: ClassVar[str] = r"\.attn1\."   # the block attention (image and text streams)
    labels: ClassVar[Mapping[str, str]] = {"transformer": "transf.", "text_encoder": "T5", "vae": "VAE"}

    @property
    def transformer(self) -> ComponentShape:
        return self.components["transformer"]

    @property
    def text_encoder(self) -> ComponentShape:
        return self.components["text_encoder"]

    @property
    def vae(self) -> ComponentShape:
        return self.components["vae"]

    def tokens(self, frames: int, height: int, width: int) -> int:
        return image_tokens(self, frames, height, width)

    def render_activation_bytes(self, job: RenderJob, *, tokens: int, vae_tiling: bool) -> dict[str, int]:
        return {"text_encode": text_encoder_activation_bytes(self, job.batch),
                "denoise": transformer_activation_bytes(self, tokens, job.batch),
                "vae_decode": vae_decode_bytes(self, job, tiling=vae_tiling)}

    def train_activation_bytes(self, job: TrainJob, *, tokens: int) -> dict[str, int]:
        return {"train_step": train_saved_bytes(self, tokens, gradient_checkpointing=job.gradient_checkpointing),
                "encode": text_encoder_activation_bytes(self, 1)}


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    return (frames - 1) // TEMPORAL_COMPRESSION + 1, height // VAE_SCALE, width // VAE_SCALE


def image_tokens(spec: MochiSpec, frames: int, height: int, width: int) -> int:
    t, h, w = latent_shape(frames, height, width)
    return t * (h // spec.patch_size) * (w // spec.patch_size)


def transformer_activation_bytes(spec: MochiSpec, tokens: int, batch: int) -> int:
    """Inference peak inside one block (blocks run one after another; nothing is kept)."""
    ff_phase = (FF_PHASE_ELEMS[0] * spec.hidden + FF_PHASE_ELEMS[1] * spec.ff_inner) * 2
    attn_phase = ATTN_PHASE_BYTES_PER_HIDDEN * spec.hidden
    rows = tokens * batch
    rope = tokens * spec.heads * spec.head_dim * 4  # cos and sin, fp32, heads × dim/2 each
    text = batch * spec.max_sequence_length * (FF_PHASE_ELEMS[0] * spec.hidden + spec.ff_inner) * 2
    return rows * max(ff_phase, attn_phase) + rope + text


def train_saved_bytes(spec: MochiSpec, tokens: int, *, gradient_checkpointing: bool) -> int:
    """What a train step keeps for backward: every block's activations, or with checkpointing each
    block's input plus one block's activations."""
    per_block = (TRAIN_SAVED_ELEMS[0] * spec.hidden + TRAIN_SAVED_ELEMS[1] * spec.ff_inner) * 2 * tokens
    if gradient_checkpointing:
        return spec.num_layers * spec.hidden * 2 * tokens + per_block
    return spec.num_layers * per_block


def vae_decode_bytes(spec: MochiSpec, job: RenderJob, *, tiling: bool) -> int:
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
            sh, sw = min(sh, VAE_TILE * scale // VAE_SCALE), min(sw, VAE_TILE * scale // VAE_SCALE)
        peak = max(peak, c * frames * sh * sw)
    output = 3 * job.num_frames * job.height * job.width * (2 + 4)  # decoded video (bf16) + postprocess (fp32)
    return peak * VAE_DECODE_COPIES * 2 * job.videos + output


def text_encoder_activation_bytes(spec: MochiSpec, batch: int) -> int:
    seq = spec.max_sequence_length
    return batch * seq * (4 * spec.text_hidden + 3 * spec.text_ff) * 2 + batch * 64 * seq * seq * 4


# -- the description from configs (meta device, cached) --------------------------------------------
def _meta_modules(configs: ModelConfigs) -> dict[str, nn.Module]:
    from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    return {"transformer": MochiTransformer3DModel.from_config(configs.transformer),
            "text_encoder": T5EncoderModel(T5Config(**configs.text_encoder)),
            "vae": AutoencoderKLMochi.from_config(configs.vae)}


def _build_spec(configs: ModelConfigs, skip: tuple[str, ...]) -> MochiSpec:
    modules, shapes = meta_components(lambda: _meta_modules(configs), MOCHI_QUANTIZATION, skip)
    transformer = modules["transformer"]
    tc, vc, t5 = transformer.config, modules["vae"].config, modules["text_encoder"].config
    ff = transformer.transformer_blocks[0].ff.net[0].proj.out_features  # swiglu: 2 × inner
    return MochiSpec(
        model_id=configs.model_id, components=shapes,
        hidden=tc.num_attention_heads * tc.attention_head_dim, ff_inner=ff // 2, heads=tc.num_attention_heads,
        head_dim=tc.attention_head_dim, patch_size=tc.patch_size, num_layers=tc.num_layers,
        max_sequence_length=configs.max_sequence_length, text_hidden=t5.d_model, text_ff=t5.d_ff,
        vae_channels=tuple(vc.decoder_block_out_channels), vae_temporal=tuple(vc.temporal_expansions),
        vae_spatial=tuple(vc.spatial_expansions),
    )


_SPECS: dict[tuple, MochiSpec] = {}


def model_spec(configs: ModelConfigs, skip: Iterable[str] = ()) -> MochiSpec:
    """Shapes of a Mochi pipeline from its configs, built on the meta device (no weights)."""
    key = (configs.key(), tuple(skip))
    if key not in _SPECS:
        _SPECS[key] = _build_spec(configs, tuple(skip))
    return _SPECS[key]
