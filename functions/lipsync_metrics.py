"""Lip-sync offset and confidence, computed the LSE way (joonson/syncnet_python) on an expert network.

Each 5-frame window of lower-half face crops and the 16-column mel window starting at its first
frame are embedded; for every offset k in ±vshift frames the mean L2 distance between video window
t and audio window t − k is taken over time. The offset is the argmin, `min_dist` the minimum
(LSE-D-like) and `confidence` the median minus the minimum (LSE-C-like).

Two differences from syncnet_python, both on purpose: distances are averaged only over the pairs
that exist at that offset (syncnet_python pads the audio features with zeros, which biases the
far offsets), and the embeddings are those of the project's lip-sync expert (unit vectors, so a
distance lies in [0, 2]). Numbers from `lip_sync_metrics` are therefore only comparable between
runs of the same expert, never with published LSE tables (e.g. Wav2Lip on LRS2: LSE-D 6.386,
LSE-C 7.781), which need joonson's SyncNet v2 (`syncnet_v2.model`) on 224-px crops: functions/standard_lse.py
computes those when VIDEOSTUDIO_SYNCNET_WEIGHTS names a local copy (the weights ship in no package).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from functions.models.syncnet import SYNC_FRAMES, FACE_HEIGHT, FACE_WIDTH, LipSyncExpert
from functions.models.wav2lip_audio import MEL_STEP, N_MELS, mel_window, window_start
from schemas.errors import VideostudioError

DEFAULT_VSHIFT = 15  # frames each way, as the LSE evaluation


class LipSyncMetrics(BaseModel):
    """Offset and confidence of one clip. `offset_frames = k` means video frame t matches the audio of frame
    t − k (k > 0: the picture lags the sound), the sign of syncnet_python's "AV offset"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_frames: int
    min_dist: float = Field(ge=0)
    median_dist: float = Field(ge=0)
    confidence: float = Field(ge=0)
    distances: list[float] = Field(description="mean distance per offset, from −vshift to +vshift")
    vshift: int = Field(ge=0)
    windows: int = Field(ge=1, description="5-frame windows compared")
    fps: float = Field(gt=0)
    scorer: Literal["videostudio_expert", "syncnet_v2"]
    comparable_with_published: bool = Field(description="True only for syncnet_v2 (standard LSE-C/LSE-D)")


def lower_half(crops: torch.Tensor) -> torch.Tensor:
    """(N, 3, 96, 96) face crops → their (N, 3, 48, 96) lower halves (the mouth region the expert sees)."""
    return crops[:, :, crops.shape[2] // 2:]


def usable_windows(n_frames: int, mel_columns: int, fps: float) -> int:
    """Windows whose 5 frames and full 16-column mel window both exist (no clamped audio)."""
    count = 0
    while count + SYNC_FRAMES <= n_frames and window_start(count, fps) + MEL_STEP <= mel_columns:
        count += 1
    return count


@torch.no_grad()
def embed_windows(expert: LipSyncExpert, lower_halves: torch.Tensor, mel: np.ndarray, *, fps: float = 25.0,
                  batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, audio) embeddings, (W, D) each, of the W usable windows of a clip. `lower_halves`:
    (N, 3, 48, 96) in [0, 1], in the channel order the expert was trained on."""
    if lower_halves.dim() != 4 or lower_halves.shape[1:] != (3, FACE_HEIGHT, FACE_WIDTH):
        raise ValueError(f"expected (N, 3, 48, 96) lower halves, got {tuple(lower_halves.shape)}")
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise ValueError(f"expected an (80, T) mel spectrogram, got {mel.shape}")
    count = usable_windows(lower_halves.shape[0], mel.shape[1], fps)
    device = next(expert.parameters()).device
    was_training = expert.training
    expert.eval()  # running BatchNorm statistics: a window's embedding must not depend on its batch
    try:
        video, audio = [], []
        for start in range(0, count, batch_size):
            idx = range(start, min(count, start + batch_size))
            faces = torch.stack([lower_halves[t:t + SYNC_FRAMES].flatten(0, 1) for t in idx])
            mels = torch.from_numpy(np.stack([mel_window(mel, t, fps) for t in idx])).unsqueeze(1)
            audio_emb, face_emb = expert(mels.to(device, torch.float32), faces.to(device, torch.float32))
            video.append(face_emb.cpu())
            audio.append(audio_emb.cpu())
    finally:
        expert.train(was_training)
    dim = expert.embedding_dim
    return (torch.cat(video) if video else torch.zeros(0, dim)), (torch.cat(audio) if audio else torch.zeros(0, dim))


def offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = DEFAULT_VSHIFT) -> np.ndarray:
    """(2·vshift + 1,) mean ‖video[t] − audio[t − k]‖ for k = −vshift … +vshift, over the t where both exist."""
    windows = video.shape[0]
    if audio.shape[0] != windows or windows <= vshift:
        raise VideostudioError("video_too_short", f"{windows} sync windows: offsets of ±{vshift} frames need at least "
                                                  f"{vshift + 1} (about {vshift + SYNC_FRAMES} frames of video)")
    pairwise = torch.cdist(video.double(), audio.double())  # [t, s] = ‖video[t] − audio[s]‖
    # offset k pairs t with s = t − k: the diagonal at −k
    return np.array([torch.diagonal(pairwise, offset=-k).mean().item() for k in range(-vshift, vshift + 1)])


def metrics_from_distances(distances: np.ndarray, *, vshift: int, windows: int, fps: float,
                           scorer: Literal["videostudio_expert", "syncnet_v2"]) -> LipSyncMetrics:
    best = int(np.argmin(distances))
    minimum, median = float(distances[best]), float(np.median(distances))
    return LipSyncMetrics(offset_frames=best - vshift, min_dist=minimum, median_dist=median,
                          confidence=median - minimum, distances=[float(d) for d in distances], vshift=vshift,
                          windows=windows, fps=fps, scorer=scorer, comparable_with_published=scorer == "syncnet_v2")


def lip_sync_metrics(expert: LipSyncExpert, lower_halves: torch.Tensor, mel: np.ndarray, *, fps: float = 25.0,
                     vshift: int = DEFAULT_VSHIFT, batch_size: int = 64) -> LipSyncMetrics:
    """Offset, min distance and confidence of a clip on the project's expert (see the module docstring).
    The expert was trained on 25 fps windows: other rates should be resampled to 25 fps first."""
    video, audio = embed_windows(expert, lower_halves, mel, fps=fps, batch_size=batch_size)
    distances = offset_distances(video, audio, vshift)
    return metrics_from_distances(distances, vshift=vshift, windows=video.shape[0], fps=fps,
                                  scorer="videostudio_expert")
