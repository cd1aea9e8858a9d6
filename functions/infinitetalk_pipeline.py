"""InfiniteTalk sampling on diffusers' Wan components: speech of any length, in overlapping chunks.

What the official sampler does (MeiGen-AI/InfiniteTalk, `wan/multitalk.py`
`InfiniteTalkPipeline.generate_infinitetalk`, defaults from `generate_infinitetalk.py`), and how
this module reproduces it:

* Chunks of 81 frames (4n+1), each after the first overlapping the previous one by
  `motion_frame` = 9 frames; output at 25 fps (the audio features are cut at 25 per second).
  The plan is `functions.infinitetalk_chunks.plan_chunks` (the last chunk is shortened; see there).
* Every chunk is an I2V chunk with a *reference frame*: for a still image, that image again for
  every chunk; for a source video ("sparse-frame dubbing"), the source frame at the chunk's start
  frame. The reference feeds the CLIP image embedding and the I2V condition: the 36-channel input
  is 16 noisy latent + 4 mask (1 on the first latent frame only) + 16 latent of the VAE-encoded
  clip [reference, zeros...] (the layout of diffusers' `WanImageToVideoPipeline.prepare_latents`).
* Motion frames: the previous chunk's last 9 decoded frames (after colour correction) are VAE
  encoded (9 frames → 3 latent frames) and written, clean, over the first latent frames of the
  noisy latent before every transformer step and after every update. The first chunk does the
  same with the reference image alone (1 latent frame). The official also writes a re-noised
  copy after each update, but overwrites it on the next line with the clean one, so the net
  effect is the clean overwrite done here. The motion frames are *not* put into the condition
  channels (those carry only the reference).
* Sampling: 40 steps of first-order Euler flow matching on `linspace(1000, 1, steps)` shifted by
  `shift·t / (1 + (shift−1)·t)` (shift 7 at 480p, 11 at 720p). diffusers'
  `FlowMatchEulerDiscreteScheduler(shift=…)` given `sigmas=linspace(1, 1/1000, steps)` produces
  the same sigmas, the same timesteps for the model and the same update, so it is used here.
  UniPC is not: it is a different (multistep) trajectory from the official's, and its history
  would remember the motion frames before they are overwritten; Euler is stateless per step.
* Guidance, three passes per step: cond (prompt + audio), drop-text (negative prompt + audio),
  uncond (negative prompt + zero audio):
  `v = uncond + text·(cond − drop_text) + audio·(drop_text − uncond)`.
  With text guidance 1 the official makes two passes, cond and drop-audio (prompt + zero audio):
  `v = drop_audio + audio·(cond − drop_audio)`. Here, additionally, audio guidance 1 uses two
  passes (cond, drop-text: the formula's uncond terms cancel) and 1/1 uses one (v = cond) —
  algebraically the same prediction with fewer passes. "No audio" is an all-zero audio tensor,
  as in the official (not `audio_embeds=None`).
* Colour: the official (`color_correction_strength`, default 1.0) matches each decoded frame's
  Lab mean/std to the *first* reference image, before taking the motion tail. Here
  (`colour_anchor`) each chunk's Lab statistics, pooled over the whole chunk, are matched to
  that chunk's own reference (the same image for a still; the chunk's source frame for a video),
  with one transform per chunk so the motion inside a chunk keeps its own variation.

Memory stays flat for long speech: `iter_talking` yields each chunk's new frames as soon as it is
decoded and keeps only the motion tail; `render_talking` collects them into one uint8 array
(1.2 MB a frame at 832×480: use the iterator and stream to the encoder for minutes of video).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from functions.infinitetalk_chunks import Chunk, plan_chunks

FPS = 25
TEXT_TOKENS = 512  # diffusers' Wan attention splits image/text context assuming 512 text tokens
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT_480P = 7.0
DEFAULT_SHIFT_720P = 11.0

ImageLike = Image.Image | np.ndarray
FrameSource = Callable[[int], ImageLike]
AudioWindows = Callable[[int, int], torch.Tensor]
OnStep = Callable[[Chunk, int, int], None]


@dataclass
class InfiniteTalkComponents:
    """The models a render needs (diffusers / transformers objects, already on their devices)."""

    transformer: Any  # functions.models.infinitetalk.InfiniteTalkTransformer
    vae: Any  # diffusers.AutoencoderKLWan
    text_encoder: Any  # transformers.UMT5EncoderModel
    tokenizer: Any
    image_encoder: Any  # transformers.CLIPVisionModel
    image_processor: Any  # transformers.CLIPImageProcessor
    scheduler: Any  # diffusers.FlowMatchEulerDiscreteScheduler (its config; the shift is set per render)


TINY_VAE_CONFIG = dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                       temperal_downsample=[False, True, True])


def tiny_infinitetalk_components(seed: int = 0, **transformer_overrides: Any) -> InfiniteTalkComponents:
    """Random tiny versions of every component, built offline, for CPU tests (output is noise).
    `transformer_overrides` change the tiny transformer's config (e.g. its audio sizes, to match a speech encoder)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from functions.models.infinitetalk import InfiniteTalkTransformer, tiny_infinitetalk_config
    from functions.models.mochi import _tiny_tokenizer

    config = {**tiny_infinitetalk_config(), **transformer_overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = InfiniteTalkTransformer(**config)
        tcfg = transformer.config
        z = tcfg.out_channels  # the latent channels the transformer predicts
        vae = AutoencoderKLWan(**TINY_VAE_CONFIG, z_dim=z, latents_mean=[0.0] * z, latents_std=[1.0] * z)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=64, d_model=tcfg.text_dim, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=tcfg.image_dim, projection_dim=tcfg.image_dim, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, intermediate_size=16, patch_size=8))
    for module in (transformer, vae, text_encoder, image_encoder):
        module.eval()  # built from configs they start in training mode (dropout)
    return InfiniteTalkComponents(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=_tiny_tokenizer(),
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=DEFAULT_SHIFT_480P))


# ---------------------------------------------------------------------------------------------
# colour: sRGB <-> CIE Lab (D65), per-chunk statistics matching, drift measure

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPS = (6 / 29) ** 3


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last [..., 3] → CIE Lab (L in 0..100)."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.to(rgb).T / _WHITE_D65.to(rgb)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab [..., 3] → sRGB in [0, 1] (out-of-gamut values clipped)."""
    L, a, b = lab.unbind(-1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-1)
    xyz = torch.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE_D65.to(lab)
    linear = (xyz @ torch.linalg.inv(_RGB_TO_XYZ).to(lab).T).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0, 1)


def _lab_stats(lab_batches: Iterator[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every pixel of the batches ([..., 3] each), in float64."""
    n, s, s2 = 0, 0.0, 0.0
    for lab in lab_batches:
        flat = lab.reshape(-1, 3).double()
        n += flat.shape[0]
        s = s + flat.sum(0)
        s2 = s2 + (flat * flat).sum(0)
    mean = s / n
    return mean, (s2 / n - mean * mean).clamp_min(0).sqrt()


def match_colour(video: torch.Tensor, reference: torch.Tensor, strength: float = 1.0,
                 batch: int = 8) -> torch.Tensor:
    """`video` [3, F, H, W] in [-1, 1] with its Lab mean/std per channel (pooled over all frames)
    moved to `reference`'s ([3, H, W] in [-1, 1]); blended with the original by `strength`.
    The contrast factor std_ref/std_src is kept within [1/4, 4] (a flat chunk is not blown up)."""
    if strength <= 0:
        return video
    frames = video.shape[1]

    def lab_of(f0: int) -> torch.Tensor:
        return rgb_to_lab(((video[:, f0:f0 + batch].float().permute(1, 2, 3, 0) + 1) / 2))

    src_mean, src_std = _lab_stats(lab_of(f0) for f0 in range(0, frames, batch))
    ref_mean, ref_std = _lab_stats(iter([rgb_to_lab((reference.float().permute(1, 2, 0) + 1) / 2)]))
    scale = torch.where(src_std > 1e-3, ref_std / src_std.clamp_min(1e-3), torch.ones_like(src_std)).clamp(0.25, 4.0)
    out = torch.empty_like(video)
    for f0 in range(0, frames, batch):
        lab = lab_of(f0)
        moved = ((lab.double() - src_mean) * scale + ref_mean).to(lab.dtype)
        rgb = lab_to_rgb(moved).permute(3, 0, 1, 2) * 2 - 1
        orig = video[:, f0:f0 + batch].float()
        out[:, f0:f0 + batch] = (orig + strength * (rgb - orig)).to(video.dtype)
    return out


def _as_uint8_rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    return array


def _mean_lab(frames: np.ndarray, batch: int = 16) -> np.ndarray:
    """Mean Lab colour of each frame of uint8 [T, H, W, 3] → [T, 3]."""
    out = []
    for f0 in range(0, len(frames), batch):
        rgb = torch.from_numpy(np.array(frames[f0:f0 + batch])).double() / 255
        out.append(rgb_to_lab(rgb).mean(dim=(1, 2)))
    return torch.cat(out).numpy()


def colour_drift(frames: np.ndarray, reference: ImageLike, fps: float = FPS) -> float:
    """Mean colour shift per minute: the least-squares slope, in ΔE (CIE76) per minute, of the
    distance between each frame's mean Lab colour and the reference's mean Lab colour.

    `frames` is uint8 [T, H, W, 3]. Positive = the video's colour moves away from the reference
    over time; ~0 = no drift (a constant offset does not count). 0.0 for fewer than 2 frames."""
    frames = np.asarray(frames)
    if len(frames) < 2:
        return 0.0
    ref = _mean_lab(_as_uint8_rgb(reference)[None])[0]
    distance = np.linalg.norm(_mean_lab(frames) - ref, axis=1)
    minutes = np.arange(len(frames)) / fps / 60.0
    return float(np.polyfit(minutes, distance, 1)[0])


# ---------------------------------------------------------------------------------------------
# the sampler


def resize_and_crop(image: ImageLike, height: int, width: int) -> np.ndarray:
    """Scale (bilinear) so the image covers height×width, then centre-crop: uint8 [height, width, 3]."""
    array = _as_uint8_rgb(image)
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    scale = max(height / h, width / w)
    rh, rw = max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale))
    resized = np.asarray(Image.fromarray(array).resize((rw, rh), Image.BILINEAR))
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[top:top + height, left:left + width]


def guided_velocity(predict: Callable[[bool, bool], torch.Tensor], text_guidance: float,
                    audio_guidance: float) -> torch.Tensor:
    """InfiniteTalk's text + audio classifier-free guidance. `predict(with_text, with_audio)` is one
    transformer pass (without text = the negative prompt; without audio = zero audio features).

    `uncond + text·(cond − drop_text) + audio·(drop_text − uncond)` in three passes; with text
    guidance 1, `drop_audio + audio·(cond − drop_audio)` (the official's two-pass branch); with audio
    guidance 1, `drop_text + text·(cond − drop_text)` (the three-pass formula, uncond cancelling);
    both 1: `cond` alone."""
    cond = predict(True, True)
    text_one, audio_one = math.isclose(text_guidance, 1.0), math.isclose(audio_guidance, 1.0)
    if text_one and audio_one:
        return cond
    if text_one:
        drop_audio = predict(True, False)
        return drop_audio + audio_guidance * (cond - drop_audio)
    drop_text = predict(False, True)
    if audio_one:
        return drop_text + text_guidance * (cond - drop_text)
    uncond = predict(False, False)
    return uncond + text_guidance * (cond - drop_text) + audio_guidance * (drop_text - uncond)


def _device(module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype


TextCache = Callable[["Sampler", str], torch.Tensor]


class Sampler:
    """Per-render state shared by the chunks: text embeddings, VAE scaling, the scheduler. Training uses its
    encoders too (`encode_image`, `vae_encode`, `condition`), so a LoRA learns on exactly what renders feed."""

    def __init__(self, c: InfiniteTalkComponents, *, prompt: str, negative_prompt: str, height: int, width: int,
                 shift: float, text_cache: TextCache | None = None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.c = c
        vae_cfg = c.vae.config
        self.z_dim = vae_cfg.z_dim
        self.spatial = 2 ** len(vae_cfg.temperal_downsample)
        self.temporal = 2 ** sum(vae_cfg.temperal_downsample)
        if self.temporal != 4:
            raise ValueError(f"the Wan VAE here compresses time by {self.temporal}, the chunk plan assumes 4")
        patch = c.transformer.config.patch_size
        multiple = self.spatial * max(patch[1], patch[2])
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}×{width}")
        if c.transformer.config.in_channels != 2 * self.z_dim + 4:
            raise ValueError(f"transformer takes {c.transformer.config.in_channels} channels, "
                             f"the I2V input is {2 * self.z_dim + 4} (latent + 4 mask + condition)")
        self.height, self.width = height, width
        self.device, self.dtype = _device(c.transformer), _dtype(c.transformer)
        self.vae_device, self.vae_dtype = _device(c.vae), _dtype(c.vae)
        self.latents_mean = torch.tensor(vae_cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.latents_inv_std = 1.0 / torch.tensor(vae_cfg.latents_std).view(1, -1, 1, 1, 1)
        if not isinstance(c.scheduler, FlowMatchEulerDiscreteScheduler):
            raise TypeError("InfiniteTalk samples with FlowMatchEulerDiscreteScheduler (the official's Euler step)")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            c.scheduler.config, shift=shift, use_dynamic_shifting=False, num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        # through the encoder cache when the caller has one (functions/infinitetalk_encoders.py)
        encode = self.encode_text if text_cache is None else (lambda text: text_cache(self, text))
        self.text = encode(prompt)
        self.null_text = encode(negative_prompt)

    # encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """UMT5 states of the prompt, zero-padded to 512 tokens (as the Wan pipelines do)."""
        enc = self.c.text_encoder
        tokens = self.c.tokenizer([text.strip()], padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                                  add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask
        states = enc(tokens.input_ids.to(_device(enc)), mask.to(_device(enc))).last_hidden_state
        states = states * mask.to(states.device)[..., None].to(states.dtype)  # zeros after the prompt
        return states.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, frame: np.ndarray) -> torch.Tensor:
        """CLIP's penultimate hidden states of the reference frame (uint8 [H, W, 3])."""
        enc = self.c.image_encoder
        pixels = self.c.image_processor(images=np.array(frame), return_tensors="pt").pixel_values
        out = enc(pixel_values=pixels.to(_device(enc), _dtype(enc)), output_hidden_states=True)
        return out.hidden_states[-2].to(self.device, self.dtype)

    @torch.no_grad()
    def vae_encode(self, video: torch.Tensor) -> torch.Tensor:
        """[1, 3, F, H, W] in [-1, 1] → normalised latent [1, z, (F-1)/4+1, h, w] (float32, device)."""
        posterior = self.c.vae.encode(video.to(self.vae_device, self.vae_dtype)).latent_dist
        latent = posterior.mode().float()  # the posterior mean, as the official WanVAE.encode and diffusers' I2V
        mean, inv_std = self.latents_mean.to(latent.device), self.latents_inv_std.to(latent.device)
        return ((latent - mean) * inv_std).to(self.device)

    @torch.no_grad()
    def vae_decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent → video [3, F, H, W] in [-1, 1] (float32, on the VAE's device)."""
        mean, inv_std = self.latents_mean.to(latent.device), self.latents_inv_std.to(latent.device)
        raw = latent.float() / inv_std + mean
        video = self.c.vae.decode(raw.to(self.vae_device, self.vae_dtype), return_dict=False)[0]
        return video[0].float().clamp(-1, 1)

    def condition(self, reference: torch.Tensor, frames: int) -> torch.Tensor:
        """The I2V condition channels: 4 mask + VAE latent of [reference, zeros × (frames−1)]."""
        clip = torch.cat([reference[:, :, None], reference.new_zeros(1, 3, frames - 1, self.height, self.width)], 2)
        latent = self.vae_encode(clip)
        lat_frames, h, w = latent.shape[2:]
        mask = torch.zeros(1, 4, lat_frames, h, w, device=latent.device)
        mask[:, :, 0] = 1  # the reference frame's 4 mask channels (Wan's first latent frame = 1 video frame ×4)
        return torch.cat([mask, latent], dim=1)

    # one chunk --------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor, audio: torch.Tensor,
                 text_guidance: float, audio_guidance: float) -> torch.Tensor:
        tr = self.c.transformer
        t = t.expand(x.shape[0]).to(self.device)
        null_audio = torch.zeros_like(audio)

        def predict(with_text: bool, with_audio: bool) -> torch.Tensor:
            return tr(hidden_states=x, timestep=t, encoder_hidden_states=self.text if with_text else self.null_text,
                      encoder_hidden_states_image=image, audio_embeds=audio if with_audio else null_audio,
                      return_dict=False)[0].float()

        return guided_velocity(predict, text_guidance, audio_guidance)

    @torch.no_grad()
    def chunk(self, chunk: Chunk, *, image_embeds: torch.Tensor, condition: torch.Tensor,
              motion: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor, steps: int, text_guidance: float,
              audio_guidance: float, on_step: OnStep | None) -> torch.Tensor:
        """Denoise and decode one chunk → video [3, chunk.frames, H, W] in [-1, 1]."""
        sched = self.scheduler
        sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps).tolist(), device=self.device)
        latent = noise.clone()
        m = motion.shape[2]
        for i, t in enumerate(sched.timesteps):
            latent[:, :, :m] = motion
            x = torch.cat([latent, condition], dim=1).to(self.dtype)
            v = self.velocity(x, t, image_embeds, audio, text_guidance, audio_guidance)
            latent = sched.step(v, t, latent, return_dict=False)[0]
            latent[:, :, :m] = motion
            if on_step is not None:
                on_step(chunk, i + 1, steps)
        return self.vae_decode(latent)


def frame_to_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] → float [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(frame, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1  # a copy: PIL arrays are read-only


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] → uint8 [F, H, W, 3]."""
    return ((video.float().cpu().permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def iter_talking(components: InfiniteTalkComponents, *, reference: ImageLike | FrameSource,
                 audio_windows: AudioWindows, total_frames: int, prompt: str, negative_prompt: str = "",
                 height: int = 480, width: int = 832, steps: int = 40, text_guidance: float = 5.0,
                 audio_guidance: float = 4.0, shift: float = DEFAULT_SHIFT_480P, seed: int = 0,
                 chunk_frames: int = 81, motion_frames: int = 9, on_step: OnStep | None = None,
                 colour_anchor: bool | float = True,
                 text_cache: TextCache | None = None) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Render chunk by chunk; yields `(chunk, frames)` with `frames` uint8 [chunk.new_frames, H, W, 3],
    the output frames `chunk.new_start ...` in order. Only the motion tail is kept between chunks.

    `reference`: an RGB image (PIL or uint8 [H, W, 3]) for image-to-video, or a callable
    `frame_index -> image` for video-to-video (called with each chunk's start frame).
    `audio_windows(start, count)`: the audio windows of frames `start .. start+count−1`,
    [count, 5, L, D] (e.g. `functions.infinitetalk_audio.frame_windows(features, start, count)`).
    `on_step(chunk, step, steps)`: called before a chunk's first step (step 0) and after each of its
    denoising steps (1..steps); an exception raised there propagates and nothing more runs.
    `colour_anchor`: True / a strength in [0, 1]: match each chunk's Lab mean/std to its reference.
    `text_cache(sampler, text)`: the UMT5 states of `text` (cached), instead of `sampler.encode_text(text)`.
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    strength = float(colour_anchor)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour_anchor strength must be within [0, 1], got {colour_anchor}")
    chunks = plan_chunks(total_frames, chunk_frames=chunk_frames, motion_frames=motion_frames)
    sampler = Sampler(components, prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                       shift=shift, text_cache=text_cache)
    return _chunks(sampler, chunks, reference=reference, audio_windows=audio_windows, steps=steps,
                   text_guidance=text_guidance, audio_guidance=audio_guidance, seed=seed, on_step=on_step,
                   strength=strength)


def _chunks(s: Sampler, chunks: list[Chunk], *, reference: ImageLike | FrameSource, audio_windows: AudioWindows,
            steps: int, text_guidance: float, audio_guidance: float, seed: int, on_step: OnStep | None,
            strength: float) -> Iterator[tuple[Chunk, np.ndarray]]:
    height, width = s.height, s.width
    motion_frames = chunks[1].motion if len(chunks) > 1 else 0
    video_mode = callable(reference)
    still = None if video_mode else resize_and_crop(reference, height, width)
    cache: dict = {}  # still image: its CLIP embedding and I2V condition per chunk length, computed once
    generator = torch.Generator("cpu").manual_seed(seed)
    tail: torch.Tensor | None = None  # the previous chunk's last motion_frames decoded frames [1, 3, m, H, W]

    for chunk in chunks:
        if on_step is not None:
            on_step(chunk, 0, steps)
        frame = resize_and_crop(reference(chunk.start), height, width) if video_mode else still
        ref = frame_to_tensor(frame)
        if video_mode or "image" not in cache:
            cache["image"] = s.encode_image(frame)
        if video_mode or chunk.frames not in cache:
            cache[chunk.frames] = s.condition(ref, chunk.frames)
        image_embeds, condition = cache["image"], cache[chunk.frames]
        motion = s.vae_encode(ref[:, :, None] if tail is None else tail)
        audio = torch.as_tensor(audio_windows(chunk.start, chunk.frames))
        if audio.ndim != 4 or audio.shape[0] != chunk.frames:
            raise ValueError(f"audio_windows({chunk.start}, {chunk.frames}) gave shape {tuple(audio.shape)}, "
                             f"expected [{chunk.frames}, 5, L, D]")
        audio = audio[None].to(s.device, s.dtype)
        noise = torch.randn((1, s.z_dim, chunk.latent_frames, height // s.spatial, width // s.spatial),
                            generator=generator, dtype=torch.float32).to(s.device)
        video = s.chunk(chunk, image_embeds=image_embeds, condition=condition, motion=motion,
                        audio=audio, noise=noise, steps=steps, text_guidance=text_guidance,
                        audio_guidance=audio_guidance, on_step=on_step)
        if strength > 0:
            video = match_colour(video, ref[0].to(video.device), strength)
        if chunk.index + 1 < len(chunks):
            nxt = chunks[chunk.index + 1].start - chunk.start
            tail = video[None, :, nxt:nxt + motion_frames].clone()  # not a view: the chunk itself is freed
        yield chunk, video_to_uint8(video[:, chunk.motion:chunk.motion + chunk.new_frames])
        del video


def render_talking(components: InfiniteTalkComponents, *, reference: ImageLike | FrameSource,
                   audio_windows: AudioWindows, total_frames: int, prompt: str, negative_prompt: str = "",
                   height: int = 480, width: int = 832, steps: int = 40, text_guidance: float = 5.0,
                   audio_guidance: float = 4.0, shift: float = DEFAULT_SHIFT_480P, seed: int = 0,
                   chunk_frames: int = 81, motion_frames: int = 9, on_step: OnStep | None = None,
                   colour_anchor: bool | float = True) -> np.ndarray:
    """`iter_talking` collected: uint8 frames [total_frames, height, width, 3] at 25 fps (same arguments).
    Holds the whole video in memory; for long speech iterate `iter_talking` and stream the frames out."""
    out = np.empty((total_frames, height, width, 3), dtype=np.uint8)
    for chunk, frames in iter_talking(
            components, reference=reference, audio_windows=audio_windows, total_frames=total_frames, prompt=prompt,
            negative_prompt=negative_prompt, height=height, width=width, steps=steps, text_guidance=text_guidance,
            audio_guidance=audio_guidance, shift=shift, seed=seed, chunk_frames=chunk_frames,
            motion_frames=motion_frames, on_step=on_step, colour_anchor=colour_anchor):
        out[chunk.new_start:chunk.new_start + chunk.new_frames] = frames
    return out
