"""InfiniteTalk's transformer as a diffusers model: Wan2.1-I2V-14B plus audio conditioning.

InfiniteTalk (MeiGen-AI/InfiniteTalk, `wan/modules/multitalk_model.py` and `wan/modules/attention.py`) is
Wan2.1-I2V-14B-480P with two additions, both trained while the Wan weights stayed frozen:

* `audio_proj` (the official `AudioProjModel`): per latent frame, a window of chinese-wav2vec2-base
  features (all 12 hidden layers × 768) → ReLU(proj1 | proj1_vf) → 512 → ReLU(proj2) → proj3 →
  32 context tokens × 768 → LayerNorm. The first latent frame holds one video frame and is read through
  `proj1` (its ±2 window: 5 × 12 × 768 inputs); every later latent frame holds `vae_time_stride` = 4 video
  frames whose windows are merged into one wider window of `audio_window + vae_time_stride − 1` = 8
  entries (the first frame's window up to its centre, the centre of each middle frame, the last frame's
  window from its centre on) and read through `proj1_vf` (8 × 12 × 768 inputs).
* in every block, after the text/image cross-attention and before the feed-forward, a residual audio
  cross-attention `audio_cross_attn(norm_x(x))` (the official `SingleStreamMutiAttention`, single-person
  path): `q_linear` over the visual tokens, `kv_linear` over the audio tokens (keys then values), `proj`
  out; no q/k norm. It is frame-local: the tokens of latent frame t attend only to frame t's 32 tokens.

`InfiniteTalkTransformer` subclasses diffusers' `WanTransformer3DModel` without touching diffusers' code:
its base modules (and so its Wan parameter names) are diffusers' own; each block becomes an
`InfiniteTalkTransformerBlock` (a `WanTransformerBlock` subclass: same modules, plus `audio_cross_attn`
and `norm_x`) whose forward runs the audio attention between the cross-attention and the feed-forward.
The audio module names are the official ones, so the published audio keys load unrenamed
(`functions/models/infinitetalk_keys.py` maps the whole checkpoint).

Not covered: the official two-person mode (`human_num == 2`: a 1-D RoPE over speaker-assigned tokens,
driven by the self-attention map); it has no parameters of its own, so its weights load, but `forward`
conditions on one speaker.

Context parallelism (diffusers' `enable_parallelism` with a `ContextParallelConfig`; see
`functions/infinitetalk_parallel.py`): `_cp_plan` splits what Wan's plan splits (the RoPE tables and the
tokens entering `blocks.0`, along the sequence) plus the output of `token_positions` (each token's global index),
and gathers `proj_out`. The self-attention then runs diffusers' ring / Ulysses attention; the text/image
cross-attention and the feed-forward are token-wise on the local shard. The audio attention is frame-local, and a
shard need not start or end on a frame boundary (81 frames = 21 latent frames; 2 or 4 ranks cut frames apart), so
each block learns its shard's global offset from `token_positions` and `InfiniteTalkAudioAttention` pads the
shard out to whole frames (at most one partial frame at each end), attends each frame to its own audio tokens
(replicated on every rank: they are small) and drops the padding. Without CP the offset is 0 and nothing is padded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock
from diffusers.utils import apply_lora_scale
from torch import nn

# The official AudioProjModel's output LayerNorm is a plain nn.LayerNorm (its default eps).
AUDIO_OUTPUT_NORM_EPS = 1e-5


def latent_frames_for(video_frames: int, vae_time_stride: int = 4) -> int:
    """Latent frames of a `video_frames`-long clip (Wan's VAE: 1 + (F − 1) / 4)."""
    if video_frames < 1 or (video_frames - 1) % vae_time_stride:
        raise ValueError(f"{video_frames} video frames is not 1 + {vae_time_stride}·k")
    return 1 + (video_frames - 1) // vae_time_stride


def video_frames_for(latent_frames: int, vae_time_stride: int = 4) -> int:
    """Video frames covered by `latent_frames` latent frames: (F_latent − 1)·4 + 1."""
    return (latent_frames - 1) * vae_time_stride + 1


def group_audio_windows(audio_embeds: torch.Tensor, vae_time_stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-video-frame windows [B, F_video, W, L, C] into the official two inputs of `audio_proj`.

    Returns (first [B, 1, W, L, C], later [B, F_latent − 1, W + stride − 1, L, C]). Latent frame j ≥ 1
    covers video frames 1 + stride·(j − 1) … stride·j; its window is the first of those frames' window up to
    and including the centre, the centre entry of each middle frame, then the last frame's window from the
    centre on (what `WanModel.forward` in the official multitalk_model.py builds).
    """
    if audio_embeds.ndim != 5:
        raise ValueError(f"audio windows must be [B, F_video, window, layers, dim], got {list(audio_embeds.shape)}")
    batch, frames, window, layers, dim = audio_embeds.shape
    latent_frames_for(frames, vae_time_stride)  # validates the frame count
    if window % 2 == 0:
        raise ValueError(f"the audio window must be centred (odd length), got {window}")
    mid = window // 2
    first = audio_embeds[:, :1]
    groups = audio_embeds[:, 1:].reshape(batch, -1, vae_time_stride, window, layers, dim)
    opening = groups[:, :, 0, : mid + 1]  # [B, n, mid + 1, L, C]
    middle = groups[:, :, 1:-1, mid]  # [B, n, stride − 2, L, C]
    closing = groups[:, :, -1, mid:]  # [B, n, window − mid, L, C]
    later = torch.cat([opening, middle, closing], dim=2)
    return first, later


class InfiniteTalkAudioProjection(nn.Module):
    """The official `AudioProjModel`: wav2vec2 windows → `tokens` context tokens of `token_dim` per latent frame."""

    def __init__(self, *, window: int, window_vf: int, layers: int, dim: int, inner_dim: int, tokens: int,
                 token_dim: int, norm_output: bool = True) -> None:
        super().__init__()
        self.tokens = tokens
        self.token_dim = token_dim
        self.proj1 = nn.Linear(window * layers * dim, inner_dim)
        self.proj1_vf = nn.Linear(window_vf * layers * dim, inner_dim)
        self.proj2 = nn.Linear(inner_dim, inner_dim)
        self.proj3 = nn.Linear(inner_dim, tokens * token_dim)
        self.norm = FP32LayerNorm(token_dim, eps=AUDIO_OUTPUT_NORM_EPS) if norm_output else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first [B, 1, W, L, C], later [B, n, W_vf, L, C] → [B, 1 + n, tokens, token_dim].

        Each window is flattened window-entry-major, then layer, then channel (the official `view`)."""
        hidden = [torch.relu(self.proj1(first.flatten(2)))]
        if later.shape[1]:
            hidden.append(torch.relu(self.proj1_vf(later.flatten(2))))
        frames = torch.relu(self.proj2(torch.cat(hidden, dim=1)))
        tokens = self.proj3(frames).unflatten(-1, (self.tokens, self.token_dim))
        return self.norm(tokens)


class InfiniteTalkAudioAttention(nn.Module):
    """The official `SingleStreamAttention` (single speaker): frame-local cross-attention to audio tokens."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim, bias=True)
        self.kv_linear = nn.Linear(context_dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, audio_context: torch.Tensor, *, token_offset: int = 0,
                tokens_per_frame: int | None = None) -> torch.Tensor:
        """hidden_states [B, S, dim] (frame-major tokens), audio_context [B, F, M, context_dim] → [B, S, dim].

        The token at global index i belongs to latent frame i // tokens_per_frame and attends only to
        audio_context[:, that frame]. By default hidden_states holds every token (offset 0, tokens_per_frame
        S / F). Under context parallelism it is one rank's contiguous shard: global tokens
        token_offset … token_offset + S − 1, possibly starting and ending inside a frame; the shard is padded
        out to whole frames (zero queries, dropped afterwards), so each frame is attended exactly as unsharded."""
        batch, seq, dim = hidden_states.shape
        frames, count = audio_context.shape[1], audio_context.shape[2]
        if tokens_per_frame is None:
            if audio_context.shape[0] != batch or seq % frames or token_offset:
                raise ValueError(f"{seq} tokens in a batch of {batch} do not split over audio of shape "
                                 f"{list(audio_context.shape)}")
            tokens_per_frame = seq // frames
        if audio_context.shape[0] != batch or tokens_per_frame < 1 or token_offset < 0 \
                or token_offset + seq > frames * tokens_per_frame:
            raise ValueError(f"tokens {token_offset}…{token_offset + seq - 1} ({tokens_per_frame} a frame) in a "
                             f"batch of {batch} do not fit audio of shape {list(audio_context.shape)}")
        first = token_offset // tokens_per_frame  # the shard's first (global) latent frame
        lead = token_offset - first * tokens_per_frame  # its tokens before the shard starts
        span = -(-(lead + seq) // tokens_per_frame)  # frames the shard touches
        trail = span * tokens_per_frame - lead - seq
        query = self.q_linear(hidden_states)
        if lead or trail:
            query = F.pad(query, (0, 0, lead, trail))
        query = query.reshape(batch * span, tokens_per_frame, self.heads, -1)
        context = audio_context[:, first:first + span]
        kv = self.kv_linear(context.reshape(batch * span, count, -1))
        key, value = kv.reshape(batch * span, count, 2, self.heads, -1).unbind(2)
        out = dispatch_attention_fn(query, key, value)  # [B·span, tokens_per_frame, heads, head_dim], local
        out = out.reshape(batch, span * tokens_per_frame, dim)
        if lead or trail:
            out = out[:, lead:lead + seq]
        return self.proj(out.type_as(hidden_states))


class InfiniteTalkTokenPositions(nn.Module):
    """Each latent token's global index, [1, S] (int64): no parameters. The model calls it on the whole token
    sequence; under context parallelism `_cp_plan` splits its output along with the tokens, so a rank reads
    which global tokens (and hence which latent frames) its shard holds."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)


class InfiniteTalkTransformerBlock(WanTransformerBlock):
    """A diffusers Wan block with the audio cross-attention between its cross-attention and feed-forward.

    Blocks are built by `WanTransformer3DModel.__init__` and given this class plus the audio modules by
    `InfiniteTalkTransformer` (`attach_audio`), so the Wan parameters keep diffusers' names."""

    audio_cross_attn: InfiniteTalkAudioAttention
    norm_x: nn.Module

    def attach_audio(self, *, dim: int, context_dim: int, heads: int, eps: float, norm_input: bool) -> None:
        self.audio_cross_attn = InfiniteTalkAudioAttention(dim, context_dim, heads)
        self.norm_x = FP32LayerNorm(dim, eps, elementwise_affine=True) if norm_input else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rotary_emb: tuple[torch.Tensor, torch.Tensor], audio_context: torch.Tensor | None = None,
                token_offset: int = 0, tokens_per_frame: int | None = None) -> torch.Tensor:
        """As `WanTransformerBlock.forward`; with `audio_context` [B, F_latent, M, C] the audio residual is
        added after the cross-attention. Without it this is diffusers' block exactly. `token_offset` and
        `tokens_per_frame` place a context-parallel shard of the tokens (see `InfiniteTalkAudioAttention`)."""
        if audio_context is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        if temb.ndim != 3:
            raise ValueError("InfiniteTalk (Wan2.1) takes one timestep per sample: temb must be [B, 6, dim]")
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()).chunk(6, dim=1)

        # self-attention (modulated, gated residual)
        normed = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attended = self.attn1(normed, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attended * gate_msa).type_as(hidden_states)

        # text + image cross-attention (diffusers' norm2 is the official norm3)
        normed = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(normed, encoder_hidden_states, None, None)

        # audio cross-attention, frame-local
        hidden_states = hidden_states + self.audio_cross_attn(
            self.norm_x(hidden_states), audio_context, token_offset=token_offset, tokens_per_frame=tokens_per_frame)

        # feed-forward (modulated, gated residual)
        normed = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(hidden_states)
        fed = self.ffn(normed)
        return (hidden_states.float() + fed.float() * c_gate_msa).type_as(hidden_states)


class InfiniteTalkTransformer(WanTransformer3DModel):
    """Wan2.1-I2V transformer + InfiniteTalk's audio projection and per-block audio cross-attention.

    Extra config (official names in brackets, multitalk_model.py):
      audio_layers (AudioProjModel.blocks) = 12 wav2vec2 hidden layers, audio_dim (channels) = 768,
      audio_window (audio_window / seq_len) = 5, audio_window_vf (seq_len_vf = audio_window + vae_scale − 1) = 8,
      audio_inner_dim (intermediate_dim) = 512, audio_tokens (context_tokens) = 32,
      audio_token_dim (output_dim) = 768, vae_time_stride (vae_scale) = 4,
      audio_norm_input (norm_input_visual) = True, audio_norm_output (norm_output_audio) = True.
    """

    _no_split_modules = ["InfiniteTalkTransformerBlock"]
    _repeated_blocks = ["InfiniteTalkTransformerBlock"]
    # Wan's plan (diffusers' `WanTransformer3DModel._cp_plan`) less its per-token `timestep` split (Wan2.2 only:
    # InfiniteTalk takes one timestep per sample), plus `token_positions`, split like the tokens so each block knows
    # its shard's global offset. The text/image context and the audio tokens stay whole on every rank.
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "token_positions": {
            0: ContextParallelInput(split_dim=1, expected_dims=2, split_output=True),
        },
        "blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        audio_layers: int = 12,
        audio_dim: int = 768,
        audio_window: int = 5,
        audio_window_vf: int = 8,
        audio_inner_dim: int = 512,
        audio_tokens: int = 32,
        audio_token_dim: int = 768,
        vae_time_stride: int = 4,
        audio_norm_input: bool = True,
        audio_norm_output: bool = True,
    ) -> None:
        if audio_window % 2 == 0:
            raise ValueError(f"audio_window must be odd (a centred window), got {audio_window}")
        if vae_time_stride < 2:
            raise ValueError(f"vae_time_stride must be at least 2, got {vae_time_stride}")
        if audio_window_vf != audio_window + vae_time_stride - 1:
            raise ValueError(f"audio_window_vf must be audio_window + vae_time_stride − 1 = "
                             f"{audio_window + vae_time_stride - 1} (the merged later-frame window), got {audio_window_vf}")
        if tuple(patch_size)[0] != 1:
            raise ValueError("InfiniteTalk's audio grouping assumes a temporal patch of 1")
        super().__init__(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
            ffn_dim=ffn_dim, num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        inner_dim = num_attention_heads * attention_head_dim
        self.audio_proj = InfiniteTalkAudioProjection(
            window=audio_window, window_vf=audio_window_vf, layers=audio_layers, dim=audio_dim,
            inner_dim=audio_inner_dim, tokens=audio_tokens, token_dim=audio_token_dim, norm_output=audio_norm_output,
        )
        self.token_positions = InfiniteTalkTokenPositions()
        for block in self.blocks:
            # The blocks diffusers built gain the audio modules; their own modules (and names) stay as built.
            block.__class__ = InfiniteTalkTransformerBlock
            block.attach_audio(dim=inner_dim, context_dim=audio_token_dim, heads=num_attention_heads, eps=eps,
                               norm_input=audio_norm_input)

    def audio_context(self, audio_embeds: torch.Tensor | None, *, batch: int, latent_frames: int,
                      device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Per-video-frame windows [B, F_video, W, L, C] (or None) → audio tokens [B, F_latent, tokens, token_dim].

        None is the audio-unconditional input of audio CFG: like the official pipeline (multitalk.py builds
        `torch.zeros_like(audio_embs)` for its null-audio passes) it is all-zero windows sent through
        `audio_proj`, not a skipped attention."""
        cfg = self.config
        expected = (video_frames_for(latent_frames, cfg.vae_time_stride), cfg.audio_window, cfg.audio_layers,
                    cfg.audio_dim)
        param = self.audio_proj.proj1.weight
        if audio_embeds is None:
            audio_embeds = torch.zeros((batch, *expected), device=device, dtype=param.dtype)
        if audio_embeds.ndim == 5 and audio_embeds.shape[0] == 1 and batch > 1:
            audio_embeds = audio_embeds.expand(batch, *audio_embeds.shape[1:])  # one clip's audio, e.g. text CFG
        if tuple(audio_embeds.shape) != (batch, *expected):
            raise ValueError(f"audio_embeds must be [B={batch}, F_video={expected[0]}, window={expected[1]}, "
                             f"layers={expected[2]}, dim={expected[3]}] for {latent_frames} latent frames, "
                             f"got {list(audio_embeds.shape)}")
        audio_embeds = audio_embeds.to(device=device, dtype=param.dtype)
        first, later = group_audio_windows(audio_embeds, cfg.vae_time_stride)
        return self.audio_proj(first, later).to(dtype)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput | tuple[torch.Tensor]:
        """Noise prediction for latents [B, C_in, F_latent, H, W] → [B, C_out, F_latent, H, W].

        timestep [B]; encoder_hidden_states [B, 512, text_dim] (umT5 tokens: diffusers' Wan attention takes
        the last 512 context tokens as text); encoder_hidden_states_image [B, 257, image_dim] (CLIP);
        audio_embeds [B, (F_latent − 1)·4 + 1, audio_window, audio_layers, audio_dim]: one ±2 window of
        wav2vec2 features per video frame (None: the zero-audio CFG input, see `audio_context`; a batch of 1
        is shared by every sample).
        `attention_kwargs` carries a PEFT LoRA `scale`, as for diffusers' Wan.
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_f, post_h, post_w = frames // p_t, height // p_h, width // p_w
        if timestep.ndim != 1:
            raise ValueError("InfiniteTalk (Wan2.1) takes one timestep per sample: timestep must be [B]")

        rotary_emb = self.rope(hidden_states)
        tokens = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        temb, timestep_proj, context, context_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if context_image is not None:
            context = torch.cat([context_image, context], dim=1)
        audio = self.audio_context(audio_embeds, batch=batch, latent_frames=post_f, device=tokens.device,
                                   dtype=tokens.dtype)
        # Global indices of the tokens the blocks will see: all of them, or this rank's shard under CP.
        positions = self.token_positions(tokens)
        offset = 0  # unsplit: read no values (one sync fewer, and the meta device has none)
        if positions.shape[1] != tokens.shape[1]:
            offset, last = (int(i) for i in positions[0, [0, -1]].tolist())
            if last - offset + 1 != positions.shape[1]:
                raise ValueError(f"a context-parallel shard must be contiguous, got tokens {offset}…{last} "
                                 f"for {positions.shape[1]}")
        per_frame = post_h * post_w

        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        for block in self.blocks:
            if checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, context, timestep_proj, rotary_emb, audio,
                                                           offset, per_frame)
            else:
                tokens = block(tokens, context, timestep_proj, rotary_emb, audio, offset, per_frame)

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(tokens.device), scale.to(tokens.device)
        tokens = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        tokens = self.proj_out(tokens)
        tokens = tokens.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1)
        output = tokens.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def audio_parameter_names(model: InfiniteTalkTransformer) -> list[str]:
    """The parameters InfiniteTalk adds to Wan (the ones `single/infinitetalk.safetensors` holds)."""
    return [name for name, _ in model.named_parameters()
            if name.startswith("audio_proj.") or ".audio_cross_attn." in name or ".norm_x." in name]


# Wan2.1-I2V-14B-480P (diffusers' Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer config; official
# config.json: dim 5120, ffn_dim 13824, num_heads 40, num_layers 40, in_dim 36, out_dim 16, freq_dim 256,
# text_len 512, eps 1e-6) with InfiniteTalk's audio defaults (multitalk_model.py WanModel/AudioProjModel).
INFINITETALK_14B_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024,
    pos_embed_seq_len=None,
    audio_layers=12, audio_dim=768, audio_window=5, audio_window_vf=8, audio_inner_dim=512, audio_tokens=32,
    audio_token_dim=768, vae_time_stride=4, audio_norm_input=True, audio_norm_output=True,
)


def tiny_infinitetalk_config() -> dict[str, Any]:
    """A tiny random-weights config of the same classes for CPU tests (2 layers, 2 heads × 8, small audio).

    Windows and the VAE stride are the real ones so the first/later-frame grouping is exercised as is;
    audio_dim and audio_token_dim differ so a mix-up between them cannot go unnoticed."""
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=12, out_channels=4,
        text_dim=12, freq_dim=8, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, image_dim=10, added_kv_proj_dim=16, rope_max_seq_len=64, pos_embed_seq_len=None,
        audio_layers=3, audio_dim=6, audio_window=5, audio_window_vf=8, audio_inner_dim=12, audio_tokens=4,
        audio_token_dim=10, vae_time_stride=4, audio_norm_input=True, audio_norm_output=True,
    )


def official_wan_config_to_diffusers(wan_config: dict[str, Any]) -> dict[str, Any]:
    """An InfiniteTalk config from the official Wan `config.json` (`_class_name: WanModel`, model_type i2v)
    that ships with Wan2.1-I2V-14B-480P, with InfiniteTalk's audio defaults."""
    if wan_config.get("model_type", "i2v") != "i2v":
        raise ValueError(f"InfiniteTalk is built on a Wan i2v model, not {wan_config.get('model_type')!r}")
    if wan_config.get("text_len", 512) != 512:
        raise ValueError("diffusers' Wan attention assumes 512 text tokens")
    dim, heads = wan_config["dim"], wan_config["num_heads"]
    config = dict(INFINITETALK_14B_CONFIG)
    config.update(
        num_attention_heads=heads, attention_head_dim=dim // heads, in_channels=wan_config.get("in_dim", 36),
        out_channels=wan_config.get("out_dim", 16), text_dim=wan_config.get("text_dim", 4096),
        freq_dim=wan_config.get("freq_dim", 256), ffn_dim=wan_config["ffn_dim"],
        num_layers=wan_config["num_layers"], eps=wan_config.get("eps", 1e-6), added_kv_proj_dim=dim,
    )
    if "patch_size" in wan_config:
        config["patch_size"] = tuple(wan_config["patch_size"])
    return config


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a model of `config`, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = InfiniteTalkTransformer(**config)
    return sum(math.prod(p.shape) for p in model.parameters())
