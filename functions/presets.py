"""Render presets from the product spec, and the frame-count rule of Mochi's VAE."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings
from functions.models.mochi_configs import TEMPORAL_COMPRESSION, TINY_MODEL
from schemas.brief import RenderBrief
from schemas.plan import RenderPlan



@dataclass(frozen=True)
class Preset:
    duration_s: float
    steps: int


PRESETS: dict[str, Preset] = {
    "fast": Preset(duration_s=3.0, steps=30),
    "balanced": Preset(duration_s=6.0, steps=60),
    "quality": Preset(duration_s=6.0, steps=100),
}


def snap_frames(requested: int) -> int:
    """The nearest 6k+1 frame count (at least 7: one latent frame past the first)."""
    k = max(1, round((requested - 1) / TEMPORAL_COMPRESSION))
    return TEMPORAL_COMPRESSION * k + 1


def resolve_render_plan(brief: RenderBrief, settings: Settings) -> RenderPlan:
    """The brief's choices made concrete (an avatar's backend adds what it renders with)."""
    preset = PRESETS[brief.preset]
    if brief.num_frames is not None:
        requested = brief.num_frames
    else:
        requested = max(1, round((brief.duration_s or preset.duration_s) * brief.fps))
    frames = snap_frames(requested)
    model = brief.model or settings.model
    return RenderPlan(
        prompt=brief.prompt,
        negative_prompt=brief.negative_prompt,
        preset=brief.preset,
        model=model,
        seed=brief.seed,
        steps=brief.steps or preset.steps,
        fps=brief.fps,
        width=brief.width,
        height=brief.height,
        num_frames=frames,
        frames_requested=requested,
        frames_snapped=frames != requested,
        duration_s=round(frames / brief.fps, 4),
        guidance_scale=brief.guidance_scale,
        quantization=brief.quantization,
        random_weights=model == TINY_MODEL,
    )
