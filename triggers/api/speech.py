"""POST /briefs/speech: a talking avatar's brief from an uploaded recording (multipart).

The recording is kept under `uploads/<avatar>/speech/` (named by its content too), and the brief
built from the form, with `audio:` naming that key, is submitted exactly as POST /briefs submits
one. A recording already in the bucket needs no upload: POST /briefs with `audio: <key>`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from schemas.api import SubmittedJob
from schemas.brief import ID_PATTERN, RenderBrief
from triggers.api.auth import bearer_router
from triggers.api.bodies import brief_yaml, media_type, parse_brief_body
from triggers.api.briefs import submit_brief_bytes
from triggers.api.errors import INPUT_ERROR_RESPONSES, HttpError
from triggers.api.params import (
    AUDIO_SUFFIXES,
    UPLOADS_PREFIX,
    NameQuery,
    sanitise_name,
    speech_upload_key,
    upload_filename,
)
from triggers.api.service import JobsService, Service
from triggers.api.uploads import UploadedForm, form_document, read_multipart

AUDIO_FIELD = "audio"                     # the multipart file field of POST /briefs/speech

router = bearer_router()

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["avatar", AUDIO_FIELD],
    "properties": {
        "avatar": {"type": "string", "pattern": ID_PATTERN, "description": "A deployed talking avatar"},
        AUDIO_FIELD: {"type": "string", "format": "binary",
                      "description": f"The recording the avatar speaks ({', '.join(AUDIO_SUFFIXES)}; at most 10 min)"},
        "seed": {"type": "string", "pattern": r"^[0-9]{1,19}$"},
        "webhook": {"type": "string", "description": 'JSON, e.g. {"url": "https://…"}'},
    },
    "additionalProperties": {"type": "string",
                             "description": "Any other render-brief field (model, fps, avatar_strength, …); a "
                                            "dotted name sets a nested one (background.color, background.blur, …)"},
}


@router.post(
    "/briefs/speech", status_code=201, response_model=SubmittedJob, tags=["jobs"],
    summary="Make a talking avatar speak an uploaded recording (multipart: `audio` file, `avatar`, brief fields)",
    responses={200: {"model": SubmittedJob, "description": "The same recording and fields were already submitted"},
               **INPUT_ERROR_RESPONSES},
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA}}}},
)
async def post_speech(request: Request, response: Response, service: Service, name: NameQuery = None) -> SubmittedJob:
    media = media_type(request)
    if media != "multipart/form-data":
        raise HttpError(415, "unsupported_media_type",
                        f"send multipart/form-data with an {AUDIO_FIELD!r} file, not {media or 'no content type'} "
                        "(a recording already in the bucket: POST /briefs with audio: <key>)")
    brief = await _brief_from_upload(request, service)
    body = brief_yaml(brief)
    stem = sanitise_name(name) if name is not None else (
        f"speech-{brief.avatar}-{hashlib.sha256(body).hexdigest()[:12]}")
    return await submit_brief_bytes(service, response, stem=stem, suffix=".yaml", body=body)


async def _brief_from_upload(request: Request, service: JobsService) -> RenderBrief:
    """The brief of a multipart body, once its recording is kept under uploads/<avatar>/speech/."""
    form: UploadedForm = await read_multipart(request, max_file_bytes=request.app.state.settings.api_max_upload_bytes,
                                              file_field=AUDIO_FIELD)
    try:
        if form.file_path is None or form.sha256 is None:
            raise HttpError(422, "missing_audio", f"the multipart body has no {AUDIO_FIELD!r} file")
        if AUDIO_FIELD in form.fields:
            raise HttpError(422, "invalid_multipart", f"{AUDIO_FIELD!r} is the uploaded file, not a text field")
        filename = upload_filename(form.filename, AUDIO_SUFFIXES, kind="audio")
        document = _render_document(form_document(form))
        # Validate every field, and that the avatar can speak, before keeping the upload (the avatar names its folder).
        avatar = _render_brief({**document, AUDIO_FIELD: f"{UPLOADS_PREFIX}{filename}"}).avatar
        assert avatar is not None  # a brief with audio: has an avatar, or it was refused with missing_avatar
        brief = _render_brief({**document, AUDIO_FIELD: speech_upload_key(avatar, filename, form.sha256)})
        await run_in_threadpool(service.check_render_avatar, brief)
        await run_in_threadpool(service.check_background_keys, brief)  # `background.image=…`: it is in the bucket
        assert brief.audio is not None
        await run_in_threadpool(service.store_upload, brief.audio, form)
        return brief
    finally:
        form.cleanup()


def _render_document(fields: dict[str, Any]) -> dict[str, Any]:
    document = dict(fields)
    kind = document.setdefault("kind", "render")
    if kind != "render":
        raise HttpError(422, "invalid_kind", f"POST /briefs/speech makes render jobs; got kind {kind!r} "
                        "(use POST /train)")
    return document


def _render_brief(document: dict[str, Any]) -> RenderBrief:
    brief = parse_brief_body(json.dumps(document).encode(), "speech.json")
    assert isinstance(brief, RenderBrief)
    return brief
