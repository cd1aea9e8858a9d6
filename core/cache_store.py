"""A size-limited store of cache entries in the bucket, evicting the least recently used first.

Each entry is `<prefix><name>` (its bytes) and `<prefix><name>.used` (a tiny marker rewritten when the entry is
read). Rewriting a marker instead of the entry keeps a hit to one small write; an entry's last use is the later
of the two objects' modification times, so eviction needs one listing and no reads. Several workers may share
the store: a race can evict an entry another just read (it is a cache: the next reader recomputes it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from core.storage import Storage
from core.storage.base import ObjectNotFound, StorageError

log = logging.getLogger("videostudio.cache")

USED_SUFFIX = ".used"


@dataclass(frozen=True)
class StoredEntry:
    name: str
    bytes: int
    last_used: datetime


class BucketLRU:
    def __init__(self, storage: Storage, *, prefix: str, max_bytes: int) -> None:
        if not prefix.endswith("/"):
            raise ValueError("a cache prefix ends with /")
        self.storage, self.prefix, self.max_bytes = storage, prefix, max_bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, name: str) -> bytes | None:
        """The entry's bytes (and its use recorded), or None when absent."""
        if not self.enabled:
            return None
        try:
            data = self.storage.get_bytes(self.prefix + name)
        except ObjectNotFound:
            return None
        self.touch(name)
        return data

    def put(self, name: str, data: bytes) -> bool:
        """Store an entry, then evict down to the limit. False when it alone is over the limit (not stored)."""
        if not self.enabled or len(data) > self.max_bytes:
            return False
        self.storage.put_bytes(self.prefix + name, data, content_type="application/octet-stream")
        self.touch(name)
        self.evict()
        return True

    def touch(self, name: str) -> None:
        try:
            self.storage.put_bytes(self.prefix + name + USED_SUFFIX, str(time.time_ns()).encode())
        except StorageError as exc:  # a cache's bookkeeping never fails a render
            log.warning("could not record the use of cache entry %s: %s", name, exc)

    def entries(self) -> Iterator[StoredEntry]:
        sizes: dict[str, int] = {}
        used: dict[str, datetime] = {}
        for info in self.storage.list(self.prefix):
            rel = info.key[len(self.prefix):]
            name = rel[: -len(USED_SUFFIX)] if rel.endswith(USED_SUFFIX) else rel
            sizes[name] = sizes.get(name, 0) + info.size
            used[name] = max(used.get(name, info.modified), info.modified)
        for name, size in sizes.items():
            yield StoredEntry(name=name, bytes=size, last_used=used[name])

    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries())

    def evict(self) -> list[str]:
        """Delete the least recently used entries until the store is within its limit; the names deleted."""
        entries = sorted(self.entries(), key=lambda e: (e.last_used, e.name))
        total = sum(e.bytes for e in entries)
        evicted = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            self.delete(entry.name)
            total -= entry.bytes
            evicted.append(entry.name)
        return evicted

    def delete(self, name: str) -> None:
        for key in (self.prefix + name, self.prefix + name + USED_SUFFIX):
            try:
                self.storage.delete(key)
            except ObjectNotFound:
                pass
