"""Reconciliation: re-queue what committed state says is owed but no message carries any more.

Storage is the truth and messages are only wake-up calls, so one pass over the job manifests
repairs every loss: a stage whose message was lost or whose worker died, a pending webhook
delivery without a message, and a webhook event that a worker committed but died before
queueing. `triggers/reconciler.py` runs this pass on a timer (and at every worker start).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.job_control import JobControl
from core.jobs import ManifestStore
from core.lanes import lane_of
from core.queue import WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from core.webhook_queue import QueueWebhookEvent, event_webhook_id, webhook_spec
from schemas.events import TaskMessage
from schemas.manifest import JobManifest, JobStatus, StageStatus, utcnow


def missing_webhook_events(manifest: JobManifest) -> list[tuple[str, str | None]]:
    """Events that committed state implies but nobody queued: a worker died between the commit and the queueing.

    A stage's `succeeded`/`failed` (of the current run) and the job's terminal event; each is queued under
    its usual id, so one that was queued after all is never sent twice.
    """
    spec = webhook_spec(manifest)
    if spec is None:
        return []
    since = datetime.fromisoformat(manifest.retries[-1]["at"]) if manifest.retries else None
    due: list[tuple[str, str | None]] = [
        (f"stage.{record.status.value}", name) for name, record in manifest.stages.items()
        if record.status in (StageStatus.succeeded, StageStatus.failed)
        and (since is None or (record.finished_at is not None and record.finished_at >= since))]
    if manifest.status.terminal:
        due.append((f"job.{manifest.status.value}", None))
    known = {d.webhook_id for d in manifest.webhooks}
    return [(event, stage) for event, stage in due if event in spec.events
            and event_webhook_id(manifest, event, stage, str(spec.url)) not in known]


class Reconciler:
    def __init__(self, *, store: ManifestStore, queue: WorkQueue, settings: Settings, control: JobControl,
                 queue_webhook: QueueWebhookEvent, emit: Emitter) -> None:
        self.store, self.queue, self.settings, self.control = store, queue, settings, control
        self.queue_webhook, self.emit = queue_webhook, emit

    def reconcile(self) -> list[str]:
        """Re-enqueue work whose message was lost or whose worker died. Returns what it re-queued."""
        requeued: list[str] = []
        now = utcnow()
        for manifest in self.store.all():
            requeued.extend(self._requeue_webhooks(manifest))
            if manifest.status.terminal:
                continue
            stage = manifest.current_stage()
            if stage is None:
                self.control.finish(manifest.job_id, JobStatus.succeeded)
                continue
            if self._stage_lost(manifest, stage, now) and self.queue.put(
                    TaskMessage(job_id=manifest.job_id, stage=stage, lane=lane_of(manifest))):
                requeued.append(f"{manifest.job_id}:{stage}")
        if requeued:
            self.emit("reconciled", requeued=requeued)
        return requeued

    def _requeue_webhooks(self, manifest: JobManifest) -> list[str]:
        requeued: list[str] = []
        job_id = manifest.job_id
        for event, stage_name in missing_webhook_events(manifest):
            self.queue_webhook(manifest, event, stage=stage_name)
            requeued.append(f"{job_id}:{event}")
        for delivery in manifest.webhooks:
            if delivery.status == "pending" and self.queue.pending(job_id) == 0:
                if self.queue.put(TaskMessage(job_id=job_id, action="webhook", webhook_id=delivery.webhook_id,
                                              lane=lane_of(manifest))):
                    requeued.append(f"{job_id}:webhook")
        return requeued

    def _stage_lost(self, manifest: JobManifest, stage: str, now: datetime) -> bool:
        """A running stage whose heartbeat went stale, or a waiting one with no message that nothing touched lately."""
        stale_after = timedelta(seconds=self.settings.lease_s)
        record = manifest.stages[stage]
        if record.status == StageStatus.running:
            beat = record.heartbeat_at or record.started_at or manifest.updated_at
            return now - beat > stale_after
        return self.queue.pending(manifest.job_id) == 0 and now - manifest.updated_at > stale_after / 4
