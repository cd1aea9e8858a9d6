"""Settings users set through `VIDEOSTUDIO_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BUCKET = "./bucket"
MAX_URL_EXPIRES_S = 7 * 24 * 3600  # S3 presigned URLs live at most 7 days


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEOSTUDIO_", env_file=".env", extra="ignore")

    bucket: str = Field(default=DEFAULT_BUCKET, description="A folder path or s3://bucket/prefix.")
    webhook_secret: SecretStr | None = Field(default=None, description="Standard Webhooks secret (whsec_…).")
    api_token: SecretStr | None = Field(default=None, description="Bearer token for the HTTP API (`videostudio serve`).")
    api_max_upload_bytes: int = Field(default=4 * 1024**3, gt=0, description="Largest upload the API accepts: a training video or a recording.")
    model: str = Field(default="tiny", description="Model for briefs that name none.")
    device: str = Field(default="auto", description="auto | cpu | cuda")
    talking_precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description=(
        "The talking render's generator: bf16 autocast, or fp32; auto: bf16 on CUDA with bf16 and on CPUs with "
        "AMX (4× the fp32 speed there, outputs within one 8-bit level), fp32 elsewhere."))
    quantization_skip: str = Field(default="", description=(
        "Comma-separated regexes of module names that quantization leaves in bf16 (besides norms, embeddings "
        "and the output layers), e.g. `norm1,attn1.to_out`."))

    # Render, encoder and latent caches (bucket prefix cache/; see README "Render and encoder caches")
    render_cache: bool = Field(default=True, description=(
        "Reuse a finished render whose determinism key matches (a brief's `cache: false` renders afresh anyway)."))
    encoder_cache_memory_bytes: int = Field(default=256 * 1024**2, ge=0, description=(
        "Per-worker LRU of text/audio encoder outputs, in bytes (0: none)."))
    encoder_cache_max_bytes: int = Field(default=1024**3, ge=0, description=(
        "Size limit of cache/encoders/ in the bucket; the least recently used entries go first (0: no bucket cache)."))
    latent_cache_max_bytes: int = Field(default=2 * 1024**3, ge=0, description=(
        "Size limit of cache/latents/ (intermediate Mochi latents for `cache: {approximate: true}`; 0: none kept)."))
    approximate_min_similarity: float = Field(default=0.9, ge=0.0, le=1.0, description=(
        "Least cosine similarity of two prompts' text embeddings for an approximate render to reuse a latent."))

    lease_s: float = Field(default=60.0, gt=0, description="Queue visibility timeout and stage heartbeat horizon.")
    max_attempts: int = Field(default=3, ge=1, description=(
        "Attempts per stage (counted in the job manifest) before the job fails as max_attempts_exceeded. Not the "
        "queue's lease attempts per message (core/queue/base.py DEFAULT_LEASE_ATTEMPTS), its last-resort dead letter."))
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    watch_quiet_s: float = Field(default=1.0, ge=0, description="A file is complete after this long at a stable size.")
    progress_interval_s: float = Field(default=0.5, ge=0, description="Throttle for progress writes to the manifest.")

    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one webhook delivery attempt.")
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_base_s: float = Field(default=1.0, ge=0)
    webhook_backoff_cap_s: float = Field(default=300.0, ge=0)

    # S3-compatible buckets (`bucket: s3://name/prefix`) and event intake
    state_dir: str | None = Field(default=None, description=(
        "Local state (the SQLite queue) for an s3:// bucket; default ~/.cache/videostudio/<hash of the bucket URI>. "
        "A folder bucket keeps its state in <bucket>/.videostudio."))
    s3_endpoint: str | None = Field(default=None, description=(
        "S3 API endpoint for R2, MinIO or Ceph (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL also work); none for AWS."))
    s3_region: str | None = Field(default=None, description="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).")
    s3_addressing_style: str = Field(default="auto", pattern=r"^(auto|path|virtual)$",
                                     description="auto (path-style with an endpoint), path or virtual.")
    s3_public_endpoint: str | None = Field(default=None, description=(
        "Sign presigned URLs for this address (what users reach) instead of s3_endpoint."))
    s3_multipart_threshold_mb: int = Field(default=64, ge=5, description="Files above this upload in parts.")
    s3_multipart_chunk_mb: int = Field(default=16, ge=5, description="Part size of multipart uploads.")
    url_expires_s: int = Field(default=MAX_URL_EXPIRES_S, ge=60, le=MAX_URL_EXPIRES_S,
                               description="Lifetime of presigned output URLs in webhooks (at most 7 days).")
    events_secret: SecretStr | None = Field(default=None, description=(
        "Shared secret for POST /events (Bearer, or the password of Basic auth); unset: the API token."))

    @property
    def queue_lease_attempts(self) -> int:
        """Leases of one queue message before the queue dead-letters it: above both attempt budgets, so only a
        message that crashes the runner itself (not a failing stage or webhook) ever reaches it."""
        return max(self.max_attempts, self.webhook_max_attempts) + 2
