"""POST /briefs: a brief (JSON or YAML) written to inbox/ and submitted as a job at once.

`submit_brief_bytes` is that submission, shared with the routes that build a brief themselves
(POST /briefs/speech): parse, check what it refers to, write it to inbox/, create the job.
"""

from __future__ import annotations

import uuid

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from schemas.api import SubmittedJob
from triggers.api.auth import bearer_router
from triggers.api.bodies import JSON_TYPES, MAX_JSON_BYTES, YAML_TYPES, media_type, parse_brief_body, read_body
from triggers.api.errors import INPUT_ERROR_RESPONSES, HttpError
from triggers.api.params import NameQuery, sanitise_name
from triggers.api.service import JobsService, Service

router = bearer_router()


@router.post(
    "/briefs", status_code=201, response_model=SubmittedJob, tags=["jobs"],
    summary="Submit a brief (JSON, or YAML with Content-Type: application/yaml)",
    responses={200: {"model": SubmittedJob, "description": "The same brief was already submitted under this name"},
               **INPUT_ERROR_RESPONSES},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Brief"}},
        "application/yaml": {"schema": {"type": "string", "description": "The same brief as YAML"}},
    }}},
)
async def post_brief(request: Request, response: Response, service: Service, name: NameQuery = None) -> SubmittedJob:
    media = media_type(request)
    if media in JSON_TYPES:
        suffix = ".json"
    elif media in YAML_TYPES:
        suffix = ".yaml"
    else:
        raise HttpError(415, "unsupported_media_type",
                        f"send a brief as application/json or application/yaml, not {media or 'no content type'}")
    stem = sanitise_name(name) if name is not None else uuid.uuid4().hex
    body = await read_body(request, MAX_JSON_BYTES)
    return await submit_brief_bytes(service, response, stem=stem, suffix=suffix, body=body)


async def submit_brief_bytes(service: JobsService, response: Response, *, stem: str, suffix: str,
                             body: bytes) -> SubmittedJob:
    """Submit a brief's bytes as `inbox/<stem><suffix>`: 201 for a new job, 200 when the same brief was already
    submitted under this name."""
    brief = parse_brief_body(body, f"brief{suffix}")
    await run_in_threadpool(service.check_brief_refs, brief)
    job = await run_in_threadpool(service.submit_brief, stem, suffix, body,
                                  kind=brief.kind, video_key=getattr(brief, "video", None))
    response.status_code = 201 if job.created else 200
    return job
