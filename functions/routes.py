"""The routing tables: which stages each job kind runs (handed to the runner by triggers/ and deploy.py),
and which stages of which avatar backend deploy.py runs on a function of their own."""

from __future__ import annotations

from pydantic import ValidationError

from core.stage import Pipeline
from core.storage import Storage
from functions.align import align
from functions.batch_file import BatchFileFormat
from functions.compose import compose
from functions.prepare import classify_input, prepare, wants_background
from functions.render import render
from functions.train import train
from schemas.brief import TrainBrief
from schemas.handoff import RenderPrepared, StageHandoff, TrainOutput
from schemas.manifest import JobManifest

ROUTES: dict[str, list[str]] = {
    "render": ["prepare", "render"],
    # A training video becomes an aligned face dataset, a LoRA, a deployed avatar and a preview video.
    "train": ["prepare", "align", "train", "render"],
    # A new background behind the person in a bucket video (a render brief with `background:` gets compose too).
    "compose": ["prepare", "compose"],
}

STAGES = {"prepare": prepare, "align": align, "train": train, "render": render, "compose": compose}

# (backend, stage) → the Modal function (here a class method, "Cls.method") that runs that stage for that
# backend: a GPU container that keeps the backend's models loaded. Stages and backends not listed run on
# deploy.py's stage functions (run_train, run_render), which can run every backend's stages too.
BACKEND_FUNCTIONS: dict[tuple[str, str], str] = {
    ("infinitetalk", "train"): "InfiniteTalk.train",
    ("infinitetalk", "render"): "InfiniteTalk.render",
}
ROUTED_STAGES = frozenset(stage for _, stage in BACKEND_FUNCTIONS)


def default_pipeline() -> Pipeline:
    return Pipeline(routes=ROUTES, stages=STAGES, classify=classify_input, plan_route=route_for_input,
                    batches=BatchFileFormat())


def route_for_input(storage: Storage, key: str, kind: str) -> list[str]:
    """The kind's route; a render brief with `background:` runs compose after render (and only then, so a
    render without one never waits on a stage that would do nothing)."""
    route = list(ROUTES.get(kind) or ROUTES[next(iter(ROUTES))])
    if route[-1] == "render" and kind == "render" and wants_background(storage, key):
        route.append("compose")
    return route


def _handoff(manifest: JobManifest, record: type[StageHandoff]) -> StageHandoff | None:
    stage = manifest.stages.get(record.stage)
    if stage is None or stage.handoff is None:
        return None
    try:
        return record.model_validate(stage.handoff)
    except ValidationError:
        return None  # the stage itself reports a malformed record; routing just does not know


def stage_backend(manifest: JobManifest, stage: str | None) -> str | None:
    """The avatar backend that runs `stage` of this job, from what the manifest already says; None when it
    names none (a Mochi text-to-video render) or does not say yet.

    train: the brief's `backend`. render: the backend of the plan render executes (functions/render.py's
    `job_plan`): a train job's preview (`TrainOutput.preview`, else its brief's backend), a render job's
    prepare plan (`RenderPrepared.plan`: `TalkingPlan.backend` / `RenderPlan.backend`)."""
    brief = manifest.request
    if stage == "train":
        return brief.backend if isinstance(brief, TrainBrief) else None
    if stage == "render":
        if "train" in manifest.stages:
            trained = _handoff(manifest, TrainOutput)
            if isinstance(trained, TrainOutput):
                return trained.preview.backend
            return brief.backend if isinstance(brief, TrainBrief) else None
        prepared = _handoff(manifest, RenderPrepared)
        return prepared.plan.backend if isinstance(prepared, RenderPrepared) else None
    return None


def stage_function(manifest: JobManifest, stage: str | None) -> str | None:
    """The function of its own that runs this job's `stage` (BACKEND_FUNCTIONS), or None for the stage's."""
    backend = stage_backend(manifest, stage)
    return BACKEND_FUNCTIONS.get((backend, stage)) if backend is not None and stage is not None else None
