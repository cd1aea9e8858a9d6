"""The jobs routes: list jobs, read a manifest, follow it as server-sent events, cancel a job, deploy its avatar."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Query
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from core.avatars import deploy_from_job
from schemas.api import ApiError, JobSummary
from schemas.avatar import AvatarManifest
from schemas.manifest import JobManifest, JobStatus
from triggers.api.auth import bearer_router
from triggers.api.errors import NOT_FOUND_RESPONSE, HttpError
from triggers.api.params import JobId
from triggers.api.service import JobsService, Service

SSE_POLL_S = 0.25                         # how often the event stream looks at the manifest
SSE_KEEPALIVE_S = 15.0                    # a comment line this often keeps proxies from closing an idle stream
SSE_SEPARATOR = "\n"                      # lines end in LF, as they always have on this stream (sse-starlette: CRLF)

router = bearer_router()


@router.get("/jobs", response_model=list[JobSummary], tags=["jobs"], summary="List jobs, newest first")
def list_jobs(service: Service,
              status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
              kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="render | train")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobSummary]:
    return service.summaries(status, kind, limit)


@router.get("/jobs/{job_id}", response_model=JobManifest, tags=["jobs"], summary="A job's manifest",
            responses=NOT_FOUND_RESPONSE)
def get_job(job_id: JobId, service: Service) -> JobManifest:
    return service.load(job_id)


@router.get(
    "/jobs/{job_id}/events", tags=["jobs"], response_class=EventSourceResponse,
    summary="Server-sent events: a `manifest` event each time the manifest changes; ends once the job is finished",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "`event: manifest` / `data: <the manifest as JSON>` per change"},
               **NOT_FOUND_RESPONSE},
)
async def job_events(job_id: JobId, service: Service) -> EventSourceResponse:
    first = await run_in_threadpool(service.runner.store.load, job_id)
    if first is None:
        raise HttpError(404, "job_not_found", f"no job {job_id!r}")
    # sse-starlette sends the keep-alive comment (its ping) every SSE_KEEPALIVE_S; Cache-Control stays
    # what this stream always sent (its default is no-store).
    return EventSourceResponse(_manifest_events(service, job_id, first), headers={"Cache-Control": "no-cache"},
                               ping=SSE_KEEPALIVE_S, ping_message_factory=_keep_alive, sep=SSE_SEPARATOR)


async def _manifest_events(service: JobsService, job_id: str, first: JobManifest) -> AsyncIterator[ServerSentEvent]:
    """A `manifest` event per change of the manifest, until the job is finished (or its manifest disappears)."""
    manifest: JobManifest | None = first
    last = None
    while True:
        if manifest is None:
            yield _event("error", json.dumps({"code": "job_not_found", "message": f"job {job_id} disappeared"}))
            return
        data = manifest.model_dump_json()
        if data != last:
            last = data
            yield _event("manifest", data)
        if manifest.status.terminal:
            return
        await asyncio.sleep(SSE_POLL_S)
        manifest = await run_in_threadpool(service.runner.store.load, job_id)


def _event(name: str, data: str) -> ServerSentEvent:
    return ServerSentEvent(data, event=name, sep=SSE_SEPARATOR)


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=SSE_SEPARATOR)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobManifest, tags=["jobs"],
             summary="Cancel a job: now if it is waiting, at its next step if it is running",
             responses={**NOT_FOUND_RESPONSE, 409: {"model": ApiError, "description": "The job already finished"}})
def cancel_job(job_id: JobId, service: Service) -> JobManifest:
    return service.runner.cancel(job_id)


@router.post("/jobs/{job_id}/deploy", response_model=AvatarManifest, tags=["avatars"],
             summary="Deploy the avatar a succeeded train job produced",
             responses={**NOT_FOUND_RESPONSE,
                        409: {"model": ApiError, "description": "Not a train job, or its training has not succeeded"}})
def deploy_job(job_id: JobId, service: Service) -> AvatarManifest:
    return deploy_from_job(service.avatars, service.load(job_id))
