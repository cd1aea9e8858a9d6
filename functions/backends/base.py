"""The avatar backend seam: one small interface per way of making and rendering an avatar.

A backend says four things:
- `dataset`: what prepare and align must keep for it (`DatasetPolicy`);
- `train`: the aligned dataset → weights and an `AvatarManifest` (the train stage deploys it);
- `render`: a plan naming a deployed (or just trained) avatar → the job's video;
- `preview`: the plan the train job's own render stage renders with the new avatar.
A backend that `talks` gets `TalkingPlan`s (speech made ready by prepare) instead of prompts.

The stages in functions/ do everything around it (reading the typed records of earlier
stages, writing avatar.json, deploying, handing the preview on), so a backend is one module
plus one line in functions/backends/__init__.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from core.avatars import avatar_prefix
from core.stage import StageContext, StageResult
from functions.presets import resolve_render_plan
from functions.talking import PREVIEW_SENTENCE, prepare_speech, talking_plan
from schemas.avatar import AvatarManifest
from schemas.brief import RenderBrief, TrainBrief
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput
from schemas.plan import Plan

PREVIEW_FRAMES = 13
PREVIEW_FPS = 12
PREVIEW_MAX_SIDE = 512


class DatasetPolicy(BaseModel):
    """What a backend's training data must keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps: float | None = Field(default=None, description=(
        "Sample every frame at this fps (frames paired with audio need a fixed rate); None: the brief's extract_fps."))
    drop_duplicates: bool = Field(default=True, description=(
        "Drop near-duplicate frames (stills); keep them where each frame is paired with its instant of audio."))
    audio: bool = Field(default=False, description=(
        "Extract the video's sound to prepare/audio.wav (16 kHz mono) and require speech in it (audio-driven "
        "backends); off: the sound is ignored."))

    def sample_fps(self, brief: TrainBrief) -> float:
        return self.fps if self.fps is not None else brief.extract_fps


@dataclass
class TrainedAvatar:
    """What `AvatarBackend.train` returns: the avatar (weights in the job's outputs) and the stage's report."""

    avatar: AvatarManifest
    outputs: dict[str, str] = field(default_factory=dict)
    job_outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model_id: str | None = None


class AvatarBackend(ABC):
    name: ClassVar[str]
    dataset: ClassVar[DatasetPolicy] = DatasetPolicy()
    talks: ClassVar[bool] = False  # renders speech (TalkingPlan) rather than a prompt (RenderPlan)
    summary: ClassVar[str] = ""  # one line for people choosing a backend (GET /info, the studio's new-avatar page)
    # The train-brief fields only this backend reads (the rest, epochs, batch_size, mixed_precision…, every
    # backend reads): the studio shows these under the backend's name.
    brief_options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput) -> TrainedAvatar:
        """Train on the aligned faces; write the weights as this stage's outputs."""

    @abstractmethod
    def render(self, ctx: StageContext, *, plan: Plan) -> StageResult:
        """Render `plan` with the avatar it names; write the video as this stage's outputs."""

    def cache_identity(self, ctx: StageContext, *, plan: Plan) -> dict[str, Any] | None:
        """What besides the plan, the avatar's files and the speech changes this backend's pixels (the base
        models it renders on), for the render cache's key (functions/render_key.py); None: do not cache."""
        return {"backend": self.name}

    def plan_render(self, ctx: StageContext, *, brief: RenderBrief, avatar: AvatarManifest) -> Plan:
        """prepare of a render brief with `avatar:`: the plan `render` executes. A talking backend's plan
        carries the speech, made ready here (so a bad script or recording fails the job in prepare)."""
        if self.talks:
            if not brief.talking:
                raise VideostudioError("missing_speech", f"avatar {avatar.avatar_id!r} ({self.name}) speaks: give "
                                       "script: (text) or audio: (a recording's bucket key)")
            speech = prepare_speech(ctx, script=brief.script, audio_key=brief.audio, voice=brief.voice,
                                    seed=brief.seed)
            return talking_plan(self.name, avatar, avatar_key=avatar_prefix(avatar.avatar_id) + "manifest.json",
                                speech=speech, seed=brief.seed, quantization=brief.quantization, gpus=brief.gpus)
        if brief.talking:
            raise VideostudioError("avatar_cannot_talk", f"avatar {avatar.avatar_id!r} ({self.name}) cannot speak a "
                                   "script or a recording; train a talking avatar (backend: wav2lip) for that")
        return resolve_render_plan(brief, ctx.settings).model_copy(update={
            "avatar": avatar.avatar_id, "avatar_strength": brief.avatar_strength, "backend": self.name,
            "weights_key": avatar.weights_key})

    def preview_prompt(self, brief: TrainBrief, avatar: AvatarManifest) -> str:
        return f"a video of {avatar.avatar_id} talking to the camera"

    def preview(self, ctx: StageContext, *, brief: TrainBrief, avatar: AvatarManifest, avatar_key: str) -> Plan:
        """What the train job's last stage renders with the new avatar (`avatar_key`: its manifest): a talking
        avatar says PREVIEW_SENTENCE; another renders a short square clip of its preview prompt."""
        if self.talks:
            speech = prepare_speech(ctx, script=PREVIEW_SENTENCE, name="preview_speech.wav", at=0.96,
                                    seed=brief.seed)
            return talking_plan(self.name, avatar, avatar_key=avatar_key, speech=speech, seed=brief.seed)
        size = min(brief.resolution, PREVIEW_MAX_SIDE)
        preview = RenderBrief(prompt=self.preview_prompt(brief, avatar), preset="fast", model=avatar.base_model,
                              seed=brief.seed, steps=brief.preview_steps, fps=PREVIEW_FPS, width=size, height=size,
                              num_frames=PREVIEW_FRAMES, avatar=avatar.avatar_id)
        return resolve_render_plan(preview, ctx.settings).model_copy(update={
            "avatar": avatar.avatar_id, "backend": self.name, "weights_key": avatar.weights_key})
