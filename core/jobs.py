"""Job identity, the manifest store, and the stage state machine.

- `derive_job_id`: the same input (bucket, key, bytes) is always the same job, so a
  duplicated event or a re-upload of identical bytes cannot start a second job.
- `ManifestStore`: `create` is create-if-absent (the job lock); `update` is a
  compare-and-swap loop on the manifest's etag, so concurrent writers (a worker, a
  webhook sender, a cancel) never lose each other's changes.
"""

from __future__ import annotations

import hashlib
import platform
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from functools import lru_cache
from importlib import metadata

from core.storage import PreconditionFailed, Storage, StorageError
from core.storage.base import ObjectNotFound
from schemas.errors import VideostudioError
from schemas.manifest import (
    InputRecord,
    JobManifest,
    StageManifest,
    StageRecord,
    StageStatus,
    Versions,
    utcnow,
)

JOBS_PREFIX = "jobs/"
CAS_RETRIES = 50
CAS_BACKOFF_S = 0.02
DocT = TypeVar("DocT", bound=Any)  # a pydantic manifest with an `updated_at`

# Which stage statuses may follow which: anything else is a bug, not a user error.
STAGE_TRANSITIONS: dict[StageStatus, set[StageStatus]] = {
    StageStatus.pending: {StageStatus.queued, StageStatus.running, StageStatus.cancelled, StageStatus.failed},
    StageStatus.queued: {StageStatus.running, StageStatus.cancelled, StageStatus.failed},
    StageStatus.running: {StageStatus.running, StageStatus.succeeded, StageStatus.failed, StageStatus.queued,
                          StageStatus.cancelled},
    StageStatus.failed: {StageStatus.queued},  # an explicit retry
    StageStatus.succeeded: set(),
    StageStatus.cancelled: set(),
}


class InvalidTransition(VideostudioError):
    def __init__(self, stage: str, old: StageStatus, new: StageStatus) -> None:
        super().__init__("invalid_transition", f"stage {stage!r} cannot go from {old.value} to {new.value}")


def set_stage_status(manifest: JobManifest, stage: str, new: StageStatus) -> StageRecord:
    record = manifest.stages[stage]
    if new != record.status and new not in STAGE_TRANSITIONS[record.status]:
        raise InvalidTransition(stage, record.status, new)
    record.status = new
    return record


def add_stage_seconds(manifest: JobManifest, stage: str, seconds: float) -> None:
    """Add one attempt's wall time to the stage's cost (kept to the millisecond)."""
    manifest.cost.seconds[stage] = round(manifest.cost.seconds.get(stage, 0.0) + seconds, 3)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "job"


def derive_job_id(bucket: str, key: str, content_hash: str) -> str:
    """`<readable stem>-<16 hex of sha256(bucket, key, content)>`: stable, path-safe, unique per input."""
    digest = hashlib.sha256(f"{bucket}\0{key}\0{content_hash}".encode()).hexdigest()[:16]
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{_slug(stem)}-{digest}"


def manifest_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/manifest.json"


def stage_prefix(job_id: str, stage: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/{stage}/"


def cancel_marker_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/cancel-requested"


def webhook_body_key(job_id: str, webhook_id: str) -> str:
    """Where a webhook event's body is stored, once, so that every attempt sends the same bytes."""
    return f"{JOBS_PREFIX}{job_id}/webhooks/{webhook_id}.json"


@lru_cache(maxsize=8)
def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions(model: str | None = None) -> Versions:
    # Package metadata is read once per process: it costs ~1 ms a lookup and never changes under us.
    return Versions(
        videostudio=_installed_version("videostudio") or "0+unknown",
        python=platform.python_version(),
        torch=_installed_version("torch"),
        diffusers=_installed_version("diffusers"),
        model=model,
    )


def new_manifest(job_id: str, kind: str, input_record: InputRecord, stages: list[str]) -> JobManifest:
    return JobManifest(
        job_id=job_id,
        kind=kind,
        input=input_record,
        stages={name: StageRecord() for name in stages},
        versions=package_versions(),
    )


class ManifestStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def load(self, job_id: str) -> JobManifest | None:
        manifest, _ = self._load_with_etag(job_id)
        return manifest

    def load_with_etag(self, job_id: str) -> tuple[JobManifest | None, str | None]:
        """The manifest and the etag it was read at (None, None when there is none)."""
        return self._load_with_etag(job_id)

    def listed(self) -> Iterator[tuple[str, str]]:
        """(job id, manifest etag) of every job, from one listing of jobs/ (no manifest is read)."""
        for info in self.storage.list(JOBS_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                yield parts[1], info.etag

    def _load_with_etag(self, job_id: str) -> tuple[JobManifest | None, str | None]:
        # The bytes with the etag they were read at (one GET on S3; stat, read, stat locally).
        try:
            data, info = self.storage.get_bytes_with_info(manifest_key(job_id))
        except ObjectNotFound:
            return None, None
        except StorageError as exc:
            if exc.code == "object_contention":
                raise VideostudioError("manifest_contention", f"manifest of {job_id} keeps changing",
                                       retryable=True) from None
            raise
        return JobManifest.model_validate_json(data), info.etag

    def create(self, manifest: JobManifest) -> bool:
        """Create the job's manifest unless it exists: True for the one caller that created the job."""
        return self.storage.create_if_absent(manifest_key(manifest.job_id), _dump(manifest),
                                             content_type="application/json")

    def update(self, job_id: str, mutate: Callable[[JobManifest], None]) -> JobManifest:
        """Apply `mutate` to the latest manifest and write it back if nobody wrote in between."""
        def changed(manifest: JobManifest) -> bool:
            mutate(manifest)
            return True  # a job's mutation always writes (its mutators return whatever they like)

        return cas_update(self.storage, manifest_key(job_id), lambda: self._load_with_etag(job_id), changed,
                          dump=_dump, retries=CAS_RETRIES,
                          missing=lambda: VideostudioError("job_not_found", f"no job {job_id!r}"),
                          what=f"manifest of {job_id}")

    def write_stage_manifest(self, stage_manifest: StageManifest) -> str:
        key = stage_prefix(stage_manifest.job_id, stage_manifest.stage) + "manifest.json"
        self.storage.put_bytes(key, stage_manifest.model_dump_json(indent=2).encode(), content_type="application/json")
        return key

    def job_ids(self) -> Iterator[str]:
        for job_id, _ in self.listed():
            yield job_id

    def all(self) -> Iterator[JobManifest]:
        for job_id in self.job_ids():
            manifest = self.load(job_id)
            if manifest is not None:
                yield manifest


def cas_update(storage: Storage, key: str, load: Callable[[], tuple[DocT | None, str | None]],
               mutate: Callable[[DocT], bool | None], *, dump: Callable[[DocT], bytes], retries: int,
               missing: Callable[[], VideostudioError], what: str) -> DocT:
    """The compare-and-swap of a JSON manifest (a job's, a batch's): load it with its etag, `mutate` it, and write it
    back only if nobody wrote in between, else again. `mutate` returning False means "nothing changed": no write."""
    for _ in range(retries):
        document, etag = load()
        if document is None:
            raise missing()
        if mutate(document) is False:
            return document
        document.updated_at = utcnow()
        try:
            storage.put_bytes(key, dump(document), if_match=etag, content_type="application/json")
            return document
        except PreconditionFailed:
            time.sleep(random.uniform(0, CAS_BACKOFF_S))  # de-synchronise writers that collided
    raise VideostudioError("manifest_contention", f"could not update the {what}", retryable=True)


def _dump(manifest: JobManifest) -> bytes:
    return manifest.model_dump_json(indent=2).encode()
