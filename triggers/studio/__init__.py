"""The web studio: a page at `/`, its assets under `/studio/`, and sign-in at `/session`.

Plain ES modules and one CSS file in `static/` (shipped as package data: no build step, nothing fetched
from another origin). The page talks to the API with the session cookie POST /session sets:

    POST /session   {"token": "..."}  → 204 + Set-Cookie (HttpOnly, SameSite=Strict, Path=/), 401 for a wrong token
    DELETE /session                   → 204, the cookie cleared

These routes carry no data, so they are public (auth.PUBLIC_PATHS) and not in the OpenAPI spec.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from triggers.api.auth import SESSION_COOKIE, session_value

STATIC = Path(__file__).with_name("static")
MAX_SESSION_BODY = 4096
SESSION_MAX_AGE_S = 12 * 3600
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Only this origin, ever: the page fetches, plays and loads nothing from anywhere else.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


async def session(request: Request) -> Response:
    if request.method == "DELETE":
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return _error(415, "unsupported_media_type", 'send {"token": "..."} as application/json')
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SESSION_BODY:
            return _error(413, "body_too_large", f"a sign-in body is at most {MAX_SESSION_BODY} bytes")
    try:
        token = json.loads(body)["token"]
        assert isinstance(token, str)
    except (ValueError, KeyError, TypeError, AssertionError):
        return _error(422, "invalid_session_request", 'send {"token": "..."}')
    expected: bytes | None = request.app.state.api_token
    if expected is not None and not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected):
        return _error(401, "unauthorized", "that token is not valid")
    response = Response(status_code=204)
    value = session_value(expected).decode() if expected is not None else "insecure"
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/session", session, methods=["POST", "DELETE"]),
        Mount("/studio", app=StaticFiles(directory=STATIC), name="studio"),
    ]
