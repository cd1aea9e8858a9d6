"""prepare: read the input, validate it, and resolve what the next stages will do.

For a render brief that means the preset, the frame count snapped to 6k+1 and the
model; the resolved plan becomes the job's validated `request`.
"""

from __future__ import annotations

from core.avatars import AvatarRegistry
from core.stage import StageContext, StageResult
from functions.prepare_video import default_train_brief, prepare_training_video
from functions.presets import resolve_render_plan
from schemas.brief import RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError

BRIEF_SUFFIXES = (".yaml", ".yml", ".json")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")


def classify_input(storage, key: str) -> str:
    """The job kind for an input key: a bare video trains; a brief says its own kind (default render)."""
    lower = key.lower()
    if lower.endswith(VIDEO_SUFFIXES):
        return "train"
    if lower.endswith(BRIEF_SUFFIXES):
        try:
            brief = parse_brief(storage.get_bytes(key), key)
        except VideostudioError:
            return "render"  # prepare reports the real error
        return brief.kind
    return "render"  # prepare rejects it with unsupported_input


def prepare(ctx: StageContext) -> StageResult:
    key = ctx.input.key
    lower = key.lower()
    if lower.endswith(VIDEO_SUFFIXES):
        return prepare_training_video(ctx, default_train_brief(key))
    if not lower.endswith(BRIEF_SUFFIXES):
        raise VideostudioError("unsupported_input", f"{key!r} is neither a brief ({', '.join(BRIEF_SUFFIXES)}) "
                               f"nor a video ({', '.join(VIDEO_SUFFIXES)})")
    ctx.progress(0.1, "parsing brief")
    brief = parse_brief(ctx.storage.get_bytes(key), key)
    if brief.kind != ctx.manifest.kind:
        raise VideostudioError("kind_changed", f"the job was created as {ctx.manifest.kind!r} but the brief says {brief.kind!r}")
    if isinstance(brief, TrainBrief):
        if brief.video is None:
            raise VideostudioError("missing_video", "a train brief needs `video:` (a bucket key outside inbox/), "
                                   "or drop the video itself into inbox/")
        return prepare_training_video(ctx, brief)
    return _prepare_render(ctx, brief)


def _prepare_render(ctx: StageContext, brief: RenderBrief) -> StageResult:
    avatar = AvatarRegistry(ctx.storage).require(brief.avatar) if brief.avatar else None
    plan = resolve_render_plan(brief, ctx.settings, avatar=avatar)
    if avatar is not None and avatar.base_model != plan.model:
        raise VideostudioError("avatar_model_mismatch", f"avatar {avatar.avatar_id!r} was trained on "
                               f"{avatar.base_model!r}; this brief renders with {plan.model!r}")
    warnings = []
    if plan.frames_snapped:
        warnings.append(f"frame count snapped from {plan.frames_requested} to {plan.num_frames} (Mochi needs 6k+1 frames)")
    if plan.random_weights:
        warnings.append("model 'tiny' has random weights: the video is noise, useful only to test the pipeline")
    request = brief.model_dump(mode="json")
    request["plan"] = plan.model_dump(mode="json")
    ctx.put_output_bytes("plan.json", plan.model_dump_json(indent=2).encode(), content_type="application/json")
    return StageResult(
        outputs={"plan": ctx.output_key("plan.json")},
        metrics={"num_frames": plan.num_frames, "frames_requested": plan.frames_requested,
                 "frames_snapped": plan.frames_snapped, "steps": plan.steps, "duration_s": plan.duration_s},
        request=request,
        warnings=warnings,
    )
