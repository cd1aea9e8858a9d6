"""The standard LSE-D / LSE-C lip-sync scores: SyncNet v2 (`syncnet_v2.model`) on 224-px face crops.

Only these numbers are comparable with published tables (e.g. Wav2Lip on LRS2: LSE-D 6.386, LSE-C 7.781).
The project's own `lip_sync_metrics` (functions/lipsync_metrics.py) scores with the avatar's expert and
compares renders of one avatar only. The public weights ship in no package: point
`VIDEOSTUDIO_SYNCNET_WEIGHTS` at a local copy of `syncnet_v2.model` (see `syncnet_weights_from_env`).

What is computed, as joonson/syncnet_python's `SyncNetInstance.evaluate` (which Wav2Lip's
`evaluation/scores_LSE` scripts call unchanged apart from resizing every frame to 224×224):

* video: 25 fps, each frame a 224×224 crop in BGR order with values 0…255 as floats (no mean, no
  scaling); window t is frames t…t+4 as a (3, 5, 224, 224) tensor;
* audio: 16 kHz mono as 16-bit integers (ffmpeg's `pcm_s16le`; a float signal in [−1, 1] is quantised as
  ffmpeg does, × 32768 rounded and clipped), `python_speech_features.mfcc(audio, 16000)` with its defaults
  (25 ms rectangular frames every 10 ms, 512-point FFT, 26 mel filters, 13 coefficients, pre-emphasis 0.97,
  lifter 22, c0 replaced by log frame energy) → 13 rows at 100 columns/s, 4 columns per video frame;
  window t is columns 4t…4t+19;
* `min_length = min(frames, samples // 640)` and windows t = 0 … min_length − 6 (syncnet_python stops one
  window short of the last full one; kept so that the numbers match);
* for each shift j in 0…2·vshift (vshift 15), the mean over t of ‖video_t − audio_{t+j−vshift}‖ (torch's
  `pairwise_distance`, eps 1e-6), the audio embeddings padded with zero vectors where t + j − vshift is out of
  range; LSE-D is the minimum of that curve, LSE-C its median minus its minimum, and the AV offset is
  vshift − argmin. `LipSyncMetrics.distances` lists the curve by offset k = −vshift…+vshift (k = vshift − j,
  so it is syncnet_python's curve reversed); `offset_frames` is syncnet_python's "AV offset".

A dataset score is the mean of the per-clip LSE-D and LSE-C (Wav2Lip's `calculate_scores_LRS.py`).

Which crop: on LRS2/LRS3/LRW (already face-centred clips) Wav2Lip's LRS script resizes the whole frame to
224×224 (`syncnet_resize`); on other footage (`calculate_scores_real_videos.sh`) syncnet_python's
`run_pipeline.py` first tracks the face (S3FD) and cuts a square around each box, padded by 40 % (`crop_scale`
0.4) and shifted down towards the mouth, then resizes it to 224×224 (`syncnet_crop`, or `syncnet_track_crops`
which also median-filters the box sizes and centres over 13 frames as run_pipeline does). Remaining
differences from the reference pipeline: it decodes frames from an XVID/JPEG re-encode and detects faces with
S3FD, neither of which is reproduced here, so expect small differences in the last digits.
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from functions.lipsync_metrics import DEFAULT_VSHIFT, LipSyncMetrics, metrics_from_distances
from functions.models.syncnet_v2 import CROP_SIZE, LIP_FRAMES, MFCC_COEFFS, MFCC_WINDOW, SyncNetV2, load_syncnet_v2
from schemas.errors import VideostudioError

WEIGHTS_ENV = "VIDEOSTUDIO_SYNCNET_WEIGHTS"
SAMPLE_RATE = 16_000
FPS = 25.0
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MFCC_PER_FRAME = 4  # 100 Hz / 25 fps
CROP_SCALE = 0.4  # run_pipeline.py --crop_scale
PAD_VALUE = 110  # run_pipeline.py pads frames with this grey before cropping
SMOOTH_KERNEL = 13  # run_pipeline.py median-filters box size and centre over this many frames


# --- crops -------------------------------------------------------------------------------------------

def syncnet_resize(image: np.ndarray) -> np.ndarray:
    """`image` resized to 224×224 with OpenCV's default (bilinear), as syncnet_python and Wav2Lip's LRS script do."""
    return cv2.resize(image, (CROP_SIZE, CROP_SIZE))


def _crop_around(frame: np.ndarray, size: float, cx: float, cy: float, crop_scale: float) -> np.ndarray:
    half = size  # half the larger side of the face box
    pad = int(half * (1 + 2 * crop_scale))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=PAD_VALUE)
    my, mx = cy + pad, cx + pad
    face = padded[int(my - half):int(my + half * (1 + 2 * crop_scale)),
                  int(mx - half * (1 + crop_scale)):int(mx + half * (1 + crop_scale))]
    if face.shape[0] < 1 or face.shape[1] < 1:
        raise ValueError(f"the face box (centre {cx:.1f}, {cy:.1f}, half-size {half:.1f}) lies outside the frame")
    return syncnet_resize(face)


def _box_geometry(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected [x1, y1, x2, y2] boxes, got shape {boxes.shape}")
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    return size, (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2


def syncnet_crop(frame: np.ndarray, box, *, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """The 224×224×3 uint8 crop syncnet_python's `run_pipeline.py` cuts from `frame` (H×W×3, any channel
    order, kept) for the face box `box` = [x1, y1, x2, y2] in pixels: half-size s = max(w, h)/2 around the box
    centre, rows centre − s … centre + s(1 + 2·crop_scale), columns centre ± s(1 + crop_scale) (a square,
    reaching below the chin), the frame padded with grey 110 where the square leaves it. Per frame, without
    run_pipeline's smoothing over time (see `syncnet_track_crops`)."""
    size, cx, cy = _box_geometry(np.asarray(box, dtype=np.float64).reshape(1, 4))
    return _crop_around(np.asarray(frame), float(size[0]), float(cx[0]), float(cy[0]), crop_scale)


def syncnet_track_crops(frames, boxes, *, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """(T, 224, 224, 3) uint8 crops of a face track, as `run_pipeline.py`'s crop_video: box half-sizes and
    centres median-filtered over 13 frames (scipy's `medfilt`, zero-padded at the ends as there), then
    `syncnet_crop`'s square for each frame. `frames`: T frames H×W×3; `boxes`: (T, 4) [x1, y1, x2, y2]."""
    from scipy.signal import medfilt

    size, cx, cy = _box_geometry(boxes)
    if len(frames) != len(size):
        raise ValueError(f"{len(frames)} frames but {len(size)} boxes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # medfilt warns when the track is shorter than the kernel
        size, cx, cy = (medfilt(v, kernel_size=SMOOTH_KERNEL) for v in (size, cx, cy))
    return np.stack([_crop_around(np.asarray(f), s, x, y, crop_scale) for f, s, x, y in zip(frames, size, cx, cy)])


# --- audio -------------------------------------------------------------------------------------------

def pcm16(wav: np.ndarray) -> np.ndarray:
    """A mono signal as 16-bit samples: int16 is kept; floats in [−1, 1] are scaled by 32768, rounded to
    nearest (ties to even) and clipped, as ffmpeg converts float audio to `pcm_s16le`."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono (N,) signal, got shape {wav.shape}")
    if wav.dtype == np.int16:
        return wav
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1] or int16, got {wav.dtype}")
    return np.clip(np.rint(wav.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def syncnet_mfcc(wav: np.ndarray) -> np.ndarray:
    """(13, M) MFCC of 16 kHz mono audio, as syncnet_python computes it: `python_speech_features.mfcc` with
    its defaults on the 16-bit samples. Column c covers samples 160c … 160c + 399 (the end zero-padded);
    M = 1 + ceil((N − 400) / 160)."""
    from python_speech_features import mfcc

    samples = pcm16(wav)
    if samples.shape[0] == 0:
        raise VideostudioError("missing_speech", "the audio is empty")
    return np.ascontiguousarray(mfcc(samples, SAMPLE_RATE).T, dtype=np.float32)


def usable_syncnet_windows(n_frames: int, n_samples: int) -> int:
    """5-frame windows syncnet_python scores: min(frames, samples // 640) − 5 (may be ≤ 0)."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - LIP_FRAMES


def mfcc_window(mfcc: np.ndarray, t: int) -> np.ndarray:
    """The (13, 20) MFCC window of the 5-frame window starting at video frame t: columns 4t … 4t + 19."""
    start = MFCC_PER_FRAME * t
    window = mfcc[:, start:start + MFCC_WINDOW]
    if window.shape != (MFCC_COEFFS, MFCC_WINDOW):
        raise ValueError(f"MFCC window {t} runs past the audio ({mfcc.shape[1]} columns)")
    return window


# --- scoring -----------------------------------------------------------------------------------------

def _check_crops(face_crops: np.ndarray) -> np.ndarray:
    face_crops = np.asarray(face_crops)
    if face_crops.ndim != 4 or face_crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected (T, 224, 224, 3) face crops, got shape {face_crops.shape}")
    if face_crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 face crops, got {face_crops.dtype}")
    return face_crops


@torch.no_grad()
def syncnet_embeddings(face_crops: np.ndarray, wav: np.ndarray, model: SyncNetV2, *, batch_size: int = 20,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, audio) embeddings, (W, 1024) float32 each on the CPU, of the W windows syncnet_python scores.
    `face_crops`: (T, 224, 224, 3) uint8 RGB at 25 fps; `wav`: 16 kHz mono (float in [−1, 1] or int16).
    `device`: where the windows are sent, by default that of the model's parameters (move the model first)."""
    face_crops = _check_crops(face_crops)
    samples = pcm16(wav)
    windows = usable_syncnet_windows(face_crops.shape[0], samples.shape[0])
    if windows < 1:
        raise VideostudioError("video_too_short", f"{face_crops.shape[0]} frames and {samples.shape[0] / SAMPLE_RATE:.2f} s "
                                                  f"of audio: SyncNet scoring needs at least {LIP_FRAMES + 1} frames "
                                                  f"of both")
    mfcc = syncnet_mfcc(samples)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        video, audio = [], []
        for start in range(0, windows, batch_size):
            idx = range(start, min(windows, start + batch_size))
            # RGB → BGR, (5, H, W, 3) → (3, 5, H, W), values 0…255 as floats
            clips = np.stack([face_crops[t:t + LIP_FRAMES, :, :, ::-1].transpose(3, 0, 1, 2) for t in idx])
            cc = np.stack([mfcc_window(mfcc, t) for t in idx])[:, None]
            video.append(model.forward_lip(torch.from_numpy(clips.astype(np.float32)).to(device)).float().cpu())
            audio.append(model.forward_audio(torch.from_numpy(cc).to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(video), torch.cat(audio)


def syncnet_offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = DEFAULT_VSHIFT) -> np.ndarray:
    """(2·vshift + 1,) distance curve by offset k = −vshift … +vshift: the mean over all W windows t of
    ‖video_t − audio_{t−k}‖, an out-of-range audio_{t−k} read as the zero vector (syncnet_python's
    `calc_pdist` then mean, listed in reverse: its shift j is vshift − k)."""
    if video.dim() != 2 or video.shape != audio.shape:
        raise ValueError(f"expected two (W, D) embeddings of one shape, got {tuple(video.shape)} and {tuple(audio.shape)}")
    if vshift < 0:
        raise ValueError("vshift must be ≥ 0")
    windows, span = video.shape[0], 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # row t + j holds audio_{t + j − vshift}
    dists = torch.stack([F.pairwise_distance(video[t:t + 1].expand(span, -1), padded[t:t + span])
                         for t in range(windows)])  # (W, span), column j = shift j
    per_shift = dists.mean(dim=0)
    return per_shift.flip(0).double().numpy()


def standard_lse(face_crops: np.ndarray, wav: np.ndarray, model: SyncNetV2, *, vshift: int = DEFAULT_VSHIFT,
                 batch_size: int = 20, device: torch.device | str | None = None) -> LipSyncMetrics:
    """Standard LSE of one clip: `min_dist` is LSE-D, `confidence` LSE-C, `offset_frames` the AV offset
    (scorer "syncnet_v2", comparable_with_published True). `face_crops`: (T, 224, 224, 3) uint8 RGB at 25 fps
    (`syncnet_crop` / `syncnet_track_crops`, or `syncnet_resize` of LRS-style frames); `wav`: the clip's
    16 kHz mono audio starting with frame 0. Comparable with published numbers only with the public
    `syncnet_v2.model` weights loaded (see the module docstring)."""
    video, audio = syncnet_embeddings(face_crops, wav, model, batch_size=batch_size, device=device)
    distances = syncnet_offset_distances(video, audio, vshift)
    return metrics_from_distances(distances, vshift=vshift, windows=video.shape[0], fps=FPS, scorer="syncnet_v2")


def syncnet_weights_from_env() -> SyncNetV2 | None:
    """SyncNet v2 with the weights `VIDEOSTUDIO_SYNCNET_WEIGHTS` names (a local `syncnet_v2.model`, or a hub
    file `owner/repo:file`), or None when the variable is unset or empty. A path with no file raises
    `syncnet_weights_unavailable`; a file that is not the public layout raises `syncnet_weights_incompatible`."""
    spec = os.environ.get(WEIGHTS_ENV, "").strip()
    if not spec:
        return None
    try:
        return load_syncnet_v2(spec)
    except VideostudioError as exc:
        raise VideostudioError(exc.code, f"{WEIGHTS_ENV}={spec!r}: {exc.message}") from None
