"""An InfiniteTalk avatar's training data: clips of the person's own footage with their own speech.

InfiniteTalk sees whole frames (head, face and body move with the speech), so a clip is `clip_frames`
consecutive frames of the training video at 25 fps, resized and centre-cropped to the render size, taken
from a run of frames whose aligned face belongs to one split (align's 85/10/5 split by time keeps the
held-out clips apart). Each clip is encoded once, exactly as a render conditions a chunk: the VAE latent
it learns to produce, the image-to-video condition and CLIP embedding of its first frame (every render
chunk starts from a reference frame), and the ±2-frame wav2vec2 windows of its audio.

The avatar's reference image (image-to-video renders) is the sharpest, most frontal frame of the train
split: sharpness from prepare's frame list, frontality from the eyes/nose landmarks and the roll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.video import sample_frames
from functions.infinitetalk_audio import frame_windows
from functions.infinitetalk_pipeline import Sampler, frame_to_tensor, resize_and_crop
from schemas.dataset import FaceRecord, FrameRecord

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClipSpan:
    split: str
    start: int  # first frame (index among the video's frames at 25 fps)
    frames: int


def clip_spans(records: Sequence[FaceRecord], clip_frames: int) -> dict[str, list[ClipSpan]]:
    """Non-overlapping clips of `clip_frames` consecutive frames, each inside one run of one split's faces."""
    spans: dict[str, list[ClipSpan]] = {s: [] for s in SPLITS}
    usable = sorted((r for r in records if r.split in SPLITS and r.face_key), key=lambda r: r.frame_index)
    run: list[FaceRecord] = []
    for record in usable + [None]:  # a sentinel closes the last run
        continues = (record is not None and run and record.split == run[-1].split
                     and record.frame_index == run[-1].frame_index + 1)
        if run and not continues:
            for offset in range(0, len(run) - clip_frames + 1, clip_frames):
                spans[run[0].split].append(ClipSpan(run[0].split, run[offset].frame_index, clip_frames))
            run = []
        if record is not None:
            run.append(record)
    return spans


def frontality(record: FaceRecord) -> float:
    """1 for a face looking straight at the camera, less as it turns (nose off the eyes' midpoint) or rolls."""
    (lx, _), (rx, _), (nx, _) = record.landmarks[0], record.landmarks[1], record.landmarks[2]
    eyes = max(abs(rx - lx), 1e-6)
    yaw = min(1.0, abs(nx - (lx + rx) / 2) / (0.5 * eyes))
    roll = min(1.0, abs(record.roll_deg) / 30.0)
    return max(0.0, 1.0 - yaw) * (1.0 - 0.5 * roll)


def reference_frame(records: Sequence[FaceRecord], frames: Sequence[FrameRecord]) -> int:
    """The frame index of the avatar's reference image: sharp × frontal, among the train split's faces."""
    sharpness = {f.index: f.sharpness for f in frames}
    candidates = [r for r in records if r.split == "train" and r.face_key] or [r for r in records if r.face_key]
    if not candidates:
        raise ValueError("no aligned face to take a reference image from")
    top = max(sharpness.get(r.frame_index, 0.0) for r in candidates) or 1.0
    return max(candidates, key=lambda r: (sharpness.get(r.frame_index, 0.0) / top) * frontality(r)).frame_index


def render_size(width: int, height: int) -> tuple[int, int]:
    """InfiniteTalk's 480p bucket for a video of this shape, as (height, width): the official buckets nearest
    16:9 and 9:16 (wan/utils/multitalk_utils.py ASPECT_RATIO_627: 448×896 and 832×448), else a square."""
    ratio = width / height
    if ratio > 1.2:
        return 448, 896
    if ratio < 1 / 1.2:
        return 832, 448
    return 640, 640


@dataclass
class EncodedClips:
    """One split's clips as the transformer sees them (stacked; index i is clip i)."""

    latents: torch.Tensor  # [N, z, F_lat, h, w]: what the model learns to produce
    condition: torch.Tensor  # [N, 4 + z, F_lat, h, w]: mask + latent of [first frame, zeros…]
    image: torch.Tensor  # [N, tokens, image_dim]: CLIP of the first frame
    audio: torch.Tensor  # [N, frames, 5, layers, dim]: wav2vec2 windows
    spans: list[ClipSpan]

    def __len__(self) -> int:
        return len(self.spans)


def read_frames(video: Path, wanted: set[int], *, source_size: tuple[int, int], height: int,
                width: int) -> dict[int, np.ndarray]:
    """The frames `wanted` (indices at 25 fps) of a video displayed at `source_size` (width, height), resized
    and centre-cropped to height×width."""
    out: dict[int, np.ndarray] = {}
    for frame in sample_frames(video, fps=25, size=source_size, keep=wanted.__contains__):
        out[frame.index] = resize_and_crop(frame.pixels, height, width)
    return out


@torch.no_grad()
def encode_clips(sampler: Sampler, spans: list[ClipSpan], frames: dict[int, np.ndarray], features: torch.Tensor,
                 *, on_clip: Callable[[int, int], None] = lambda done, total: None) -> EncodedClips:
    """Each span's latent, condition, CLIP embedding and audio windows, on the CPU (training moves batches)."""
    latents, conditions, images, audio = [], [], [], []
    for n, span in enumerate(spans):
        clip = np.stack([frames[i] for i in range(span.start, span.start + span.frames)])
        video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, F, H, W]
        latents.append(sampler.vae_encode(video)[0].cpu())
        conditions.append(sampler.condition(frame_to_tensor(clip[0]).to(sampler.vae_device), span.frames)[0].cpu())
        images.append(sampler.encode_image(clip[0])[0].float().cpu())
        audio.append(frame_windows(features, span.start, span.frames))
        on_clip(n + 1, len(spans))
    if not spans:
        empty = torch.empty(0)
        return EncodedClips(latents=empty, condition=empty, image=empty, audio=empty, spans=[])
    return EncodedClips(latents=torch.stack(latents), condition=torch.stack(conditions), image=torch.stack(images),
                        audio=torch.stack(audio), spans=list(spans))


@dataclass
class InfiniteTalkCondition:
    """`lora_training.Conditioning` for InfiniteTalk: the shared caption, and per clip its condition channels,
    CLIP embedding and audio windows (`clips` index into `encoded`)."""

    text: torch.Tensor  # [1, 512, text_dim]
    encoded: EncodedClips

    def predict(self, transformer, noisy: torch.Tensor, timestep: torch.Tensor, clips: torch.Tensor,
                device: str, dtype: torch.dtype) -> torch.Tensor:
        e, batch = self.encoded, noisy.shape[0]
        hidden = torch.cat([noisy, e.condition[clips].to(device)], dim=1).to(dtype)
        return transformer(hidden_states=hidden, timestep=timestep.to(dtype),
                           encoder_hidden_states=self.text.expand(batch, -1, -1).to(device, dtype),
                           encoder_hidden_states_image=e.image[clips].to(device, dtype),
                           audio_embeds=e.audio[clips].to(device, dtype), return_dict=False)[0]
