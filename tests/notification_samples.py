"""Bucket notifications as each source sends them, modelled on the sources' public documentation.

- AWS S3 "Event message structure" (Records, eventVersion 2.1, URL-encoded keys: "red flower.jpg" →
  "red+flower.jpg"), its s3:TestEvent, SNS's Notification envelope and an SQS message around them.
- AWS S3 "EventBridge event message structure" (detail-type "Object Created", detail.object.key/etag).
- MinIO's bucket notification webhook body (EventName, Key = "<bucket>/<raw key>", Records whose key
  went through Go's url.QueryEscape, so "/" is "%2F" and " " is "+").
- Ceph RGW's bucket notification push (eventSource "ceph:s3"; Ceph sends the key raw, as observed from
  the radosgw 16 the tests start and as users report for later releases).
- Cloudflare R2's event notification message body (account, action, bucket, object{key,size,eTag},
  eventTime, copySource for CopyObject), alone and as a pulled Queues message.
"""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

BUCKET = "media-in"
KEY = "inbox/my brief été 🎬 (v2)+final.yaml"   # spaces, accents, an emoji, parentheses and a literal +
AWS_ENCODED = quote_plus(KEY, safe="/")          # what S3 puts in records: inbox/my+brief+%C3%A9t%C3%A9+...%2Bfinal.yaml
MINIO_ENCODED = quote_plus(KEY)                  # Go's url.QueryEscape also escapes "/"
ETAG = "0123456789abcdef0123456789abcdef"


def s3_record(key: str = AWS_ENCODED, *, event_name: str = "ObjectCreated:Put", bucket: str = BUCKET,
              source: str = "aws:s3", etag: str = ETAG, size: int = 1024, version: str = "2.1",
              event_time: str = "2026-11-12T00:00:00.000Z") -> dict:
    return {
        "eventVersion": version,
        "eventSource": source,
        "awsRegion": "us-west-2",
        "eventTime": event_time,
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                             "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "videostudio-inbox",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": size, "eTag": etag, "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                       "sequencer": "0055AED6DCD90281E5"},
        },
    }


def s3_notification(*records: dict) -> dict:
    return {"Records": list(records) or [s3_record()]}


S3_TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-12T00:00:00.000Z",
                 "Bucket": BUCKET, "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}


def sns_envelope(message: dict | str, *, type_: str = "Notification") -> dict:
    envelope = {
        "Type": type_,
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:videostudio-inbox",
        "Subject": "Amazon S3 Notification",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2026-11-12T00:00:01.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:123456789012:videostudio-inbox:c9135db0",
    }
    if type_ == "SubscriptionConfirmation":
        envelope["SubscribeURL"] = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:videostudio-inbox&Token=2336412f37"
        envelope["Token"] = "2336412f37"
    return envelope


def sqs_message(body: dict | str) -> dict:
    """A message as boto3's `sqs.receive_message` returns it."""
    return {"MessageId": "c80e8021-a70a-42c7-a470-796e1186f753",
            "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
            "MD5OfBody": "ignored", "Body": body if isinstance(body, str) else json.dumps(body)}


def lambda_sqs_event(*bodies: dict) -> dict:
    return {"Records": [{"messageId": f"m{i}", "receiptHandle": "AQEB...", "body": json.dumps(body),
                         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-west-2:123456789012:inbox",
                         "awsRegion": "us-west-2"} for i, body in enumerate(bodies)]}


def eventbridge_object_created(key: str = AWS_ENCODED, *, detail_type: str = "Object Created",
                               reason: str = "PutObject", etag: str = ETAG) -> dict:
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "111122223333",
        "time": "2026-11-12T00:00:00Z",
        "region": "ca-central-1",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": key, "size": 5, "etag": etag, "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                       "sequencer": "617f08299329d189"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": reason,
        },
    }


def minio_webhook(key: str = KEY, *, event_name: str = "s3:ObjectCreated:Put") -> dict:
    record = s3_record(quote_plus(key), event_name=event_name, source="minio:s3", version="2.0",
                       event_time="2026-11-12T09:22:31.000Z")
    record["awsRegion"] = ""
    record["responseElements"] = {"x-amz-request-id": "14E11E32397D42C4",
                                  "x-minio-origin-endpoint": "http://127.0.0.1:9000",
                                  "x-minio-deployment-id": "cd7a0eb7-a1f9-48d9-b21a-56366d75cfdd"}
    record["s3"]["object"].update({"contentType": "application/yaml", "userDefined": {"content-type": "application/yaml"},
                                   "versionId": "1"})
    record["source"] = {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.63"}
    return {"EventName": event_name, "Key": f"{BUCKET}/{key}", "Records": [record]}


def ceph_push(key: str = KEY, *, event_name: str = "ObjectCreated:Put") -> dict:
    record = s3_record(key, event_name=event_name, source="ceph:s3", version="2.2",
                       event_time="2026-11-25T23:02:16.530299Z")
    record["awsRegion"] = ""
    record["requestParameters"] = {"sourceIPAddress": ""}
    record["responseElements"] = {"x-amz-request-id": "edf3468c-4c1a-47bf-b39a-02299532ed81.4110.15087872650701461056",
                                  "x-amz-id-2": "100e-default-default"}
    record["s3"]["bucket"]["id"] = "edf3468c-4c1a-47bf-b39a-02299532ed81.4112.3"
    record["s3"]["object"].update({"size": "1024", "versionId": "", "sequencer": "F868076BD5FBAE1F",
                                   "metadata": [{"key": "x-amz-date", "val": "20261125T230216Z"}], "tags": []})
    record["eventId"] = "1795647736.531561.5d41402abc4b2a76b9719d911017c592"
    record["opaqueData"] = ""
    return {"Records": [record]}


def r2_message(key: str = KEY, *, action: str = "PutObject") -> dict:
    message = {"account": "3f4b7e3dcab231cbfdaa90a6a28bd548", "action": action, "bucket": BUCKET,
               "object": {"key": key, "size": 65536, "eTag": ETAG}, "eventTime": "2026-05-24T19:36:44.379Z"}
    if action == "CopyObject":
        message["copySource"] = {"bucket": BUCKET, "object": "uploads/original.yaml"}
    if action == "DeleteObject":
        del message["object"]["size"], message["object"]["eTag"]
    return message


def queues_pulled(body: dict) -> dict:
    """A message pulled from a Cloudflare Queue over HTTP (`POST .../messages/pull`)."""
    return {"id": "b01b5ee1b7ba3e6f6d2a5f5bb0f2fa8c", "timestamp_ms": 1716579404379, "attempts": 1,
            "lease_id": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0..", "metadata": {},
            "body": json.dumps(body)}


assert quote(KEY) != AWS_ENCODED  # form encoding ("+" for spaces), not path encoding
