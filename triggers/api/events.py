"""POST /events: bucket notifications in (S3, SNS, EventBridge, MinIO, Ceph RGW, R2), each handed to the intake."""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from schemas.api import ApiError, EventsAccepted
from triggers.api.auth import events_router
from triggers.api.bodies import MAX_EVENTS_BYTES, read_body
from triggers.api.errors import HttpError
from triggers.api.service import Service
from triggers.intake import handle_payload

router = events_router()


@router.post(
    "/events", response_model=EventsAccepted, tags=["events"],
    summary="Bucket notifications in: S3 (direct, SNS, EventBridge), MinIO, Ceph RGW, Cloudflare R2",
    description=(
        "Any notification shape the intake understands (see docs/deploy.md): objects created under "
        "`inbox/` start their job (once: duplicates and late events find the existing job); everything "
        "else is ignored with a reason. Authenticate with `Authorization: Bearer <VIDEOSTUDIO_EVENTS_SECRET>` "
        "or Basic auth with the secret as the password (falls back to the API token when no events secret "
        "is set). 503 means the bucket could not be reached: send the event again."),
    responses={413: {"model": ApiError}, 503: {"model": ApiError}},
)
async def post_events(request: Request, service: Service) -> EventsAccepted:
    body = await read_body(request, MAX_EVENTS_BYTES)
    result = await run_in_threadpool(handle_payload, service.runner, body)
    if result.failed:
        raise HttpError(503, "storage_unavailable", "the bucket could not be reached; send the event again")
    return EventsAccepted.model_validate(result.summary())
