"""Errors over HTTP: `HttpError`, the status each error code means, and the handlers that make every error JSON.

Errors are always `{code, message}` (an `ApiError`) with a stable snake_case `code`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.api import ApiError
from schemas.errors import VideostudioError

log = logging.getLogger("videostudio.api")


class HttpError(VideostudioError):
    """A `VideostudioError` that knows its HTTP status (and any headers, e.g. WWW-Authenticate)."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(code, message, details=details)
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

# What the OpenAPI document says every protected operation may answer, and what the ones that take an input add.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ApiError, "description": "Bad id, key or request"},
    401: {"model": ApiError, "description": "Missing or wrong bearer token"},
}
INPUT_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ApiError}, 413: {"model": ApiError}, 415: {"model": ApiError}, 422: {"model": ApiError},
}
NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {404: {"model": ApiError}}


def status_for(exc: VideostudioError) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    if exc.code in STATUS_FOR_CODE:
        return STATUS_FOR_CODE[exc.code]
    if exc.code.endswith("_not_found"):
        return 404
    return 503 if exc.retryable else 400


def short(value: str, limit: int = 80) -> str:
    """`value` quoted for an error message, cut at `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def error_response(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                   details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ApiError(code=code, message=message, details=details).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VideostudioError)
    async def videostudio_error(_: Request, exc: VideostudioError) -> JSONResponse:
        status = status_for(exc)
        headers = getattr(exc, "headers", None)
        if status == 503:
            headers = {**(headers or {}), "Retry-After": "1"}
        return error_response(status, exc.code, exc.message, headers=headers, details=exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                    "type": str(err.get("type", ""))} for err in exc.errors()]
        message = "; ".join(f"{'.'.join(d['loc'][1:]) or d['loc'][0] if d['loc'] else 'request'}: {d['msg']}"
                            for d in details[:5]) or "invalid request"
        return error_response(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_FOR_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s in the API", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the server log")
