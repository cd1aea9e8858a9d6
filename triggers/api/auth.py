"""Who may call: the bearer-token check on every route but /health, and the shared-secret check of POST /events.

Both read what to compare from `app.state` (`api_token`, `events_secret`), which `create_app` sets;
`None` there means insecure mode, which only `serve --insecure-no-auth` on a loopback address reaches.

The web studio (triggers/studio) signs in with POST /session, which sets an HttpOnly, SameSite=Strict cookie
holding `session_value(token)` (an HMAC of a fixed label under the token: never the token itself). The bearer
check accepts that cookie too (EventSource cannot send headers). A state-changing request authenticated by the
cookie must also carry `X-Requested-With: videostudio` (a header a cross-site form cannot set): CSRF defence on
top of SameSite=Strict.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.settings import Settings
from triggers.api.errors import ERROR_RESPONSES, HttpError
from triggers.intake import check_authorization

# What answers without a token: /health, the schema with its docs pages (they carry no data), and the web
# studio's static page, its assets and its sign-in endpoint (triggers/studio: they carry no data either).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/", "/studio", "/session"})

SESSION_COOKIE = "videostudio_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "videostudio"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="The server's VIDEOSTUDIO_API_TOKEN, sent as `Authorization: Bearer <token>`.")

_CHALLENGE = 'Bearer realm="videostudio"'
_INVALID = 'Bearer realm="videostudio", error="invalid_token"'


def configured_token(settings: Settings) -> bytes | None:
    if settings.api_token is None:
        return None
    value = settings.api_token.get_secret_value()
    return value.encode() if value.strip() else None


async def require_token(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]) -> None:
    token: bytes | None = request.app.state.api_token
    if token is None:  # insecure mode: only `serve --insecure-no-auth` on a loopback address gets here
        return
    if credentials is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode("utf-8", "surrogateescape"), session_value(token)):
            if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
                raise HttpError(403, "csrf_header_missing", f"a request signed in by the session cookie that changes "
                                f"something needs the header `X-Requested-With: {CSRF_VALUE}`")
            return
        raise HttpError(401, "unauthorized", "this endpoint needs `Authorization: Bearer <token>`",
                        headers={"WWW-Authenticate": _CHALLENGE})
    if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), token):
        raise HttpError(401, "unauthorized", "the bearer token is not valid", headers={"WWW-Authenticate": _INVALID})


def session_value(token: bytes) -> bytes:
    """The session cookie's value for this token: an HMAC under it, so the cookie never holds the token."""
    return hmac.new(token, b"videostudio-session-v1", "sha256").hexdigest().encode()


async def require_events_secret(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]) -> None:
    """POST /events: `Bearer <secret>` or Basic auth with the secret as password (SNS, Ceph RGW)."""
    secret: bytes | None = request.app.state.events_secret
    if secret is None:  # insecure mode (serve --insecure-no-auth on loopback) only
        return
    header = request.headers.get("authorization")
    if not header:
        raise HttpError(401, "unauthorized", "POST /events needs `Authorization: Bearer <VIDEOSTUDIO_EVENTS_SECRET>` "
                        "(or Basic auth with the secret as the password)", headers={"WWW-Authenticate": _CHALLENGE})
    if not check_authorization(header, secret):
        raise HttpError(401, "unauthorized", "the events secret is not valid", headers={"WWW-Authenticate": _INVALID})


def bearer_router() -> APIRouter:
    """A router whose every route needs the bearer token (all but /health and /events)."""
    return APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


def events_router() -> APIRouter:
    """A router whose every route needs the events secret (POST /events: bucket notifications carry that)."""
    return APIRouter(dependencies=[Depends(require_events_secret)], responses=ERROR_RESPONSES)
