"""Standard Webhooks delivery: sign, POST once, and decide when to retry.

Retries are durable: the runner's webhook queue (core/webhook_queue.py) re-queues a
delivery with a delay from `next_delay`, so a restart never drops one. Each attempt is
recorded in the job manifest, and the `webhook-id` stays the same across retries so
receivers can deduplicate.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

USER_AGENT = "videostudio-webhooks/1"
# 410 Gone is the spec's "stop sending to this endpoint".
DISABLING_STATUS = 410


def webhook_id(job_id: str, event: str, url: str) -> str:
    """Stable across retries and re-runs: one id per (job, event, endpoint)."""
    digest = hashlib.sha256(f"{job_id}\0{event}\0{url}".encode()).hexdigest()[:24]
    return f"msg_{digest}"


def redact_url(url: str) -> str:
    """Keep scheme, host and path; drop user info, query and fragment (they may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def signed_headers(secret: str | None, msg_id: str, body: bytes, *, now: datetime | None = None) -> dict[str, str]:
    # In UTC: `Webhook.sign` reads the wall clock as UTC, so another zone would sign a different instant.
    timestamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(msg_id, timestamp, body.decode())
    return headers


def generate_secret() -> str:
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class AttemptOutcome:
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_after_s: float | None = None

    @property
    def disables_endpoint(self) -> bool:
        return self.status_code == DISABLING_STATUS

    @property
    def retryable(self) -> bool:
        if self.delivered or self.disables_endpoint:
            return False
        if self.status_code is None:  # connection error or timeout
            return True
        return self.status_code in (408, 409, 425, 429) or self.status_code >= 500


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def post_once(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> AttemptOutcome:
    """One POST; `timeout_s` comes from `Settings.webhook_timeout_s`, the one place its default is set."""
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return AttemptOutcome(False, None, f"{type(exc).__name__}: {exc}"[:300], (time.perf_counter() - started) * 1e3)
    elapsed = (time.perf_counter() - started) * 1e3
    ok = 200 <= response.status_code < 300
    return AttemptOutcome(
        delivered=ok,
        status_code=response.status_code,
        error=None if ok else f"HTTP {response.status_code}",
        duration_ms=elapsed,
        retry_after_s=_retry_after_seconds(response.headers.get("retry-after")),
    )


MAX_RETRY_AFTER_S = 6 * 3600.0  # a receiver may ask us to wait, but not forever


def next_delay(attempt: int, *, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter; a receiver's Retry-After wins when it asks for longer (up to 6 h)."""
    backoff = random.uniform(0, min(cap_s, base_s * 2 ** min(attempt - 1, 60)))
    if retry_after_s is not None:
        return min(max(backoff, retry_after_s), MAX_RETRY_AFTER_S)
    return backoff
