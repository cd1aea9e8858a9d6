"""The live jobs list behind GET /live/jobs: one shared, incrementally refreshed view of every manifest.

Each open studio page asks for the list about once a second. Reading every manifest for every page would
cost one GET per job per page per second on S3; instead all pages share one snapshot, refreshed at most
once per `min_interval_s` from a single listing of jobs/, and a manifest is read again only when its etag
in that listing changed. A quiet bucket then costs one LIST a second, whatever the number of pages and jobs.
"""

from __future__ import annotations

import threading
import time

from core.jobs import ManifestStore
from schemas.manifest import JobManifest


class LiveManifests:
    def __init__(self, store: ManifestStore, *, min_interval_s: float = 0.5) -> None:
        self.store = store
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[str, JobManifest]] = {}  # job id → (etag, manifest)
        self._refreshed_at = float("-inf")
        self.reads = 0  # manifests read so far (what the cache saves is visible in tests)

    def manifests(self) -> list[JobManifest]:
        """Every job's manifest, as of a listing at most `min_interval_s` old."""
        with self._lock:
            if time.monotonic() - self._refreshed_at >= self.min_interval_s:
                self._refresh()
            return [manifest for _, manifest in self._cached.values()]

    def _refresh(self) -> None:
        fresh: dict[str, tuple[str, JobManifest]] = {}
        for job_id, etag in self.store.listed():
            known = self._cached.get(job_id)
            if known is not None and known[0] == etag:
                fresh[job_id] = known
                continue
            manifest, read_etag = self.store.load_with_etag(job_id)
            self.reads += 1
            if manifest is not None and read_etag is not None:
                fresh[job_id] = (read_etag, manifest)
        self._cached = fresh
        self._refreshed_at = time.monotonic()
