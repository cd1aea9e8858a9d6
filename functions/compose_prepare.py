"""prepare's part for backgrounds: a `kind: compose` brief's video probed and pinned by its sha256, and any
brief's background image or clip checked before work starts (`background_not_found`, `unreadable_background`)."""

from __future__ import annotations

from pathlib import Path

from core.stage import StageContext, StageResult
from core.storage.base import file_sha256
from core.video import probe_video
from functions.backgrounds import check_background
from schemas.brief import ComposeBrief, RenderBrief
from schemas.errors import VideostudioError
from schemas.handoff import ComposePrepared, VideoProbe

MAX_COMPOSE_SECONDS = 600.0  # ten minutes: a bound on one stage's work, like a talking render's speech
MAX_COMPOSE_SIDE = 4096


def check_render_background(ctx: StageContext, brief: RenderBrief) -> None:
    if brief.background is not None:
        check_background(brief.background, ctx.storage, ctx.scratch)


def prepare_compose(ctx: StageContext, brief: ComposeBrief) -> StageResult:
    key = brief.video
    if key.startswith("inbox/"):
        raise VideostudioError("invalid_key", f"video key {key!r} is under inbox/: put the video elsewhere in the "
                               "bucket (a video in inbox/ trains an avatar)")
    if ctx.storage.stat(key) is None:
        raise VideostudioError("video_not_found", f"the video {key!r} is not in the bucket")
    ctx.progress(0.2, "probing video")
    local = ctx.storage.download(key, ctx.scratch / ("input" + Path(key).suffix.lower()))
    info = probe_video(local)
    if info.duration_s > MAX_COMPOSE_SECONDS:
        raise VideostudioError("video_too_long", f"the video lasts {info.duration_s:.1f} s; compose takes at most "
                               f"{MAX_COMPOSE_SECONDS:.0f} s")
    if max(info.width, info.height) > MAX_COMPOSE_SIDE:
        raise VideostudioError("resolution_too_high", f"the video is {info.width}×{info.height}; compose takes at "
                               f"most {MAX_COMPOSE_SIDE} pixels a side")
    ctx.progress(0.6, "checking the background")
    check_background(brief.background, ctx.storage, ctx.scratch)
    probe = VideoProbe(width=info.width, height=info.height, fps=info.fps, duration_s=info.duration_s,
                       codec=info.codec, rotation=info.rotation, variable_frame_rate=info.variable_frame_rate,
                       bit_depth=info.bit_depth)
    prepared = ComposePrepared(video_key=key, video_sha256=file_sha256(local), video=probe, has_audio=info.has_audio)
    return StageResult(request=brief, handoff=prepared, metrics={
        "width": info.width, "height": info.height, "fps": round(info.fps, 3), "duration_s": round(info.duration_s, 3),
        "has_audio": info.has_audio})
