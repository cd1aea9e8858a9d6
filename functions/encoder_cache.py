"""The encoder cache: text- and audio-encoder outputs by content hash, so a prompt (or a take) seen before skips
its encoder, whatever the seed.

Two levels:
- per worker, in memory: a least-recently-used map bounded by bytes (VIDEOSTUDIO_ENCODER_CACHE_MEMORY_BYTES);
- in the bucket, `cache/encoders/<key>.safetensors`, bounded by VIDEOSTUDIO_ENCODER_CACHE_MAX_BYTES with the
  least recently used entries evicted first (core/cache_store.py).
A key (`encoder_key`) is the encoder's identity (model id and weights identity, or the tiny model's config; its
quantization, device and dtype) and its inputs (text, max length…). Tensors are kept on the CPU and handed out
as fresh copies on the caller's device, so a caller may write into them.

Wav2Lip's mel spectrogram is not cached: an STFT of the speech costs milliseconds, less than reading it back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from core.cache_store import BucketLRU
from core.settings import Settings
from core.storage import Storage
from functions.model_identity import digest
from schemas.cache import EncoderCacheStats

ENCODERS_PREFIX = "cache/encoders/"
Tensors = dict[str, torch.Tensor]


def encoder_key(encoder: dict[str, Any], inputs: dict[str, Any]) -> str:
    """sha256 of the encoder's identity and its inputs."""
    return digest({"encoder": encoder, "inputs": inputs})


def _nbytes(tensors: Tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class MemoryLRU:
    """A byte-bounded LRU of CPU tensors, shared by the renders of one worker process."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Tensors] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Tensors | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, tensors: Tensors, *, max_bytes: int) -> None:
        size = _nbytes(tensors)
        if size > max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._bytes -= _nbytes(self._items.pop(key))
            self._items[key] = tensors
            self._bytes += size
            while self._bytes > max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= _nbytes(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


MEMORY = MemoryLRU()  # per worker process


class EncoderCache:
    """The encoder cache as one render (or one training job) sees it; counts its hits in `stats`."""

    def __init__(self, storage: Storage | None, settings: Settings, *, memory: MemoryLRU = MEMORY) -> None:
        self.memory = memory
        self.memory_bytes = settings.encoder_cache_memory_bytes
        self.bucket = BucketLRU(storage, prefix=ENCODERS_PREFIX, max_bytes=settings.encoder_cache_max_bytes) \
            if storage is not None else None
        self.stats = EncoderCacheStats()
        self._lock = threading.Lock()

    def get_or_encode(self, key: str | None, encode: Callable[[], Tensors], *,
                      device: torch.device | str | None = None) -> Tensors:
        """The cached outputs for `key`, or `encode()`'s (then cached); fresh tensors on `device`. A None key (an
        encoder of unknown identity) always encodes and caches nothing."""
        if key is None:
            clock = time.perf_counter()
            outputs = encode()
            self._count("miss", encode_s=time.perf_counter() - clock)
            return outputs
        clock = time.perf_counter()
        found = self.memory.get(key)
        level = "memory"
        if found is None and self.bucket is not None:
            data = self.bucket.get(f"{key}.safetensors")
            if data is not None:
                found, level = load_tensors(data), "bucket"
                self.memory.put(key, found, max_bytes=self.memory_bytes)
        encode_s = 0.0
        if found is None:
            level = "miss"
            started = time.perf_counter()
            outputs = encode()
            encode_s = time.perf_counter() - started
            found = {name: t.detach().to("cpu").contiguous() for name, t in outputs.items()}
            self.memory.put(key, found, max_bytes=self.memory_bytes)
            if self.bucket is not None:
                self.bucket.put(f"{key}.safetensors", save_tensors(found))
        fresh = {name: _fresh(t, device) for name, t in found.items()}
        self._count(level, encode_s=encode_s, cache_s=time.perf_counter() - clock - encode_s)
        return fresh

    def _count(self, level: str, *, encode_s: float, cache_s: float = 0.0) -> None:
        with self._lock:
            if level == "memory":
                self.stats.memory_hits += 1
            elif level == "bucket":
                self.stats.bucket_hits += 1
            else:
                self.stats.misses += 1
            self.stats.encode_s += encode_s
            self.stats.cache_s += cache_s


def _fresh(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    moved = tensor.to(device) if device is not None else tensor
    return moved.clone() if moved is tensor else moved  # never hand out the cached tensor itself
