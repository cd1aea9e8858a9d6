"""InfiniteTalk's encoders through the encoder cache (functions/encoder_cache.py): the UMT5 states of its prompt
and negative prompt (the same for every render of an avatar) and the wav2vec2 features of a take.

Identities: `tiny` (built in code, seed 0) or the weights identity of `components` (UMT5) and `audio_encoder`
(wav2vec2), with the quantization method, device and dtype; an unknown identity caches nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from functions.encoder_cache import EncoderCache, encoder_key
from functions.infinitetalk_pipeline import TEXT_TOKENS, Sampler, TextCache
from functions.model_identity import source_identity
from functions.models.infinitetalk_loading import TINY, InfiniteTalkModels
from schemas.brief import InfiniteTalkOptions


def _weights(options: InfiniteTalkOptions, field: str) -> str | None:
    if options.base_model == TINY:  # every part is built in code
        return source_identity(TINY, tiny={"builder": "functions/models/infinitetalk_loading.py _tiny", "seed": 0})
    return source_identity(getattr(options, field))


def text_cache(cache: EncoderCache, options: InfiniteTalkOptions, *, method: str) -> TextCache:
    weights = _weights(options, "components")

    def states(sampler: Sampler, text: str) -> torch.Tensor:
        identity = {"encoder": "wan-umt5", "weights": weights, "quantization": method, "tokens": TEXT_TOKENS,
                    "device": str(sampler.device), "dtype": str(sampler.dtype)}
        key = encoder_key(identity, {"text": text.strip()}) if weights is not None else None
        out = cache.get_or_encode(key, lambda: {"states": sampler.encode_text(text)}, device=sampler.device)
        return out["states"].to(sampler.dtype)

    return states


def speech_features(cache: EncoderCache, models: InfiniteTalkModels, options: InfiniteTalkOptions,
                    wave: np.ndarray, *, frames: int) -> torch.Tensor:
    """wav2vec2 features of `wave` (16 kHz mono float32) at `frames` rows, by the samples' content hash."""
    weights = _weights(options, "audio_encoder")
    samples = np.ascontiguousarray(wave, dtype=np.float32)
    identity: dict[str, Any] = {"encoder": "wav2vec2", "weights": weights, "device": str(models.speech.device),
                                "dtype": str(models.speech.dtype)}
    inputs = {"samples_sha256": hashlib.sha256(samples.tobytes()).hexdigest(), "frames": int(frames)}
    key = encoder_key(identity, inputs) if weights is not None else None
    out = cache.get_or_encode(key, lambda: {"features": models.speech.features(samples, frames=frames)}, device="cpu")
    return out["features"]
