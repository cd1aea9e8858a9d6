"""Voice activity: the share of a recording that is speech (Silero VAD, its ONNX model inside the wheel).

Silero runs through onnxruntime on one thread; nothing downloads. webrtcvad was measured here and
rejected: it called white, pink and brown noise and a 440 Hz tone 100 % speech, so it cannot tell a
talking video from a noisy one; Silero gave those 0 % and real speech (../shared/media) 61–96 %.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from core.audio import SPEECH_SAMPLE_RATE, Audio, resample

VAD_THRESHOLD = 0.5  # Silero's speech probability threshold (its default)
VAD_MIN_SPEECH_MS = 250  # shorter bursts (clicks, a cough) do not count as speech (Silero's default)
VAD_MIN_SILENCE_MS = 100  # pauses shorter than this stay inside a speech segment (Silero's default)

_vad_lock = threading.Lock()


@lru_cache(maxsize=1)
def _vad_model():
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=True)  # the ONNX model inside the wheel, on onnxruntime with one thread


def speech_share(audio: Audio) -> float:
    """The share (0..1) of `audio` that Silero VAD calls speech."""
    if len(audio.samples) == 0:
        return 0.0
    import torch
    from silero_vad import get_speech_timestamps

    audio = resample(audio, SPEECH_SAMPLE_RATE)
    with _vad_lock:  # the model object keeps its recurrent state between calls
        segments = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio.samples)), _vad_model(),
                                         sampling_rate=SPEECH_SAMPLE_RATE, threshold=VAD_THRESHOLD,
                                         min_speech_duration_ms=VAD_MIN_SPEECH_MS,
                                         min_silence_duration_ms=VAD_MIN_SILENCE_MS)
    return round(sum(s["end"] - s["start"] for s in segments) / len(audio.samples), 4)
