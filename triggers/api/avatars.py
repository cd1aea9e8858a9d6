"""The avatars routes: list deployed avatars, read one, delete one (its manifest first, then its weights)."""

from __future__ import annotations

from fastapi import Response

from schemas.avatar import AvatarManifest
from triggers.api.auth import bearer_router
from triggers.api.errors import NOT_FOUND_RESPONSE
from triggers.api.params import AvatarId
from triggers.api.service import Service

router = bearer_router()


@router.get("/avatars", response_model=list[AvatarManifest], tags=["avatars"], summary="Deployed avatars")
def list_avatars(service: Service) -> list[AvatarManifest]:
    return sorted(service.avatars.list(), key=lambda a: a.avatar_id)


@router.get("/avatars/{avatar_id}", response_model=AvatarManifest, tags=["avatars"], summary="One deployed avatar",
            responses=NOT_FOUND_RESPONSE)
def get_avatar(avatar_id: AvatarId, service: Service) -> AvatarManifest:
    return service.avatars.require(avatar_id)


@router.delete("/avatars/{avatar_id}", status_code=204, response_class=Response, tags=["avatars"],
               summary="Delete a deployed avatar (its manifest first, then its weights)",
               responses=NOT_FOUND_RESPONSE)
def delete_avatar(avatar_id: AvatarId, service: Service) -> Response:
    service.avatars.delete(avatar_id)
    return Response(status_code=204)
