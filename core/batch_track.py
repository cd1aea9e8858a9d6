"""Keeping a batch manifest in step with its items' jobs: counts, progress, ETA and the end of the batch.

Each item's job reports its start (its first stage starting) and its end (job.succeeded / failed /
cancelled) through the runner's one webhook-event seam; each report is one compare-and-swap on the
batch manifest, skipped when it changes nothing. The batch completes in the swap that ends its last
item, which also records the `batch.completed` delivery: only one writer can make that change, so the
webhook is queued once. A worker that dies between a job's commit and its report leaves the item
stale; `reconcile` reads the jobs of unfinished items again (storage is the truth) and repairs that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from core.batch_store import BatchStore
from core.batch_webhooks import BatchWebhooks, add_completed_delivery
from core.jobs import ManifestStore
from core.run_events import Emitter
from core.settings import Settings
from schemas.batch import BatchCounts, BatchItem, BatchManifest, BatchProgress, BatchStatus
from schemas.errors import VideostudioError
from schemas.manifest import JobManifest, JobStatus, utcnow

log = logging.getLogger("videostudio.batches")

TERMINAL_EVENTS = {"job.succeeded": JobStatus.succeeded, "job.failed": JobStatus.failed,
                   "job.cancelled": JobStatus.cancelled}


def summarise(manifest: BatchManifest, *, now: datetime | None = None) -> bool:
    """Recompute counts, progress, ETA and status from the items. True when this made the batch complete."""
    now = now or utcnow()
    counts = BatchCounts()
    for item in manifest.items:
        setattr(counts, item.status.value, getattr(counts, item.status.value) + 1)
    manifest.counts = counts
    total, ended = counts.total, counts.ended
    ran = [i for i in manifest.items if i.status.terminal and i.started_at is not None]
    rate = eta = None
    if manifest.started_at is not None and ran:
        elapsed = max((now - manifest.started_at).total_seconds(), 1e-3)
        rate = len(ran) / elapsed
        eta = (total - ended) / rate
    manifest.progress = BatchProgress(fraction=ended / total if total else 1.0, ended=ended, total=total,
                                      items_per_s=None if rate is None else round(rate, 4),
                                      eta_s=None if eta is None else round(eta, 1))
    if manifest.status == BatchStatus.failed or not manifest.expanded:
        return False
    if ended == total:
        if manifest.status != BatchStatus.completed:
            manifest.status, manifest.finished_at = BatchStatus.completed, now
            manifest.progress.eta_s = 0.0
            return True
        return False
    manifest.status, manifest.finished_at = BatchStatus.running, None  # an item was retried after the end
    return False


def _item_from_job(item: BatchItem, job: JobManifest, status: JobStatus) -> BatchItem:
    record = next(iter(job.stages.values()), None)
    started = item.started_at or (record.started_at if record is not None else None)
    if status != JobStatus.queued and started is None:
        started = utcnow()
    return item.model_copy(update={
        "status": status, "error": job.error if status.terminal else None,
        "outputs": dict(job.outputs) if status == JobStatus.succeeded else {},
        "started_at": started, "finished_at": (job.updated_at if status.terminal else None)})


class BatchTracker:
    def __init__(self, *, store: BatchStore, jobs: ManifestStore, webhooks: BatchWebhooks, settings: Settings,
                 emit: Emitter) -> None:
        self.store, self.jobs, self.webhooks, self.settings, self.emit = store, jobs, webhooks, settings, emit

    # ------------------------------------------------------------------ item reports
    def on_job_event(self, job: JobManifest, event: str, *, stage: str | None = None) -> None:
        """A job event of a batch item (from the runner's webhook seam): fold it into the batch."""
        if job.batch is None:
            return
        if event in TERMINAL_EVENTS:
            status = TERMINAL_EVENTS[event]
        elif event == "stage.started" and stage == next(iter(job.stages), None):
            status = JobStatus.running
        else:
            return
        try:
            self.record(job, status)
        except Exception:  # the job's own commit stands; reconcile repairs the batch from the job manifests
            log.exception("could not record item %s of batch %s", job.job_id, job.batch.batch_id)

    def record(self, job: JobManifest, status: JobStatus) -> BatchManifest:
        """Fold one item's status (read from its job manifest) into the batch; completes the batch on its last end."""
        ref = job.batch
        assert ref is not None
        completed: list[str | None] = []

        def fold(m: BatchManifest) -> bool:
            if ref.index >= len(m.items) or m.items[ref.index].job_id != job.job_id:
                raise VideostudioError("batch_item_mismatch", f"job {job.job_id} is not item {ref.index} of "
                                       f"batch {ref.batch_id}")
            item = m.items[ref.index]
            if item.status == status and (status != JobStatus.running or m.started_at is not None):
                return False  # already known: no write
            m.items[ref.index] = _item_from_job(item, job, status)
            if m.started_at is None and status != JobStatus.queued:
                m.started_at = m.items[ref.index].started_at
            completed.clear()
            if summarise(m):
                completed.append(add_completed_delivery(m, signed=self.webhooks.signed))
            return True

        manifest = self.store.update(ref.batch_id, fold)
        self.emit("batch.item", batch_id=ref.batch_id, job_id=job.job_id, line=ref.line, status=status.value,
                  ended=manifest.progress.ended, total=manifest.progress.total)
        if completed:
            self._completed(manifest, completed[0])
        return manifest

    def finish_expansion(self, batch_id: str) -> BatchManifest:
        """Every item has its job: the batch runs (or, when every item was invalid, is complete already)."""
        completed: list[str | None] = []

        def expanded(m: BatchManifest) -> bool:
            if m.expanded:
                return False
            m.expanded = True
            m.status = BatchStatus.running
            if summarise(m):
                completed.append(add_completed_delivery(m, signed=self.webhooks.signed))
            return True

        manifest = self.store.update(batch_id, expanded)
        if completed:
            self._completed(manifest, completed[0])
        return manifest

    def _completed(self, manifest: BatchManifest, msg_id: str | None) -> None:
        if msg_id is not None:
            self.webhooks.send(manifest, msg_id)
        self.emit("batch.completed", batch_id=manifest.batch_id, **manifest.counts.model_dump())

    # ------------------------------------------------------------------ cancel
    def cancel(self, batch_id: str, cancel_job: Callable[[str], object]) -> BatchManifest:
        """Cancel every item that has not ended (a running one stops at its next step)."""
        manifest = self.store.load(batch_id)
        if manifest is None:
            raise VideostudioError("batch_not_found", f"no batch {batch_id!r}")
        if manifest.status.terminal:
            raise VideostudioError("batch_finished", f"batch {batch_id} already {manifest.status.value}")

        def mark(m: BatchManifest) -> bool:
            if m.cancel_requested:
                return False
            m.cancel_requested = True
            return True

        manifest = self.store.update(batch_id, mark)
        self._cancel_items(manifest, cancel_job)
        return self.store.load(batch_id) or manifest

    def _cancel_items(self, manifest: BatchManifest, cancel_job: Callable[[str], object]) -> None:
        for item in manifest.items:
            if not item.status.terminal:
                try:
                    cancel_job(item.job_id)
                except VideostudioError as exc:  # ended meanwhile, or not created yet (expansion cancels it)
                    if exc.code not in ("job_finished", "job_not_found"):
                        raise

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, *, resume: Callable[[BatchManifest], None],
                  cancel_job: Callable[[str], object]) -> list[str]:
        """Repair every unfinished batch from its jobs: stale items, an interrupted expansion, a cancel that
        did not reach every item, and a `batch.completed` that was recorded but never queued."""
        repaired: list[str] = []
        stale_after = timedelta(seconds=self.settings.lease_s / 4)
        now = utcnow()
        for manifest in self.store.all():
            if manifest.status == BatchStatus.failed:
                continue
            try:
                repaired.extend(self._reconcile_one(manifest, now, stale_after, resume, cancel_job))
            except Exception:  # one broken batch must not stop the repair of the others
                log.exception("could not reconcile batch %s", manifest.batch_id)
        return repaired

    def _reconcile_one(self, manifest: BatchManifest, now: datetime, stale_after: timedelta,
                       resume: Callable[[BatchManifest], None], cancel_job: Callable[[str], object]) -> list[str]:
        if not manifest.expanded:
            if now - manifest.updated_at <= stale_after:
                return []
            resume(manifest)
            return [f"{manifest.batch_id}:expand"]
        repaired = []
        if manifest.status != BatchStatus.completed:
            repaired.extend(self._repair_items(manifest, cancel_job))
            manifest = self.store.load(manifest.batch_id) or manifest
        return repaired + self._repair_webhook(manifest)

    def _repair_items(self, manifest: BatchManifest, cancel_job: Callable[[str], object]) -> list[str]:
        repaired = []
        for item in manifest.items:
            if item.status.terminal:
                continue
            job = self.jobs.load(item.job_id)
            if job is None:
                continue
            if manifest.cancel_requested and not job.status.terminal:
                self._cancel_items(manifest.model_copy(update={"items": [item]}), cancel_job)
                job = self.jobs.load(item.job_id) or job
            if job.status != item.status and job.batch is not None:
                self.record(job, job.status)
                repaired.append(f"{manifest.batch_id}:{item.job_id}")
        return repaired

    def _repair_webhook(self, manifest: BatchManifest) -> list[str]:
        if manifest.status != BatchStatus.completed or manifest.webhook is None:
            return []
        missing: list[str | None] = []

        def add(m: BatchManifest) -> bool:
            before = len(m.webhooks)
            missing.append(add_completed_delivery(m, signed=self.webhooks.signed))
            return len(m.webhooks) != before

        manifest = self.store.update(manifest.batch_id, add)
        msg_id = missing[0] if missing else None
        delivery = next((d for d in manifest.webhooks if d.webhook_id == msg_id), None)
        if delivery is not None and delivery.status == "pending" and self.webhooks.queue.pending(manifest.batch_id) == 0:
            if self.webhooks.send(manifest, delivery.webhook_id):
                return [f"{manifest.batch_id}:webhook"]
        return []
