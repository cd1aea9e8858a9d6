"""render: the job's plan → its video. A plan that names an avatar goes to that avatar's backend;
one without renders with Mochi text-to-video.

The plan is prepare's (`RenderPrepared`) in a render job, and the train stage's preview
(`TrainOutput.preview`) in a train job.
"""

from __future__ import annotations

from core.stage import StageContext, StageResult
from functions.backends import get_backend
from functions.render_cache import cached_render
from functions.text_to_video import render_text_to_video
from schemas.handoff import RenderOutput, RenderPrepared, TrainOutput
from schemas.plan import Plan, RenderPlan


def job_plan(ctx: StageContext) -> Plan:
    if "train" in ctx.manifest.stages:
        return ctx.handoff(TrainOutput).preview
    return ctx.handoff(RenderPrepared).plan


def render(ctx: StageContext) -> StageResult:
    # The plan is final here: the render cache keys it once for every backend (functions/render_cache.py).
    # A reused render hands its video on too (_with_output_record leaves a result that has a record as it is).
    return _with_output_record(cached_render(ctx, job_plan(ctx), render_plan))


def render_plan(ctx: StageContext, plan: Plan) -> StageResult:
    if isinstance(plan, RenderPlan) and plan.backend is None:
        result = render_text_to_video(ctx, plan)
    else:
        result = get_backend(plan.backend).render(ctx, plan=plan)
    return _with_output_record(result)


def _with_output_record(result: StageResult) -> StageResult:
    """Hand on the video as a typed record (RenderOutput) for a compose stage after render."""
    video = result.job_outputs.get("video")
    if result.handoff is None and video is not None:
        result.handoff = RenderOutput(video_key=video, poster_key=result.job_outputs.get("poster"))
    return result
