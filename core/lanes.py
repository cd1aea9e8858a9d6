"""The queue lane of a job's messages: its batch's lane, or None (the shared lane of single jobs).

Every message a job gets (each stage, each webhook, every re-queue by the reconciler, a retry) is
built with `lane_of(manifest)`, so the lane is read from the job manifest (the truth), never passed
along from message to message where a lost message would lose it. See core/queue/sqlite.py for how
lanes are served.
"""

from __future__ import annotations

from schemas.manifest import JobManifest


def lane_of(manifest: JobManifest) -> str | None:
    return manifest.batch.lane if manifest.batch is not None else None
