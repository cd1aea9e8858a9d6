"""The render cache around the render stage: a render whose determinism key matches a succeeded job reuses that
job's outputs (copied into this job, so deleting the source later does not break it) instead of rendering.

Hooked once, in functions/render.py, where the plan is final: Mochi text-to-video, Mochi LoRA avatars and every
talking backend go through it. Only render jobs use it (a train job's preview renders a new avatar). Only a
render that returned is recorded, and an entry is reused only while its source job is `succeeded` and its
outputs exist: an entry whose outputs vanished is a miss (and is replaced by this render's), never an error.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable
from pathlib import PurePosixPath

from core.render_cache import RenderCacheIndex
from core.stage import StageContext, StageResult
from core.storage.base import StorageError
from functions.cache_policy import cache_options
from functions.render_key import render_key
from schemas.cache import CacheRecord, RenderCacheEntry
from schemas.plan import Plan

log = logging.getLogger("videostudio.cache")

RenderFn = Callable[[StageContext, Plan], StageResult]
# Metrics of the source render that describe its run (time, memory, encoder-cache use), not the video: a hit
# does not copy them.
_TIMING_SUFFIXES = ("_s", "per_s", "_bytes", "realtime_factor")
_RUN_METRICS = {"cache", "encoder_cache", "approximate", "load_s"}


def cached_render(ctx: StageContext, plan: Plan, render: RenderFn) -> StageResult:
    if ctx.manifest.kind != "render":
        return render(ctx, plan)
    options = cache_options(ctx)
    if options is None:
        return _with_record(render(ctx, plan), CacheRecord(hit=False, reason="disabled"))
    clock = time.perf_counter()
    key = render_key(ctx, plan)
    if key is None:
        return _with_record(render(ctx, plan), CacheRecord(hit=False, reason="uncacheable"))
    index = RenderCacheIndex(ctx.storage)
    entry = index.get(key)
    reason = "miss"
    if entry is not None and entry.source_job != ctx.job_id:  # our own entry: a retry after recording renders again
        if index.usable(entry):
            return _reuse(ctx, entry, key, seconds=time.perf_counter() - clock)
        reason = "source_missing"
    result = render(ctx, plan)
    approximate = result.cache.approximate if result.cache is not None else None
    recorded = False
    # An approximate render is not what the key promises (it skipped steps from another prompt's latent).
    if options.record and (approximate is None or approximate.steps_saved == 0):
        try:
            index.put(RenderCacheEntry(key=key, source_job=ctx.job_id, outputs=result.outputs,
                                       job_outputs=result.job_outputs, metrics=result.metrics,
                                       model_id=result.model_id, avatar=getattr(plan, "avatar", None)))
            recorded = True
        except StorageError as exc:  # the render stands; only later reuse is lost
            log.warning("could not record render %s in the cache: %s", ctx.job_id, exc)
    return _with_record(result, CacheRecord(hit=False, key=key, reason=reason, recorded=recorded,
                                            approximate=approximate))


def _with_record(result: StageResult, record: CacheRecord) -> StageResult:
    result.cache = record  # the job manifest's `cache` (the stage's metrics stay the backend's own)
    return result


def _reuse(ctx: StageContext, entry: RenderCacheEntry, key: str, *, seconds: float) -> StageResult:
    """Copy the source job's outputs into this job (same names, same bytes) and report them as its own."""
    clock = time.perf_counter()
    ctx.progress(0.0, f"reusing the render of job {entry.source_job}")
    moved: dict[str, str] = {}
    for source in entry.outputs.values():
        name = PurePosixPath(source).name
        moved[source] = ctx.put_output_bytes(name, ctx.storage.get_bytes(source),
                                             content_type=mimetypes.guess_type(name)[0])
    outputs = {name: moved[source] for name, source in entry.outputs.items()}
    job_outputs = {name: moved.get(source, source) for name, source in entry.job_outputs.items()}
    metrics = {k: v for k, v in entry.metrics.items() if k not in _RUN_METRICS and not k.endswith(_TIMING_SUFFIXES)}
    metrics["reuse_s"] = round(seconds + time.perf_counter() - clock, 4)
    ctx.progress(1.0, "done")
    result = StageResult(outputs=outputs, job_outputs=job_outputs, metrics=metrics, model_id=entry.model_id)
    return _with_record(result, CacheRecord(hit=True, source_job=entry.source_job, key=key, reason="hit"))
