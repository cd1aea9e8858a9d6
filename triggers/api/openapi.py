"""The OpenAPI document: FastAPI's, plus the schemas of the bodies that routes read raw (briefs, train requests,
batches)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from schemas.api import TrainRequest
from schemas.batch import BatchCreate
from schemas.brief import Brief


def install_openapi(app: FastAPI) -> None:
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


def _brief_components() -> dict[str, Any]:
    """Brief and train-request schemas for the OpenAPI document (request bodies read raw, so FastAPI can't see them)."""
    ref = "#/components/schemas/{model}"
    brief = TypeAdapter(Brief).json_schema(ref_template=ref)
    components = dict(brief.pop("$defs", {}))
    components["Brief"] = brief
    train = TrainRequest.model_json_schema(ref_template=ref)
    components.update(train.pop("$defs", {}))
    components["TrainRequest"] = train
    batch = BatchCreate.model_json_schema(ref_template=ref)
    components.update(batch.pop("$defs", {}))
    components["BatchCreate"] = batch
    return components
