"""The safety net: re-enqueue lost or stalled work, and create jobs for inputs nobody announced."""

from __future__ import annotations

import logging
import threading

from core.runner import Runner
from schemas.errors import VideostudioError
from schemas.events import StorageEvent

log = logging.getLogger("videostudio.reconciler")


class InboxScanner:
    """Lists `inbox/` and submits inputs without a job. Remembers (key, etag) so it hashes each file once.

    Works the same on a folder and on an S3 bucket (one paginated LIST per pass). A fresh scanner (a
    restarted worker, a cold Modal container) first learns which (key, etag) pairs already have a job
    from the job manifests, so it doesn't download and hash every inbox object again to find out.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._known: dict[str, str] = {}
        self._with_jobs: set[tuple[str, str]] | None = None

    def _has_job(self, key: str, etag: str) -> bool:
        if self._with_jobs is None:
            self._with_jobs = {(m.input.key, m.input.etag) for m in self.runner.store.all() if m.input.etag}
        return (key, etag) in self._with_jobs

    def scan(self) -> list[str]:
        created = []
        for info in self.runner.storage.list("inbox/"):
            if self._known.get(info.key) == info.etag:
                continue
            if self._has_job(info.key, info.etag):
                self._known[info.key] = info.etag
                continue
            try:
                job_id, was_created = self.runner.submit(
                    StorageEvent(bucket=self.runner.storage.name, key=info.key, size=info.size, etag=info.etag,
                                 source="reconciler"))
            except VideostudioError as exc:
                log.warning("cannot submit %s: %s", info.key, exc.message)
                continue
            except Exception:  # one poison input must never stop the scan of every input after it
                log.exception("cannot submit %s", info.key)
                continue
            self._known[info.key] = info.etag
            if was_created:
                created.append(job_id)
        return created


def reconcile_forever(runner: Runner, stop: threading.Event, *, interval_s: float, scan_inbox: bool = True) -> None:
    scanner = InboxScanner(runner)
    while not stop.wait(interval_s):
        run_once(runner, scanner if scan_inbox else None)


def run_once(runner: Runner, scanner: InboxScanner | None = None) -> None:
    try:
        runner.reconcile()
        if scanner is not None:
            scanner.scan()
    except Exception:
        log.exception("reconcile pass failed")
