"""The HTTP API: submit briefs and training videos, watch and cancel jobs, deploy and delete avatars.

The API only writes inputs into the bucket and reads manifests: the work is done by the
workers (`videostudio up`, or the Modal functions), exactly as for a file dropped into
`inbox/`. A brief posted here lands in `inbox/` and is submitted at once with
`source="http"`, so the job exists before the response is sent.

Every endpoint except `GET /health` (and the schema at `/openapi.json` with its `/docs`
page, which carry no data) needs `Authorization: Bearer <VIDEOSTUDIO_API_TOKEN>`.
Errors are always JSON `{code, message}` with a stable snake_case `code`.

    app = create_app(Settings())      # or create_app(settings, runner=runner) in tests
    serve(settings, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Depends, FastAPI, Path as PathParam, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from core.avatars import AvatarRegistry, deploy_from_job
from core.jobs import manifest_key
from core.runner import INBOX, Runner
from core.settings import Settings
from core.storage import PreconditionFailed, Storage, validate_key
from schemas.api import PATH_ID_PATTERN, ApiError, EventsAccepted, Health, JobSummary, SubmittedJob, TrainRequest
from schemas.avatar import AvatarManifest
from schemas.brief import MAX_BRIEF_BYTES, Brief, RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError
from schemas.events import StorageEvent
from schemas.manifest import JobManifest, JobStatus
from triggers.intake import check_authorization, events_secret, handle_payload

log = logging.getLogger("videostudio.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_JSON_BYTES = MAX_BRIEF_BYTES          # briefs and JSON bodies: 1 MB
MAX_EVENTS_BYTES = 1024 * 1024            # a notification batch (S3 caps one message at 64 KB, EventBridge at 256 KB)
SSE_POLL_S = 0.25                         # how often the event stream looks at the manifest
SSE_KEEPALIVE_S = 15.0                    # a comment line this often keeps proxies from closing an idle stream
UPLOAD_FIELD = "video"                    # the multipart file field of POST /train
MAX_FORM_FIELDS = 64
MAX_FORM_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 1024 * 1024         # headers and text fields around the video in a multipart body
UPLOADS_PREFIX = "uploads/"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")  # what the prepare stage accepts
JSON_TYPES = {"application/json"}
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
BRIEF_SUFFIXES = (".yaml", ".yml", ".json")
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

_PATH_ID = re.compile(PATH_ID_PATTERN)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


# ---------------------------------------------------------------------------------------------- errors
class HttpError(VideostudioError):
    """A `VideostudioError` that knows its HTTP status (and any headers, e.g. WWW-Authenticate)."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers


# Codes raised by core/ and schemas/, and the status each one means over HTTP.
STATUS_FOR_CODE: dict[str, int] = {
    "job_not_found": 404,
    "avatar_not_found": 404,
    "object_not_found": 404,
    "input_not_found": 404,
    "job_finished": 409,
    "not_a_train_job": 409,
    "training_not_finished": 409,
    "invalid_key": 400,
    "not_an_input": 400,
    "brief_too_large": 413,
    "manifest_contention": 503,
}
CODE_FOR_STATUS: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request",
    500: "internal_error", 503: "unavailable",
}


def status_for(exc: VideostudioError) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    if exc.code in STATUS_FOR_CODE:
        return STATUS_FOR_CODE[exc.code]
    if exc.code.endswith("_not_found"):
        return 404
    return 503 if exc.retryable else 400


def _error_response(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                    details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ApiError(code=code, message=message, details=details).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VideostudioError)
    async def videostudio_error(_: Request, exc: VideostudioError) -> JSONResponse:
        status = status_for(exc)
        headers = getattr(exc, "headers", None)
        if status == 503:
            headers = {**(headers or {}), "Retry-After": "1"}
        return _error_response(status, exc.code, exc.message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                    "type": str(err.get("type", ""))} for err in exc.errors()]
        message = "; ".join(f"{'.'.join(d['loc'][1:]) or d['loc'][0] if d['loc'] else 'request'}: {d['msg']}"
                            for d in details[:5]) or "invalid request"
        return _error_response(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_FOR_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return _error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s in the API", type(exc).__name__, exc_info=exc)
        return _error_response(500, "internal_error", "internal error; see the server log")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ApiError, "description": "Bad id, key or request"},
    401: {"model": ApiError, "description": "Missing or wrong bearer token"},
}


# ---------------------------------------------------------------------------------------------- auth
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="The server's VIDEOSTUDIO_API_TOKEN, sent as `Authorization: Bearer <token>`.")


def _token_checker(token: bytes | None) -> Callable[..., Any]:
    async def require_token(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]) -> None:
        if token is None:  # insecure mode: only `serve --insecure-no-auth` on a loopback address gets here
            return
        if credentials is None:
            raise HttpError(401, "unauthorized", "this endpoint needs `Authorization: Bearer <token>`",
                            headers={"WWW-Authenticate": 'Bearer realm="videostudio"'})
        if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), token):
            raise HttpError(401, "unauthorized", "the bearer token is not valid",
                            headers={"WWW-Authenticate": 'Bearer realm="videostudio", error="invalid_token"'})

    return require_token


def _events_checker(secret: bytes | None) -> Callable[..., Any]:
    """POST /events: `Bearer <secret>` or Basic auth with the secret as password (SNS, Ceph RGW)."""

    async def require_events_secret(
            request: Request,
            _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]) -> None:
        if secret is None:  # insecure mode (serve --insecure-no-auth on loopback) only
            return
        header = request.headers.get("authorization")
        if not header:
            raise HttpError(401, "unauthorized", "POST /events needs `Authorization: Bearer <VIDEOSTUDIO_EVENTS_SECRET>` "
                            "(or Basic auth with the secret as the password)",
                            headers={"WWW-Authenticate": 'Bearer realm="videostudio"'})
        if not check_authorization(header, secret):
            raise HttpError(401, "unauthorized", "the events secret is not valid",
                            headers={"WWW-Authenticate": 'Bearer realm="videostudio", error="invalid_token"'})

    return require_events_secret


def configured_token(settings: Settings) -> bytes | None:
    if settings.api_token is None:
        return None
    value = settings.api_token.get_secret_value()
    return value.encode() if value.strip() else None


# ---------------------------------------------------------------------------------------------- ids
def check_id(value: str, what: str) -> str:
    """Ids and names in paths are one safe path segment: no `/`, no `..`, no hidden names."""
    if not _PATH_ID.fullmatch(value):
        raise HttpError(400, f"invalid_{what}_id", f"invalid {what} id {_short(value)}: "
                        f"use letters, digits, '_', '.', '-' (starting with a letter or digit, at most 128)")
    return value


def _job_id_path(job_id: Annotated[str, PathParam(description="A job id, e.g. `sunrise-0123456789abcdef`.")]) -> str:
    return check_id(job_id, "job")


def _avatar_id_path(avatar_id: Annotated[str, PathParam(description="A deployed avatar id.")]) -> str:
    return check_id(avatar_id, "avatar")


JobId = Annotated[str, Depends(_job_id_path)]
AvatarId = Annotated[str, Depends(_avatar_id_path)]
NameQuery = Annotated[str | None, Query(max_length=200, description=(
    "File name for the brief in inbox/ (sanitised; an extension is dropped). "
    "Posting the same bytes under the same name again returns the existing job."))]


def sanitise_name(name: str) -> str:
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    lower = stem.lower()
    for suffix in BRIEF_SUFFIXES + VIDEO_SUFFIXES:
        if lower.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _UNSAFE_NAME_CHARS.sub("-", stem).strip("._-")[:128]
    if not stem or not _PATH_ID.fullmatch(stem):
        raise HttpError(400, "invalid_name", f"name {_short(name)} has no usable characters")
    return stem


# ---------------------------------------------------------------------------------------------- bodies
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, "bad_request", "Content-Length is not a number") from None


def _too_large(limit: int) -> HttpError:
    return HttpError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (by Content-Length, or while it streams)."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise HttpError(400, "client_disconnected", "the client went away before sending the body") from None
    return bytes(body)


def _parse_brief(data: bytes, filename: str) -> RenderBrief | TrainBrief:
    try:
        return parse_brief(data, filename)
    except VideostudioError as exc:
        raise HttpError(413 if exc.code == "brief_too_large" else 422, exc.code, exc.message) from None


@dataclass
class UploadedForm:
    """A multipart body: its text fields, and its one file streamed to a temp file (hashed on the way)."""

    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None

    def cleanup(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


class _MultipartStream:
    """Feeds a multipart/form-data body through python-multipart's streaming parser.

    Text fields stay in memory (small, few); the one file part goes straight to a temp file,
    so a large video never sits in memory and its size limit is enforced as it arrives.
    """

    def __init__(self, boundary: bytes, *, max_file_bytes: int) -> None:
        from python_multipart.multipart import MultipartParser

        self.form = UploadedForm()
        self.max_file_bytes = max_file_bytes
        self._digest = hashlib.sha256()
        self._handle: Any = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._on_part_begin, "on_part_data": self._on_part_data, "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field, "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end, "on_headers_finished": self._on_headers_finished,
        })

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> UploadedForm:
        from python_multipart.multipart import MultipartState

        self.parser.finalize()
        if self.parser.state != MultipartState.END:
            raise HttpError(400, "invalid_multipart", "the multipart body ended before its closing boundary")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.form.file_path is not None:
            self.form.sha256 = self._digest.hexdigest()
        return self.form

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.form.cleanup()

    # python-multipart callbacks (synchronous, called from inside feed())
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._name, self._is_file = None, False
        self._text = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or not name:
            raise HttpError(400, "invalid_multipart", "every part needs `Content-Disposition: form-data; name=...`")
        self._name = name.decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if not self._is_file:
            if len(self.form.fields) >= MAX_FORM_FIELDS:
                raise HttpError(400, "invalid_multipart", f"more than {MAX_FORM_FIELDS} form fields")
            return
        if self._name != UPLOAD_FIELD:
            raise HttpError(400, "invalid_multipart", f"the file goes in the {UPLOAD_FIELD!r} field, not {self._name!r}")
        if self.form.file_path is not None:
            raise HttpError(400, "invalid_multipart", "send one video per request")
        self.form.filename = options[b"filename"].decode("utf-8", "replace")
        self.form.content_type = self._headers.get(b"content-type", b"").decode("latin-1") or None
        fd, path = tempfile.mkstemp(prefix="videostudio-upload-", suffix=".part")
        self.form.file_path = Path(path)
        self._handle = os.fdopen(fd, "wb")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._is_file:
            self.form.size += len(piece)
            if self.form.size > self.max_file_bytes:
                raise HttpError(413, "payload_too_large",
                                f"the video is over the upload limit of {self.max_file_bytes} bytes")
            self._digest.update(piece)
            self._handle.write(piece)
        else:
            self._text += piece
            if len(self._text) > MAX_FORM_FIELD_BYTES:
                raise HttpError(413, "payload_too_large", f"form field {self._name!r} is over {MAX_FORM_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        if self._is_file:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
        elif self._name is not None:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")


async def read_multipart(request: Request, *, max_file_bytes: int) -> UploadedForm:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise HttpError(400, "invalid_multipart", "multipart/form-data without a boundary")
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise HttpError(413, "payload_too_large", f"the video is over the upload limit of {max_file_bytes} bytes")
    stream = _MultipartStream(boundary, max_file_bytes=max_file_bytes)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if chunk:
                await run_in_threadpool(stream.feed, chunk)  # file writes happen off the event loop
        return await run_in_threadpool(stream.finish)
    except MultipartParseError as exc:
        stream.abort()
        raise HttpError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        stream.abort()
        raise HttpError(400, "client_disconnected", "the client went away during the upload") from None
    except BaseException:
        stream.abort()
        raise


# ---------------------------------------------------------------------------------------------- the service
class JobsService:
    """What the handlers do, as plain synchronous methods on a runner (run in FastAPI's thread pool)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.storage: Storage = runner.storage
        self.avatars = AvatarRegistry(runner.storage)

    # -- inputs
    def check_brief_refs(self, brief: RenderBrief | TrainBrief) -> None:
        """Catch what prepare would fail on at once, while the client is still here."""
        if isinstance(brief, TrainBrief):
            if brief.video is None:
                raise HttpError(422, "missing_video", "a train brief needs `video:` (a bucket key outside inbox/)")
            self.check_video_key(brief.video)
        elif brief.avatar and self.avatars.get(brief.avatar) is None:
            raise HttpError(422, "avatar_not_found", f"no deployed avatar {brief.avatar!r}")

    def check_video_key(self, key: str) -> None:
        try:
            validate_key(key)
        except VideostudioError as exc:
            raise HttpError(422, "invalid_video_key", exc.message) from None
        if key.startswith(INBOX):
            raise HttpError(422, "invalid_video_key", f"{key!r} is in inbox/ (a video there trains by itself); "
                            f"use a key outside inbox/")
        if not key.lower().endswith(VIDEO_SUFFIXES):
            raise HttpError(422, "unsupported_video", f"{key!r} is not a {'/'.join(VIDEO_SUFFIXES)} video")
        if self.storage.stat(key) is None:
            raise HttpError(422, "video_not_found", f"no object at {key!r}")

    def submit_brief(self, stem: str, suffix: str, body: bytes) -> tuple[str, str, bool]:
        """Write the brief to inbox/ (never over different bytes) and create its job. (key, job_id, created)"""
        key = f"{INBOX}{stem}{suffix}"
        digest = hashlib.sha256(body).hexdigest()
        content_type = "application/json" if suffix == ".json" else "application/yaml"
        try:
            self.storage.put_bytes(key, body, if_none_match=True, content_type=content_type)
        except PreconditionFailed:
            if self.storage.content_hash(key) != digest:
                raise HttpError(409, "name_taken", f"{key!r} already holds a different brief; pick another name") from None
        job_id, created = self.runner.submit(StorageEvent(bucket=self.storage.name, key=key, size=len(body),
                                                          content_hash=digest, source="http"))
        return key, job_id, created

    def store_upload(self, key: str, form: UploadedForm) -> None:
        info = self.storage.stat(key)
        if info is not None:
            if info.size == form.size and self.storage.content_hash(key) == form.sha256:
                return  # the same video again: keep it
            raise HttpError(409, "upload_exists", f"{key!r} already holds a different video; rename the file")
        self.storage.put_file(key, form.file_path, content_type=form.content_type or "application/octet-stream")

    # -- jobs
    def load(self, job_id: str) -> JobManifest:
        manifest = self.runner.store.load(job_id)
        if manifest is None:
            raise HttpError(404, "job_not_found", f"no job {job_id!r}")
        return manifest

    def summaries(self, status: JobStatus | None, kind: str | None, limit: int) -> list[JobSummary]:
        manifests = [m for m in self.runner.store.all()
                     if (status is None or m.status == status) and (kind is None or m.kind == kind)]
        manifests.sort(key=lambda m: m.created_at, reverse=True)
        return [JobSummary(job_id=m.job_id, kind=m.kind, status=m.status.value, stage=m.current_stage(),
                           input_key=m.input.key, created_at=m.created_at, updated_at=m.updated_at, error=m.error)
                for m in manifests[:limit]]


def _train_document(fields: dict[str, Any]) -> dict[str, Any]:
    document = dict(fields)
    kind = document.setdefault("kind", "train")
    if kind != "train":
        raise HttpError(422, "invalid_kind", f"POST /train makes train jobs; got kind {kind!r} (use POST /briefs)")
    return document


def _train_brief(document: dict[str, Any]) -> TrainBrief:
    brief = _parse_brief(json.dumps(document).encode(), "train.json")
    assert isinstance(brief, TrainBrief)
    return brief


def _train_brief_bytes(brief: TrainBrief) -> bytes:
    """The brief as written to inbox/: what the client set, typed (form fields arrive as strings)."""
    return yaml.safe_dump(brief.model_dump(mode="json", exclude_unset=True), sort_keys=False).encode()


def _upload_filename(raw: str | None) -> str:
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    stem, dot, suffix = name.rpartition(".")
    if not dot or f".{suffix.lower()}" not in VIDEO_SUFFIXES:
        raise HttpError(415, "unsupported_video", f"upload a {'/'.join(VIDEO_SUFFIXES)} video, got {_short(name)}")
    stem = _UNSAFE_NAME_CHARS.sub("-", stem).strip("._-")[:100] or "video"
    return f"{stem}.{suffix.lower()}"


def _form_document(form: UploadedForm) -> dict[str, Any]:
    """Text fields become train-brief fields; `webhook` is JSON."""
    document: dict[str, Any] = {}
    for name, value in form.fields.items():
        if name == "webhook":
            try:
                document[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise HttpError(422, "invalid_json", f"webhook: not valid JSON: {exc.msg}") from None
        elif value != "" or name == "avatar":
            document[name] = value
    return document


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def _brief_components() -> dict[str, Any]:
    """Brief and train-request schemas for the OpenAPI document (request bodies read raw, so FastAPI can't see them)."""
    ref = "#/components/schemas/{model}"
    brief = TypeAdapter(Brief).json_schema(ref_template=ref)
    components = dict(brief.pop("$defs", {}))
    components["Brief"] = brief
    train = TrainRequest.model_json_schema(ref_template=ref)
    components.update(train.pop("$defs", {}))
    components["TrainRequest"] = train
    return components


# ---------------------------------------------------------------------------------------------- the app
def create_app(settings: Settings, *, runner: Runner | None = None, allow_no_auth: bool = False) -> FastAPI:
    """The API for one bucket. Without `VIDEOSTUDIO_API_TOKEN` it refuses unless `allow_no_auth`."""
    token = configured_token(settings)
    if token is None and not allow_no_auth:
        raise VideostudioError("no_api_token", "set VIDEOSTUDIO_API_TOKEN: the HTTP API never runs without "
                               "authentication (for local experiments only: serve --insecure-no-auth on 127.0.0.1)")
    if runner is None:
        from triggers.wiring import open_runner

        runner = open_runner(settings)
    service = JobsService(runner)
    version = _version()
    app = FastAPI(
        title="videostudio",
        version=version,
        summary="Briefs become videos; videos of a person become avatars.",
        description=(
            "Submit briefs and training videos, watch job manifests, cancel jobs, deploy avatars. "
            "The API only writes inputs into the bucket and reads manifests: run `videostudio up` for the workers. "
            "Errors are `{code, message}` with a stable snake_case code."),
    )
    app.state.runner = runner
    app.state.service = service
    _install_error_handlers(app)

    @app.get("/health", response_model=Health, tags=["meta"], summary="Liveness (no authentication)")
    def health() -> Health:
        return Health(status="ok", version=version)

    protected = [Depends(_token_checker(token))]

    def secured(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Every route but /health is registered through here: it carries the bearer-token check."""
        options["responses"] = {**ERROR_RESPONSES, **options.get("responses", {})}
        return app.api_route(path, methods=[method], dependencies=protected, **options)

    # ------------------------------------------------------------------ inputs
    @secured(
        "POST",
        "/briefs", status_code=201, response_model=SubmittedJob, tags=["jobs"],
        summary="Submit a brief (JSON, or YAML with Content-Type: application/yaml)",
        responses={200: {"model": SubmittedJob, "description": "The same brief was already submitted under this name"},
                   409: {"model": ApiError}, 413: {"model": ApiError}, 415: {"model": ApiError},
                   422: {"model": ApiError}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Brief"}},
            "application/yaml": {"schema": {"type": "string", "description": "The same brief as YAML"}},
        }}},
    )
    async def post_brief(request: Request, response: Response, name: NameQuery = None) -> SubmittedJob:
        media = _media_type(request)
        if media in JSON_TYPES:
            suffix = ".json"
        elif media in YAML_TYPES:
            suffix = ".yaml"
        else:
            raise HttpError(415, "unsupported_media_type",
                            f"send a brief as application/json or application/yaml, not {media or 'no content type'}")
        stem = sanitise_name(name) if name is not None else uuid.uuid4().hex
        body = await read_body(request, MAX_JSON_BYTES)
        brief = _parse_brief(body, f"brief{suffix}")
        await run_in_threadpool(service.check_brief_refs, brief)
        key, job_id, created = await run_in_threadpool(service.submit_brief, stem, suffix, body)
        response.status_code = 201 if created else 200
        return SubmittedJob(job_id=job_id, created=created, manifest_key=manifest_key(job_id), brief_key=key,
                            kind=brief.kind, video_key=getattr(brief, "video", None))

    @secured(
        "POST",
        "/train", status_code=201, response_model=SubmittedJob, tags=["avatars"],
        summary="Train an avatar: upload a video (multipart), or name one already in the bucket (JSON)",
        responses={200: {"model": SubmittedJob, "description": "The same request was already submitted"},
                   409: {"model": ApiError}, 413: {"model": ApiError}, 415: {"model": ApiError},
                   422: {"model": ApiError}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["avatar", UPLOAD_FIELD],
                "properties": {
                    "avatar": {"type": "string", "pattern": PATH_ID_PATTERN},
                    UPLOAD_FIELD: {"type": "string", "format": "binary",
                                   "description": f"The training video ({', '.join(VIDEO_SUFFIXES)})"},
                    "webhook": {"type": "string", "description": 'JSON, e.g. {"url": "https://…"}'},
                },
                "additionalProperties": {"type": "string",
                                         "description": "Any other train-brief field (epochs, lora_rank, model, …)"},
            }},
            "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
        }}},
    )
    async def post_train(request: Request, response: Response, name: NameQuery = None) -> SubmittedJob:
        media = _media_type(request)
        form: UploadedForm | None = None
        try:
            if media == "multipart/form-data":
                form = await read_multipart(request, max_file_bytes=settings.api_max_upload_bytes)
                if form.file_path is None:
                    raise HttpError(422, "missing_video", f"the multipart body has no {UPLOAD_FIELD!r} file")
                if UPLOAD_FIELD in form.fields:
                    raise HttpError(422, "invalid_multipart", f"{UPLOAD_FIELD!r} is the uploaded file, not a text field")
                filename = _upload_filename(form.filename)
                document = _train_document(_form_document(form))
                # Validate every field before keeping the upload (the avatar id names its folder).
                avatar = _train_brief({**document, "video": f"{UPLOADS_PREFIX}{filename}"}).avatar
                brief = _train_brief({**document, "video": f"{UPLOADS_PREFIX}{avatar}/{filename}"})
                await run_in_threadpool(service.store_upload, brief.video, form)
            elif media in JSON_TYPES:
                body = await read_body(request, MAX_JSON_BYTES)
                try:
                    document = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise HttpError(422, "invalid_json", f"not valid JSON: {exc}") from None
                if not isinstance(document, dict):
                    raise HttpError(422, "invalid_request", "the body is a JSON object: {avatar, video, …}")
                brief = _train_brief(_train_document(document))
                await run_in_threadpool(service.check_brief_refs, brief)
            else:
                raise HttpError(415, "unsupported_media_type",
                                f"send multipart/form-data (an upload) or application/json, not {media or 'no content type'}")
        finally:
            if form is not None:
                form.cleanup()
        brief_bytes = _train_brief_bytes(brief)
        stem = sanitise_name(name) if name is not None else (
            f"train-{brief.avatar}-{hashlib.sha256(brief_bytes).hexdigest()[:12]}")
        key, job_id, created = await run_in_threadpool(service.submit_brief, stem, ".yaml", brief_bytes)
        response.status_code = 201 if created else 200
        return SubmittedJob(job_id=job_id, created=created, manifest_key=manifest_key(job_id), brief_key=key,
                            kind="train", video_key=brief.video)

    # ------------------------------------------------------------------ bucket notifications
    @app.api_route(
        "/events", methods=["POST"], response_model=EventsAccepted, tags=["events"],
        dependencies=[Depends(_events_checker(events_secret(settings) if token is not None else None))],
        summary="Bucket notifications in: S3 (direct, SNS, EventBridge), MinIO, Ceph RGW, Cloudflare R2",
        description=(
            "Any notification shape the intake understands (see docs/deploy.md): objects created under "
            "`inbox/` start their job (once: duplicates and late events find the existing job); everything "
            "else is ignored with a reason. Authenticate with `Authorization: Bearer <VIDEOSTUDIO_EVENTS_SECRET>` "
            "or Basic auth with the secret as the password (falls back to the API token when no events secret "
            "is set). 503 means the bucket could not be reached: send the event again."),
        responses={**ERROR_RESPONSES, 413: {"model": ApiError}, 503: {"model": ApiError}},
    )
    async def post_events(request: Request) -> EventsAccepted:
        body = await read_body(request, MAX_EVENTS_BYTES)
        result = await run_in_threadpool(handle_payload, service.runner, body)
        if result.failed:
            raise HttpError(503, "storage_unavailable", "the bucket could not be reached; send the event again")
        return EventsAccepted.model_validate(result.summary())

    # ------------------------------------------------------------------ jobs
    @secured("GET", "/jobs", response_model=list[JobSummary], tags=["jobs"], summary="List jobs, newest first")
    def list_jobs(status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
                  kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="render | train")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobSummary]:
        return service.summaries(status, kind, limit)

    @secured("GET", "/jobs/{job_id}", response_model=JobManifest, tags=["jobs"], summary="A job's manifest",
             responses={404: {"model": ApiError}})
    def get_job(job_id: JobId) -> JobManifest:
        return service.load(job_id)

    @secured(
        "GET",
        "/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
        summary="Server-sent events: a `manifest` event each time the manifest changes; ends once the job is finished",
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                         "description": "`event: manifest` / `data: <the manifest as JSON>` per change"},
                   404: {"model": ApiError}},
    )
    async def job_events(job_id: JobId) -> StreamingResponse:
        first = await run_in_threadpool(service.runner.store.load, job_id)
        if first is None:
            raise HttpError(404, "job_not_found", f"no job {job_id!r}")

        async def stream() -> AsyncIterator[bytes]:
            manifest: JobManifest | None = first
            last, last_sent = None, time.monotonic()
            while True:
                if manifest is None:
                    yield _sse("error", json.dumps({"code": "job_not_found", "message": f"job {job_id} disappeared"}))
                    return
                data = manifest.model_dump_json()
                if data != last:
                    last, last_sent = data, time.monotonic()
                    yield _sse("manifest", data)
                if manifest.status.terminal:
                    return
                if time.monotonic() - last_sent >= SSE_KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield b": keep-alive\n\n"
                await asyncio.sleep(SSE_POLL_S)
                manifest = await run_in_threadpool(service.runner.store.load, job_id)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @secured("POST", "/jobs/{job_id}/cancel", status_code=202, response_model=JobManifest, tags=["jobs"],
              summary="Cancel a job: now if it is waiting, at its next step if it is running",
              responses={404: {"model": ApiError}, 409: {"model": ApiError, "description": "The job already finished"}})
    def cancel_job(job_id: JobId) -> JobManifest:
        return service.runner.cancel(job_id)

    @secured("POST", "/jobs/{job_id}/deploy", response_model=AvatarManifest, tags=["avatars"],
              summary="Deploy the avatar a succeeded train job produced",
              responses={404: {"model": ApiError},
                         409: {"model": ApiError, "description": "Not a train job, or its training has not succeeded"}})
    def deploy_job(job_id: JobId) -> AvatarManifest:
        return deploy_from_job(service.avatars, service.load(job_id))

    # ------------------------------------------------------------------ avatars
    @secured("GET", "/avatars", response_model=list[AvatarManifest], tags=["avatars"], summary="Deployed avatars")
    def list_avatars() -> list[AvatarManifest]:
        return sorted(service.avatars.list(), key=lambda a: a.avatar_id)

    @secured("GET", "/avatars/{avatar_id}", response_model=AvatarManifest, tags=["avatars"], summary="One deployed avatar",
             responses={404: {"model": ApiError}})
    def get_avatar(avatar_id: AvatarId) -> AvatarManifest:
        return service.avatars.require(avatar_id)

    @secured("DELETE", "/avatars/{avatar_id}", status_code=204, response_class=Response, tags=["avatars"],
                summary="Delete a deployed avatar (its manifest first, then its weights)",
                responses={404: {"model": ApiError}})
    def delete_avatar(avatar_id: AvatarId) -> Response:
        service.avatars.delete(avatar_id)
        return Response(status_code=204)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in _brief_components().items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _version() -> str:
    try:
        return metadata.version("videostudio")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          insecure_no_auth: bool = False, log_level: str = "info") -> None:
    """Run the API with uvicorn until interrupted. Refuses to start open to anyone."""
    import uvicorn

    token = configured_token(settings)
    if token is None:
        if not insecure_no_auth:
            raise VideostudioError("no_api_token", "VIDEOSTUDIO_API_TOKEN is not set: the API will not start "
                                   "without a bearer token (for a local experiment: --insecure-no-auth, 127.0.0.1 only)")
        if not is_loopback(host):
            raise VideostudioError("insecure_bind", f"--insecure-no-auth only binds a loopback address "
                                   f"(127.0.0.1, ::1, localhost), not {host!r}")
        log.warning("serving WITHOUT authentication on %s:%s (--insecure-no-auth)", host, port)
    elif insecure_no_auth:
        log.warning("--insecure-no-auth ignored: VIDEOSTUDIO_API_TOKEN is set, so the token is required")
    app = create_app(settings, allow_no_auth=token is None and insecure_no_auth)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
