"""POST /train: a train job, from an uploaded video (multipart) or from one already in the bucket (JSON)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from schemas.api import PATH_ID_PATTERN, SubmittedJob
from schemas.brief import TrainBrief
from triggers.api.auth import bearer_router
from triggers.api.bodies import JSON_TYPES, MAX_JSON_BYTES, brief_yaml, media_type, parse_brief_body, read_body
from triggers.api.errors import INPUT_ERROR_RESPONSES, HttpError
from triggers.api.params import UPLOADS_PREFIX, VIDEO_SUFFIXES, NameQuery, sanitise_name, upload_filename
from triggers.api.service import JobsService, Service
from triggers.api.uploads import UPLOAD_FIELD, UploadedForm, form_document, read_multipart

router = bearer_router()

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["avatar", UPLOAD_FIELD],
    "properties": {
        "avatar": {"type": "string", "pattern": PATH_ID_PATTERN},
        UPLOAD_FIELD: {"type": "string", "format": "binary",
                       "description": f"The training video ({', '.join(VIDEO_SUFFIXES)})"},
        "webhook": {"type": "string", "description": 'JSON, e.g. {"url": "https://…"}'},
    },
    "additionalProperties": {"type": "string",
                             "description": "Any other train-brief field (epochs, lora_rank, model, …)"},
}


@router.post(
    "/train", status_code=201, response_model=SubmittedJob, tags=["avatars"],
    summary="Train an avatar: upload a video (multipart), or name one already in the bucket (JSON)",
    responses={200: {"model": SubmittedJob, "description": "The same request was already submitted"},
               **INPUT_ERROR_RESPONSES},
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
    }}},
)
async def post_train(request: Request, response: Response, service: Service, name: NameQuery = None) -> SubmittedJob:
    media = media_type(request)
    if media == "multipart/form-data":
        brief = await _brief_from_upload(request, service)
    elif media in JSON_TYPES:
        brief = await _brief_from_json(request, service)
    else:
        raise HttpError(415, "unsupported_media_type",
                        f"send multipart/form-data (an upload) or application/json, not {media or 'no content type'}")
    brief_bytes = brief_yaml(brief)
    stem = sanitise_name(name) if name is not None else (
        f"train-{brief.avatar}-{hashlib.sha256(brief_bytes).hexdigest()[:12]}")
    job = await run_in_threadpool(service.submit_brief, stem, ".yaml", brief_bytes, kind="train", video_key=brief.video)
    response.status_code = 201 if job.created else 200
    return job


async def _brief_from_upload(request: Request, service: JobsService) -> TrainBrief:
    """The brief of a multipart body, once its video is kept under uploads/<avatar>/."""
    form: UploadedForm = await read_multipart(request, max_file_bytes=request.app.state.settings.api_max_upload_bytes)
    try:
        if form.file_path is None:
            raise HttpError(422, "missing_video", f"the multipart body has no {UPLOAD_FIELD!r} file")
        if UPLOAD_FIELD in form.fields:
            raise HttpError(422, "invalid_multipart", f"{UPLOAD_FIELD!r} is the uploaded file, not a text field")
        filename = upload_filename(form.filename, VIDEO_SUFFIXES, kind="video")
        document = _train_document(form_document(form))
        # Validate every field before keeping the upload (the avatar id names its folder).
        avatar = _train_brief({**document, "video": f"{UPLOADS_PREFIX}{filename}"}).avatar
        brief = _train_brief({**document, "video": f"{UPLOADS_PREFIX}{avatar}/{filename}"})
        assert brief.video is not None
        await run_in_threadpool(service.store_upload, brief.video, form)
        return brief
    finally:
        form.cleanup()


async def _brief_from_json(request: Request, service: JobsService) -> TrainBrief:
    """The brief of a JSON body, which names a video already in the bucket."""
    body = await read_body(request, MAX_JSON_BYTES)
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(422, "invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise HttpError(422, "invalid_request", "the body is a JSON object: {avatar, video, …}")
    brief = _train_brief(_train_document(document))
    await run_in_threadpool(service.check_brief_refs, brief)
    return brief


def _train_document(fields: dict[str, Any]) -> dict[str, Any]:
    document = dict(fields)
    kind = document.setdefault("kind", "train")
    if kind != "train":
        raise HttpError(422, "invalid_kind", f"POST /train makes train jobs; got kind {kind!r} (use POST /briefs)")
    return document


def _train_brief(document: dict[str, Any]) -> TrainBrief:
    brief = parse_brief_body(json.dumps(document).encode(), "train.json")
    assert isinstance(brief, TrainBrief)
    return brief

