"""GET /health: liveness and version, the one API route without authentication."""

from __future__ import annotations

from fastapi import APIRouter, Request

from schemas.api import Health

router = APIRouter()


@router.get("/health", response_model=Health, tags=["meta"], summary="Liveness (no authentication)")
def health(request: Request) -> Health:
    return Health(status="ok", version=request.app.version)
