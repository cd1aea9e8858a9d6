"""The storage interface. Keys are `/`-separated and relative; callers never see machine paths.

Shaped after S3 so that an S3 backend fits without changing callers:
- conditional puts: `if_none_match=True` (create-if-absent, the lock primitive) and `if_match=etag`
  (compare-and-swap for manifests);
- every object has an opaque `etag` that changes on every write;
- `url()` gives a link for an output (a presigned URL on S3, a file URL locally).
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from schemas.errors import VideostudioError

_SAFE_KEY = re.compile(r"^[^\x00-\x1f\\]+$")
HASH_CHUNK = 1 << 20


class StorageError(VideostudioError):
    pass


class PreconditionFailed(StorageError):
    """A conditional put lost: the object exists (if_none_match) or changed (if_match)."""

    def __init__(self, key: str) -> None:
        super().__init__("precondition_failed", f"conditional write to {key!r} failed")
        self.key = key


class ObjectNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__("object_not_found", f"no object at {key!r}")
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: datetime


def file_sha256(path: Path) -> str:
    """sha256 of a local file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def validate_key(key: str) -> str:
    """Refuse keys that could escape the bucket or hide in it (`..`, absolute, control characters).

    Parts starting with `.` are refused too: hidden names are temp files and local state, never objects.
    """
    if not key or key.startswith("/") or not _SAFE_KEY.match(key):
        raise StorageError("invalid_key", f"invalid bucket key {key!r}")
    try:
        key.encode("utf-8")  # a file name that is not UTF-8 (read back with surrogate escapes) names no S3 key
    except UnicodeEncodeError:
        raise StorageError("invalid_key", f"bucket key {key!r} is not valid UTF-8") from None
    parts = key.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StorageError("invalid_key", f"invalid bucket key {key!r}")
    return key


class Storage(abc.ABC):
    """A bucket. Implementations: `LocalStorage` (a folder), `S3Storage` (an S3-compatible bucket)."""

    #: A short, non-secret identity used in job ids and events (folder name or bucket name).
    name: str
    #: Whether `url()` gives links that other machines can open (presigned URLs), fit for webhooks.
    shareable_urls: bool = False

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        """Write atomically: readers see the old object or the new one, never a part."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo: ...

    @abc.abstractmethod
    def download(self, key: str, path: Path) -> Path: ...

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def url(self, key: str, *, expires_s: int = 3600) -> str: ...

    # Derived helpers shared by every backend.
    def get_bytes_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The bytes and the etag they were read at. Backends that can (S3) do it in one request."""
        for _ in range(50):
            info = self.stat(key)
            if info is None:
                raise ObjectNotFound(key)
            data = self.get_bytes(key)
            after = self.stat(key)
            if after is not None and after.etag == info.etag:  # nobody replaced it between stat and read
                return data, info
        raise StorageError("object_contention", f"{key!r} keeps changing while it is read", retryable=True)

    def relative_key(self, bucket: str, full_key: str) -> str | None:
        """The key of an object an event names (bucket, full key), or None if it is not in this storage."""
        return full_key if bucket == self.name else None

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def create_if_absent(self, key: str, data: bytes, *, content_type: str | None = None) -> bool:
        """Create `key` unless it exists. True if this call created it."""
        try:
            self.put_bytes(key, data, if_none_match=True, content_type=content_type)
        except PreconditionFailed:
            return False
        return True

    def content_hash(self, key: str) -> str:
        """sha256 of the object's bytes (streamed by backends that can)."""
        return hashlib.sha256(self.get_bytes(key)).hexdigest()

    def list_keys(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.list(prefix)]
