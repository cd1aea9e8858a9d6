"""The bucket-notification shapes of each event source, as their public documentation shows them.

`triggers/intake.py` turns any of these into `StorageEvent`s. Only the fields the intake reads are
declared; everything else a source sends is kept out of the way (`extra="ignore"`).

- `S3Notification`: `{"Records": [...]}` from AWS S3 (direct, in SQS, in SNS), MinIO (which adds a
  top-level `EventName` and `Key`) and Ceph RGW (`eventSource: "ceph:s3"`). Object keys are URL-encoded
  the way HTML forms are (`red flower.jpg` → `red+flower.jpg`) by AWS and MinIO; Ceph RGW sends them raw.
- `S3TestEvent`: what S3 sends once when a notification configuration is saved.
- `SnsEnvelope`: an SNS `Notification` (HTTP subscription, or SQS without raw message delivery);
  `Message` is the S3 notification as a JSON string.
- `EventBridgeEvent`: S3 → EventBridge, `detail-type: "Object Created"`, keys in `detail.object.key`.
- `R2EventMessage`: a Cloudflare R2 event notification, the body of a Cloudflare Queues message.
- `SqsMessage`: a message as `sqs.receive_message` returns it (`Body` is the JSON string), and
  `LambdaSqsRecord`/`LambdaSnsRecord` for the same envelopes as Lambda delivers them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _blank_to_none(value: Any) -> Any:
    return None if value in ("", "null") else value


# ---------------------------------------------------------------------------- S3 notification records
class S3Bucket(_Shape):
    name: str


class S3Object(_Shape):
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None

    _blank = field_validator("size", "etag", "version_id", "sequencer", mode="before")(_blank_to_none)


class S3Entity(_Shape):
    bucket: S3Bucket
    object: S3Object


class S3EventRecord(_Shape):
    event_source: str = Field(default="", alias="eventSource")   # aws:s3 | minio:s3 | ceph:s3
    event_name: str = Field(alias="eventName")                   # ObjectCreated:Put (s3:ObjectCreated:Put on MinIO)
    event_time: datetime | None = Field(default=None, alias="eventTime")
    s3: S3Entity

    _blank = field_validator("event_time", mode="before")(_blank_to_none)


class S3Notification(_Shape):
    records: list[S3EventRecord] = Field(alias="Records")
    event_name: str | None = Field(default=None, alias="EventName")  # MinIO only
    key: str | None = Field(default=None, alias="Key")                # MinIO only: "<bucket>/<raw key>"


class S3TestEvent(_Shape):
    service: str = Field(alias="Service")
    event: str = Field(alias="Event")  # "s3:TestEvent"
    bucket: str | None = Field(default=None, alias="Bucket")


# ---------------------------------------------------------------------------- envelopes
class SnsEnvelope(_Shape):
    type: str = Field(alias="Type")  # Notification | SubscriptionConfirmation | UnsubscribeConfirmation
    message: str = Field(alias="Message")
    message_id: str | None = Field(default=None, alias="MessageId")
    topic_arn: str | None = Field(default=None, alias="TopicArn")


class SqsMessage(_Shape):
    """A message from `sqs.receive_message`."""

    message_id: str = Field(alias="MessageId")
    receipt_handle: str | None = Field(default=None, alias="ReceiptHandle")
    body: str = Field(alias="Body")


class LambdaSqsRecord(_Shape):
    event_source: str = Field(alias="eventSource")  # aws:sqs
    body: str


class LambdaSnsRecord(_Shape):
    event_source: str = Field(alias="EventSource")  # aws:sns
    sns: SnsEnvelope = Field(alias="Sns")


# ---------------------------------------------------------------------------- EventBridge
class EventBridgeObject(_Shape):
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = Field(default=None, alias="version-id")
    sequencer: str | None = None


class EventBridgeDetail(_Shape):
    bucket: S3Bucket
    object: EventBridgeObject
    reason: str | None = None  # PutObject | POST Object | CopyObject | CompleteMultipartUpload


class EventBridgeEvent(_Shape):
    detail_type: str = Field(alias="detail-type")  # "Object Created"
    source: str                                    # "aws.s3"
    time: datetime | None = None
    detail: EventBridgeDetail


# ---------------------------------------------------------------------------- Cloudflare R2
class R2Object(_Shape):
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")


class R2EventMessage(_Shape):
    account: str
    action: str  # PutObject | CopyObject | CompleteMultipartUpload | DeleteObject | LifecycleDeletion
    bucket: str
    object: R2Object
    event_time: datetime | None = Field(default=None, alias="eventTime")


class QueuesPullMessage(_Shape):
    """A message pulled from a Cloudflare Queue over HTTP (`messages/pull`): the notification is `body`."""

    id: str
    body: Any
    lease_id: str | None = None
