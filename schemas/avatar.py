"""A deployed avatar: `avatars/<avatar_id>/manifest.json`, with its weights beside it.

`backend` says which avatar backend trained it and renders with it; `weights_key` and
`weights_sha256` name the weights. The LoRA fields (`lora_key`, `trigger_token`, `lora_rank`,
`lora_alpha`, `target_modules`) are the `mochi-lora` backend's and stay for the manifests
written before backends existed (schema 1), which had no `backend` or `weights_key`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from schemas import SCHEMA_VERSION
from schemas.manifest import utcnow
from schemas.migrations import LEGACY_BACKEND


class AvatarManifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    avatar_id: str
    job_id: str = Field(description="The train job that produced it.")
    backend: str = Field(default=LEGACY_BACKEND, description="The avatar backend that trained it and renders it.")
    base_model: str
    weights_key: str = Field(description="The weights in the bucket (in the job until deployed, then beside this file).")
    weights_sha256: str | None = Field(default=None, description="sha256 of the weights, recorded at deploy.")
    assets: dict[str, str] = Field(default_factory=dict, description=(
        "Other files the backend renders with, name → bucket key (wav2lip: its reference footage, the face track "
        "and its lip-sync expert); deploy copies them beside the manifest too."))
    talks: bool = Field(default=False, description="It speaks a script or a recording (a talking avatar).")
    trigger_token: str | None = Field(default=None, description=(
        "mochi-lora: put this in a prompt's text; `avatar:` in a brief adds it for you."))
    lora_key: str | None = Field(default=None, description="mochi-lora: the LoRA weights (the same as weights_key).")
    lora_rank: int | None = None
    lora_alpha: float | None = None
    target_modules: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict, description="Frame and face counts per split.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Final losses and the quality score.")
    deployed_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _weights_from_lora_key(cls, data: Any) -> Any:
        # Schema 1 named the weights only `lora_key`.
        if isinstance(data, dict) and "weights_key" not in data and data.get("lora_key"):
            data = {**data, "weights_key": data["lora_key"]}
        return data
