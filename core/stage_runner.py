"""Running one stage of a job: admit its message, take the stage, call it with a heartbeat, commit it.

Taking the stage is a compare-and-swap on the job manifest (attempts + 1, status running), so of
two workers holding copies of the same message only one runs it. A stage that returns is
committed: its own manifest first, then the job manifest (the commit marker), then the next
stage's message; the ack comes last. One that raises is retried with a backoff while its
attempts last, then failed; one that is cancelled stops the job.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from core.device import device_name
from core.heartbeat import Heartbeat
from core.job_control import JobControl
from core.lanes import lane_of
from core.jobs import ManifestStore, add_stage_seconds, set_stage_status
from core.queue import Lease, WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from core.stage import JobCancelled, Pipeline, StageContext, StageResult
from core.storage import Storage
from core.webhook_queue import QueueWebhookEvent
from schemas.errors import ErrorInfo, VideostudioError
from schemas.events import TaskMessage
from schemas.manifest import JobManifest, JobStatus, StageManifest, StageProgress, StageRecord, StageStatus, utcnow

log = logging.getLogger("videostudio.runner")


@dataclass(frozen=True)
class FinishedStage:
    """A stage call that returned: what the commit writes."""

    stage: str
    attempt: int
    started: datetime
    result: StageResult
    seconds: float


class _StageTaken(Exception):
    """Raised inside the take's compare-and-swap: another worker holds (or has committed) the stage."""

    def __init__(self, retry_in_s: float) -> None:
        super().__init__(retry_in_s)
        self.retry_in_s = retry_in_s


def _alive_for(record: StageRecord, lease_s: float) -> float | None:
    """Seconds until a running stage's heartbeat could have gone stale; None when no worker is alive on it."""
    if record.status == StageStatus.running and record.heartbeat_at is not None:
        age = (utcnow() - record.heartbeat_at).total_seconds()
        if age < lease_s:
            return lease_s - age + 0.1
    return None


def _apply_result(manifest: JobManifest, result: StageResult) -> None:
    """What a stage's result changes in the job manifest beyond the stage's own record: the one place."""
    if result.request is not None:
        manifest.request = result.request
    manifest.outputs.update(result.job_outputs)
    manifest.warnings.extend(w for w in result.warnings if w not in manifest.warnings)
    if result.model_id:
        manifest.versions.model = result.model_id
    if result.cache is not None:
        manifest.cache = result.cache


class StageRunner:
    def __init__(self, *, storage: Storage, store: ManifestStore, queue: WorkQueue, pipeline: Pipeline,
                 settings: Settings, control: JobControl, queue_webhook: QueueWebhookEvent, emit: Emitter) -> None:
        self.storage, self.store, self.queue, self.pipeline = storage, store, queue, pipeline
        self.settings, self.control, self.queue_webhook, self.emit = settings, control, queue_webhook, emit
        self._device: str | None = None

    @property
    def device(self) -> str:
        """What the manifest's `cost.device` records, detected once (it imports torch)."""
        if self._device is None:
            self._device = device_name()
        return self._device

    # ------------------------------------------------------------------ admit
    def admit(self, lease: Lease) -> str | None:
        """The stage a stage message should run now; None when this settled the message (acked or nacked)."""
        message = lease.message
        manifest = self.store.load(message.job_id)
        if manifest is None or manifest.status.terminal:
            self.queue.ack(lease)  # orphaned or already finished: nothing to do
            return None
        stage = manifest.current_stage()
        if stage is None:
            self.control.finish(manifest.job_id, JobStatus.succeeded)
            self.queue.ack(lease)
            return None
        if message.stage != stage:
            # A stale or duplicated message: make sure the right stage is queued, then drop this one.
            self.queue.put(TaskMessage(job_id=manifest.job_id, stage=stage, lane=lane_of(manifest)))
            self.queue.ack(lease)
            return None
        if self.control.cancel_requested(manifest.job_id):
            self.control.cancel_now(manifest.job_id)
            self.queue.ack(lease)
            return None
        record = manifest.stages[stage]
        busy_for = _alive_for(record, self.settings.lease_s)
        if busy_for is not None:
            # Another worker is alive on this stage: look again once its heartbeat could have gone stale.
            self.queue.nack(lease, delay_s=busy_for, error="stage running elsewhere")
            return None
        if record.attempts >= self.settings.max_attempts:
            last = record.error or ErrorInfo(code="worker_lost", message="the worker running this stage stopped", retryable=True)
            error = ErrorInfo(code="max_attempts_exceeded",
                              message=f"stage {stage!r} did not finish in {record.attempts} attempts; last error: "
                                      f"{last.code}: {last.message}", retryable=False)
            self.control.fail(manifest.job_id, stage, error)
            self.queue.ack(lease)
            return None
        return stage

    # ------------------------------------------------------------------ run
    def run(self, lease: Lease, stage: str) -> FinishedStage | None:
        """Take the stage and call it. Returns what to commit; None when it was settled otherwise."""
        started = utcnow()
        manifest = self._take(lease, stage, started)
        if manifest is None:
            return None
        attempt = manifest.stages[stage].attempts
        self.queue_webhook(manifest, "stage.started", stage=stage)
        self.emit("stage.started", job_id=manifest.job_id, stage=stage, attempt=attempt)
        return self._call(lease, manifest, stage=stage, attempt=attempt, started=started)

    def _take(self, lease: Lease, stage: str, started: datetime) -> JobManifest | None:
        job_id = lease.message.job_id

        def take(m: JobManifest) -> None:
            if m.status.terminal:
                raise JobCancelled(job_id)
            # Checked again inside the compare-and-swap: a worker holding a duplicate of this message may have
            # read the manifest just before another took the stage (or committed it).
            current = m.stages[stage]
            if current.status == StageStatus.succeeded:
                raise _StageTaken(0.0)
            busy_for = _alive_for(current, self.settings.lease_s)
            if busy_for is not None:
                raise _StageTaken(busy_for)
            record = set_stage_status(m, stage, StageStatus.running)
            record.attempts += 1
            record.started_at = started
            record.finished_at = None
            record.heartbeat_at = started
            record.progress = StageProgress(fraction=0.0, message="starting")
            m.status = JobStatus.running
            m.cost.device = self.device

        try:
            return self.store.update(job_id, take)
        except JobCancelled:
            self.queue.ack(lease)
        except _StageTaken as taken:
            if taken.retry_in_s:  # alive elsewhere: look again once its heartbeat could have gone stale
                self.queue.nack(lease, delay_s=taken.retry_in_s, error="stage running elsewhere")
            else:  # committed meanwhile by another worker, which queued the next stage itself
                self.queue.ack(lease)
        return None

    def _call(self, lease: Lease, manifest: JobManifest, *, stage: str, attempt: int,
              started: datetime) -> FinishedStage | None:
        job_id = manifest.job_id
        scratch = Path(tempfile.mkdtemp(prefix=f"videostudio-{stage}-"))
        heartbeat = Heartbeat(store=self.store, queue=self.queue, settings=self.settings, emit=self.emit,
                              lease=lease, stage=stage)
        context = StageContext(
            job_id=job_id, stage=stage, attempt=attempt, manifest=manifest, storage=self.storage,
            settings=self.settings, scratch=scratch, _progress=heartbeat.progress,
            _cancel_requested=lambda: self.control.cancel_requested(job_id), _metrics=heartbeat.metrics,
        )
        clock = time.perf_counter()
        heartbeat.start()
        try:
            result = self.pipeline.stages[stage](context)
        except JobCancelled:
            heartbeat.stop()
            self.control.cancel_now(job_id, seconds=time.perf_counter() - clock, stage=stage)
            self.queue.ack(lease)
            return None
        except VideostudioError as exc:
            heartbeat.stop()
            self._stage_error(lease, stage, exc.info(), attempt=attempt, seconds=time.perf_counter() - clock)
            return None
        except Exception as exc:
            heartbeat.stop()
            log.exception("stage %s of %s raised", stage, job_id)
            info = ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}"[:1000], retryable=True)
            self._stage_error(lease, stage, info, attempt=attempt, seconds=time.perf_counter() - clock)
            return None
        finally:
            heartbeat.stop()
            shutil.rmtree(scratch, ignore_errors=True)
        return FinishedStage(stage=stage, attempt=attempt, started=started, result=result,
                             seconds=time.perf_counter() - clock)

    def _stage_error(self, lease: Lease, stage: str, error: ErrorInfo, *, attempt: int, seconds: float) -> None:
        job_id = lease.message.job_id
        if error.retryable and attempt < self.settings.max_attempts:
            def requeue(m: JobManifest) -> None:
                record = set_stage_status(m, stage, StageStatus.queued)
                record.error = error
                add_stage_seconds(m, stage, seconds)

            self.store.update(job_id, requeue)
            delay = min(60.0, 2.0 ** attempt)
            self.emit("stage.retry", job_id=job_id, stage=stage, error=error.model_dump(), delay_s=delay)
            self.queue.nack(lease, delay_s=delay, error=error.message)
            return
        self.control.fail(job_id, stage, error, seconds=seconds)
        self.queue.ack(lease)

    # ------------------------------------------------------------------ commit
    def commit(self, lease: Lease, done: FinishedStage) -> None:
        job_id, stage, result = lease.message.job_id, done.stage, done.result
        finished = utcnow()
        handoff = result.handoff.model_dump(mode="json") if result.handoff is not None else None
        # 1. the stage's own manifest (its outputs are already written by the stage)
        self.store.write_stage_manifest(StageManifest(
            job_id=job_id, stage=stage, status=StageStatus.succeeded, attempt=done.attempt, started_at=done.started,
            finished_at=finished, outputs=result.outputs, metrics=result.metrics, handoff=handoff))
        next_stage: list[str | None] = [None]

        def commit(m: JobManifest) -> None:
            record = set_stage_status(m, stage, StageStatus.succeeded)
            record.finished_at = finished
            record.outputs = dict(result.outputs)
            record.metrics = dict(result.metrics)
            record.handoff = handoff
            record.progress = StageProgress(fraction=1.0, message="done")
            record.error = None
            add_stage_seconds(m, stage, done.seconds)
            _apply_result(m, result)
            nxt = m.current_stage()
            next_stage[0] = nxt
            if nxt is not None:
                set_stage_status(m, nxt, StageStatus.queued)
            else:
                m.status = JobStatus.succeeded

        # 2. the job manifest: the commit marker
        manifest = self.store.update(job_id, commit)
        self.queue_webhook(manifest, "stage.succeeded", stage=stage)
        self.emit("stage.succeeded", job_id=job_id, stage=stage, seconds=done.seconds)
        # 3. wake the next step, then let go of this message
        if next_stage[0] is not None:
            self.queue.put(TaskMessage(job_id=job_id, stage=next_stage[0], lane=lane_of(manifest)))
        else:
            self.queue_webhook(manifest, "job.succeeded")
            self.emit("job.finished", job_id=job_id, status="succeeded")
        self.queue.ack(lease)
