"""The heartbeat of a running stage: keeps its queue lease alive and writes throttled progress."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from core.jobs import ManifestStore
from core.queue import Lease, WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from schemas.manifest import JobManifest, StageProgress, StageStatus, utcnow

log = logging.getLogger("videostudio.runner")


class Heartbeat:
    """Keeps a running stage's lease alive and writes throttled progress into the manifest."""

    def __init__(self, *, store: ManifestStore, queue: WorkQueue, settings: Settings, emit: Emitter,
                 lease: Lease, stage: str) -> None:
        self.store, self.queue, self.settings, self.emit = store, queue, settings, emit
        self.lease, self.job_id, self.stage = lease, lease.message.job_id, stage
        self.interval = max(0.05, min(settings.lease_s / 3.0, 10.0))
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
            self.store.update(self.job_id, touch)
            self._last_write = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.queue.extend(self.lease, lease_s=self.settings.lease_s)
                self._beat()
            except Exception:  # a missed heartbeat only risks a duplicate run, never a lost job
                log.warning("heartbeat for %s/%s failed", self.job_id, self.stage, exc_info=True)

    def metrics(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._pending_metrics.update(values)
        self.emit("stage.metrics", job_id=self.job_id, stage=self.stage, metrics=values)

    def progress(self, fraction: float, message: str, step: int | None, total: int | None) -> None:
        self.emit("stage.progress", job_id=self.job_id, stage=self.stage, fraction=fraction,
                  message=message, step=step, total=total)
        done = fraction >= 1.0
        if done or time.monotonic() - self._last_write >= self.settings.progress_interval_s:
            self._beat(StageProgress(fraction=fraction, message=message, step=step, total=total))
