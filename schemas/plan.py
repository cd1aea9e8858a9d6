"""The resolved render plan: what prepare (or a train job's preview) decides and render executes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RenderPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str
    preset: str
    model: str
    seed: int
    steps: int
    fps: int
    width: int
    height: int
    num_frames: int = Field(description="Snapped to 6k+1 (Mochi's VAE compresses time by 6).")
    frames_requested: int
    frames_snapped: bool
    duration_s: float
    guidance_scale: float
    quantization: str
    avatar: str | None = None
    avatar_strength: float = 1.0
    backend: str | None = Field(default=None, description="The avatar's backend, which renders this plan.")
    weights_key: str | None = Field(default=None, description="The avatar's weights in the bucket.")
    random_weights: bool = Field(description="True for the tiny offline model: its output is noise.")
