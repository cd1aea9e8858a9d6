"""A whole job's state changes: fail, finish, cancel (on request or now), and retry a failed job.

Each is one compare-and-swap on the job manifest, followed by the webhook event it implies.
"""

from __future__ import annotations

from core.jobs import ManifestStore, add_stage_seconds, cancel_marker_key
from core.lanes import lane_of
from core.queue import WorkQueue
from core.run_events import Emitter
from core.storage import Storage
from core.webhook_queue import QueueWebhookEvent
from schemas.errors import ErrorInfo, VideostudioError
from schemas.events import TaskMessage
from schemas.manifest import JobManifest, JobStatus, StageManifest, StageStatus, utcnow


class JobControl:
    def __init__(self, *, storage: Storage, store: ManifestStore, queue: WorkQueue, emit: Emitter,
                 queue_webhook: QueueWebhookEvent) -> None:
        self.storage, self.store, self.queue, self.emit = storage, store, queue, emit
        self.queue_webhook = queue_webhook

    def fail(self, job_id: str, stage: str, error: ErrorInfo, *, seconds: float = 0.0) -> None:
        finished = utcnow()
        # The stage's own manifest first: the job manifest is the commit marker and is written last.
        before = self.store.load(job_id).stages[stage]
        self.store.write_stage_manifest(StageManifest(
            job_id=job_id, stage=stage, status=StageStatus.failed, attempt=before.attempts,
            started_at=before.started_at or finished, finished_at=finished, error=error))

        def fail(m: JobManifest) -> None:
            record = m.stages[stage]
            record.status = StageStatus.failed
            record.finished_at = finished
            record.error = error
            record.progress = None
            if seconds:
                add_stage_seconds(m, stage, seconds)
            for later in m.stages.values():
                if later.status in (StageStatus.pending, StageStatus.queued):
                    later.status = StageStatus.cancelled
            m.status = JobStatus.failed
            m.error = error

        manifest = self.store.update(job_id, fail)
        self.queue_webhook(manifest, "stage.failed", stage=stage)
        self.queue_webhook(manifest, "job.failed")
        self.emit("job.finished", job_id=job_id, status="failed", error=error.model_dump())

    def finish(self, job_id: str, status: JobStatus) -> None:
        def finish(m: JobManifest) -> None:
            m.status = status

        manifest = self.store.update(job_id, finish)
        self.queue_webhook(manifest, f"job.{status.value}")

    def retry(self, job_id: str) -> JobManifest:
        """Run a failed (or dead-lettered) job again from the stage that failed, with a fresh attempt budget."""
        manifest = self._existing(job_id)
        if manifest.status != JobStatus.failed:
            raise VideostudioError("job_not_failed", f"job {job_id} is {manifest.status.value}; only failed jobs are retried")
        stage_box: list[str] = []

        def reset(m: JobManifest) -> None:
            if m.status != JobStatus.failed:
                raise VideostudioError("job_not_failed", f"job {job_id} is {m.status.value}")
            failed = next(name for name, r in m.stages.items() if r.status == StageStatus.failed)
            m.retries.append({"at": utcnow().isoformat(), "stage": failed,
                              "cleared_error": m.error.model_dump() if m.error else None})
            for name, record in m.stages.items():
                if record.status in (StageStatus.failed, StageStatus.cancelled):
                    record.status = StageStatus.queued if name == failed else StageStatus.pending
                    record.attempts, record.error, record.progress = 0, None, None
                    record.started_at = record.finished_at = record.heartbeat_at = None
            m.status, m.error = JobStatus.queued, None
            stage_box.append(failed)  # the failed run's webhooks stay; the new run's events get new ids

        manifest = self.store.update(job_id, reset)
        self.queue.put(TaskMessage(job_id=job_id, stage=stage_box[0], lane=lane_of(manifest)))
        self.emit("job.retried", job_id=job_id, stage=stage_box[0])
        return manifest

    def _existing(self, job_id: str) -> JobManifest:
        manifest = self.store.load(job_id)
        if manifest is None:
            raise VideostudioError("job_not_found", f"no job {job_id!r}")
        return manifest

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(cancel_marker_key(job_id))

    def cancel(self, job_id: str) -> JobManifest:
        """Ask a job to stop. A running stage stops at its next progress report; a waiting job stops now."""
        manifest = self._existing(job_id)
        if manifest.status.terminal:
            raise VideostudioError("job_finished", f"job {job_id} already {manifest.status.value}")
        self.storage.create_if_absent(cancel_marker_key(job_id), b"cancel requested\n")
        if not any(r.status == StageStatus.running for r in manifest.stages.values()):
            return self.cancel_now(job_id)
        return manifest

    def cancel_now(self, job_id: str, *, seconds: float = 0.0, stage: str | None = None) -> JobManifest:
        def cancel(m: JobManifest) -> None:
            if m.status.terminal:
                return
            for name, record in m.stages.items():
                if not record.status.terminal:
                    record.status = StageStatus.cancelled
                    record.progress = None
                    if name == stage:
                        record.finished_at = utcnow()
            if stage and seconds:
                add_stage_seconds(m, stage, seconds)
            m.status = JobStatus.cancelled
            m.error = ErrorInfo(code="cancelled", message="cancelled on request", retryable=False)

        manifest = self.store.update(job_id, cancel)
        self.queue_webhook(manifest, "job.cancelled")
        self.emit("job.finished", job_id=job_id, status="cancelled")
        return manifest
