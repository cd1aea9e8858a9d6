"""The jobs routes: list jobs, read a manifest, follow it as server-sent events, cancel a job, deploy its avatar."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from core.avatars import deploy_from_job
from schemas.api import ApiError, JobSummary
from schemas.avatar import AvatarManifest
from schemas.errors import VideostudioError
from schemas.manifest import JobManifest, JobStatus
from triggers.api.auth import bearer_router
from triggers.api.errors import NOT_FOUND_RESPONSE, HttpError
from triggers.api.params import JobId
from triggers.api.service import JobsService, Service

SSE_POLL_S = 0.25                         # how often the event stream looks at the manifest
SSE_KEEPALIVE_S = 15.0                    # a comment line this often keeps proxies from closing an idle stream
LIVE_LIFETIME_S = 300.0                   # GET /live/jobs ends after this; the browser's EventSource reconnects
SSE_SEPARATOR = "\n"                      # lines end in LF, as they always have on this stream (sse-starlette: CRLF)

router = bearer_router()


@router.get("/jobs", response_model=list[JobSummary], tags=["jobs"], summary="List jobs, newest first")
def list_jobs(service: Service,
              status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
              kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="render | train")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobSummary]:
    return service.summaries(status, kind, limit)


@router.get("/live/jobs", include_in_schema=False)
async def jobs_live(service: Service) -> EventSourceResponse:
    """The web studio's live jobs list: a `jobs` event (the summaries, newest first) each time it changes.
    Ends after LIVE_LIFETIME_S (EventSource reconnects by itself); kept out of the OpenAPI spec because it
    only ends then."""
    return EventSourceResponse(_jobs_events(service), headers={"Cache-Control": "no-cache"},
                               ping=SSE_KEEPALIVE_S, ping_message_factory=_keep_alive, sep=SSE_SEPARATOR)


async def _jobs_events(service: JobsService) -> AsyncIterator[ServerSentEvent]:
    last = None
    deadline = asyncio.get_running_loop().time() + LIVE_LIFETIME_S
    while asyncio.get_running_loop().time() < deadline:
        summaries = await run_in_threadpool(lambda: service.summaries(None, None, 200, live=True))
        data = json.dumps([s.model_dump(mode="json") for s in summaries])
        if data != last:
            last = data
            yield _event("jobs", data)
        await asyncio.sleep(SSE_POLL_S * 2)


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


@router.post("/jobs/{job_id}/retry", response_model=JobManifest, tags=["jobs"],
             summary="Run a failed job again from the stage that failed, with a fresh attempt budget",
             responses={**NOT_FOUND_RESPONSE, 409: {"model": ApiError, "description": "The job has not failed"}})
def retry_job(job_id: JobId, service: Service) -> JobManifest:
    try:
        return service.runner.retry(job_id)
    except VideostudioError as exc:
        if exc.code == "job_not_failed":
            raise HttpError(409, exc.code, exc.message) from None
        raise


@router.get("/jobs/{job_id}/outputs/{name}", tags=["jobs"], response_class=Response,
            summary="One of the job's outputs (`outputs.<name>` in its manifest: video, poster, contact_sheet, …)",
            description="The object's bytes with its content type; a `Range: bytes=a-b` header gets a 206.",
            responses={200: {"content": {"video/mp4": {}, "image/png": {}, "image/jpeg": {}},
                             "description": "The output's bytes"}, 206: {"description": "The requested byte range"},
                       **NOT_FOUND_RESPONSE, 416: {"model": ApiError}})
def job_output(job_id: JobId, name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$")], service: Service,
               range_header: Annotated[str | None, Header(alias="range", include_in_schema=False)] = None) -> Response:
    manifest = service.load(job_id)
    key = manifest.outputs.get(name)
    if key is None:
        raise HttpError(404, "output_not_found", f"job {job_id!r} has no output {name!r}")
    try:
        data = service.storage.get_bytes(key)
    except FileNotFoundError:
        raise HttpError(404, "output_not_found", f"job {job_id!r}: output {name!r} is not in the bucket") from None
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-cache"}
    if range_header:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if match is None or match.group(1) == match.group(2) == "":
            raise HttpError(416, "invalid_range", "send `Range: bytes=START-END`", headers={"Content-Range": f"bytes */{len(data)}"})
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
        else:  # a suffix: the last N bytes
            start, end = max(len(data) - int(match.group(2)), 0), len(data) - 1
        if start >= len(data) or start > end:
            raise HttpError(416, "range_not_satisfiable", f"the output has {len(data)} bytes",
                            headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start:end + 1], status_code=206, media_type=media, headers=headers)
    return Response(data, media_type=media, headers=headers)


@router.post("/jobs/{job_id}/deploy", response_model=AvatarManifest, tags=["avatars"],
             summary="Deploy the avatar a succeeded train job produced",
             responses={**NOT_FOUND_RESPONSE,
                        409: {"model": ApiError, "description": "Not a train job, or its training has not succeeded"}})
def deploy_job(job_id: JobId, service: Service) -> AvatarManifest:
    return deploy_from_job(service.avatars, service.load(job_id))
