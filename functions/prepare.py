"""prepare: read the input, validate it, and resolve what the next stages will do.

The validated brief becomes the job's `request`. For a render brief, prepare also resolves
the preset, the frame count snapped to 6k+1, the model and the avatar's backend into the plan
it hands on (`RenderPrepared`); a talking avatar's brief gets its speech made ready
(functions/talking.py) and a `TalkingPlan`; a training video is probed and its frames judged
(prepare_video.py).
"""

from __future__ import annotations

from core.avatars import AvatarRegistry
from core.storage import Storage
from core.stage import StageContext, StageResult
from functions.backends import get_backend
from functions.compose_prepare import check_render_background, prepare_compose
from functions.prepare_video import default_train_brief, prepare_training_video
from functions.presets import resolve_render_plan
from schemas.brief import ComposeBrief, RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError
from schemas.handoff import RenderPrepared
from schemas.plan import Plan, TalkingPlan

BRIEF_SUFFIXES = (".yaml", ".yml", ".json")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")


def classify_input(storage: Storage, key: str) -> str:
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


def wants_background(storage: Storage, key: str) -> bool:
    """The input is a render brief with `background:` (its route gains the compose stage)."""
    if not key.lower().endswith(BRIEF_SUFFIXES):
        return False
    try:
        brief = parse_brief(storage.get_bytes(key), key)
    except VideostudioError:
        return False  # prepare reports the real error
    return isinstance(brief, RenderBrief) and brief.background is not None


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
    if isinstance(brief, ComposeBrief):
        return prepare_compose(ctx, brief)
    check_render_background(ctx, brief)
    return _prepare_render(ctx, brief)


def _prepare_render(ctx: StageContext, brief: RenderBrief) -> StageResult:
    if brief.avatar:
        avatar = AvatarRegistry(ctx.storage).require(brief.avatar)
        plan = get_backend(avatar.backend).plan_render(ctx, brief=brief, avatar=avatar)
    elif brief.talking:
        raise VideostudioError("missing_avatar", "script: and audio: are spoken by a talking avatar: give avatar:")
    else:
        plan = resolve_render_plan(brief, ctx.settings)
    if isinstance(plan, TalkingPlan):
        return _prepared(ctx, brief, plan, warnings=[], metrics={
            "num_frames": plan.num_frames, "duration_s": plan.duration_s, "speech_source": plan.speech.source,
            "speech_duration_s": plan.speech.duration_s, "speech_lufs": plan.speech.lufs},
            outputs={"speech": plan.speech.key})
    warnings = []
    if plan.frames_snapped:
        warnings.append(f"frame count snapped from {plan.frames_requested} to {plan.num_frames} (Mochi needs 6k+1 frames)")
    if plan.random_weights:
        warnings.append("model 'tiny' has random weights: the video is noise, useful only to test the pipeline")
    return _prepared(ctx, brief, plan, warnings=warnings, metrics={
        "num_frames": plan.num_frames, "frames_requested": plan.frames_requested,
        "frames_snapped": plan.frames_snapped, "steps": plan.steps, "duration_s": plan.duration_s})


def _prepared(ctx: StageContext, brief: RenderBrief, plan: Plan, *, warnings: list[str], metrics: dict,
              outputs: dict[str, str] | None = None) -> StageResult:
    ctx.put_output_bytes("plan.json", plan.model_dump_json(indent=2).encode(), content_type="application/json")
    return StageResult(outputs={"plan": ctx.output_key("plan.json"), **(outputs or {})}, metrics=metrics,
                       request=brief, handoff=RenderPrepared(plan=plan), warnings=warnings)
