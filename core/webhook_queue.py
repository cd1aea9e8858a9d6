"""Webhook events of a job: queue each one with its stored body, deliver one attempt, record it.

An event becomes a `WebhookDelivery` in the job manifest and a `webhook` queue message. Its
body is stored once, under an id stable across retries and re-runs, so every attempt sends the
same bytes under the same `webhook-id` and receivers can deduplicate. Signing, the POST and the
backoff are `core/webhooks.py`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from core import webhooks
from core.jobs import ManifestStore, manifest_key, webhook_body_key
from core.lanes import lane_of
from core.queue import Lease, WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from core.storage import Storage
from schemas.brief import WebhookSpec
from schemas.events import TaskMessage
from schemas.manifest import JobManifest, WebhookAttempt, WebhookDelivery, utcnow
from schemas.webhook import WebhookJobData, WebhookPayload

log = logging.getLogger("videostudio.runner")


class HasDeliveries(Protocol):
    """A manifest that records webhook deliveries: a job's (JobManifest) or a batch's (BatchManifest)."""

    webhooks: list[WebhookDelivery]


class QueueWebhookEvent(Protocol):
    """How the runner's parts ask for a webhook event: `queue_webhook(manifest, "stage.succeeded", stage=…)`."""

    def __call__(self, manifest: JobManifest, event: str, *, stage: str | None = None) -> None: ...


def webhook_spec(manifest: JobManifest) -> WebhookSpec | None:
    """The job's webhook (`url`, `events`) from its validated brief; None when it asked for none."""
    return manifest.request.webhook if manifest.request is not None else None


def event_webhook_id(manifest: JobManifest, event: str, stage: str | None, url: str) -> str:
    """The id of one event to one endpoint: the same every time it is queued, within one run of the job."""
    run = f":retry{len(manifest.retries)}" if manifest.retries else ""  # each explicit retry is a new run
    return webhooks.webhook_id(manifest.job_id, f"{event}:{stage or ''}{run}", url)


class WebhookQueue:
    def __init__(self, *, storage: Storage, store: ManifestStore, queue: WorkQueue, settings: Settings,
                 emit: Emitter) -> None:
        self.storage, self.store, self.queue, self.settings, self.emit = storage, store, queue, settings, emit

    def queue_event(self, manifest: JobManifest, event: str, *, stage: str | None = None) -> None:
        """Store the event's body (once), record its delivery in the manifest, and queue its message."""
        spec = webhook_spec(manifest)
        if spec is None or event not in spec.events:
            return
        url = str(spec.url)
        msg_id = event_webhook_id(manifest, event, stage, url)
        payload = self._payload(manifest, event, stage)
        # The body is stored once, so every retry sends the same bytes under the same webhook-id.
        self.storage.create_if_absent(webhook_body_key(manifest.job_id, msg_id), payload.model_dump_json().encode(),
                                      content_type="application/json")
        signed = self.settings.webhook_secret is not None

        def add(m: JobManifest) -> None:
            if not any(d.webhook_id == msg_id for d in m.webhooks):
                m.webhooks.append(WebhookDelivery(webhook_id=msg_id, event=event, url=webhooks.redact_url(url),
                                                  signed=signed))

        self.store.update(manifest.job_id, add)
        self.queue.put(TaskMessage(job_id=manifest.job_id, action="webhook", webhook_id=msg_id, lane=lane_of(manifest)))

    def _payload(self, manifest: JobManifest, event: str, stage: str | None) -> WebhookPayload:
        record = manifest.stages.get(stage) if stage else None
        outputs = record.outputs if record else manifest.outputs
        return WebhookPayload(
            type=event,
            timestamp=utcnow(),
            data=WebhookJobData(
                job_id=manifest.job_id, kind=manifest.kind, status=manifest.status.value, stage=stage,
                input_key=manifest.input.key, manifest_key=manifest_key(manifest.job_id),
                outputs=outputs,
                output_urls=self._output_urls(outputs),
                metrics=record.metrics if record else {},
                error=record.error if record else manifest.error,
                batch=manifest.batch,
            ),
        )

    def _output_urls(self, outputs: dict[str, str]) -> dict[str, str]:
        """Presigned links to the outputs, where the storage gives links other machines can open (S3)."""
        if not self.storage.shareable_urls:
            return {}
        urls = {}
        for name, key in outputs.items():
            try:
                urls[name] = self.storage.url(key, expires_s=self.settings.url_expires_s)
            except Exception:  # a link is a convenience: never let it block the webhook
                log.warning("no presigned URL for %s", key, exc_info=True)
        return urls

    def deliver(self, lease: Lease) -> None:
        """Send one attempt of a pending delivery, record it, and ack (or nack with the backoff for the next)."""
        job_id, msg_id = lease.message.job_id, lease.message.webhook_id
        manifest = self.store.load(job_id)
        delivery = next((d for d in manifest.webhooks if d.webhook_id == msg_id), None) if manifest else None
        if delivery is None or delivery.status != "pending":
            self.queue.ack(lease)
            return
        spec = webhook_spec(manifest)
        url = str(spec.url) if spec is not None else None
        body = self.storage.get_bytes(webhook_body_key(job_id, msg_id))
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        outcome = webhooks.post_once(url, body, webhooks.signed_headers(secret, msg_id, body),
                                     timeout_s=self.settings.webhook_timeout_s)
        delay = retry_delay(self.settings, outcome, attempt_no=len(delivery.attempts) + 1)
        self.store.update(job_id, lambda m: record_attempt(m, msg_id, outcome, delay=delay))
        self.emit("webhook.attempt", job_id=job_id, webhook_id=msg_id, status_code=outcome.status_code,
                  delivered=outcome.delivered)
        if delay is not None:
            self.queue.nack(lease, delay_s=delay, error=outcome.error)
        else:
            self.queue.ack(lease)



def retry_delay(settings: Settings, outcome: webhooks.AttemptOutcome, *, attempt_no: int) -> float | None:
    """How long until the next attempt; None when there is none (delivered, final, or out of attempts)."""
    if not (outcome.retryable and attempt_no < settings.webhook_max_attempts):
        return None
    return webhooks.next_delay(attempt_no, base_s=settings.webhook_backoff_base_s,
                               cap_s=settings.webhook_backoff_cap_s, retry_after_s=outcome.retry_after_s)


def record_attempt(manifest: HasDeliveries, msg_id: str, outcome: webhooks.AttemptOutcome, *,
                   delay: float | None) -> None:
    """Append one attempt to the delivery `msg_id` of a job's or a batch's manifest, and settle its status."""
    d = next(d for d in manifest.webhooks if d.webhook_id == msg_id)
    d.attempts.append(WebhookAttempt(attempt=len(d.attempts) + 1, at=utcnow(), status_code=outcome.status_code,
                                     error=outcome.error, duration_ms=round(outcome.duration_ms, 1),
                                     next_retry_s=None if delay is None else round(delay, 3)))
    if outcome.delivered:
        d.status = "delivered"
    elif outcome.disables_endpoint:
        d.status = "disabled"
    elif delay is None:
        d.status = "failed"
