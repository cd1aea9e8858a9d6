"""A deployed avatar: `avatars/<avatar_id>/manifest.json`, with its LoRA weights beside it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schemas import SCHEMA_VERSION
from schemas.manifest import utcnow


class AvatarManifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    avatar_id: str
    job_id: str = Field(description="The train job that produced it.")
    base_model: str
    trigger_token: str = Field(description="Put this in a prompt's text; `avatar:` in a brief adds it for you.")
    lora_key: str
    lora_rank: int
    lora_alpha: float
    target_modules: str
    dataset: dict[str, Any] = Field(default_factory=dict, description="Frame and face counts per split.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Final losses and the quality score.")
    deployed_at: datetime = Field(default_factory=utcnow)
