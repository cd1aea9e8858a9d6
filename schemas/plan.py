"""The resolved plans: what prepare (or a train job's preview) decides and render executes.

`RenderPlan` renders a prompt with Mochi (with or without a Mochi LoRA avatar); `TalkingPlan` has a
talking avatar speak prepared speech.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field

from schemas.speech import PreparedSpeech


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


class TalkingPlan(BaseModel):
    """A talking avatar speaking: what prepare (or a train job's preview) decides and the avatar's backend renders.

    The video lasts as long as the speech: `num_frames` = round(duration × fps), so the MP4's video and
    audio streams end within one frame of each other."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    avatar: str
    backend: str = Field(description="The avatar's backend, which renders this plan.")
    avatar_key: str = Field(description="The avatar's manifest (AvatarManifest): deployed, or the train job's own "
                            "for its preview. Its weights and assets are what the render uses.")
    speech: PreparedSpeech
    fps: int
    num_frames: int
    duration_s: float
    seed: int
    quantization: str = Field(default="auto", description=(
        "The brief's `quantization:` (backends with a large model use it; wav2lip ignores it)."))
    gpus: int | None = Field(default=None, description="The brief's `gpus:` (infinitetalk; None: chosen by length).")


Plan = Union[RenderPlan, TalkingPlan]  # told apart by their fields (both forbid unknown keys)
