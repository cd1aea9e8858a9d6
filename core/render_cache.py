"""The render cache's index in the bucket, and its invalidation by avatar.

- `cache/renders/<key>.json`: a `RenderCacheEntry` naming the succeeded source job and its output keys.
- `cache/by-avatar/<avatar>/<name>`: one marker per cache object made with that avatar; its body lists the bucket
  keys to delete when the avatar is deleted (render entries, and intermediate latents under `cache/latents/`).

The determinism key itself is computed in functions/ (it needs the model layer); this module only stores and
finds entries, and checks that an entry's source job succeeded and its outputs still exist.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from core.cache_store import USED_SUFFIX
from core.jobs import ManifestStore
from core.storage import Storage
from core.storage.base import ObjectNotFound
from schemas.cache import RenderCacheEntry
from schemas.manifest import JobStatus

log = logging.getLogger("videostudio.cache")

CACHE_PREFIX = "cache/"
RENDERS_PREFIX = CACHE_PREFIX + "renders/"
BY_AVATAR_PREFIX = CACHE_PREFIX + "by-avatar/"


def entry_key(key: str) -> str:
    return f"{RENDERS_PREFIX}{key}.json"


class RenderCacheIndex:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, key: str) -> RenderCacheEntry | None:
        """The entry recorded for `key`; None when there is none (or it is unreadable: a cache never fails a job)."""
        try:
            return RenderCacheEntry.model_validate_json(self.storage.get_bytes(entry_key(key)))
        except ObjectNotFound:
            return None
        except ValidationError:
            log.warning("ignoring a malformed render cache entry %s", key)
            return None

    def usable(self, entry: RenderCacheEntry) -> bool:
        """The source job succeeded and every output it recorded is still in the bucket."""
        source = ManifestStore(self.storage).load(entry.source_job)
        if source is None or source.status != JobStatus.succeeded:
            return False
        return all(self.storage.stat(key) is not None for key in entry.outputs.values())

    def put(self, entry: RenderCacheEntry) -> None:
        """Record a succeeded render (the by-avatar marker first, so an entry is never left out of invalidation)."""
        key = entry_key(entry.key)
        if entry.avatar is not None:
            self.mark_avatar(entry.avatar, f"render-{entry.key}", [key])
        self.storage.put_bytes(key, entry.model_dump_json(indent=2).encode(), content_type="application/json")

    def drop(self, key: str) -> None:
        self.storage.delete(entry_key(key))

    def mark_avatar(self, avatar_id: str, name: str, keys: list[str]) -> None:
        """Note that `keys` were made with `avatar_id`: deleting the avatar deletes them."""
        self.storage.put_bytes(f"{BY_AVATAR_PREFIX}{avatar_id}/{name}", json.dumps(keys).encode(),
                               content_type="application/json")

    def invalidate_avatar(self, avatar_id: str) -> int:
        """Delete every cache object made with `avatar_id`; how many markers were settled."""
        count = 0
        for marker in self.storage.list_keys(f"{BY_AVATAR_PREFIX}{avatar_id}/"):
            try:
                keys = json.loads(self.storage.get_bytes(marker))
            except (ObjectNotFound, ValueError):
                keys = []
            for key in keys if isinstance(keys, list) else []:
                if isinstance(key, str) and key.startswith(CACHE_PREFIX):  # never anything outside the cache
                    self.storage.delete(key)
                    self.storage.delete(key + USED_SUFFIX)  # a size-limited store's use marker, if any
            self.storage.delete(marker)
            count += 1
        return count
