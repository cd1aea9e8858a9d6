"""Request bodies: their media type, reading one whole within a byte limit (declared or streamed), and briefs in
and out of bytes."""

from __future__ import annotations

import yaml
from fastapi import Request
from starlette.requests import ClientDisconnect

from schemas.brief import MAX_BRIEF_BYTES, RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError
from triggers.api.errors import HttpError

MAX_JSON_BYTES = MAX_BRIEF_BYTES          # briefs and JSON bodies: 1 MB
MAX_EVENTS_BYTES = 1024 * 1024            # a notification batch (S3 caps one message at 64 KB, EventBridge at 256 KB)
JSON_TYPES = {"application/json"}
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, "bad_request", "Content-Length is not a number") from None


def too_large(limit: int) -> HttpError:
    return HttpError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (by Content-Length, or while it streams)."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except ClientDisconnect:
        raise HttpError(400, "client_disconnected", "the client went away before sending the body") from None
    return bytes(body)


def parse_brief_body(data: bytes, filename: str) -> RenderBrief | TrainBrief:
    """`parse_brief`, with its errors as HTTP errors: 413 for a brief over the size limit, else 422."""
    try:
        return parse_brief(data, filename)
    except VideostudioError as exc:
        raise HttpError(413 if exc.code == "brief_too_large" else 422, exc.code, exc.message,
                        details=exc.details) from None


def brief_yaml(brief: RenderBrief | TrainBrief) -> bytes:
    """A brief a route built, as written to inbox/: what the client set, typed (form fields arrive as strings)."""
    return yaml.safe_dump(brief.model_dump(mode="json", exclude_unset=True), sort_keys=False).encode()
