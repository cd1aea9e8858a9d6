"""The one runner around every stage, used by local workers and Modal functions alike.

For a queue message it: loads the manifest (storage is the truth), skips work already
committed, takes the stage (attempts + 1, status running), calls the stage with a
heartbeat alive, writes the stage manifest and then the job manifest (the commit
marker), enqueues the next stage, and queues webhook deliveries. Ack comes last, so a
crash anywhere means the message comes back and the step runs again idempotently.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.jobs import ManifestStore, cancel_marker_key, derive_job_id, manifest_key, new_manifest, set_stage_status
from core.queue import Lease, WorkQueue
from core.settings import Settings
from core.stage import JobCancelled, Pipeline, StageContext, StageResult
from core.storage import Storage, validate_key
from core import webhooks
from schemas.errors import ErrorInfo, VideostudioError
from schemas.events import StorageEvent, TaskMessage
from schemas.manifest import (
    InputRecord,
    JobManifest,
    JobStatus,
    StageManifest,
    StageProgress,
    StageStatus,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from schemas.webhook import WebhookJobData, WebhookPayload

log = logging.getLogger("videostudio.runner")

INBOX = "inbox/"
WEBHOOK_PREFIX = "webhooks/"
EventHook = Callable[[str, dict[str, Any]], None]


def _detect_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


class Runner:
    def __init__(self, storage: Storage, queue: WorkQueue, pipeline: Pipeline, settings: Settings, *,
                 on_event: EventHook | None = None, webhook_transport: Any = None) -> None:
        self.storage = storage
        self.queue = queue
        self.pipeline = pipeline
        self.settings = settings
        self.store = ManifestStore(storage)
        self.on_event = on_event
        self.webhook_transport = webhook_transport  # an httpx transport, for tests
        self._device: str | None = None

    # ------------------------------------------------------------------ submit
    def submit(self, event: StorageEvent) -> tuple[str, bool]:
        """Create the job for an input (once) and enqueue its first stage. Returns (job_id, created)."""
        key = validate_key(event.key)
        if not key.startswith(INBOX):
            raise VideostudioError("not_an_input", f"only keys under {INBOX} start jobs, got {key!r}")
        info = self.storage.stat(key)
        if info is None:
            raise VideostudioError("input_not_found", f"no object at {key!r}")
        content_hash = event.content_hash or self.storage.content_hash(key)
        job_id = derive_job_id(self.storage.name, key, content_hash)
        if self.store.load(job_id) is not None:
            return job_id, False
        kind = self.pipeline.classify(self.storage, key)
        route = self.pipeline.route(kind)
        manifest = new_manifest(job_id, kind, InputRecord(key=key, size=info.size, hash=content_hash, etag=info.etag,
                                                          source=event.source), route)
        manifest.stages[route[0]].status = StageStatus.queued
        created = self.store.create(manifest)
        if created:
            self.queue.put(TaskMessage(job_id=job_id, stage=route[0]))
            self._emit("job.created", job_id=job_id, kind=kind, key=key, source=event.source)
        return job_id, created

    # ------------------------------------------------------------------ process
    def work_once(self, *, job_id: str | None = None) -> bool:
        """Lease and process one message. False if the queue had none ready."""
        lease = self.queue.get(lease_s=self.settings.lease_s, job_id=job_id)
        if lease is None:
            return False
        self.process(lease)
        return True

    def process(self, lease: Lease) -> None:
        message = lease.message
        try:
            if message.action == "webhook":
                self._deliver_webhook(lease)
            else:
                self._run_stage_message(lease)
        except Exception as exc:  # never let one message take the worker down
            log.exception("message %s failed in the runner", message.dedupe_key())
            self.queue.nack(lease, delay_s=min(30.0, 2.0 ** lease.attempt), error=f"{type(exc).__name__}: {exc}"[:500])

    def _run_stage_message(self, lease: Lease) -> None:
        message = lease.message
        manifest = self.store.load(message.job_id)
        if manifest is None or manifest.status.terminal:
            self.queue.ack(lease)  # orphaned or already finished: nothing to do
            return
        stage = manifest.current_stage()
        if stage is None:
            self._finish(manifest.job_id, JobStatus.succeeded)
            self.queue.ack(lease)
            return
        if message.stage != stage:
            # A stale or duplicated message: make sure the right stage is queued, then drop this one.
            self.queue.put(TaskMessage(job_id=manifest.job_id, stage=stage))
            self.queue.ack(lease)
            return
        if self.cancel_requested(manifest.job_id):
            self._cancel_now(manifest.job_id)
            self.queue.ack(lease)
            return
        record = manifest.stages[stage]
        if record.status == StageStatus.running and record.heartbeat_at is not None:
            age = (utcnow() - record.heartbeat_at).total_seconds()
            if age < self.settings.lease_s:
                # Another worker is alive on this stage: look again once its heartbeat could have gone stale.
                self.queue.nack(lease, delay_s=self.settings.lease_s - age + 0.1, error="stage running elsewhere")
                return
        if record.attempts >= self.settings.max_attempts:
            last = record.error or ErrorInfo(code="worker_lost", message="the worker running this stage stopped", retryable=True)
            error = ErrorInfo(code="max_attempts_exceeded",
                              message=f"stage {stage!r} did not finish in {record.attempts} attempts; last error: "
                                      f"{last.code}: {last.message}", retryable=False)
            self._fail(manifest.job_id, stage, error)
            self.queue.ack(lease)
            return
        self._run_stage(lease, stage)

    def _run_stage(self, lease: Lease, stage: str) -> None:
        job_id = lease.message.job_id
        started = utcnow()

        def take(m: JobManifest) -> None:
            if m.status.terminal:
                raise JobCancelled(job_id)
            # Checked again inside the compare-and-swap: a worker holding a duplicate of this message may have
            # read the manifest just before another took the stage (or committed it).
            current = m.stages[stage]
            if current.status == StageStatus.succeeded:
                raise _StageTaken(0.0)
            if current.status == StageStatus.running and current.heartbeat_at is not None:
                age = (utcnow() - current.heartbeat_at).total_seconds()
                if age < self.settings.lease_s:
                    raise _StageTaken(self.settings.lease_s - age + 0.1)
            record = set_stage_status(m, stage, StageStatus.running)
            record.attempts += 1
            record.started_at = started
            record.finished_at = None
            record.heartbeat_at = started
            record.progress = StageProgress(fraction=0.0, message="starting")
            m.status = JobStatus.running
            m.cost.device = self.device

        try:
            manifest = self.store.update(job_id, take)
        except JobCancelled:
            self.queue.ack(lease)
            return
        except _StageTaken as taken:
            if taken.retry_in_s:  # alive elsewhere: look again once its heartbeat could have gone stale
                self.queue.nack(lease, delay_s=taken.retry_in_s, error="stage running elsewhere")
            else:  # committed meanwhile by another worker, which queued the next stage itself
                self.queue.ack(lease)
            return
        attempt = manifest.stages[stage].attempts
        self._queue_webhook_event(manifest, "stage.started", stage=stage)
        self._emit("stage.started", job_id=job_id, stage=stage, attempt=attempt)

        scratch = Path(tempfile.mkdtemp(prefix=f"videostudio-{stage}-"))
        heartbeat = _Heartbeat(self, lease, job_id, stage)
        context = StageContext(
            job_id=job_id, stage=stage, attempt=attempt, manifest=manifest, storage=self.storage,
            settings=self.settings, scratch=scratch, _progress=heartbeat.progress,
            _cancel_requested=lambda: self.cancel_requested(job_id), _metrics=heartbeat.metrics,
        )
        clock = time.perf_counter()
        heartbeat.start()
        try:
            result = self.pipeline.stages[stage](context)
        except JobCancelled:
            heartbeat.stop()
            self._cancel_now(job_id, seconds=time.perf_counter() - clock, stage=stage)
            self.queue.ack(lease)
            return
        except VideostudioError as exc:
            heartbeat.stop()
            self._stage_error(lease, stage, exc.info(), attempt, time.perf_counter() - clock)
            return
        except Exception as exc:
            heartbeat.stop()
            log.exception("stage %s of %s raised", stage, job_id)
            info = ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}"[:1000], retryable=True)
            self._stage_error(lease, stage, info, attempt, time.perf_counter() - clock)
            return
        finally:
            heartbeat.stop()
            shutil.rmtree(scratch, ignore_errors=True)
        self._commit_stage(lease, stage, attempt, started, result, time.perf_counter() - clock)

    def _commit_stage(self, lease: Lease, stage: str, attempt: int, started, result: StageResult, seconds: float) -> None:
        job_id = lease.message.job_id
        finished = utcnow()
        # 1. the stage's own manifest (its outputs are already written by the stage)
        self.store.write_stage_manifest(StageManifest(
            job_id=job_id, stage=stage, status=StageStatus.succeeded, attempt=attempt, started_at=started,
            finished_at=finished, outputs=result.outputs, metrics=result.metrics))
        next_stage: list[str | None] = [None]

        def commit(m: JobManifest) -> None:
            record = set_stage_status(m, stage, StageStatus.succeeded)
            record.finished_at = finished
            record.outputs = dict(result.outputs)
            record.metrics = dict(result.metrics)
            record.progress = StageProgress(fraction=1.0, message="done")
            record.error = None
            m.cost.seconds[stage] = round(m.cost.seconds.get(stage, 0.0) + seconds, 3)
            if result.request is not None:
                m.request = result.request
            m.outputs.update(result.job_outputs)
            m.warnings.extend(w for w in result.warnings if w not in m.warnings)
            if result.model_id:
                m.versions.model = result.model_id
            nxt = m.current_stage()
            next_stage[0] = nxt
            if nxt is not None:
                set_stage_status(m, nxt, StageStatus.queued)
            else:
                m.status = JobStatus.succeeded

        # 2. the job manifest: the commit marker
        manifest = self.store.update(job_id, commit)
        self._queue_webhook_event(manifest, "stage.succeeded", stage=stage)
        self._emit("stage.succeeded", job_id=job_id, stage=stage, seconds=seconds)
        # 3. wake the next step, then let go of this message
        if next_stage[0] is not None:
            self.queue.put(TaskMessage(job_id=job_id, stage=next_stage[0]))
        else:
            self._queue_webhook_event(manifest, "job.succeeded")
            self._emit("job.finished", job_id=job_id, status="succeeded")
        self.queue.ack(lease)

    def _stage_error(self, lease: Lease, stage: str, error: ErrorInfo, attempt: int, seconds: float) -> None:
        job_id = lease.message.job_id
        if error.retryable and attempt < self.settings.max_attempts:
            def requeue(m: JobManifest) -> None:
                record = set_stage_status(m, stage, StageStatus.queued)
                record.error = error
                m.cost.seconds[stage] = round(m.cost.seconds.get(stage, 0.0) + seconds, 3)

            self.store.update(job_id, requeue)
            delay = min(60.0, 2.0 ** attempt)
            self._emit("stage.retry", job_id=job_id, stage=stage, error=error.model_dump(), delay_s=delay)
            self.queue.nack(lease, delay_s=delay, error=error.message)
            return
        self._fail(job_id, stage, error, seconds=seconds)
        self.queue.ack(lease)

    # ------------------------------------------------------------------ terminal states
    def _fail(self, job_id: str, stage: str, error: ErrorInfo, *, seconds: float = 0.0) -> None:
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
                m.cost.seconds[stage] = round(m.cost.seconds.get(stage, 0.0) + seconds, 3)
            for later in m.stages.values():
                if later.status in (StageStatus.pending, StageStatus.queued):
                    later.status = StageStatus.cancelled
            m.status = JobStatus.failed
            m.error = error

        manifest = self.store.update(job_id, fail)
        self._queue_webhook_event(manifest, "stage.failed", stage=stage)
        self._queue_webhook_event(manifest, "job.failed")
        self._emit("job.finished", job_id=job_id, status="failed", error=error.model_dump())

    def _finish(self, job_id: str, status: JobStatus) -> None:
        def finish(m: JobManifest) -> None:
            m.status = status

        manifest = self.store.update(job_id, finish)
        self._queue_webhook_event(manifest, f"job.{status.value}")

    def retry(self, job_id: str) -> JobManifest:
        """Run a failed (or dead-lettered) job again from the stage that failed, with a fresh attempt budget."""
        manifest = self.store.load(job_id)
        if manifest is None:
            raise VideostudioError("job_not_found", f"no job {job_id!r}")
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
        self.queue.put(TaskMessage(job_id=job_id, stage=stage_box[0]))
        self._emit("job.retried", job_id=job_id, stage=stage_box[0])
        return manifest

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(cancel_marker_key(job_id))

    def cancel(self, job_id: str) -> JobManifest:
        """Ask a job to stop. A running stage stops at its next progress report; a waiting job stops now."""
        manifest = self.store.load(job_id)
        if manifest is None:
            raise VideostudioError("job_not_found", f"no job {job_id!r}")
        if manifest.status.terminal:
            raise VideostudioError("job_finished", f"job {job_id} already {manifest.status.value}")
        self.storage.create_if_absent(cancel_marker_key(job_id), b"cancel requested\n")
        if not any(r.status == StageStatus.running for r in manifest.stages.values()):
            return self._cancel_now(job_id)
        return manifest

    def _cancel_now(self, job_id: str, *, seconds: float = 0.0, stage: str | None = None) -> JobManifest:
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
                m.cost.seconds[stage] = round(m.cost.seconds.get(stage, 0.0) + seconds, 3)
            m.status = JobStatus.cancelled
            m.error = ErrorInfo(code="cancelled", message="cancelled on request", retryable=False)

        manifest = self.store.update(job_id, cancel)
        self._queue_webhook_event(manifest, "job.cancelled")
        self._emit("job.finished", job_id=job_id, status="cancelled")
        return manifest

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[str]:
        """Re-enqueue work whose message was lost or whose worker died. Returns what it re-queued."""
        requeued: list[str] = []
        now = utcnow()
        stale_after = timedelta(seconds=self.settings.lease_s)
        for manifest in self.store.all():
            job_id = manifest.job_id
            for event, stage_name in self._missing_webhook_events(manifest):
                self._queue_webhook_event(manifest, event, stage=stage_name)
                requeued.append(f"{job_id}:{event}")
            for delivery in manifest.webhooks:
                if delivery.status == "pending" and self.queue.pending(job_id) == 0:
                    if self.queue.put(TaskMessage(job_id=job_id, action="webhook", webhook_id=delivery.webhook_id)):
                        requeued.append(f"{job_id}:webhook")
            if manifest.status.terminal:
                continue
            stage = manifest.current_stage()
            if stage is None:
                self._finish(job_id, JobStatus.succeeded)
                continue
            record = manifest.stages[stage]
            if record.status == StageStatus.running:
                beat = record.heartbeat_at or record.started_at or manifest.updated_at
                lost = now - beat > stale_after
            else:
                lost = self.queue.pending(job_id) == 0 and now - manifest.updated_at > stale_after / 4
            if lost and self.queue.put(TaskMessage(job_id=job_id, stage=stage)):
                requeued.append(f"{job_id}:{stage}")
        if requeued:
            self._emit("reconciled", requeued=requeued)
        return requeued

    # ------------------------------------------------------------------ webhooks
    @staticmethod
    def _webhook_id(manifest: JobManifest, event: str, stage: str | None, url: str) -> str:
        run = f":retry{len(manifest.retries)}" if manifest.retries else ""  # each explicit retry is a new run
        return webhooks.webhook_id(manifest.job_id, f"{event}:{stage or ''}{run}", url)

    def _missing_webhook_events(self, manifest: JobManifest) -> list[tuple[str, str | None]]:
        """Events that committed state implies but nobody queued: a worker died between the commit and the queueing.

        A stage's `succeeded`/`failed` (of the current run) and the job's terminal event; each is queued under
        its usual id, so one that was queued after all is never sent twice.
        """
        spec = (manifest.request or {}).get("webhook")
        if not spec:
            return []
        since = datetime.fromisoformat(manifest.retries[-1]["at"]) if manifest.retries else None
        due: list[tuple[str, str | None]] = [
            (f"stage.{record.status.value}", name) for name, record in manifest.stages.items()
            if record.status in (StageStatus.succeeded, StageStatus.failed)
            and (since is None or (record.finished_at is not None and record.finished_at >= since))]
        if manifest.status.terminal:
            due.append((f"job.{manifest.status.value}", None))
        known = {d.webhook_id for d in manifest.webhooks}
        return [(event, stage) for event, stage in due if event in spec.get("events", [])
                and self._webhook_id(manifest, event, stage, spec["url"]) not in known]

    def _queue_webhook_event(self, manifest: JobManifest, event: str, *, stage: str | None = None) -> None:
        spec = (manifest.request or {}).get("webhook")
        if not spec or event not in spec.get("events", []):
            return
        url = spec["url"]
        msg_id = self._webhook_id(manifest, event, stage, url)
        record = manifest.stages.get(stage) if stage else None
        outputs = record.outputs if record else manifest.outputs
        payload = WebhookPayload(
            type=event,
            timestamp=utcnow(),
            data=WebhookJobData(
                job_id=manifest.job_id, kind=manifest.kind, status=manifest.status.value, stage=stage,
                input_key=manifest.input.key, manifest_key=manifest_key(manifest.job_id),
                outputs=outputs,
                output_urls=self._output_urls(outputs),
                metrics=record.metrics if record else {},
                error=record.error if record else manifest.error,
            ),
        )
        # The body is stored once, so every retry sends the same bytes under the same webhook-id.
        body_key = f"jobs/{manifest.job_id}/{WEBHOOK_PREFIX}{msg_id}.json"
        self.storage.create_if_absent(body_key, payload.model_dump_json().encode(), content_type="application/json")
        secret = self.settings.webhook_secret

        def add(m: JobManifest) -> None:
            if not any(d.webhook_id == msg_id for d in m.webhooks):
                m.webhooks.append(WebhookDelivery(webhook_id=msg_id, event=event, url=webhooks.redact_url(url),
                                                  signed=secret is not None))

        self.store.update(manifest.job_id, add)
        self.queue.put(TaskMessage(job_id=manifest.job_id, action="webhook", webhook_id=msg_id))

    def _deliver_webhook(self, lease: Lease) -> None:
        job_id, msg_id = lease.message.job_id, lease.message.webhook_id
        manifest = self.store.load(job_id)
        delivery = next((d for d in manifest.webhooks if d.webhook_id == msg_id), None) if manifest else None
        if delivery is None or delivery.status != "pending":
            self.queue.ack(lease)
            return
        url = (manifest.request or {}).get("webhook", {}).get("url")
        body = self.storage.get_bytes(f"jobs/{job_id}/{WEBHOOK_PREFIX}{msg_id}.json")
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        outcome = webhooks.post_once(url, body, webhooks.signed_headers(secret, msg_id, body),
                                     timeout_s=self.settings.webhook_timeout_s, transport=self.webhook_transport)
        attempt_no = len(delivery.attempts) + 1
        delay: float | None = None
        if outcome.retryable and attempt_no < self.settings.webhook_max_attempts:
            delay = webhooks.next_delay(attempt_no, base_s=self.settings.webhook_backoff_base_s,
                                        cap_s=self.settings.webhook_backoff_cap_s, retry_after_s=outcome.retry_after_s)

        def record(m: JobManifest) -> None:
            d = next(d for d in m.webhooks if d.webhook_id == msg_id)
            d.attempts.append(WebhookAttempt(attempt=len(d.attempts) + 1, at=utcnow(), status_code=outcome.status_code,
                                             error=outcome.error, duration_ms=round(outcome.duration_ms, 1),
                                             next_retry_s=None if delay is None else round(delay, 3)))
            if outcome.delivered:
                d.status = "delivered"
            elif outcome.disables_endpoint:
                d.status = "disabled"
            elif delay is None:
                d.status = "failed"

        self.store.update(job_id, record)
        self._emit("webhook.attempt", job_id=job_id, webhook_id=msg_id, status_code=outcome.status_code,
                   delivered=outcome.delivered)
        if delay is not None:
            self.queue.nack(lease, delay_s=delay, error=outcome.error)
        else:
            self.queue.ack(lease)

    # ------------------------------------------------------------------ helpers
    def _output_urls(self, outputs: dict[str, str]) -> dict[str, str]:
        """Presigned links to the outputs, where the storage gives links other machines can open (S3)."""
        if not self.storage.shareable_urls:
            return {}
        urls = {}
        for name, key in outputs.items():
            try:
                urls[name] = self.storage.url(key, expires_s=self.settings.url_expires_s)
            except Exception:  # a link is a convenience: never let it block the webhook
                log.warning("no presigned URL for %s", key, exc_info=True)
        return urls

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = _detect_device()
        return self._device

    def _emit(self, event: str, **data: Any) -> None:
        log.info("%s %s", event, data)
        if self.on_event is not None:
            self.on_event(event, data)


class _StageTaken(Exception):
    """Raised inside the take's compare-and-swap: another worker holds (or has committed) the stage."""

    def __init__(self, retry_in_s: float) -> None:
        super().__init__(retry_in_s)
        self.retry_in_s = retry_in_s


class _Heartbeat:
    """Keeps a running stage's lease alive and writes throttled progress into the manifest."""

    def __init__(self, runner: Runner, lease: Lease, job_id: str, stage: str) -> None:
        self.runner, self.lease, self.job_id, self.stage = runner, lease, job_id, stage
        self.interval = max(0.05, min(runner.settings.lease_s / 3.0, 10.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{stage}", daemon=True)
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._pending_metrics: dict[str, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _beat(self, progress: StageProgress | None = None) -> None:
        now = utcnow()

        def touch(m: JobManifest) -> None:
            record = m.stages[self.stage]
            if record.status != StageStatus.running:
                return
            record.heartbeat_at = now
            if progress is not None:
                record.progress = progress
            record.metrics.update(metrics)

        with self._lock:
            metrics, self._pending_metrics = self._pending_metrics, {}
            self.runner.store.update(self.job_id, touch)
            self._last_write = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.runner.queue.extend(self.lease, lease_s=self.runner.settings.lease_s)
                self._beat()
            except Exception:  # a missed heartbeat only risks a duplicate run, never a lost job
                log.warning("heartbeat for %s/%s failed", self.job_id, self.stage, exc_info=True)

    def metrics(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._pending_metrics.update(values)
        self.runner._emit("stage.metrics", job_id=self.job_id, stage=self.stage, metrics=values)

    def progress(self, fraction: float, message: str, step: int | None, total: int | None) -> None:
        self.runner._emit("stage.progress", job_id=self.job_id, stage=self.stage, fraction=fraction,
                          message=message, step=step, total=total)
        done = fraction >= 1.0
        if done or time.monotonic() - self._last_write >= self.runner.settings.progress_interval_s:
            self._beat(StageProgress(fraction=fraction, message=message, step=step, total=total))
