"""The one runner around every stage, used by local workers and Modal functions alike.

For a queue message it: loads the manifest (storage is the truth), skips work already
committed, takes the stage (attempts + 1, status running), calls the stage with a
heartbeat alive, writes the stage manifest and then the job manifest (the commit
marker), enqueues the next stage, and queues webhook deliveries. Ack comes last, so a
crash anywhere means the message comes back and the step runs again idempotently.

`Runner` is the facade; the work is done by its parts:
- `core/stage_runner.py`: admit a stage message, take the stage, call it, commit (or retry/fail);
- `core/heartbeat.py`: a running stage's lease and progress;
- `core/webhook_queue.py`: queue webhook events with their stored body, deliver one attempt;
- `core/job_control.py`: fail, finish, cancel and retry a whole job;
- `core/reconciler.py`: re-queue lost work and webhook events that committed state implies.
"""

from __future__ import annotations

import logging

from core.batches import Batches
from core.job_control import JobControl
from core.jobs import ManifestStore, derive_job_id, new_manifest
from core.queue import Lease, WorkQueue
from core.reconciler import Reconciler
from core.run_events import EventHook, Emitter
from core.settings import Settings
from core.stage import Pipeline
from core.stage_runner import FinishedStage, StageRunner
from core.storage import Storage, validate_key
from core.webhook_queue import WebhookQueue
from schemas.errors import VideostudioError
from schemas.events import StorageEvent, TaskMessage
from schemas.batch import BatchManifest
from schemas.manifest import InputRecord, JobManifest, StageStatus

__all__ = ["INBOX", "EventHook", "Runner"]

log = logging.getLogger("videostudio.runner")

INBOX = "inbox/"


class Runner:
    def __init__(self, storage: Storage, queue: WorkQueue, pipeline: Pipeline, settings: Settings, *,
                 on_event: EventHook | None = None) -> None:
        self.storage = storage
        self.queue = queue
        self.pipeline = pipeline
        self.settings = settings
        self.store = ManifestStore(storage)
        self._emit = Emitter(on_event)
        self._webhooks = WebhookQueue(storage=storage, store=self.store, queue=queue, settings=settings,
                                      emit=self._emit)
        shared = dict(store=self.store, queue=queue, emit=self._emit, queue_webhook=self._queue_webhook_via_seam)
        self._control = JobControl(storage=storage, **shared)
        self._stages = StageRunner(storage=storage, pipeline=pipeline, settings=settings, control=self._control,
                                   **shared)
        self._reconciler = Reconciler(settings=settings, control=self._control, **shared)
        self.batches = Batches(storage=storage, jobs=self.store, queue=queue, pipeline=pipeline, settings=settings,
                               emit=self._emit, batch_format=pipeline.batches)

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
        if self.batches.is_batch(key):  # a list of briefs: one batch, a job per item (core/batches.py)
            return self.batches.submit(key, info, content_hash, event.source)
        job_id = derive_job_id(self.storage.name, key, content_hash)
        if self.store.load(job_id) is not None:
            return job_id, False
        kind = self.pipeline.classify(self.storage, key)
        route = self.pipeline.route_for(self.storage, key, kind)
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
            if message.action == "batch_webhook":
                self.batches.deliver(lease)
            elif message.action == "webhook":
                self._webhooks.deliver(lease)
            else:
                self._run_stage_message(lease)
        except Exception as exc:  # never let one message take the worker down
            log.exception("message %s failed in the runner", message.dedupe_key())
            self.queue.nack(lease, delay_s=min(30.0, 2.0 ** lease.attempt), error=f"{type(exc).__name__}: {exc}"[:500])

    # The three steps of a stage message, kept as methods of the facade: they are the seams that
    # tests/fault_worker.py wraps to crash a worker at chosen points (and test_runner.py calls).
    def _run_stage_message(self, lease: Lease) -> None:
        stage = self._stages.admit(lease)
        if stage is not None:
            self._run_stage(lease, stage)

    def _run_stage(self, lease: Lease, stage: str) -> None:
        done = self._stages.run(lease, stage)
        if done is not None:
            self._commit_stage(lease, done)

    def _commit_stage(self, lease: Lease, done: FinishedStage) -> None:
        self._stages.commit(lease, done)

    # ------------------------------------------------------------------ whole jobs
    def retry(self, job_id: str) -> JobManifest:
        """Run a failed (or dead-lettered) job again from the stage that failed, with a fresh attempt budget."""
        return self._control.retry(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self._control.cancel_requested(job_id)

    def cancel(self, job_id: str) -> JobManifest:
        """Ask a job to stop. A running stage stops at its next progress report; a waiting job stops now."""
        return self._control.cancel(job_id)

    def reconcile(self) -> list[str]:
        """Re-enqueue work whose message was lost or whose worker died, and repair batches from their jobs.
        Returns what it re-queued or repaired."""
        return self._reconciler.reconcile() + self.batches.reconcile(self._cancel_quietly)

    # ------------------------------------------------------------------ batches
    def cancel_batch(self, batch_id: str) -> BatchManifest:
        """Cancel every item of a batch that has not ended (running ones stop at their next step)."""
        return self.batches.cancel(batch_id, self._cancel_quietly)

    def _cancel_quietly(self, job_id: str) -> object:
        return self._control.cancel(job_id)

    # ------------------------------------------------------------------ webhooks
    def _queue_webhook_event(self, manifest: JobManifest, event: str, *, stage: str | None = None) -> None:
        self._webhooks.queue_event(manifest, event, stage=stage)

    def _queue_webhook_via_seam(self, manifest: JobManifest, event: str, *, stage: str | None = None) -> None:
        # The parts queue every webhook event through `self._queue_webhook_event`, looked up at each call, so a
        # test that replaces it on the instance (to crash between a commit and its webhook) sees every event.
        self._queue_webhook_event(manifest, event, stage=stage)
        # The same seam sees every start and end of a job: those of batch items move their batch.
        self.batches.on_job_event(manifest, event, stage=stage)

    @property
    def device(self) -> str:
        """The device the manifest's `cost.device` records (detected once)."""
        return self._stages.device
