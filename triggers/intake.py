"""Bucket notifications from every source become `StorageEvent`s, and inbox events become jobs.

One normaliser, `normalise(payload)`, understands:
- S3 event notifications `{"Records": [...]}`: direct (HTTP), inside an SQS message, inside an SNS
  envelope (an SNS HTTP subscription, or SNS → SQS without raw delivery), and Lambda's SQS/SNS records;
- S3 → EventBridge `"detail-type": "Object Created"` events (an API destination, or EventBridge → SQS);
- MinIO bucket notifications (webhook target: the S3 records plus `EventName` and `Key`);
- Ceph RGW bucket notifications (HTTP push: S3 records with `eventSource: "ceph:s3"`);
- Cloudflare R2 event notifications (a Queues message body, or a pulled message `{id, body, …}`);
- and lists of any of these (a batch).

Keys: AWS and MinIO URL-encode object keys in records the way forms do (`a b+c.yaml` →
`a+b%2Bc.yaml`): they are decoded with `unquote_plus`. Ceph RGW sends keys raw, and R2 documents
them as the object's name: those are taken as they are. The event keeps the key as it arrived
(`raw_key`), and `submit_events` falls back to the other reading when the first names no object;
submitting any object that exists under `inbox/` is always correct, so a fallback can't do harm.

Ignored, with a reason: S3's `s3:TestEvent`, SNS subscription confirmations, events other than
object creation (deletes, restores, ACL changes), objects outside this bucket and prefix, keys outside
`inbox/`, hidden names, and payloads that are no notification at all.

Duplicates and out-of-order delivery are harmless: `Runner.submit` is idempotent, because a job's id
is derived from the bucket, the key and the sha256 of the object's bytes *now*. A late event for bytes
that were since replaced just finds the job of the current bytes.

Intakes: `POST /events` (triggers/api/), `poll_sqs` (`videostudio intake sqs QUEUE_URL`), and the
reconciler's inbox scan (triggers/reconciler.py), the safety net for lost events.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ValidationError

from core.runner import INBOX, Runner
from core.storage import StorageError, validate_key
from schemas.errors import VideostudioError
from schemas.events import EventSource, StorageEvent
from schemas.notifications import (
    EventBridgeEvent,
    LambdaSnsRecord,
    LambdaSqsRecord,
    QueuesPullMessage,
    R2EventMessage,
    S3Notification,
    S3TestEvent,
    SnsEnvelope,
    SqsMessage,
)

log = logging.getLogger("videostudio.intake")

MAX_DEPTH = 4                 # envelopes inside envelopes (EventBridge → SQS, S3 → SNS → SQS …)
R2_CREATE_ACTIONS = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})
DEFAULT_SQS_WAIT_S = 20       # SQS long polling: the longest wait a ReceiveMessage may ask for
DEFAULT_SQS_BATCH = 10        # the most messages one ReceiveMessage returns


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Ignored:
    reason: str   # a stable snake_case code
    detail: str = ""


@dataclass
class Normalised:
    events: list[StorageEvent] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)

    def extend(self, other: Normalised) -> None:
        self.events.extend(other.events)
        self.ignored.extend(other.ignored)


@dataclass(frozen=True)
class Outcome:
    """What became of one event: `submitted` (with its job), `ignored` (with why), or `failed` (retry)."""

    status: str
    key: str
    reason: str | None = None
    job_id: str | None = None
    created: bool = False
    source: str | None = None


# ---------------------------------------------------------------------------------------------- normalise
def normalise(payload: Any, *, source: EventSource | None = None) -> Normalised:
    """Every object-created event in `payload` (bytes, a JSON string, or parsed JSON), any source."""
    return _normalise(payload, source, 0)


def _normalise(payload: Any, source: EventSource | None, depth: int) -> Normalised:
    result = Normalised()
    if depth > MAX_DEPTH:
        result.ignored.append(Ignored("too_deep", "envelopes nested deeper than expected"))
        return result
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            result.ignored.append(Ignored("not_json", str(exc)[:200]))
            return result
    if isinstance(payload, list):
        for item in payload:
            result.extend(_normalise(item, source, depth + 1))
        return result
    if not isinstance(payload, dict):
        result.ignored.append(Ignored("unrecognised", f"a JSON {type(payload).__name__}"))
        return result

    # 1. envelopes: open them and look inside; 2. notifications
    if not _open_envelope(payload, source, depth, result) and not _read_notification(payload, source, result):
        result.ignored.append(Ignored("unrecognised", f"a JSON object with keys {sorted(payload)[:8]}"))
    return result


def _open_envelope(payload: dict, source: EventSource | None, depth: int, result: Normalised) -> bool:
    """SQS, SNS and queue envelopes: normalise what they carry into `result`. False: not an envelope."""
    if "Records" in payload and _first_record_is(payload, "aws:sqs", "eventSource"):
        for record in _parsed_list(LambdaSqsRecord, payload["Records"], result):
            result.extend(_normalise(record.body, source or "sqs", depth + 1))
        return True
    if "Records" in payload and _first_record_is(payload, "aws:sns", "EventSource"):
        for record in _parsed_list(LambdaSnsRecord, payload["Records"], result):
            result.extend(_sns(record.sns, depth))
        return True
    if "Type" in payload and "Message" in payload:
        envelope = _parse(SnsEnvelope, payload, result)
        if envelope is not None:
            result.extend(_sns(envelope, depth))
        return True
    if "Body" in payload and "MessageId" in payload:
        message = _parse(SqsMessage, payload, result)
        if message is not None:
            result.extend(_normalise(message.body, source or "sqs", depth + 1))
        return True
    if "body" in payload and "id" in payload and ("lease_id" in payload or "attempts" in payload):
        pulled = _parse(QueuesPullMessage, payload, result)
        if pulled is not None:
            result.extend(_normalise(_queues_body(pulled.body), source, depth + 1))
        return True
    if "messages" in payload and isinstance(payload["messages"], list):  # a batch of queue messages
        for message in payload["messages"]:
            result.extend(_normalise(message, source, depth + 1))
        return True
    return False


def _read_notification(payload: dict, source: EventSource | None, result: Normalised) -> bool:
    """S3 (and compatible), EventBridge and R2 notifications into `result`. False: not a notification."""
    if payload.get("Event") == "s3:TestEvent":
        test = _parse(S3TestEvent, payload, result)
        result.ignored.append(Ignored("test_event", f"s3:TestEvent for {test.bucket if test else '?'}"))
        return True
    if "Records" in payload:
        notification = _parse(S3Notification, payload, result)
        if notification is not None:
            result.extend(_s3_records(notification, source))
        return True
    if "detail-type" in payload and "detail" in payload:
        event = _parse(EventBridgeEvent, payload, result)
        if event is None:
            return True
        if event.source != "aws.s3" or event.detail_type != "Object Created":
            result.ignored.append(Ignored("not_a_create", f"{event.source} {event.detail_type}"))
            return True
        obj = event.detail.object
        result.events.append(_event(event.detail.bucket.name, obj.key, decode=True, size=obj.size, etag=obj.etag,
                                    version_id=obj.version_id, event_time=event.time, source="eventbridge"))
        return True
    if {"account", "action", "bucket", "object"} <= payload.keys():
        message = _parse(R2EventMessage, payload, result)
        if message is None:
            return True
        if message.action not in R2_CREATE_ACTIONS:
            result.ignored.append(Ignored("not_a_create", f"R2 {message.action}"))
            return True
        result.events.append(_event(message.bucket, message.object.key, decode=False, size=message.object.size,
                                    etag=message.object.etag, event_time=message.event_time, source="r2"))
        return True
    return False


def _sns(envelope: SnsEnvelope, depth: int) -> Normalised:
    if envelope.type != "Notification":
        # Confirming a subscription means fetching the URL it names: an operator does that once
        # (docs/deploy.md), never this endpoint on behalf of whoever can reach it.
        return Normalised(ignored=[Ignored("sns_" + envelope.type.lower(), envelope.topic_arn or "")])
    return _normalise(envelope.message, "sns", depth + 1)


def _s3_records(notification: S3Notification, source: EventSource | None) -> Normalised:
    result = Normalised()
    for record in notification.records:
        name = record.event_name.removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            result.ignored.append(Ignored("not_a_create", record.event_name))
            continue
        origin = record.event_source.split(":", 1)[0]  # aws | minio | ceph
        record_source: EventSource = {"minio": "minio", "ceph": "ceph"}.get(origin, source or "s3")  # type: ignore[assignment]
        obj = record.s3.object
        result.events.append(_event(record.s3.bucket.name, obj.key, decode=origin != "ceph", size=obj.size,
                                    etag=obj.etag, version_id=obj.version_id, event_time=record.event_time,
                                    source=record_source))
    return result


def _event(bucket: str, key: str, *, decode: bool, size: int | None = None, etag: str | None = None,
           version_id: str | None = None, event_time=None, source: EventSource) -> StorageEvent:
    decoded = unquote_plus(key) if decode else key
    return StorageEvent(bucket=bucket, key=decoded, raw_key=key if key != decoded or not decode else None,
                        size=size, etag=(etag or "").strip('"') or None, version_id=version_id or None,
                        event_time=event_time, source=source)


def _queues_body(body: Any) -> Any:
    """A pulled Queues message body: JSON already, a JSON string, or base64 of JSON bytes."""
    if isinstance(body, str):
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            try:
                return json.loads(base64.b64decode(body, validate=True))
            except (binascii.Error, ValueError):
                return body
    return body


def _first_record_is(payload: dict, value: str, field_name: str) -> bool:
    records = payload.get("Records")
    return bool(isinstance(records, list) and records and isinstance(records[0], dict)
                and records[0].get(field_name) == value)


def _parse(model: type[BaseModel], data: Any, result: Normalised) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        result.ignored.append(Ignored("invalid_notification", f"{model.__name__}: {exc.errors()[0]['msg']}"[:300]))
        return None


def _parsed_list(model: type[BaseModel], items: Iterable[Any], result: Normalised) -> list[Any]:
    return [parsed for item in items if (parsed := _parse(model, item, result)) is not None]


# ---------------------------------------------------------------------------------------------- submit
def candidate_keys(event: StorageEvent) -> list[str]:
    """The key, then the other reading of the key as it arrived (raw, or URL-decoded)."""
    keys = [event.key]
    if event.raw_key is not None:
        keys += [event.raw_key, unquote_plus(event.raw_key)]
    return list(dict.fromkeys(keys))


def submit_events(runner: Runner, events: Iterable[StorageEvent]) -> list[Outcome]:
    """Start (once) the job of every event that names an object under this bucket's `inbox/`.

    Storage errors (the server is away) are `failed` outcomes: the caller should have the event sent
    again (HTTP 503, or leave the SQS message). Everything else is `submitted` or `ignored`.
    """
    storage = runner.storage
    outcomes: list[Outcome] = []
    seen: set[str] = set()
    for event in events:
        keys = [k for k in (storage.relative_key(event.bucket, full) for full in candidate_keys(event)) if k]
        if not keys:
            outcomes.append(Outcome("ignored", event.key, "other_bucket", source=event.source))
            continue
        keys = [k for k in keys if k.startswith(INBOX) and _valid(k)]
        if not keys:
            outcomes.append(Outcome("ignored", event.key, "not_an_input", source=event.source))
            continue
        try:
            key = next((k for k in keys if storage.stat(k) is not None), None)
            if key is None:
                outcomes.append(Outcome("ignored", keys[0], "input_not_found", source=event.source))
                continue
            if key in seen:
                outcomes.append(Outcome("ignored", key, "duplicate_in_batch", source=event.source))
                continue
            seen.add(key)
            job_id, created = runner.submit(StorageEvent(
                bucket=storage.name, key=key, size=event.size, etag=event.etag, version_id=event.version_id,
                event_time=event.event_time, source=event.source))
        except VideostudioError as exc:
            if isinstance(exc, StorageError) or exc.retryable:
                log.warning("cannot submit %s (will be retried): %s", event.key, exc.message)
                outcomes.append(Outcome("failed", event.key, exc.code, source=event.source))
            else:
                outcomes.append(Outcome("ignored", event.key, exc.code, source=event.source))
            continue
        outcomes.append(Outcome("submitted", key, job_id=job_id, created=created, source=event.source))
    return outcomes


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except StorageError:
        return False
    return True


@dataclass
class IntakeResult:
    outcomes: list[Outcome]
    ignored: list[Ignored]

    @property
    def failed(self) -> bool:
        return any(o.status == "failed" for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        return {
            "submitted": [{"key": o.key, "job_id": o.job_id, "created": o.created, "source": o.source}
                          for o in self.outcomes if o.status == "submitted"],
            "ignored": [{"key": o.key, "reason": o.reason} for o in self.outcomes if o.status == "ignored"]
                       + [{"key": None, "reason": i.reason} for i in self.ignored],
            "failed": [{"key": o.key, "reason": o.reason} for o in self.outcomes if o.status == "failed"],
        }


def handle_payload(runner: Runner, payload: Any) -> IntakeResult:
    """Normalise a notification payload and submit its events."""
    normalised = normalise(payload)
    for ignored in normalised.ignored:
        log.info("intake ignored a notification: %s %s", ignored.reason, ignored.detail)
    return IntakeResult(submit_events(runner, normalised.events), normalised.ignored)


# ---------------------------------------------------------------------------------------------- auth
def events_secret(settings) -> bytes | None:
    """The shared secret `POST /events` checks: VIDEOSTUDIO_EVENTS_SECRET, else the API token."""
    for value in (settings.events_secret, settings.api_token):
        if value is not None and value.get_secret_value().strip():
            return value.get_secret_value().encode()
    return None


def check_authorization(header: str | None, secret: bytes) -> bool:
    """`Authorization: Bearer <secret>`, or `Basic` auth whose password is the secret (any user name).

    Bearer is what MinIO's webhook `auth_token` and a forwarding worker send; Basic is what SNS and
    Ceph RGW send for an endpoint URL written as `https://user:<secret>@host/events`.
    """
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), secret)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        _, sep, password = decoded.partition(b":")
        return bool(sep) and hmac.compare_digest(password, secret)
    return False


# ---------------------------------------------------------------------------------------------- SQS
@dataclass
class SqsStats:
    received: int = 0
    deleted: int = 0
    left: int = 0
    submitted: int = 0


def sqs_client(*, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """An SQS client from boto3's usual chain (AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL honoured)."""
    import boto3

    session = boto3.session.Session()
    return session.client("sqs", region_name=region or session.region_name or "us-east-1", endpoint_url=endpoint_url)


def poll_sqs(runner: Runner, queue_url: str, *, client: Any = None, stop: threading.Event | None = None,
             wait_s: int = DEFAULT_SQS_WAIT_S, batch: int = DEFAULT_SQS_BATCH, once: bool = False,
             on_result: Callable[[str, IntakeResult], None] | None = None) -> SqsStats:
    """Long-poll `queue_url` and submit what arrives. A message is deleted once its events are handled
    (submitted or deliberately ignored); one whose submission failed is left, so SQS delivers it again
    after its visibility timeout (and to the queue's dead-letter queue after maxReceiveCount)."""
    client = client or sqs_client()
    stop = stop or threading.Event()
    stats = SqsStats()
    while not stop.is_set():
        try:
            response = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=max(1, min(batch, 10)),
                                              WaitTimeSeconds=max(0, min(wait_s, 20)))
        except Exception:  # the queue is unreachable: wait a little and ask again
            log.warning("SQS receive from %s failed", queue_url, exc_info=True)
            if once or stop.wait(5.0):
                break
            continue
        done: list[dict[str, str]] = []
        for message in response.get("Messages", []):
            stats.received += 1
            result = handle_payload(runner, message)  # the SQS envelope: its events say source "sqs"
            stats.submitted += sum(o.status == "submitted" for o in result.outcomes)
            if on_result is not None:
                on_result(message.get("MessageId", ""), result)
            if result.failed:
                stats.left += 1  # not deleted: SQS makes it visible again after the visibility timeout
            else:
                done.append({"Id": str(len(done)), "ReceiptHandle": message["ReceiptHandle"]})
        if done:
            deleted = client.delete_message_batch(QueueUrl=queue_url, Entries=done)
            stats.deleted += len(deleted.get("Successful", []))
            for failure in deleted.get("Failed", []):
                log.warning("SQS delete failed (the message will come back; harmless): %s", failure)
        if once:
            break
    return stats
