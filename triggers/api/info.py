"""GET /info: the server's limits and its avatar backends, for clients that build forms (the web studio)."""

from __future__ import annotations

from fastapi import Request

from functions.backends import BACKENDS
from schemas.api import BackendInfo, ServerInfo
from schemas.brief import MAX_SCRIPT_CHARS
from triggers.api.auth import bearer_router
from triggers.api.params import AUDIO_SUFFIXES, VIDEO_SUFFIXES

router = bearer_router()


@router.get("/info", response_model=ServerInfo, tags=["meta"], summary="Upload limit, file types and avatar backends")
def info(request: Request) -> ServerInfo:
    backends = [BackendInfo(name=b.name, talks=b.talks, summary=b.summary, brief_options=list(b.brief_options))
                for b in sorted(BACKENDS.values(), key=lambda b: b.name)]
    return ServerInfo(version=request.app.version, max_upload_bytes=request.app.state.settings.api_max_upload_bytes,
                      video_suffixes=list(VIDEO_SUFFIXES), audio_suffixes=list(AUDIO_SUFFIXES),
                      max_script_chars=MAX_SCRIPT_CHARS, backends=backends)
