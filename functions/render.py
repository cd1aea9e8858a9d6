"""render: the job's plan → its video. A plan that names an avatar goes to that avatar's backend;
one without renders with Mochi text-to-video.

The plan is prepare's (`RenderPrepared`) in a render job, and the train stage's preview
(`TrainOutput.preview`) in a train job.
"""

from __future__ import annotations

from core.stage import StageContext, StageResult
from functions.backends import get_backend
from functions.text_to_video import render_text_to_video
from schemas.handoff import RenderPrepared, TrainOutput
from schemas.plan import Plan, RenderPlan


def job_plan(ctx: StageContext) -> Plan:
    if "train" in ctx.manifest.stages:
        return ctx.handoff(TrainOutput).preview
    return ctx.handoff(RenderPrepared).plan


def render(ctx: StageContext) -> StageResult:
    plan = job_plan(ctx)
    if isinstance(plan, RenderPlan) and plan.backend is None:
        return render_text_to_video(ctx, plan)
    return get_backend(plan.backend).render(ctx, plan=plan)
