"""Wav2Lip's mel front end: the exact features its generator and lip-sync expert were trained on.

16 kHz mono → pre-emphasis (0.97) → STFT (n_fft 800, hop 200, Hann window 800, centred) → magnitude
→ 80-band Slaney mel (55-7600 Hz) → dB (floor −100 dB) − 20 dB → linear map of [−100, 0] dB onto
[−4, 4], clipped. One column per 200 samples: 80 columns per second (and one more for the centred
first frame). Frame i of a video at `fps` is driven by the 16 columns from int(80·i/fps).

STFT padding: the public checkpoints were made with librosa 0.7, whose centred STFT padded by
reflection; librosa ≥ 0.10 pads with zeros by default, so `reflect` is asked for explicitly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from schemas.errors import VideostudioError

SAMPLE_RATE = 16_000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_STEP = 16
COLUMNS_PER_SECOND = SAMPLE_RATE // HOP  # 80

_mel_basis: np.ndarray | None = None


def mel_basis() -> np.ndarray:
    """The (80, 401) Slaney filterbank (built once)."""
    global _mel_basis
    if _mel_basis is None:
        import librosa

        _mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False)
    return _mel_basis


def load_wav(path: str | os.PathLike) -> np.ndarray:
    """A sound file as 16 kHz mono float32 in [−1, 1] (mixed down and resampled when needed)."""
    import soundfile
    from scipy.signal import resample_poly

    try:
        data, rate = soundfile.read(Path(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:  # soundfile raises LibsndfileError (a RuntimeError) on bad files
        raise VideostudioError("unreadable_audio", f"cannot read audio {os.fspath(path)!r}: {exc}") from None
    wav = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(int(rate), SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return wav


def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    """y[n] = x[n] − k·x[n−1]: lifts the high frequencies that carry consonants."""
    from scipy.signal import lfilter

    return lfilter([1.0, -k], [1.0], wav)


def melspectrogram(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(80, 1 + len(wav) // 200) float32 in [−4, 4] for a 16 kHz mono signal."""
    import librosa

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the Wav2Lip front end takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz (see load_wav)")
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"expected a non-empty mono signal, got shape {wav.shape}")
    spectrum = np.abs(librosa.stft(y=preemphasis(wav), n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                                   window="hann", center=True, pad_mode="reflect"))
    mel = mel_basis() @ spectrum
    floor = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(floor, mel)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def window_start(frame_index: int, fps: float) -> int:
    """First mel column of video frame `frame_index` at `fps`: int(80·i/fps), as Wav2Lip's training."""
    if frame_index < 0 or not fps > 0:
        raise ValueError(f"need frame_index ≥ 0 and fps > 0, got {frame_index}, {fps}")
    return int(COLUMNS_PER_SECOND * frame_index / fps)


def mel_window(mel: np.ndarray, frame_index: int, fps: float = 25.0) -> np.ndarray:
    """The (80, 16) window of frame `frame_index`: columns int(80·i/fps) … +16.

    Past the end it is clamped to the last 16 columns, as Wav2Lip's inference does (its training
    instead drops such samples), so the last frames of a clip still get a window of real audio.
    """
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise ValueError(f"expected an (80, T) mel spectrogram, got {mel.shape}")
    if mel.shape[1] < MEL_STEP:
        raise VideostudioError("audio_too_short", f"{mel.shape[1]} mel columns: Wav2Lip needs at least "
                                                  f"{MEL_STEP} (0.2 s of audio)")
    start = min(window_start(frame_index, fps), mel.shape[1] - MEL_STEP)
    return mel[:, start:start + MEL_STEP]


def mel_windows(mel: np.ndarray, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """(n_frames, 80, 16): mel_window for frames 0 … n_frames − 1."""
    return np.stack([mel_window(mel, i, fps) for i in range(n_frames)]) if n_frames else np.zeros((0, N_MELS, MEL_STEP),
                                                                                                  np.float32)
