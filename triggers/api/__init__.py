"""The HTTP API: submit briefs, recordings for talking avatars and training videos, watch and cancel jobs, deploy
and delete avatars.

The API only writes inputs into the bucket and reads manifests: the work is done by the
workers (`videostudio up`, or the Modal functions), exactly as for a file dropped into
`inbox/`. A brief posted here lands in `inbox/` and is submitted at once with
`source="http"`, so the job exists before the response is sent.

Every endpoint except `GET /health` (and the schema at `/openapi.json` with its `/docs`
page, which carry no data) needs `Authorization: Bearer <VIDEOSTUDIO_API_TOKEN>`.
Errors are always JSON `{code, message}` with a stable snake_case `code`.

    app = create_app(Settings())      # or create_app(settings, runner=runner) in tests
    serve(settings, host="127.0.0.1", port=8000)

This package: `create_app` and `serve` here; one router a resource (`health`, `info`, `briefs`, `speech`
(POST /briefs/speech), `train`, `events`, `jobs`, `batches`, `avatars`); `auth`, `errors`, `params`, `bodies`,
`uploads` and `openapi` for what the routes share; the web studio's page and sign-in from `triggers.studio`; `service` for the work behind them. The app's shared state lives in
`app.state` (`settings`, `runner`, `service`, `api_token`, `events_secret`).
"""

from __future__ import annotations

import ipaddress
from importlib import metadata

from fastapi import FastAPI

from core.runner import Runner
from core.settings import Settings
from schemas.errors import VideostudioError
from triggers.api import avatars, batches, briefs, events, health, info, jobs, speech, train
from triggers.api.auth import PUBLIC_PATHS, configured_token
from triggers.api.bodies import MAX_EVENTS_BYTES, MAX_JSON_BYTES, read_body
from triggers.api.errors import HttpError, install_error_handlers, log, status_for
from triggers.api.openapi import install_openapi
from triggers.api.params import check_id, sanitise_name
from triggers.api.service import JobsService
from triggers.api.uploads import UploadedForm, read_multipart
from triggers.intake import events_secret
from triggers.studio import routes as studio_routes

__all__ = [
    "DEFAULT_HOST", "DEFAULT_PORT", "MAX_EVENTS_BYTES", "MAX_JSON_BYTES", "PUBLIC_PATHS", "HttpError", "JobsService",
    "UploadedForm", "check_id", "configured_token", "create_app", "is_loopback", "read_body", "read_multipart",
    "sanitise_name", "serve", "status_for",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def create_app(settings: Settings, *, runner: Runner | None = None, allow_no_auth: bool = False) -> FastAPI:
    """The API for one bucket. Without `VIDEOSTUDIO_API_TOKEN` it refuses unless `allow_no_auth`."""
    token = configured_token(settings)
    if token is None and not allow_no_auth:
        raise VideostudioError("no_api_token", "set VIDEOSTUDIO_API_TOKEN: the HTTP API never runs without "
                               "authentication (for local experiments only: serve --insecure-no-auth on 127.0.0.1)")
    if runner is None:
        from triggers.wiring import open_runner

        runner = open_runner(settings)
    app = FastAPI(
        title="videostudio",
        version=_version(),
        summary="Briefs become videos; videos of a person become avatars.",
        description=(
            "Submit briefs and training videos, watch job manifests, cancel jobs, deploy avatars. "
            "The API only writes inputs into the bucket and reads manifests: run `videostudio up` for the workers. "
            "Errors are `{code, message}` with a stable snake_case code."),
        # The routers' routes, handed over as they are rather than through `include_router` (which keeps
        # each router as one nested entry), so that `app.routes` lists every operation. Their order is the
        # order of the OpenAPI document; each router carries its own auth (see `auth`). The routes hold no
        # state of an app (handlers find it in `app.state`), so every app can share them.
        routes=[route for module in (health, info, briefs, speech, train, events, jobs, batches, avatars)
                for route in module.router.routes] + studio_routes(),
    )
    app.state.settings = settings
    app.state.runner = runner
    app.state.service = JobsService(runner)
    app.state.api_token = token
    app.state.events_secret = events_secret(settings) if token is not None else None
    install_error_handlers(app)
    install_openapi(app)
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
