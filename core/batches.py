"""Batches, as the runner sees them: one facade over the batch store, expansion, tracking and webhook.

- `submit`: a batch file from `inbox/` (any intake: it comes through `Runner.submit`) becomes one
  batch and one job per item (core/batch_expand.py);
- `on_job_event`: the runner's webhook-event seam hands every job event here; those of batch items
  move the batch's counts, progress and ETA, and the last one completes it (core/batch_track.py);
- `deliver`: one attempt of `batch.completed` (core/batch_webhooks.py);
- `cancel`, `reconcile`: a whole batch; repair from storage after a crash.
"""

from __future__ import annotations

from collections.abc import Callable

from core.batch_expand import BatchExpander
from core.batch_format import BatchFormat
from core.batch_store import BatchStore
from core.batch_track import BatchTracker
from core.batch_webhooks import BatchWebhooks
from core.jobs import ManifestStore
from core.queue import Lease, WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from core.stage import Pipeline
from core.storage import ObjectInfo, Storage
from schemas.batch import BatchManifest
from schemas.errors import VideostudioError
from schemas.manifest import JobManifest


class Batches:
    def __init__(self, *, storage: Storage, jobs: ManifestStore, queue: WorkQueue, pipeline: Pipeline,
                 settings: Settings, emit: Emitter, batch_format: BatchFormat | None) -> None:
        self.store = BatchStore(storage)
        self.format = batch_format
        self.webhooks = BatchWebhooks(storage=storage, store=self.store, queue=queue, settings=settings, emit=emit)
        self.tracker = BatchTracker(store=self.store, jobs=jobs, webhooks=self.webhooks, settings=settings, emit=emit)
        self.expander = None if batch_format is None else BatchExpander(
            storage=storage, jobs=jobs, store=self.store, queue=queue, pipeline=pipeline, tracker=self.tracker,
            emit=emit, batch_format=batch_format)

    def is_batch(self, key: str) -> bool:
        return self.format is not None and self.format.matches(key)

    def submit(self, key: str, info: ObjectInfo, content_hash: str, source: str | None) -> tuple[str, bool]:
        if self.expander is None:
            raise VideostudioError("batches_unsupported", "this pipeline reads no batch files")
        return self.expander.submit(key, info, content_hash, source)

    def on_job_event(self, job: JobManifest, event: str, *, stage: str | None = None) -> None:
        self.tracker.on_job_event(job, event, stage=stage)

    def deliver(self, lease: Lease) -> None:
        self.webhooks.deliver(lease)

    def cancel(self, batch_id: str, cancel_job: Callable[[str], object]) -> BatchManifest:
        return self.tracker.cancel(batch_id, cancel_job)

    def reconcile(self, cancel_job: Callable[[str], object]) -> list[str]:
        def resume(manifest: BatchManifest) -> None:
            if self.expander is not None:
                self.expander.resume(manifest)

        return self.tracker.reconcile(resume=resume, cancel_job=cancel_job)
