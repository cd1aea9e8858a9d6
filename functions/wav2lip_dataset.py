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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

from core.storage import Storage
from functions.models.syncnet import SYNC_FRAMES as WINDOW_FRAMES
from functions.models.wav2lip import FACE_SIZE
from functions.models.wav2lip_audio import mel_window, window_start
from functions.wav2lip_training import WindowSet
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


ChannelOrder = Literal["rgb", "bgr"]


def load_window_set(storage: Storage, records: list[FaceRecord], split: str, mel: np.ndarray, *, fps: float,
                    seed: int, channel_order: ChannelOrder = "rgb",
                    progress: Callable[[int, int], None] | None = None) -> WindowSet:
    """The split's windows as a WindowSet: each face decoded once (float16, 96 px), the windows' 5 targets and
    5 references gathered from them, and each frame's mel window.

    A window's references are the 5 frames from its reference face on where those are in the split too (a
    moving reference, as Wav2Lip's `wrong_window`), else that face repeated. Memory: 2 × 5 × 27 KB per
    window in float16 (about 4 GB for the 15,000 windows of a 10-minute video)."""
    windows = sync_windows(records, split, fps=fps, seed=seed)
    keys = sorted({k for w in windows for k in (*w.face_keys, w.reference_key)})
    row_of = {key: n for n, key in enumerate(keys)}
    faces = torch.empty((len(keys), 3, FACE_SIZE, FACE_SIZE), dtype=torch.float16)
    for n, key in enumerate(keys):
        face = load_face(storage, key)
        if channel_order == "bgr":
            face = face[..., ::-1]
        faces[n] = torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1)))
        if progress is not None:
            progress(n + 1, len(keys))
    index_of = {r.face_key: r.frame_index for r in records if r.face_key}
    key_at = {(r.split, r.frame_index): r.face_key for r in records if r.face_key}
    target_rows, reference_rows, frame_mels, first_frames = [], [], [], []
    for window in windows:
        target_rows.append([row_of[k] for k in window.face_keys])
        start = index_of[window.reference_key]
        moving = [key_at.get((split, start + k)) for k in range(WINDOW_FRAMES)]
        reference_keys = moving if all(k in row_of for k in moving) else [window.reference_key] * WINDOW_FRAMES
        reference_rows.append([row_of[k] for k in reference_keys])
        frame_mels.append(np.stack([mel_window(mel, i, fps) for i in window.frame_indices]))
        first_frames.append(window.frame_indices[0])
    if not windows:
        empty = torch.zeros((0, WINDOW_FRAMES, 3, FACE_SIZE, FACE_SIZE), dtype=torch.float16)
        mels = torch.zeros((0, WINDOW_FRAMES, 80, 16))
        return WindowSet(targets=empty, references=empty, frame_mels=mels, sync_mels=mels[:, 0],
                         first_frames=torch.zeros(0, dtype=torch.long))
    mels = torch.from_numpy(np.stack(frame_mels))
    return WindowSet(targets=faces[torch.tensor(target_rows)], references=faces[torch.tensor(reference_rows)],
                     frame_mels=mels, sync_mels=mels[:, 0].clone(), first_frames=torch.tensor(first_frames))
