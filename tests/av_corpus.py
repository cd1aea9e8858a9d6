"""A synthetic audio-visual pair for Wav2Lip tests: real speech and a face whose mouth follows it.

The astronaut's face (scikit-image) resized to Wav2Lip's 96-px crop; in frame i a dark ellipse (the open
mouth) is as tall as the loudness of the speech in that frame's 40 ms, plus a little sensor noise so that
no two frames are equal. The lip-sync expert can learn this relation, and a generator can learn to draw
the mouth from the audio, on CPU in seconds.
"""

from __future__ import annotations

import numpy as np
import torch

FPS = 25
SAMPLES_PER_FRAME = 16000 // FPS
NOISE = 0.02  # per-pixel sensor noise (std, in [0, 1] units)


def speech_envelope(wav: np.ndarray) -> np.ndarray:
    """Per video frame loudness in [0, 1]: RMS in dB over the frame's 40 ms, the top 40 dB kept."""
    frames = len(wav) // SAMPLES_PER_FRAME
    rms = np.sqrt((wav[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME) ** 2).mean(axis=1))
    db = 20 * np.log10(rms + 1e-5)
    return np.clip((db - db.max() + 40) / 40, 0, 1)


def astronaut_face() -> np.ndarray:
    """The astronaut's face as a 96×96×3 float32 RGB crop in [0, 1]."""
    from PIL import Image
    from skimage import data

    face = Image.fromarray(data.astronaut()[40:190, 150:300]).resize((96, 96), Image.BILINEAR)
    return np.asarray(face, np.float32) / 255


def talking_lower_halves(envelope: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Lower halves (N, 3, 48, 96) of the astronaut's 96-px face whose mouth opens with `envelope`."""
    lower = astronaut_face()[48:]
    rows, cols = np.mgrid[0:48, 0:96]
    rng = np.random.default_rng(seed)
    out = np.empty((len(envelope), 3, 48, 96), np.float32)
    for i, opening in enumerate(envelope):
        frame = lower.copy()
        frame[((rows - 19) / (1 + 9 * opening)) ** 2 + ((cols - 48) / 13) ** 2 <= 1] = 0.1  # a dark open mouth
        frame += rng.normal(0, NOISE, frame.shape).astype(np.float32)  # sensor noise: no two frames equal
        out[i] = np.clip(frame, 0, 1).transpose(2, 0, 1)
    return torch.from_numpy(out)


def head_drift(n_frames: int, amplitude_px: float) -> np.ndarray:
    """(n, 2) integer (dy, dx) offsets of a slowly swaying head: two sines of incommensurate periods per
    axis, so frames a second or more apart are seldom aligned (as a reference frame in real footage)."""
    t = np.arange(n_frames) / FPS
    dx = 0.6 * np.sin(2 * np.pi * t / 1.7) + 0.4 * np.sin(2 * np.pi * t / 4.3 + 1.0)
    dy = 0.5 * np.sin(2 * np.pi * t / 2.9 + 2.0) + 0.3 * np.sin(2 * np.pi * t / 6.1)
    return np.rint(amplitude_px * np.stack((dy, dx), axis=1)).astype(int)


def talking_faces(envelope: np.ndarray, seed: int = 0, *, drift_px: float = 0.0) -> torch.Tensor:
    """Whole 96-px crops (N, 3, 96, 96): talking_lower_halves below a noisy upper half; with `drift_px`
    the whole face sways by up to that many pixels (edges replicated)."""
    upper = torch.from_numpy(astronaut_face()[:48].transpose(2, 0, 1).copy())
    rng = np.random.default_rng(seed + 1)  # the lower halves keep talking_lower_halves' own noise
    noise = torch.from_numpy(rng.normal(0, NOISE, (len(envelope), *upper.shape)).astype(np.float32))
    faces = torch.cat(((upper + noise).clamp(0, 1), talking_lower_halves(envelope, seed)), dim=2)
    if drift_px:
        pad = int(np.ceil(drift_px))
        padded = torch.nn.functional.pad(faces, (pad,) * 4, mode="replicate")
        faces = torch.stack([padded[i, :, pad - dy:pad - dy + 96, pad - dx:pad - dx + 96]
                             for i, (dy, dx) in enumerate(head_drift(len(envelope), drift_px))])
    return faces


def frame_windows(faces: torch.Tensor, frame_mels: torch.Tensor, start: int, stop: int, *,
                  with_references: bool = True):
    """The WindowSet of the 5-frame windows whose first frame is in [start, stop), as views of `faces`
    (N, 3, 96, 96) and `frame_mels` (N, 80, 16). References: the window half the range away (another
    moment of the same split; copied), or the targets themselves when the caller has no use for them."""
    from functions.wav2lip_training import WindowSet

    targets = faces.unfold(0, 5, 1).permute(0, 4, 1, 2, 3)[start:stop]  # a view: windows overlap
    mels = frame_mels.unfold(0, 5, 1).permute(0, 3, 1, 2)[start:stop]
    half = (stop - start) // 2
    references = torch.cat((targets[half:], targets[:half])) if with_references else targets
    return WindowSet(targets=targets, references=references, frame_mels=mels, sync_mels=frame_mels[start:stop],
                     first_frames=torch.arange(start, stop))
