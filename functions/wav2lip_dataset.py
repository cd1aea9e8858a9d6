"""Wav2Lip training samples: 5-frame windows of consecutive aligned faces, each with its mel window.

An audio-visual dataset keeps every sampled frame at the backend's fps in time order (prepare
drops no near-duplicates for it), so a face's `frame_index` is its position on the audio's
timeline: frame i starts at mel column int(80 · i / fps). A window is five consecutive frames of
one split that all have an aligned face; a frame without one (blurred, dark, no face, a
guard band) breaks the run, so it is never trained on and no window spans it. Each window gets
a reference face of the same split from another moment (at least `MIN_REFERENCE_GAP_S` away),
which gives the generator the identity but not the mouth pose.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import cv2
import numpy as np

from core.storage import Storage
from functions.models.syncnet import SYNC_FRAMES as WINDOW_FRAMES
from functions.models.wav2lip import FACE_SIZE
from functions.models.wav2lip_audio import window_start
from schemas.dataset import FaceRecord

MIN_REFERENCE_GAP_S = 1.0  # a reference this far away shows the face, not the same mouth shape


@dataclass(frozen=True)
class SyncWindow:
    split: str
    frame_indices: tuple[int, ...]
    face_keys: tuple[str, ...]
    mel_start: int
    reference_key: str


def sync_windows(records: list[FaceRecord], split: str, *, fps: float, seed: int) -> list[SyncWindow]:
    """Every window of WINDOW_FRAMES consecutive frames of `split` with an aligned face, with its reference."""
    faces = sorted((r for r in records if r.split == split and r.face_key), key=lambda r: r.frame_index)
    by_index = {r.frame_index: r for r in faces}
    times = sorted(r.time_s for r in faces)  # faces are in frame order, so also in time order
    rng = random.Random(f"{seed}:{split}")
    windows = []
    for first in faces:
        run = [by_index.get(first.frame_index + k) for k in range(WINDOW_FRAMES)]
        if any(r is None for r in run):
            continue
        reference = faces[_far_index(times, first.time_s, rng)]
        windows.append(SyncWindow(split=split, frame_indices=tuple(r.frame_index for r in run),
                                  face_keys=tuple(r.face_key for r in run), mel_start=window_start(first.frame_index, fps),
                                  reference_key=reference.face_key))
    return windows


def _far_index(times: list[float], t: float, rng: random.Random) -> int:
    """A random position whose time is at least MIN_REFERENCE_GAP_S from `t` (any, if none is)."""
    lo = bisect.bisect_left(times, t - MIN_REFERENCE_GAP_S + 1e-9)
    hi = bisect.bisect_right(times, t + MIN_REFERENCE_GAP_S - 1e-9)
    outside = lo + (len(times) - hi)
    if outside == 0:
        return rng.randrange(len(times))
    k = rng.randrange(outside)
    return k if k < lo else hi + (k - lo)


def load_face(storage: Storage, key: str, size: int = FACE_SIZE) -> np.ndarray:
    """An aligned face crop as float32 RGB in [0, 1], resized to size×size (Wav2Lip's input range)."""
    image = cv2.imdecode(np.frombuffer(storage.get_bytes(key), np.uint8), cv2.IMREAD_COLOR)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
