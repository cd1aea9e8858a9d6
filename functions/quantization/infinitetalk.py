"""InfiniteTalk (Wan2.1-I2V-14B + audio) as the VRAM planner sees it: shapes counted from the architecture.

No weights and no model classes: every count is a formula over the published configs below.
tests/test_planner_infinitetalk.py checks each count against the class built on the meta device:
the renderer's `functions.models.infinitetalk.InfiniteTalkTransformer`, diffusers'
`WanTransformer3DModel` and `AutoencoderKLWan`, and transformers' `UMT5EncoderModel`,
`CLIPVisionModel` and `Wav2Vec2Model`.

Where each figure comes from:
- transformer: InfiniteTalk's `WanModel` (github MeiGen-AI/InfiniteTalk, wan/modules/multitalk_model.py and
  wan/modules/attention.py) with Wan2.1-I2V-14B's config (wan/configs/wan_multitalk_14B.py and the
  checkpoint's config.json: dim 5120, ffn 13824, 40 layers × 40 heads, in_dim 36 = 16 noise + 4 mask + 16
  image latents, out_dim 16, patch 1×2×2, text_dim 4096, text_len 512, freq_dim 256, img_emb from CLIP's 1280),
  with `WanModel`'s audio defaults (audio_window 5, intermediate_dim 512, output_dim 768, context_tokens 32,
  vae_scale 4, norm_input_visual and norm_output_audio on). The Wan backbone has 16,394,878,784 parameters:
  "14B" is the T2V model's size, and I2V adds k_img/v_img to every block. The audio modules add
  2,487,168,000, for 18.88 B in all, 35.2 GiB in bf16. Layer names are the renderer's: diffusers' Wan names,
  and the official names for the audio modules.
- text encoder: UMT5-XXL's encoder (wan/configs/shared_config.py `umt5_xxl`; google/umt5-xxl: vocabulary
  256,384, d_model 4096, 24 layers × 64 heads, gated-GELU FF 10240, a relative position bias per layer):
  5,680,910,336 parameters, 10.6 GiB in bf16 (Wan's models_t5_umt5-xxl-enc-bf16.pth is this encoder).
- image encoder: the ViT-H/14 vision tower of open-clip xlm-roberta-large-vit-huge-14 (wan/modules/clip.py:
  1280 wide, 32 layers × 16 heads, 224 px → 257 tokens). The renderer loads it as `CLIPVisionModel` (no
  projection): 630,766,080 parameters, bf16. InfiniteTalk's own script loads the whole XLM-RoBERTa CLIP and
  uses only the vision tower; the text tower adds about 0.56 B parameters, 1 GiB in fp16.
- audio encoder: TencentGameMate/chinese-wav2vec2-base, a wav2vec2-base (7 conv layers × 512, 12 layers ×
  768, FF 3072): 94,371,712 parameters. It is fp32 on the GPU, as the renderer's `SpeechEncoder` loads it;
  the reference script runs it on the CPU.
- VAE: Wan2.1's (wan/modules/vae.py; diffusers' `AutoencoderKLWan` defaults): base 96, multipliers 1,2,4,4,
  2 residual blocks, z 16, stride 4×8×8: 126,892,531 parameters, fp32 (the renderer keeps it in fp32).

Activations follow the renderer's code by default: functions/infinitetalk_pipeline.py and
functions/models/infinitetalk.py, on diffusers' Wan attention through SDPA/flash, so there is no
token × token matrix. The constants below say what each one counts. A render is one chunk of 81 frames
(4n+1). A longer video is more chunks of the same size, each with the same peak. Classifier-free guidance
is 3 transformer passes a step: cond, no text, and neither text nor audio (text guidance 5, audio
guidance 4). The renderer, like the reference, runs them one after another; `cfg_batched` plans them as
one batch. `official_attention` plans InfiniteTalk's own code instead, for comparison with its published
figures. That code computes RoPE in float64, and in every block a reference-attention map: every token
against the first latent frame's tokens, half the heads at a time (wan/utils/multitalk_utils.py
`get_attn_map_with_target`). Those two dominate its peak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from functions.quantization.description import ModelDescription
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import AS_REQUESTED, WEIGHT_ONLY_METHOD
from functions.quantization.gpus import GiB, GpuSpec
from functions.quantization.planner import QUALITY_ORDER, RESERVE_BYTES, AutoChoice, choose_for_device, plan_render
from functions.quantization.rules import QuantizationRules
from functions.quantization.shapes import ComponentShape, LinearShape
from functions.quantization.targets import GENERIC_SKIP_PATTERNS
from schemas.errors import VideostudioError

MODEL_ID = "MeiGen-AI/InfiniteTalk (Wan2.1-I2V-14B)"
FPS = 25                    # InfiniteTalk's frame rate (audio embeddings are resampled to 25 per second)
CHUNK_FRAMES = 81           # generate_infinitetalk.py --frame_num: one chunk
AUDIO_SAMPLE_RATE = 16_000  # wav2vec2's input
# (width, height): InfiniteTalk's size buckets nearest to 16:9 (wan/utils/multitalk_utils.py: ASPECT_RATIO_627
# for infinitetalk-480 has 448×896 at ratio 0.50, ASPECT_RATIO_960 for infinitetalk-720 has 704×1280 at 0.55).
# A 9:16 portrait gets 448×832 at 480p (1,456 tokens a latent frame, against 1,568); Wan's own 480×832 has 1,560.
RESOLUTIONS: dict[str, tuple[int, int]] = {"480p": (896, 448), "720p": (1280, 704)}
# The renderer's real VAE is tiled (functions/models/infinitetalk_loading.py calls `vae.enable_tiling()`): a decode
# needs 1.8 GiB at 480p and 3.8 at 720p instead of 8 and 18 untiled. Plans and `auto` follow the renderer.
RENDERER_VAE_TILING = True

# -- quantization rules -------------------------------------------------------------------------------------
# Kept in bf16: the patch embedding (a conv), the conditioning embedders (text, timestep and its shared
# adaLN projection, CLIP image, audio projection) and the output projection; under diffusers' names (the
# renderer's: `condition_embedder`, `proj_out`) and the official ones (an official `WanModel`: `head`, ...).
SKIP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)patch_embedding(\.|$)",
    r"(^|\.)(text_embedding|time_embedding|time_projection|img_emb|audio_proj)(\.|$)",
    r"(^|\.)head(\.|$)",
    r"(^|\.)condition_embedder(\.|$)",
    r"(^|\.)proj_out$",
)
INFINITETALK_QUANTIZATION = QuantizationRules(
    skip_patterns=SKIP_PATTERNS,
    # UMT5, a T5, has activation outliers: weight-only methods, as for Mochi's T5. CLIP, wav2vec2, VAE: bf16/fp32.
    component_methods={"transformer": AS_REQUESTED, "text_encoder": WEIGHT_ONLY_METHOD},
    denoiser="transformer",
)
T5_KEEP = ("wo",)  # transformers' UMT5 `_keep_in_fp32_modules`: never a target (see targets.quantization_targets)

# -- activation constants (bytes per element of a tokens × dim tensor, unless noted) --------------------------
# Two attention codes. The renderer's (functions/models/infinitetalk.py on diffusers' Wan attention) peaks at
# 22 bytes, in the feed-forward's gated residual: five bf16 tensors (the block's input, which the caller
# keeps; the stream; the FFN input; the self-attention output, still bound; the FFN output) and three fp32
# (the stream and the FFN output upcast, the gated product): 10 + 12. RoPE on k and the q/k RMS norms come to
# 18–22. Counted op by op on the meta device (tests/test_planner_infinitetalk.py): 22.2 at 480p, with the
# RoPE tables and the context; the process's peak RSS on a CPU gave the same slope.
RENDERER_BLOCK_BYTES = 22
# The official code (wan/modules/multitalk_model.py, `official_attention`): RoPE in float64 and the
# reference-attention map. RoPE of k: residual, input (bf16, 2 + 2), q rotated (fp32: 4), k and v (2 + 2), and
# rope_apply's float64 work on k (the cast and the rotated/concatenated copies: 8 + 8).
OFFICIAL_ROPE_PHASE_BYTES = 28
# The reference-attention map, after the output projection: residual, input, q and k in fp32 (kept for it), v,
# the attention output, and get_attn_map_with_target's bf16 q and scaled q: 20 bytes; plus per token the scores
# of half the heads against the first frame's tokens, twice (the matmul output and its softmax, bf16;
# calculate_x_ref_attn_map is torch.compile'd, so the masked sums fuse).
OFFICIAL_REF_PHASE_BYTES = 20
REF_MAP_SPLITS = 2           # get_attn_map_with_target(split_num=2): heads / 2 at a time
REF_MAP_COPIES = 2
# The FFN's matmuls: the stream, its input, the first Linear's output and its GELU (bf16): 2·dim + 2·ffn
# elements, under the gated residual at Wan's widths.
FFN_PHASE_ELEMS = (2, 2)     # (× dim, × ffn_dim), bf16
CONTEXT_COPIES = 3           # text_embedding out, img_emb out, and their concatenation (bf16)
# Wan VAE (fp32 here): decoding runs one latent frame at a time with a cache of each causal conv's last 2
# input frames (CACHE_T); encoding runs 4 frames at a time the same way.
VAE_BYTES = 4
VAE_CACHE_FRAMES = 2
# Working copies of the widest chunk activation (96 channels × 4 frames at full resolution) inside a residual
# block's conv: the block input kept for the residual, the normalised activation, the cached frames
# concatenated in front (1.5), its padded copy (1.5), the conv output, and the new cache (0.5).
VAE_WORK_COPIES = 6.5
VAE_TILE = 256               # diffusers' AutoencoderKLWan tile_sample_min_height/width (pixels)
VAE_TILE_STRIDE = 192        # tile_sample_stride_height/width
# Decoded video (fp32 until the renderer converts it): untiled, the growing torch.cat and the clamp (2 copies,
# on top of one frame's work); tiled, every tile (their overlap), then the cropped rows, the joined video and the
# clamp (coverage + 3 copies, after the last tile's work is freed).
DECODE_OUTPUT_COPIES = 2
TILED_DECODE_OUTPUT_EXTRA = 3
ENCODE_INPUT_COPIES = 1      # the conditioning clip (the reference frame, then zeros)
AUDIO_ENCODER_BYTES = 4      # wav2vec2 in fp32
W2V_FEATURE_COPIES = 2       # the first conv layer's maps: one op's input and output (conv → group norm → GELU)


@dataclass(frozen=True)
class InfiniteTalkConfig:
    """The architecture numbers (defaults: InfiniteTalk on Wan2.1-I2V-14B; sources in the module docstring)."""

    # transformer
    dim: int = 5120
    ffn_dim: int = 13824
    num_layers: int = 40
    num_heads: int = 40
    in_channels: int = 36
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    image_dim: int = 1280
    image_tokens: int = 257             # (224 / 14)² patches + the class token; cross_attn reads context[:, :257]
    # audio adapter (per frame: a window of 5 wav2vec2 frames × 12 hidden layers × 768)
    audio_dim: int = 768
    audio_layers: int = 12
    audio_window: int = 5
    audio_intermediate: int = 512
    audio_tokens: int = 32
    vae_scale: int = 4                  # latter frames' window: audio_window + vae_scale − 1 = 8
    # text encoder: UMT5-XXL encoder
    t5_vocab: int = 256384
    t5_dim: int = 4096
    t5_ff: int = 10240
    t5_heads: int = 64
    t5_head_dim: int = 64
    t5_layers: int = 24
    t5_buckets: int = 32
    t5_prompts: int = 1                 # the renderer encodes the prompt and the negative prompt one at a time
    # image encoder: CLIP ViT-H/14 vision tower
    clip_dim: int = 1280
    clip_ff: int = 5120
    clip_layers: int = 32
    clip_heads: int = 16
    clip_patch: int = 14
    clip_image: int = 224
    # audio encoder: wav2vec2-base
    w2v_dim: int = 768
    w2v_ff: int = 3072
    w2v_layers: int = 12
    w2v_heads: int = 12
    w2v_conv: tuple[int, ...] = (512,) * 7
    w2v_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    w2v_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    w2v_pos_kernel: int = 128
    w2v_pos_groups: int = 16
    # VAE
    vae_dim: int = 96
    vae_z: int = 16
    vae_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_res_blocks: int = 2
    vae_temporal_downsample: tuple[bool, ...] = (False, True, True)
    vae_stride: tuple[int, int, int] = (4, 8, 8)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def audio_window_input(self, window: int) -> int:
        """AudioProjModel's input per frame: a window of wav2vec2 frames × hidden layers × channels."""
        return window * self.audio_layers * self.audio_dim


WAN21_I2V_14B = InfiniteTalkConfig()


@dataclass(frozen=True)
class InfiniteTalkJob(RenderJob):
    """One InfiniteTalk chunk. `guidance_scale` is the text guidance; `batch` is the rows one Linear sees."""

    width: int = RESOLUTIONS["480p"][0]
    height: int = RESOLUTIONS["480p"][1]
    num_frames: int = CHUNK_FRAMES
    guidance_scale: float = 5.0          # generate_infinitetalk.py --sample_text_guide_scale
    audio_guidance_scale: float = 4.0    # --sample_audio_guide_scale
    cfg_batched: bool = False            # the renderer, like the reference, runs the passes one after another
    official_attention: bool = False     # the official code's float64 RoPE and reference-attention map
    audio_seconds: float | None = None   # speech wav2vec2 encodes at once (renderer: the whole take); None: chunk's

    @property
    def passes(self) -> int:
        """Transformer passes a step, as the renderer runs them (infinitetalk_pipeline.guided_velocity): cond, no
        text, neither; a guidance of 1 drops one (the official drops none for audio guidance 1)."""
        return 1 + (not math.isclose(self.guidance_scale, 1.0)) + (not math.isclose(self.audio_guidance_scale, 1.0))

    @property
    def batch(self) -> int:
        return self.videos * (self.passes if self.cfg_batched else 1)


def snap_chunk_frames(requested: int) -> int:
    """The nearest 4n+1 frame count (Wan's VAE: 4 frames a latent frame after the first)."""
    return 4 * max(0, round((requested - 1) / 4)) + 1


def resolution_size(name: str) -> tuple[int, int]:
    """(width, height) of `480p` or `720p`."""
    key = name.strip().lower()
    if key not in RESOLUTIONS:
        raise VideostudioError("invalid_resolution", f"unknown resolution {name!r}; use {', '.join(RESOLUTIONS)}")
    return RESOLUTIONS[key]


# -- counting: Linear layers and other parameters, by formula -----------------------------------------------
def _linear(name: str, i: int, o: int, bias: bool = True) -> LinearShape:
    return LinearShape(name, i, o, bias)


@dataclass(frozen=True)
class Counted:
    """A component's Linear layers (by qualified name) and its other floating-point parameters."""

    linears: tuple[LinearShape, ...]
    other: int
    audio: int = 0                       # of which InfiniteTalk's audio modules (linears + other)

    @property
    def params(self) -> int:
        return sum(t.elems for t in self.linears) + self.other


def count_transformer(c: InfiniteTalkConfig = WAN21_I2V_14B) -> Counted:
    """InfiniteTalk's transformer: the Wan2.1 I2V backbone and, per block, the audio cross-attention. Names are
    those of the renderer's `functions.models.infinitetalk.InfiniteTalkTransformer` (diffusers' Wan modules,
    the official audio modules), so a user's skip pattern means the same to the planner and the quantizer."""
    d, pt, ph, pw = c.dim, *c.patch_size
    e = "condition_embedder."
    linears = [_linear(f"{e}time_embedder.linear_1", c.freq_dim, d), _linear(f"{e}time_embedder.linear_2", d, d),
               _linear(f"{e}time_proj", d, 6 * d),
               _linear(f"{e}text_embedder.linear_1", c.text_dim, d), _linear(f"{e}text_embedder.linear_2", d, d),
               _linear(f"{e}image_embedder.ff.net.0.proj", c.image_dim, c.image_dim),
               _linear(f"{e}image_embedder.ff.net.2", c.image_dim, d),
               _linear("proj_out", d, c.out_channels * pt * ph * pw)]
    other = (d * c.in_channels * pt * ph * pw + d     # patch_embedding (Conv3d)
             + 2 * d                                   # the output's scale_shift_table (official head.modulation)
             + 2 * c.image_dim + 2 * d)                # the image embedder's two LayerNorms
    audio_linears = []
    for i in range(c.num_layers):
        p = f"blocks.{i}."
        linears += [_linear(f"{p}attn1.{n}", d, d) for n in ("to_q", "to_k", "to_v", "to_out.0")]
        linears += [_linear(f"{p}attn2.{n}", d, d)
                    for n in ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")]
        linears += [_linear(f"{p}ffn.net.0.proj", d, c.ffn_dim), _linear(f"{p}ffn.net.2", c.ffn_dim, d)]
        audio_linears += [_linear(f"{p}audio_cross_attn.q_linear", d, d),
                          _linear(f"{p}audio_cross_attn.kv_linear", c.audio_dim, 2 * d),
                          _linear(f"{p}audio_cross_attn.proj", d, d)]
        # attn1 norm_q, norm_k (RMS over all heads); the cross-attention's affine LayerNorm (diffusers' norm2,
        # the official norm3); attn2 norm_q, norm_k, norm_added_k; the block's scale_shift_table (6 × dim)
        other += 2 * d + 2 * d + 3 * d + 6 * d
    audio_linears += [_linear("audio_proj.proj1", c.audio_window_input(c.audio_window), c.audio_intermediate),
                      _linear("audio_proj.proj1_vf", c.audio_window_input(c.audio_window + c.vae_scale - 1),
                              c.audio_intermediate),
                      _linear("audio_proj.proj2", c.audio_intermediate, c.audio_intermediate),
                      _linear("audio_proj.proj3", c.audio_intermediate, c.audio_tokens * c.audio_dim)]
    audio_other = c.num_layers * 2 * d + 2 * c.audio_dim   # each block's norm_x; audio_proj.norm (LayerNorms)
    audio = sum(t.elems for t in audio_linears) + audio_other
    return Counted(tuple(linears + audio_linears), other + audio_other, audio)


def count_text_encoder(c: InfiniteTalkConfig = WAN21_I2V_14B) -> Counted:
    """UMT5-XXL's encoder under transformers' names (`UMT5EncoderModel`)."""
    inner = c.t5_heads * c.t5_head_dim
    linears = []
    for i in range(c.t5_layers):
        p = f"encoder.block.{i}.layer."
        linears += [_linear(f"{p}0.SelfAttention.{n}", c.t5_dim, inner, False) for n in ("q", "k", "v")]
        linears += [_linear(f"{p}0.SelfAttention.o", inner, c.t5_dim, False),
                    _linear(f"{p}1.DenseReluDense.wi_0", c.t5_dim, c.t5_ff, False),
                    _linear(f"{p}1.DenseReluDense.wi_1", c.t5_dim, c.t5_ff, False),
                    _linear(f"{p}1.DenseReluDense.wo", c.t5_ff, c.t5_dim, False)]
    # shared embedding; per layer a relative position bias (UMT5 has one in every layer) and two RMS norms; final norm
    other = c.t5_vocab * c.t5_dim + c.t5_layers * (c.t5_buckets * c.t5_heads + 2 * c.t5_dim) + c.t5_dim
    return Counted(tuple(linears), other)


def count_image_encoder(c: InfiniteTalkConfig = WAN21_I2V_14B) -> Counted:
    """CLIP ViT-H/14's vision tower (`CLIPVisionModel`, as the renderer loads it: no projection; the Wan pipelines
    read the penultimate hidden states)."""
    h = c.clip_dim
    linears = []
    for i in range(c.clip_layers):
        p = f"vision_model.encoder.layers.{i}."
        linears += [_linear(f"{p}self_attn.{n}_proj", h, h) for n in ("q", "k", "v", "out")]
        linears += [_linear(f"{p}mlp.fc1", h, c.clip_ff), _linear(f"{p}mlp.fc2", c.clip_ff, h)]
    other = (h + 3 * c.clip_patch ** 2 * h + ((c.clip_image // c.clip_patch) ** 2 + 1) * h  # class, patch, position
             + 2 * h + c.clip_layers * 4 * h + 2 * h)                                     # pre, per layer 2, post LNs
    return Counted(tuple(linears), other)


def count_audio_encoder(c: InfiniteTalkConfig = WAN21_I2V_14B) -> Counted:
    """wav2vec2-base (`Wav2Vec2Model`: group-norm feature extractor, no conv bias)."""
    h = c.w2v_dim
    convs = sum(cin * cout * k for cin, cout, k in zip((1, *c.w2v_conv[:-1]), c.w2v_conv, c.w2v_kernels))
    linears = [_linear("feature_projection.projection", c.w2v_conv[-1], h)]
    for i in range(c.w2v_layers):
        p = f"encoder.layers.{i}."
        linears += [_linear(f"{p}attention.{n}_proj", h, h) for n in ("q", "k", "v", "out")]
        linears += [_linear(f"{p}feed_forward.intermediate_dense", h, c.w2v_ff),
                    _linear(f"{p}feed_forward.output_dense", c.w2v_ff, h)]
    pos_conv = h * (h // c.w2v_pos_groups) * c.w2v_pos_kernel + c.w2v_pos_kernel + h  # weight-norm v, g; bias
    other = (convs + 2 * c.w2v_conv[0]           # conv layers; the first one's GroupNorm
             + 2 * c.w2v_conv[-1] + h            # feature projection LayerNorm; masked_spec_embed
             + pos_conv + 2 * h                  # positional conv embedding; encoder LayerNorm
             + c.w2v_layers * 4 * h)             # per layer two LayerNorms
    return Counted(tuple(linears), other)


def _conv(cin: int, cout: int, kernel: int) -> int:
    return cin * cout * kernel + cout


def _vae_res_block(cin: int, cout: int) -> int:
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return cin + _conv(cin, cout, 27) + cout + _conv(cout, cout, 27) + shortcut  # RMS gammas, two 3³ convs


def _vae_mid_block(ch: int) -> int:
    return 2 * _vae_res_block(ch, ch) + ch + _conv(ch, 3 * ch, 1) + _conv(ch, ch, 1)  # + attention: norm, qkv, proj


def _vae_dims(c: InfiniteTalkConfig) -> tuple[list[int], list[int]]:
    encoder = [c.vae_dim * m for m in (1, *c.vae_mult)]                   # 96, 96, 192, 384, 384
    decoder = [c.vae_dim * m for m in (c.vae_mult[-1], *c.vae_mult[::-1])]  # 384, 384, 384, 192, 96
    return encoder, decoder


def count_vae(c: InfiniteTalkConfig = WAN21_I2V_14B) -> Counted:
    """Wan2.1's VAE (`AutoencoderKLWan`): causal 3D convs, RMS norms, one attention block in each middle."""
    enc, dec = _vae_dims(c)
    stages = len(c.vae_mult)
    total = _conv(3, enc[0], 27)
    for i in range(stages):
        cin = enc[i]
        for _ in range(c.vae_res_blocks):
            total += _vae_res_block(cin, enc[i + 1])
            cin = enc[i + 1]
        if i != stages - 1:  # a stride-2 3×3 conv; a temporal one (3×1×1, stride 2) where it also halves time
            total += _conv(cin, cin, 9) + (_conv(cin, cin, 3) if c.vae_temporal_downsample[i] else 0)
    total += _vae_mid_block(enc[-1]) + enc[-1] + _conv(enc[-1], 2 * c.vae_z, 27)
    total += _conv(2 * c.vae_z, 2 * c.vae_z, 1) + _conv(c.vae_z, c.vae_z, 1)  # quant_conv, post_quant_conv
    temporal_up = c.vae_temporal_downsample[::-1]
    total += _conv(c.vae_z, dec[0], 27) + _vae_mid_block(dec[0])
    for i in range(stages):
        cin = dec[i] if i == 0 else dec[i] // 2  # Wan 2.1: each upsample halves the channels
        for _ in range(c.vae_res_blocks + 1):
            total += _vae_res_block(cin, dec[i + 1])
            cin = dec[i + 1]
        if i != stages - 1:  # upsample, a 3×3 conv to half the channels; a temporal conv to 2× where time doubles
            total += _conv(cin, cin // 2, 9) + (_conv(cin, 2 * cin, 3) if temporal_up[i] else 0)
    total += dec[-1] + _conv(dec[-1], 3, 27)
    return Counted((), total)


def _targets(counted: Counted, rules: QuantizationRules, skip: Iterable[str], keep: Iterable[str] = ()
             ) -> tuple[LinearShape, ...]:
    """The Linear layers a method replaces, by name: `targets.quantization_targets`' rule without a module."""
    patterns = [re.compile(p) for p in (*GENERIC_SKIP_PATTERNS, *rules.skip_patterns, *skip,
                                        *(rf"(^|\.){re.escape(name)}$" for name in keep))]
    return tuple(t for t in counted.linears if not any(p.search(t.name) for p in patterns))


# -- the description ------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class InfiniteTalkSpec(ModelDescription):
    config: InfiniteTalkConfig = WAN21_I2V_14B
    audio_params: int = 0                 # the transformer's audio modules (of `transformer.params`)

    quantization: ClassVar[QuantizationRules] = INFINITETALK_QUANTIZATION
    render_phases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "audio_encode": ("audio_encoder",), "text_encode": ("text_encoder",), "image_encode": ("image_encoder",),
        "vae_encode": ("vae",), "denoise": ("transformer",), "vae_decode": ("vae",)}
    train_phases: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    lora_targets: ClassVar[str] = r"\.(attn1|audio_cross_attn)\."  # not planned yet (see train_activation_bytes)
    labels: ClassVar[Mapping[str, str]] = {"transformer": "transf.", "text_encoder": "UMT5", "image_encoder": "CLIP",
                                           "audio_encoder": "wav2vec2", "vae": "VAE"}

    @property
    def transformer(self) -> ComponentShape:
        return self.components["transformer"]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        st, sh, sw = self.config.vae_stride
        return (frames - 1) // st + 1, height // sh, width // sw

    def tokens(self, frames: int, height: int, width: int) -> int:
        t, h, w = self.latent_shape(frames, height, width)
        pt, ph, pw = self.config.patch_size
        return (t // pt) * (h // ph) * (w // pw)

    def frame_tokens(self, height: int, width: int) -> int:
        """Tokens of one latent frame: the reference-attention map's keys."""
        return self.tokens(1, height, width)

    def render_activation_bytes(self, job: RenderJob, *, tokens: int, vae_tiling: bool) -> dict[str, int]:
        job = as_infinitetalk_job(job)
        return {"audio_encode": audio_encoder_activation_bytes(self, job),
                "text_encode": text_encoder_activation_bytes(self),
                "image_encode": image_encoder_activation_bytes(self),
                "vae_encode": vae_encode_bytes(self, job, tiling=vae_tiling),
                "denoise": transformer_activation_bytes(self, job, tokens),
                "vae_decode": vae_decode_bytes(self, job, tiling=vae_tiling)}

    def train_activation_bytes(self, job: TrainJob, *, tokens: int) -> dict[str, int]:
        raise VideostudioError("unsupported_job", "the planner sizes InfiniteTalk renders only; "
                               "plan training with --backend mochi-lora")


def as_infinitetalk_job(job: RenderJob) -> InfiniteTalkJob:
    """A plain `RenderJob` read as an InfiniteTalk chunk with the reference's guidance and sequential passes."""
    if isinstance(job, InfiniteTalkJob):
        return job
    return InfiniteTalkJob(width=job.width, height=job.height, num_frames=job.num_frames,
                           guidance_scale=job.guidance_scale, videos=job.videos)


def transformer_activation_bytes(spec: InfiniteTalkSpec, job: InfiniteTalkJob, tokens: int) -> int:
    """One transformer pass's peak, for `job.batch` clips at once: inside one block (blocks run one after another;
    self-attention through SDPA/flash, so no token × token matrix), the RoPE tables, the pass's conditioning
    (text + image context, audio windows) and the step's latents and guidance outputs."""
    c = spec.config
    d = c.dim
    ffn = (FFN_PHASE_ELEMS[0] * d + FFN_PHASE_ELEMS[1] * c.ffn_dim) * 2
    if job.official_attention:
        ref = OFFICIAL_REF_PHASE_BYTES * d + REF_MAP_COPIES * (c.num_heads // REF_MAP_SPLITS) * 2 * \
            spec.frame_tokens(job.height, job.width)
        per_token = max(OFFICIAL_ROPE_PHASE_BYTES * d, ref, ffn)
    else:
        per_token = max(RENDERER_BLOCK_BYTES * d, ffn)
    rope = tokens * c.head_dim * 2 * 4  # cos and sin (fp32), one row of head_dim per token, shared by the batch
    context = job.batch * (c.text_len + c.image_tokens) * d * 2 * CONTEXT_COPIES
    audio = job.batch * job.num_frames * (c.audio_window * c.audio_layers * c.audio_dim
                                          + c.audio_tokens * c.audio_dim) * 2
    t, h, w = spec.latent_shape(job.num_frames, job.height, job.width)
    latent = c.out_channels * t * h * w
    # noise and latent (fp32), the conditioning (mask + image latents, fp32) and the input (bf16), one fp32
    # prediction per pass
    latents = latent * (4 + 4 + job.passes * 4) + (c.in_channels - c.out_channels) * t * h * w * 4 \
        + c.in_channels * t * h * w * 2
    return tokens * job.batch * per_token + rope + context + audio + latents


def text_encoder_activation_bytes(spec: InfiniteTalkSpec) -> int:
    """UMT5 on a prompt (text_len tokens; SDPA, with the relative position bias as an fp32 mask)."""
    c = spec.config
    b, seq = c.t5_prompts, c.text_len
    return b * seq * (4 * c.t5_dim + 3 * c.t5_ff) * 2 + b * c.t5_heads * seq * seq * 4


def image_encoder_activation_bytes(spec: InfiniteTalkSpec) -> int:
    """CLIP on the reference frame (one 224² image, 257 tokens; every hidden state kept, the renderer reads the
    penultimate)."""
    c = spec.config
    seq = c.image_tokens
    hidden = (c.clip_layers + 1) * seq * c.clip_dim * 2
    work = seq * (4 * c.clip_dim + 2 * c.clip_ff) * 2 + c.clip_heads * seq * seq * 4
    return work + hidden + 3 * c.clip_image ** 2 * 4


def audio_encoder_activation_bytes(spec: InfiniteTalkSpec, job: InfiniteTalkJob) -> int:
    """wav2vec2 (fp32, on the GPU) on `job.audio_seconds` of 16 kHz speech: the first conv layer's feature maps
    (the widest), or the transformer layers, whose input the renderer stretches to 25 rows a second (SDPA: no
    row × row matrix), with every hidden state kept (InfiniteTalk stacks them all)."""
    c = spec.config
    seconds = job.audio_seconds if job.audio_seconds is not None else job.num_frames / FPS
    samples = int(seconds * AUDIO_SAMPLE_RATE)
    features = c.w2v_conv[0] * (samples // c.w2v_strides[0]) * W2V_FEATURE_COPIES * AUDIO_ENCODER_BYTES
    rows = math.ceil(seconds * FPS)
    layer = rows * (4 * c.w2v_dim + 2 * c.w2v_ff) * AUDIO_ENCODER_BYTES
    hidden = (c.w2v_layers + 1) * rows * c.w2v_dim * AUDIO_ENCODER_BYTES
    return samples * AUDIO_ENCODER_BYTES + max(features, layer + hidden)


def vae_decoder_cache_per_pixel(c: InfiniteTalkConfig) -> float:
    """Elements the decoder's causal-conv caches hold per output pixel (each conv keeps its input's last 2 frames)."""
    _, dec = _vae_dims(c)
    stages, temporal_up = len(c.vae_mult), c.vae_temporal_downsample[::-1]
    area = 1                                     # pixels per latent pixel at this stage
    cached = c.vae_z + 4 * dec[0]                # conv_in; the middle block's two residual blocks
    for i in range(stages):
        cin = dec[i] if i == 0 else dec[i] // 2
        convs = [cin] + [dec[i + 1]] * (2 * (c.vae_res_blocks + 1) - 1)
        cached += area * sum(convs)
        if i != stages - 1:
            cached += area * dec[i + 1] if temporal_up[i] else 0   # the temporal upsample's conv
            area *= 4
    cached += area * dec[-1]                     # conv_out
    return cached * VAE_CACHE_FRAMES / area


def vae_encoder_cache_per_pixel(c: InfiniteTalkConfig) -> float:
    """The encoder's causal-conv caches per input pixel (temporal downsample convs keep 1 frame)."""
    enc, _ = _vae_dims(c)
    stages = len(c.vae_mult)
    area = 1.0                                   # this stage's pixels per input pixel
    cached = 3 * VAE_CACHE_FRAMES                # conv_in
    for i in range(stages):
        convs = [enc[i]] + [enc[i + 1]] * (2 * c.vae_res_blocks - 1)
        cached += area * sum(convs) * VAE_CACHE_FRAMES
        if i != stages - 1:
            cached += area * enc[i + 1] if c.vae_temporal_downsample[i] else 0
            area /= 4
    cached += area * (4 + 1) * enc[-1] * VAE_CACHE_FRAMES  # middle block's convs, conv_out
    return cached


def _vae_work_per_pixel(c: InfiniteTalkConfig) -> float:
    """The widest chunk activation's working copies: full resolution × vae_dim channels × a 4-frame chunk."""
    return VAE_WORK_COPIES * c.vae_dim * c.vae_stride[0]


def _tile_area(height: int, width: int, tiling: bool) -> int:
    if tiling and (height > VAE_TILE or width > VAE_TILE):
        return min(height, VAE_TILE) * min(width, VAE_TILE)
    return height * width


def tile_coverage(height: int, width: int) -> float:
    """Decoded tile area over the image's (tiles overlap by tile − stride pixels)."""
    def spans(n: int) -> int:
        return sum(min(VAE_TILE, n - i) for i in range(0, n, VAE_TILE_STRIDE))
    return spans(height) * spans(width) / (height * width)


def vae_decode_bytes(spec: InfiniteTalkSpec, job: InfiniteTalkJob, *, tiling: bool) -> int:
    """Decoding a chunk: the caches and working copies of one tile (or the whole frame), and the decoded video."""
    c = spec.config
    tiled = tiling and (job.height > VAE_TILE or job.width > VAE_TILE)
    per_pixel = vae_decoder_cache_per_pixel(c) + _vae_work_per_pixel(c)
    work = per_pixel * _tile_area(job.height, job.width, tiling) * VAE_BYTES
    video = 3 * job.num_frames * job.height * job.width * VAE_BYTES
    if not tiled:
        return int((work + DECODE_OUTPUT_COPIES * video) * job.videos)
    tiles = tile_coverage(job.height, job.width) * video
    return int(max(work + tiles, tiles + TILED_DECODE_OUTPUT_EXTRA * video) * job.videos)


def vae_encode_bytes(spec: InfiniteTalkSpec, job: InfiniteTalkJob, *, tiling: bool) -> int:
    """Encoding the conditioning clip (the reference frame, then zeros, `num_frames` in all)."""
    c = spec.config
    per_pixel = vae_encoder_cache_per_pixel(c) + _vae_work_per_pixel(c)
    work = per_pixel * _tile_area(job.height, job.width, tiling) * VAE_BYTES
    video = 3 * job.num_frames * job.height * job.width * VAE_BYTES
    return int((work + ENCODE_INPUT_COPIES * video) * job.videos)


def _component(counted: Counted, targets: tuple[LinearShape, ...] = (), unquantized_bytes: int = 2) -> ComponentShape:
    return ComponentShape(counted.params, targets, unquantized_bytes)


def build_spec(config: InfiniteTalkConfig = WAN21_I2V_14B, skip: Iterable[str] = ()) -> InfiniteTalkSpec:
    rules, skip = INFINITETALK_QUANTIZATION, tuple(skip)
    transformer, text = count_transformer(config), count_text_encoder(config)
    components = {
        "transformer": _component(transformer, _targets(transformer, rules, skip)),
        "text_encoder": _component(text, _targets(text, rules, skip, T5_KEEP)),
        "image_encoder": _component(count_image_encoder(config)),            # fp16: no method touches it
        "audio_encoder": _component(count_audio_encoder(config), unquantized_bytes=AUDIO_ENCODER_BYTES),
        "vae": _component(count_vae(config), unquantized_bytes=VAE_BYTES),
    }
    return InfiniteTalkSpec(model_id=MODEL_ID, components=components, config=config, audio_params=transformer.audio)


_SPECS: dict[tuple, InfiniteTalkSpec] = {}


def infinitetalk_spec(skip: Iterable[str] = (), config: InfiniteTalkConfig = WAN21_I2V_14B) -> InfiniteTalkSpec:
    """InfiniteTalk's description for the planner (cached; `skip`: the user's extra bf16 patterns)."""
    key = (config, tuple(skip))
    if key not in _SPECS:
        _SPECS[key] = build_spec(config, skip)
    return _SPECS[key]


def choose_quantization(job: InfiniteTalkJob, *, free_bytes: int, capability: tuple[int, int] | None,
                        device_name: str = "cuda", skip: Iterable[str] = (),
                        vae_tiling: bool = RENDERER_VAE_TILING, resident_only: bool = False) -> AutoChoice:
    """`quantization: auto` for an InfiniteTalk render on a GPU: the planner's best-quality method that fits
    `free_bytes` (QUALITY_ORDER; model CPU offload if needed), else the smallest with offload.
    `resident_only`: only plans without offload count (the renderer does not offload yet); if none fits, the
    smallest resident one, flagged by `offload=True` so the caller can say it may not fit."""
    if not resident_only:
        return choose_for_device(infinitetalk_spec(skip), job, free_bytes=free_bytes, capability=capability,
                                 device_name=device_name, vae_tiling=vae_tiling)
    plan = plan_render(infinitetalk_spec(skip), job, GpuSpec(device_name, free_bytes, capability), vae_tiling=vae_tiling)
    rows = {row.method: row for row in plan.rows if not row.note}
    free = f"{free_bytes / GiB:.1f} GiB free on {device_name}"
    for method in QUALITY_ORDER:
        row = rows.get(method)
        if row is not None and row.no_offload.fits(free_bytes):
            return AutoChoice(method, False, f"auto: {method} is the best quality estimated to fit without offload "
                              f"({row.no_offload.peak_bytes / GiB:.1f} GiB peak + {RESERVE_BYTES / GiB:.0f} GiB "
                              f"reserve; {free})", row.no_offload.peak_bytes)
    smallest = min(rows.values(), key=lambda r: r.no_offload.peak_bytes)
    return AutoChoice(smallest.method, True, f"auto: no method is estimated to fit without offload ({free}); trying "
                      f"the smallest, {smallest.method} ({smallest.no_offload.peak_bytes / GiB:.1f} GiB estimated)",
                      smallest.no_offload.peak_bytes)
