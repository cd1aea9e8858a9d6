"""Whether a render uses the caches, and with which options: the brief's `cache:` and VIDEOSTUDIO_RENDER_CACHE."""

from __future__ import annotations

from core.stage import StageContext
from schemas.brief import RenderBrief
from schemas.cache import CacheOptions


def cache_options(ctx: StageContext) -> CacheOptions | None:
    """The cache options of this render job's brief; None: not cached (cache: false, the setting off, a train job:
    its preview renders a new avatar)."""
    brief = ctx.manifest.request
    if ctx.manifest.kind != "render" or not isinstance(brief, RenderBrief) or not ctx.settings.render_cache:
        return None
    return brief.cache_options
