"""The `batch.completed` webhook: queued once when a batch's last item ends, delivered like every webhook.

Its delivery is recorded in the batch manifest (`webhooks`), under an id stable for the batch and the
endpoint, so it is queued at most once however many workers see the batch end, and the reconciler can
re-queue it if a worker died in between. Its body is stored once, at the first attempt, so every retry
sends the same bytes under the same `webhook-id`. Signing, the POST and the backoff are `core/webhooks.py`.
"""

from __future__ import annotations

from core import webhooks
from core.batch_store import BatchStore, batch_manifest_key, batch_webhook_body_key
from core.queue import Lease, WorkQueue
from core.run_events import Emitter
from core.settings import Settings
from core.storage import Storage
from core.webhook_queue import record_attempt, retry_delay
from schemas.batch import BatchFailedItem, BatchManifest, BatchWebhookData, BatchWebhookPayload
from schemas.events import TaskMessage
from schemas.manifest import JobStatus, WebhookDelivery, utcnow

COMPLETED = "batch.completed"


def completed_webhook_id(manifest: BatchManifest) -> str | None:
    if manifest.webhook is None:
        return None
    return webhooks.webhook_id(manifest.batch_id, COMPLETED, str(manifest.webhook.url))


def add_completed_delivery(manifest: BatchManifest, *, signed: bool) -> str | None:
    """Inside the compare-and-swap that completes the batch: record the pending delivery (once). Its id, or None."""
    msg_id = completed_webhook_id(manifest)
    if msg_id is not None and not any(d.webhook_id == msg_id for d in manifest.webhooks):
        assert manifest.webhook is not None
        manifest.webhooks.append(WebhookDelivery(webhook_id=msg_id, event=COMPLETED, signed=signed,
                                                 url=webhooks.redact_url(str(manifest.webhook.url))))
    return msg_id


class BatchWebhooks:
    def __init__(self, *, storage: Storage, store: BatchStore, queue: WorkQueue, settings: Settings,
                 emit: Emitter) -> None:
        self.storage, self.store, self.queue, self.settings, self.emit = storage, store, queue, settings, emit

    @property
    def signed(self) -> bool:
        return self.settings.webhook_secret is not None

    def send(self, manifest: BatchManifest, msg_id: str) -> bool:
        return self.queue.put(TaskMessage(job_id=manifest.batch_id, action="batch_webhook", webhook_id=msg_id,
                                          lane=manifest.batch_id))

    def deliver(self, lease: Lease) -> None:
        """One attempt of the pending delivery: POST, record it, then ack (or nack with the next backoff)."""
        batch_id, msg_id = lease.message.job_id, lease.message.webhook_id
        manifest = self.store.load(batch_id)
        delivery = next((d for d in manifest.webhooks if d.webhook_id == msg_id), None) if manifest else None
        if manifest is None or delivery is None or delivery.status != "pending" or manifest.webhook is None:
            self.queue.ack(lease)
            return
        body = self._body(manifest, msg_id)
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        outcome = webhooks.post_once(str(manifest.webhook.url), body, webhooks.signed_headers(secret, msg_id, body),
                                     timeout_s=self.settings.webhook_timeout_s)
        delay = retry_delay(self.settings, outcome, attempt_no=len(delivery.attempts) + 1)
        self.store.update(batch_id, lambda m: record_attempt(m, msg_id, outcome, delay=delay))
        self.emit("webhook.attempt", job_id=batch_id, batch_id=batch_id, webhook_id=msg_id, status_code=outcome.status_code,
                  delivered=outcome.delivered)
        if delay is not None:
            self.queue.nack(lease, delay_s=delay, error=outcome.error)
        else:
            self.queue.ack(lease)

    def _body(self, manifest: BatchManifest, msg_id: str) -> bytes:
        """The stored body, made at the first attempt from the completed manifest (the same bytes ever after)."""
        key = batch_webhook_body_key(manifest.batch_id, msg_id)
        payload = BatchWebhookPayload(timestamp=utcnow(), data=BatchWebhookData(
            batch_id=manifest.batch_id, name=manifest.name, status=manifest.status, counts=manifest.counts,
            manifest_key=batch_manifest_key(manifest.batch_id), input_key=manifest.input.key,
            not_succeeded=[BatchFailedItem(index=i.index, line=i.line, job_id=i.job_id, status=i.status, error=i.error)
                           for i in manifest.items if i.status in (JobStatus.failed, JobStatus.cancelled)]))
        self.storage.create_if_absent(key, payload.model_dump_json().encode(), content_type="application/json")
        return self.storage.get_bytes(key)
