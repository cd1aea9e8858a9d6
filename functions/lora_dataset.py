"""Training clips for the avatar LoRA: runs of consecutive aligned faces cut into 6k+1-frame clips.

Clips never cross a split or a gap in time (a dropped frame, a guard band), so each clip
is real motion of the subject, and val/test clips stay as leak-free as the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from core.storage import Storage
from functions.models.mochi_configs import TEMPORAL_COMPRESSION
from schemas.dataset import FaceRecord


@dataclass(frozen=True)
class Clip:
    split: str
    frame_keys: tuple[str, ...]
    start_s: float


def snap_down(frames: int) -> int:
    """The largest 6k+1 not above `frames` (1 is a valid, single-image clip)."""
    return max(1, (frames - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1)


def load_face_records(storage: Storage, metadata_key: str) -> list[FaceRecord]:
    """align's metadata.jsonl: one record per detection of the subject."""
    return [FaceRecord.model_validate_json(line) for line in storage.get_bytes(metadata_key).splitlines() if line]


def contiguous_runs(records: list[FaceRecord], split: str) -> list[list[FaceRecord]]:
    """The split's faces in time order, cut wherever the gap exceeds 1.5× the usual frame interval."""
    faces = sorted((r for r in records if r.split == split and r.face_key), key=lambda r: r.time_s)
    if not faces:
        return []
    gaps = np.diff([r.time_s for r in faces])
    usual = float(np.median(gaps)) if len(gaps) else 0.0
    runs, current = [], [faces[0]]
    for previous, face in zip(faces, faces[1:]):
        if usual and face.time_s - previous.time_s > 1.5 * usual:
            runs.append(current)
            current = []
        current.append(face)
    runs.append(current)
    return runs


def build_clips(records: list[FaceRecord], split: str, clip_frames: int) -> list[Clip]:
    """Non-overlapping clips of exactly `clip_frames` frames from each run."""
    clips = []
    for run in contiguous_runs(records, split):
        for start in range(0, len(run) - clip_frames + 1, clip_frames):
            window = run[start:start + clip_frames]
            clips.append(Clip(split, tuple(r.face_key for r in window), window[0].time_s))
    return clips


def longest_run(records: list[FaceRecord], split: str) -> int:
    return max((len(run) for run in contiguous_runs(records, split)), default=0)


def load_clip(storage: Storage, clip: Clip, resolution: int) -> torch.Tensor:
    """[C, T, H, W] float in [-1, 1], as Mochi's VAE expects."""
    frames = []
    for key in clip.frame_keys:
        image = cv2.imdecode(np.frombuffer(storage.get_bytes(key), np.uint8), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image.shape[0] != resolution:
            image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_AREA)
        frames.append(image)
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1.0
