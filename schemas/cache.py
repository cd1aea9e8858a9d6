"""The render, encoder and latent caches: the brief's `cache:` option, the bucket's index entries under `cache/`,
and what a job manifest records about its render's use of them (`cache:`)."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field



def _utcnow() -> datetime:  # schemas/manifest.py imports this module, so its utcnow cannot be imported here
    return datetime.now(timezone.utc)


class CacheOptions(BaseModel):
    """`cache:` in a render brief as a mapping (`cache: true` is these defaults; `cache: false` renders afresh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    approximate: bool = Field(default=False, description=(
        "Mochi text-to-video only (NIRVANA, Agarwal et al., NSDI 2024): start denoising from a cached intermediate "
        "latent of the most similar earlier prompt and skip the steps it saved. Off by default: the video differs "
        "from an exact render, and its quality cannot be judged with the tiny model's random weights."))
    min_similarity: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "Least cosine similarity of the prompts' text embeddings that may reuse a latent; default "
        "VIDEOSTUDIO_APPROXIMATE_MIN_SIMILARITY."))
    record: bool = Field(default=True, description="Record this render for later briefs to reuse.")


class RenderCacheEntry(BaseModel):
    """`cache/renders/<key>.json`: a succeeded render and the outputs a render with the same key reuses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="sha256 of the render's determinism key.")
    source_job: str
    outputs: dict[str, str] = Field(description="Output name → bucket key in the source job.")
    job_outputs: dict[str, str] = Field(description="What the source promoted to its job manifest's outputs.")
    metrics: dict = Field(default_factory=dict, description="The source render's stage metrics.")
    model_id: str | None = None
    avatar: str | None = Field(default=None, description="The avatar it rendered with: deleting it drops this entry.")
    created_at: datetime = Field(default_factory=_utcnow)


class ApproximateRecord(BaseModel):
    """An approximate render: which earlier render's intermediate latent it started from, and what it skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_job: str
    similarity: float = Field(description="Cosine similarity of the two prompts' pooled text embeddings.")
    steps_saved: int
    steps_total: int


class CacheRecord(BaseModel):
    """The job manifest's `cache:`: whether its render came from the render cache, and from which job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hit: bool
    source_job: str | None = Field(default=None, description="The job whose outputs were reused (a hit).")
    key: str | None = Field(default=None, description="The render's determinism key (sha256); None: not cacheable.")
    reason: str = Field(description=(
        "hit | miss | disabled (cache: false, or VIDEOSTUDIO_RENDER_CACHE off) | source_missing (an entry whose "
        "source outputs vanished: a miss) | uncacheable (the model's identity is unknown)."))
    recorded: bool = Field(default=False, description="This render was recorded for later briefs.")
    approximate: ApproximateRecord | None = None


class EncoderCacheStats(BaseModel):
    """Encoder-cache use of one render (in its stage metrics as `encoder_cache`)."""

    model_config = ConfigDict(extra="forbid")

    memory_hits: int = 0
    bucket_hits: int = 0
    misses: int = 0
    encode_s: float = Field(default=0.0, description="Seconds inside the encoders (the misses).")
    cache_s: float = Field(default=0.0, description="Seconds the cache itself took: lookups, bucket reads, stores.")

    @property
    def hits(self) -> int:
        return self.memory_hits + self.bucket_hits

    def summary(self) -> dict:
        return {**self.model_dump(), "hits": self.hits, "encode_s": round(self.encode_s, 4),
                "cache_s": round(self.cache_s, 4)}
