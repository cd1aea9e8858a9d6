"""Expanding a batch file into one job per item, idempotently.

The batch manifest is created first, with every item's job id already fixed (`item_job_id`), so
whatever happens after, the batch knows all its items. Then each item gets its job: its brief (the
item merged with the defaults) is written to `batches/<id>/items/<n>.json` and its job manifest is
created-if-absent; only the one caller that created the job queues its first stage. A bad item's job
is created already failed, with the item's error. A crash anywhere in between is finished by the next
submit of the same file, or by the reconciler (`resume`), which find the same jobs. Last, the batch
is marked `expanded`.

The parse of a batch file is handed in (`BatchFormat`, functions/batch_file.py): core/ knows no brief
format and imports no functions/ code.
"""

from __future__ import annotations

import hashlib
import json

from core.batch_format import BatchFormat
from core.batch_store import BatchStore, batch_item_key, batch_name, derive_batch_id, item_job_id
from core.batch_track import BatchTracker, summarise
from core.jobs import ManifestStore, new_manifest
from core.queue import WorkQueue
from core.run_events import Emitter
from core.stage import Pipeline
from core.storage import ObjectInfo, Storage
from core.storage.base import ObjectNotFound
from schemas.batch import BatchEntry, BatchItem, BatchManifest, BatchPlan, BatchStatus
from schemas.batch_ref import BatchRef
from schemas.errors import ErrorInfo, VideostudioError
from schemas.events import TaskMessage
from schemas.manifest import InputRecord, JobManifest, JobStatus, StageManifest, StageStatus, utcnow


class BatchExpander:
    def __init__(self, *, storage: Storage, jobs: ManifestStore, store: BatchStore, queue: WorkQueue,
                 pipeline: Pipeline, tracker: BatchTracker, emit: Emitter, batch_format: BatchFormat) -> None:
        self.storage, self.jobs, self.store, self.queue = storage, jobs, store, queue
        self.pipeline, self.tracker, self.emit, self.format = pipeline, tracker, emit, batch_format

    def submit(self, key: str, info: ObjectInfo, content_hash: str, source: str | None) -> tuple[str, bool]:
        """The batch for this file (once): (batch_id, created)."""
        batch_id = derive_batch_id(self.storage.name, key, content_hash)
        existing = self.store.load(batch_id)
        if existing is not None:
            if not existing.expanded:
                self.resume(existing)
            return batch_id, False
        record = InputRecord(key=key, size=info.size, hash=content_hash, etag=info.etag, source=source)
        data = self.storage.get_bytes(key)
        try:
            plan = self.format.parse(data, key)
        except VideostudioError as exc:  # the file as a whole: a failed batch, and the worker goes on
            failed = BatchManifest(batch_id=batch_id, name=batch_name(key), input=record, status=BatchStatus.failed,
                                   expanded=True, error=exc.info(), finished_at=utcnow())
            created = self.store.create(failed)
            self.emit("batch.failed", batch_id=batch_id, error=exc.info().model_dump())
            return batch_id, created
        manifest = BatchManifest(batch_id=batch_id, name=batch_name(key), input=record, webhook=plan.webhook,
                                 items=[_item(batch_id, entry) for entry in plan.entries])
        summarise(manifest)
        created = self.store.create(manifest)
        if created:
            self.emit("batch.created", batch_id=batch_id, key=key, items=len(manifest.items), source=source)
        else:
            manifest = self.store.load(batch_id) or manifest
            if manifest.expanded:
                return batch_id, False
        self._expand(manifest, plan)
        return batch_id, created

    def resume(self, manifest: BatchManifest) -> None:
        """Finish an expansion a crash interrupted: read the file again and create whatever is missing."""
        try:
            data: bytes | None = self.storage.get_bytes(manifest.input.key)
        except ObjectNotFound:
            data = None
        if data is None or (manifest.input.hash and hashlib.sha256(data).hexdigest() != manifest.input.hash):
            # The file was deleted or replaced since: this batch ends with the jobs it has, the others failed.
            plan = BatchPlan(entries=[])
            error = ErrorInfo(code="batch_changed", message="the batch file was deleted or replaced before every "
                              "item had its job")
            for item in manifest.items:
                if self.jobs.load(item.job_id) is None:
                    plan.entries.append(BatchEntry(index=item.index, line=item.line, error=error))
        else:
            plan = self.format.parse(data, manifest.input.key)
        self._expand(manifest, plan)

    def _expand(self, manifest: BatchManifest, plan: BatchPlan) -> None:
        for entry in plan.entries:
            self._item_job(manifest, entry)
        self.tracker.finish_expansion(manifest.batch_id)

    def _item_job(self, batch: BatchManifest, entry: BatchEntry) -> None:
        job_id = item_job_id(batch.batch_id, entry.index)
        ref = BatchRef(batch_id=batch.batch_id, index=entry.index, line=entry.line, lane=batch.batch_id)
        if entry.error is not None or entry.document is None or entry.kind is None:
            job = self._failed_item_job(batch, entry, job_id, ref)
            if job is not None and batch.items[entry.index].status != JobStatus.failed:
                self.tracker.record(job, JobStatus.failed)  # failed only now (a resumed expansion): tell the batch
            return
        body = json.dumps(entry.document, sort_keys=True).encode()
        key = batch_item_key(batch.batch_id, entry.index)
        self.storage.create_if_absent(key, body, content_type="application/json")
        route = self.pipeline.route_for(self.storage, key, entry.kind)
        job = new_manifest(job_id, entry.kind, InputRecord(key=key, size=len(body), hash=hashlib.sha256(body).hexdigest(),
                                                           source=batch.input.source), route)
        job.batch = ref
        job.stages[route[0]].status = StageStatus.queued
        if self.jobs.create(job):
            # A crash right here leaves a queued job without a message: the reconciler re-queues it, in its lane.
            self.queue.put(TaskMessage(job_id=job_id, stage=route[0], lane=ref.lane))
            self.emit("job.created", job_id=job_id, kind=entry.kind, key=key, source=batch.input.source,
                      batch_id=batch.batch_id)

    def _failed_item_job(self, batch: BatchManifest, entry: BatchEntry, job_id: str,
                         ref: BatchRef) -> JobManifest | None:
        """A bad item: its job exists, failed at its first stage with the item's error (nothing is queued).
        The job manifest when this call created it."""
        error = entry.error or ErrorInfo(code="invalid_brief", message="the item is not a brief")
        route = self.pipeline.route(self.pipeline.default_kind)
        now = utcnow()
        job = new_manifest(job_id, self.pipeline.default_kind, batch.input.model_copy(), route)
        job.batch, job.status, job.error = ref, JobStatus.failed, error
        for name, record in job.stages.items():
            record.status = StageStatus.failed if name == route[0] else StageStatus.cancelled
        first = job.stages[route[0]]
        first.error, first.started_at, first.finished_at = error, now, now
        if self.jobs.load(job_id) is not None:
            return None
        # The stage's own manifest first: the job manifest is the commit marker and is written last.
        self.jobs.write_stage_manifest(StageManifest(job_id=job_id, stage=route[0], status=StageStatus.failed,
                                                     attempt=0, started_at=now, finished_at=now, error=error))
        return job if self.jobs.create(job) else None


def _item(batch_id: str, entry: BatchEntry) -> BatchItem:
    if entry.error is not None:
        return BatchItem(index=entry.index, line=entry.line, job_id=item_job_id(batch_id, entry.index),
                         status=JobStatus.failed, error=entry.error, finished_at=utcnow())
    return BatchItem(index=entry.index, line=entry.line, job_id=item_job_id(batch_id, entry.index))
