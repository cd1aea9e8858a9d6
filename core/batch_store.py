"""Batch identity and the batch manifest store: `batches/<batch_id>/manifest.json`, updated by compare-and-swap.

- `derive_batch_id`: like `derive_job_id`, from the bucket, the batch file's key and its bytes, so the
  same batch dropped twice is one batch.
- `item_job_id`: an item's job id from the batch id and the item's position, so expanding a batch
  again (after a crash) finds the same jobs instead of making new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from core.jobs import cas_update, derive_job_id
from core.storage import Storage
from core.storage.base import ObjectNotFound
from schemas.batch import BatchManifest
from schemas.errors import VideostudioError

BATCHES_PREFIX = "batches/"
CAS_RETRIES = 100  # every item's start and end lands on one manifest: more writers collide than on a job's


def derive_batch_id(bucket: str, key: str, content_hash: str) -> str:
    """`<name>-batch-<16 hex>`: the same (bucket, key, bytes) is always the same batch."""
    return derive_job_id(bucket, key, content_hash)


def item_job_id(batch_id: str, index: int) -> str:
    """`<batch stem>-<item number>-<16 hex of sha256(batch id, index)>`."""
    stem = batch_id.rsplit("-", 1)[0][:40]
    digest = hashlib.sha256(f"{batch_id}\0item\0{index}".encode()).hexdigest()[:16]
    return f"{stem}-{index + 1}-{digest}"


def batch_manifest_key(batch_id: str) -> str:
    return f"{BATCHES_PREFIX}{batch_id}/manifest.json"


def batch_item_key(batch_id: str, index: int) -> str:
    """The item's brief, merged with the batch's defaults: the input of its job (outside inbox/: it triggers nothing)."""
    return f"{BATCHES_PREFIX}{batch_id}/items/{index:05d}.json"


def batch_webhook_body_key(batch_id: str, webhook_id: str) -> str:
    return f"{BATCHES_PREFIX}{batch_id}/webhooks/{webhook_id}.json"


def batch_name(key: str) -> str:
    """`inbox/spring.batch.csv` → `spring`."""
    name = key.rsplit("/", 1)[-1]
    lower = name.lower()
    cut = lower.rfind(".batch.")
    return name[:cut] if cut > 0 else name


class BatchStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def load(self, batch_id: str) -> BatchManifest | None:
        manifest, _ = self._load_with_etag(batch_id)
        return manifest

    def _load_with_etag(self, batch_id: str) -> tuple[BatchManifest | None, str | None]:
        try:
            data, info = self.storage.get_bytes_with_info(batch_manifest_key(batch_id))
        except ObjectNotFound:
            return None, None
        return BatchManifest.model_validate_json(data), info.etag

    def create(self, manifest: BatchManifest) -> bool:
        """Create the batch manifest unless it exists: True for the one caller that created the batch."""
        return self.storage.create_if_absent(batch_manifest_key(manifest.batch_id), _dump(manifest),
                                             content_type="application/json")

    def update(self, batch_id: str, mutate: Callable[[BatchManifest], bool | None]) -> BatchManifest:
        """Apply `mutate` to the latest manifest and write it back if nobody wrote in between.
        `mutate` returning False means "nothing changed": no write."""
        return cas_update(self.storage, batch_manifest_key(batch_id), lambda: self._load_with_etag(batch_id), mutate,
                          dump=_dump, retries=CAS_RETRIES,
                          missing=lambda: VideostudioError("batch_not_found", f"no batch {batch_id!r}"),
                          what=f"manifest of batch {batch_id}")

    def batch_ids(self) -> Iterator[str]:
        for info in self.storage.list(BATCHES_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                yield parts[1]

    def all(self) -> Iterator[BatchManifest]:
        for batch_id in self.batch_ids():
            manifest = self.load(batch_id)
            if manifest is not None:
                yield manifest


def _dump(manifest: BatchManifest) -> bytes:
    # Compact: a 1,000-item manifest is rewritten at every item's start and end.
    return manifest.model_dump_json().encode()
