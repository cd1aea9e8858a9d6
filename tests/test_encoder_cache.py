"""The encoder cache's parts: the per-worker LRU, the bucket level, and InfiniteTalk's UMT5 and wav2vec2 through
it (tiny random models: what is checked is that a hit returns exactly what encoding returns, and is counted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.settings import Settings
from core.storage import LocalStorage
from functions.encoder_cache import EncoderCache, MemoryLRU, encoder_key
from functions.infinitetalk_encoders import speech_features, text_cache
from functions.infinitetalk_pipeline import Sampler
from functions.models.infinitetalk_loading import load_models
from schemas.brief import InfiniteTalkOptions


def tensors(value: float, n: int = 32) -> dict[str, torch.Tensor]:
    return {"x": torch.full((n,), value)}  # n float32 values: 4n bytes


def test_the_memory_lru_is_bounded_by_bytes_and_drops_the_least_recently_used():
    lru = MemoryLRU()
    for name in "abc":
        lru.put(name, tensors(1.0), max_bytes=400)
    assert lru.get("a") is not None  # a becomes the most recent
    lru.put("d", tensors(2.0), max_bytes=400)
    assert lru.get("b") is None and all(lru.get(n) is not None for n in "acd") and lru.nbytes <= 400
    lru.put("big", tensors(3.0, n=1000), max_bytes=400)
    assert lru.get("big") is None


def test_hits_come_from_memory_then_from_the_bucket_and_are_copies(tmp_path):
    storage = LocalStorage(tmp_path / "bucket")
    calls = []

    def encode():
        calls.append(1)
        return {"x": torch.arange(4.0)}

    key = encoder_key({"encoder": "test"}, {"text": "hello"})
    memory = MemoryLRU()
    cache = EncoderCache(storage, Settings(bucket=str(tmp_path)), memory=memory)
    first = cache.get_or_encode(key, encode)
    first["x"].add_(100)  # a caller writing into its tensors never changes the cache
    assert torch.equal(cache.get_or_encode(key, encode)["x"], torch.arange(4.0))
    assert cache.stats.misses == 1 and cache.stats.memory_hits == 1 and len(calls) == 1
    other_worker = EncoderCache(storage, Settings(bucket=str(tmp_path)), memory=MemoryLRU())
    assert torch.equal(other_worker.get_or_encode(key, encode)["x"], torch.arange(4.0))
    assert other_worker.stats.bucket_hits == 1 and len(calls) == 1
    # an encoder of unknown identity is never cached
    unknown = EncoderCache(storage, Settings(bucket=str(tmp_path)), memory=MemoryLRU())
    unknown.get_or_encode(None, encode)
    unknown.get_or_encode(None, encode)
    assert unknown.stats.misses == 2 and len(calls) == 3


def test_a_key_changes_with_the_encoder_and_with_the_inputs():
    base = encoder_key({"encoder": "t5", "model": "m1"}, {"text": "hi"})
    assert base == encoder_key({"model": "m1", "encoder": "t5"}, {"text": "hi"})
    assert base != encoder_key({"encoder": "t5", "model": "m2"}, {"text": "hi"})
    assert base != encoder_key({"encoder": "t5", "model": "m1"}, {"text": "hi!"})


@pytest.fixture(scope="module")
def tiny_models():
    options = InfiniteTalkOptions(base_model="tiny", height=32, width=32)
    return options, load_models(options, device="cpu")


def test_infinitetalk_umt5_states_through_the_cache_are_the_encoders(tiny_models, tmp_path):
    options, models = tiny_models
    cache = EncoderCache(LocalStorage(tmp_path / "bucket"), Settings(bucket=str(tmp_path)), memory=MemoryLRU())
    hook = text_cache(cache, options, method="none")
    kwargs = dict(prompt=options.prompt, negative_prompt=options.negative_prompt, height=32, width=32, shift=7.0)
    plain = Sampler(models.components, **kwargs)
    cached = Sampler(models.components, text_cache=hook, **kwargs)
    again = Sampler(models.components, text_cache=hook, **kwargs)
    assert torch.equal(cached.text, plain.text) and torch.equal(cached.null_text, plain.null_text)
    assert torch.equal(again.text, plain.text) and again.text.dtype == plain.text.dtype
    assert cache.stats.misses == 2 and cache.stats.memory_hits == 2


def test_infinitetalk_wav2vec2_features_through_the_cache_are_the_encoders(tiny_models, tmp_path):
    options, models = tiny_models
    cache = EncoderCache(LocalStorage(tmp_path / "bucket"), Settings(bucket=str(tmp_path)), memory=MemoryLRU())
    wave = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    expected = models.speech.features(wave, frames=25)
    assert torch.equal(speech_features(cache, models, options, wave, frames=25), expected)
    assert torch.equal(speech_features(cache, models, options, wave, frames=25), expected)
    assert cache.stats.misses == 1 and cache.stats.memory_hits == 1
    speech_features(cache, models, options, wave, frames=24)  # another frame count: another key
    speech_features(cache, models, options, wave[::-1].copy(), frames=25)  # other samples: another key
    assert cache.stats.misses == 3
