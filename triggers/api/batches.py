"""The batches routes: submit a batch (JSON, or a CSV file's text), list batches, read one, cancel one.

A batch posted here is written to `inbox/<name>.batch.yaml` (or `.batch.csv`) and submitted at once with
`source="http"`, exactly like a batch file dropped into the bucket, so its jobs exist before the
response is sent. The same batch posted twice under the same name is the same batch (200).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import yaml
from fastapi import Depends, Path as PathParam, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from core.batch_store import batch_manifest_key
from core.runner import INBOX, Runner
from core.storage import PreconditionFailed
from schemas.api import ApiError
from schemas.batch import (
    MAX_BATCH_BYTES,
    BatchCreate,
    BatchManifest,
    BatchStatus,
    BatchSummary,
    SubmittedBatch,
)
from schemas.brief import validation_error_to_videostudio
from schemas.errors import VideostudioError
from schemas.events import StorageEvent
from triggers.api.auth import bearer_router
from triggers.api.bodies import JSON_TYPES, media_type, read_body
from triggers.api.errors import NOT_FOUND_RESPONSE, HttpError
from triggers.api.params import NameQuery, check_id, sanitise_name

CSV_TYPES = {"text/csv", "application/csv"}

router = bearer_router()


def _batch_id_path(batch_id: Annotated[str, PathParam(description="A batch id, e.g. `spring-batch-0123456789abcdef`.")]
                   ) -> str:
    return check_id(batch_id, "batch")


BatchId = Annotated[str, Depends(_batch_id_path)]


def _runner(request: Request) -> Runner:
    return request.app.state.runner


RunnerDep = Annotated[Runner, Depends(_runner)]


@router.post(
    "/batches", status_code=201, response_model=SubmittedBatch, tags=["batches"],
    summary="Submit a batch of briefs (JSON: defaults + items; or a CSV file with Content-Type: text/csv)",
    responses={200: {"model": SubmittedBatch, "description": "The same batch was already submitted under this name"},
               409: {"model": ApiError, "description": "The name holds a different batch"},
               415: {"model": ApiError, "description": "Neither JSON nor CSV"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}},
        "text/csv": {"schema": {"type": "string", "description": "A header of brief fields, one brief per row"}},
    }}},
)
async def post_batch(request: Request, response: Response, runner: RunnerDep, name: NameQuery = None) -> SubmittedBatch:
    media = media_type(request)
    body = await read_body(request, MAX_BATCH_BYTES)
    if media in JSON_TYPES:
        try:
            spec = BatchCreate.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error_to_videostudio(exc) from None
        stem = spec.name
        document = spec.model_dump(mode="json", exclude={"name"}, exclude_none=True)
        data, suffix = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode(), ".batch.yaml"
    elif media in CSV_TYPES:
        if name is None:
            raise HttpError(400, "missing_name", "a CSV batch needs ?name=")
        stem, data, suffix = sanitise_name(name.removesuffix(".csv").removesuffix(".batch")), body, ".batch.csv"
    else:
        raise HttpError(415, "unsupported_media_type",
                        f"send a batch as application/json or text/csv, not {media or 'no content type'}")
    submitted = await run_in_threadpool(_submit, runner, f"{INBOX}{stem}{suffix}", data)
    response.status_code = 201 if submitted.created else 200
    return submitted


def _submit(runner: Runner, key: str, data: bytes) -> SubmittedBatch:
    digest = hashlib.sha256(data).hexdigest()
    try:
        runner.storage.put_bytes(key, data, if_none_match=True, content_type="text/csv" if key.endswith(".csv")
                                 else "application/yaml")
    except PreconditionFailed:
        if runner.storage.content_hash(key) != digest:
            raise HttpError(409, "name_taken", f"{key!r} already holds a different batch; pick another name") from None
    batch_id, created = runner.submit(StorageEvent(bucket=runner.storage.name, key=key, size=len(data),
                                                   content_hash=digest, source="http"))
    manifest = runner.batches.store.load(batch_id)
    assert manifest is not None
    return SubmittedBatch(batch_id=batch_id, created=created, manifest_key=batch_manifest_key(batch_id),
                          batch_key=key, status=manifest.status, counts=manifest.counts, error=manifest.error)


@router.get("/batches", response_model=list[BatchSummary], tags=["batches"], summary="List batches, newest first")
def list_batches(runner: RunnerDep,
                 status: Annotated[BatchStatus | None, Query(description="Only batches in this status")] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[BatchSummary]:
    summaries = [BatchSummary.of(m) for m in runner.batches.store.all() if status is None or m.status == status]
    summaries.sort(key=lambda s: s.created_at, reverse=True)
    return summaries[:limit]


@router.get("/batches/{batch_id}", response_model=BatchManifest, tags=["batches"],
            summary="A batch's manifest: counts, progress, ETA, and every item with its line, job and status",
            responses=NOT_FOUND_RESPONSE)
def get_batch(batch_id: BatchId, runner: RunnerDep) -> BatchManifest:
    manifest = runner.batches.store.load(batch_id)
    if manifest is None:
        raise HttpError(404, "batch_not_found", f"no batch {batch_id!r}")
    return manifest


@router.post("/batches/{batch_id}/cancel", status_code=202, response_model=BatchManifest, tags=["batches"],
             summary="Cancel every item that has not ended (waiting ones now, running ones at their next step)",
             responses={**NOT_FOUND_RESPONSE, 409: {"model": ApiError, "description": "The batch already ended"}})
def cancel_batch(batch_id: BatchId, runner: RunnerDep) -> BatchManifest:
    try:
        return runner.cancel_batch(batch_id)
    except VideostudioError as exc:
        if exc.code == "batch_finished":
            raise HttpError(409, exc.code, exc.message) from None
        raise
