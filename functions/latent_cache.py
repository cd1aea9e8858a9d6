"""Approximate caching for Mochi (opt-in: `cache: {approximate: true}`), after NIRVANA (Agarwal et al., NSDI 2024).

Every cached Mochi render keeps its intermediate latents after a few step counts (STORE_FRACTIONS of its steps)
and its prompt's pooled T5 embedding, in `cache/latents/<compat>/<job>.safetensors` (+ `.embedding.safetensors`).
`<compat>` hashes everything a latent must share with the render that reuses it: model and weights, quantization,
scheduler, size, frames, steps, guidance, negative prompt, avatar, device; not the prompt, not the seed.

An approximate render finds the entry whose prompt embedding is most similar (cosine) to its own. At similarity
s ≥ the threshold (VIDEOSTUDIO_APPROXIMATE_MIN_SIMILARITY, 0.9, or the brief's `min_similarity`) it starts from
that render's latent after K steps and runs only the last N − K steps, conditioned on its own prompt:

    s ≥ 0.99 → K = 50 % of N;  s ≥ 0.97 → 40 %;  s ≥ 0.95 → 30 %;  s ≥ threshold → 20 %

(NIRVANA skips 5–25 of 50 steps by similarity band; the bands here are ours). The bucket store is bounded by
VIDEOSTUDIO_LATENT_CACHE_MAX_BYTES, least recently used first. Whether the result looks right cannot be judged
with the tiny model's random weights: this is plumbing until it is measured on real weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from core.cache_store import BucketLRU
from core.render_cache import RenderCacheIndex
from core.stage import StageContext
from functions.model_identity import digest
from schemas.cache import ApproximateRecord
from schemas.plan import RenderPlan

log = logging.getLogger("videostudio.cache")

LATENTS_PREFIX = "cache/latents/"
STORE_FRACTIONS = (0.2, 0.3, 0.4, 0.5)
# (least similarity, share of the steps skipped), most similar first
SKIP_SCHEDULE = ((0.99, 0.5), (0.97, 0.4), (0.95, 0.3), (0.0, 0.2))
EMBEDDING_SUFFIX = ".embedding.safetensors"
LATENTS_SUFFIX = ".safetensors"


def store_steps(steps: int) -> list[int]:
    """Step counts after which a render keeps its latent (at least one step done, at least one left)."""
    return sorted({k for f in STORE_FRACTIONS if 1 <= (k := round(f * steps)) < steps})


def steps_to_skip(similarity: float, steps: int, *, threshold: float) -> int:
    """K for a similarity: 0 below the threshold, else the schedule's share of the steps."""
    if similarity < threshold:
        return 0
    share = next(share for least, share in SKIP_SCHEDULE if similarity >= least)
    stored = store_steps(steps)
    wanted = round(share * steps)
    return max((k for k in stored if k <= wanted), default=0)


def compat_key(plan: RenderPlan, *, render_identity: dict) -> str:
    """What a latent must share with the render reusing it (not the prompt, not the seed)."""
    return digest({"version": 1, "render": render_identity, "negative_prompt": plan.negative_prompt,
                   "width": plan.width, "height": plan.height, "num_frames": plan.num_frames, "steps": plan.steps,
                   "guidance_scale": plan.guidance_scale, "avatar": plan.avatar,
                   "avatar_strength": plan.avatar_strength if plan.avatar else None})


@dataclass(frozen=True)
class StartLatent:
    latent: torch.Tensor
    record: ApproximateRecord


class LatentCache:
    def __init__(self, ctx: StageContext, compat: str) -> None:
        self.ctx = ctx
        self.compat = compat
        self.store = BucketLRU(ctx.storage, prefix=LATENTS_PREFIX, max_bytes=ctx.settings.latent_cache_max_bytes)

    def _names(self) -> list[str]:
        """Job ids with an embedding under this compat key."""
        prefix = f"{LATENTS_PREFIX}{self.compat}/"
        return [info.key[len(prefix):-len(EMBEDDING_SUFFIX)] for info in self.ctx.storage.list(prefix)
                if info.key.endswith(EMBEDDING_SUFFIX)]

    def find(self, embedding: torch.Tensor, *, steps: int, threshold: float) -> StartLatent | None:
        """The most similar earlier render's latent to start from, or None (nothing above the threshold)."""
        if not self.store.enabled:
            return None
        best: tuple[float, str] | None = None
        for job in self._names():
            if job == self.ctx.job_id:
                continue
            data = self.ctx.storage.get_bytes(f"{LATENTS_PREFIX}{self.compat}/{job}{EMBEDDING_SUFFIX}")
            other = load_tensors(data)["embedding"].float()
            similarity = float(torch.nn.functional.cosine_similarity(embedding.float(), other, dim=0))
            if best is None or similarity > best[0]:
                best = (similarity, job)
        if best is None:
            return None
        similarity, job = best
        skip = steps_to_skip(similarity, steps, threshold=threshold)
        if skip == 0:
            return None
        data = self.store.get(f"{self.compat}/{job}{LATENTS_SUFFIX}")
        if data is None:  # evicted: drop its embedding too, so it is not found again
            self.store.delete(f"{self.compat}/{job}{EMBEDDING_SUFFIX}")
            return None
        latents = load_tensors(data)
        latent = latents.get(f"step_{skip}")
        if latent is None:
            return None
        return StartLatent(latent=latent, record=ApproximateRecord(
            source_job=job, similarity=round(similarity, 6), steps_saved=skip, steps_total=steps))

    def record(self, embedding: torch.Tensor, latents: dict[int, torch.Tensor], *, avatar: str | None) -> None:
        """Keep a finished render's latents (after the STORE_FRACTIONS step counts) and its prompt embedding."""
        if not self.store.enabled or not latents:
            return
        base = f"{self.compat}/{self.ctx.job_id}"
        if avatar is not None:  # deleting the avatar deletes these too
            RenderCacheIndex(self.ctx.storage).mark_avatar(
                avatar, f"latents-{self.compat}-{self.ctx.job_id}",
                [LATENTS_PREFIX + base + suffix for suffix in (LATENTS_SUFFIX, EMBEDDING_SUFFIX)])
        stored = self.store.put(base + LATENTS_SUFFIX, save_tensors(
            {f"step_{k}": t.detach().cpu().contiguous() for k, t in latents.items()}))
        if stored:
            self.store.put(base + EMBEDDING_SUFFIX, save_tensors({"embedding": embedding.detach().cpu().contiguous()}))
