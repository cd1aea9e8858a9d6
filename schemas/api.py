"""Request and response bodies of the HTTP API (`triggers/api/`).

Job manifests and avatar manifests are returned as their own models
(`schemas.manifest.JobManifest`, `schemas.avatar.AvatarManifest`); these are the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ErrorInfo

# Ids and names that appear in URL paths and bucket keys: one path segment, no traversal.
PATH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ApiError(BaseModel):
    """Every error response: a stable snake_case `code` and a human message."""

    code: str = Field(examples=["job_not_found"])
    message: str
    details: list[dict[str, Any]] | None = Field(default=None, description="Field errors of a malformed request.")


class Health(BaseModel):
    status: str = "ok"
    version: str


class SubmittedJob(BaseModel):
    """The answer to `POST /briefs` and `POST /train`."""

    job_id: str
    created: bool = Field(description="False when the same input was already submitted: the existing job is returned.")
    manifest_key: str = Field(description="Bucket key of the job manifest (`jobs/<job_id>/manifest.json`).")
    brief_key: str = Field(description="Where the brief was written (`inbox/<name>.yaml|.json`).")
    kind: str
    video_key: str | None = Field(default=None, description="The training video (train jobs only).")


class TrainRequest(BaseModel):
    """`POST /train` with a JSON body: train an avatar from a video already in the bucket.

    Any other train-brief field (epochs, batch_size, learning_rate, lora_rank, model, seed,
    webhook, …) may be given too; it is validated exactly as a `kind: train` brief is.
    """

    model_config = ConfigDict(extra="allow")

    avatar: str = Field(pattern=PATH_ID_PATTERN, description="The avatar id to create.")
    video: str = Field(description="Bucket key of the training video (outside inbox/).", examples=["uploads/john/john.mp4"])


class JobSummary(BaseModel):
    job_id: str
    kind: str
    status: str
    stage: str | None = Field(description="The first stage that has not succeeded (None when all have).")
    input_key: str
    created_at: datetime
    updated_at: datetime
    error: ErrorInfo | None = None
    progress: float | None = Field(default=None, description="The running stage's progress (0–1), when it reports one.")


class IntakeSubmitted(BaseModel):
    key: str
    job_id: str
    created: bool = Field(description="False when the job already existed (a duplicate or late event).")
    source: str | None = None


class IntakeSkipped(BaseModel):
    key: str | None = None
    reason: str = Field(description="test_event, not_a_create, other_bucket, not_an_input, input_not_found, …")


class EventsAccepted(BaseModel):
    """What `POST /events` did with a bucket notification."""

    submitted: list[IntakeSubmitted] = Field(default_factory=list)
    ignored: list[IntakeSkipped] = Field(default_factory=list)


class BackendInfo(BaseModel):
    name: str = Field(examples=["wav2lip"])
    talks: bool = Field(description="Its avatars speak scripts and recordings (else they render prompts).")
    summary: str
    brief_options: list[str] = Field(description="The train-brief fields only this backend reads.")


class ServerInfo(BaseModel):
    """What a client needs to know before it uploads or fills in a brief (the studio reads it once)."""

    version: str
    max_upload_bytes: int = Field(description="The largest training video or recording an upload may be.")
    video_suffixes: list[str]
    audio_suffixes: list[str]
    max_script_chars: int
    backends: list[BackendInfo]
