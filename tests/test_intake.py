"""Event intake: one normaliser for every source, POST /events, the SQS poller, the inbox scan on S3."""

from __future__ import annotations

import base64
import json
import time

import pytest
from fastapi.testclient import TestClient

import notification_samples as samples
from conftest import TINY_BRIEF
from core.jobs import ManifestStore
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.storage.s3 import S3Config, S3Storage
from functions.routes import default_pipeline
from triggers.api import create_app
from triggers.intake import check_authorization, candidate_keys, handle_payload, normalise, poll_sqs, sqs_client
from triggers.reconciler import InboxScanner

KEY, BUCKET = samples.KEY, samples.BUCKET
API_TOKEN = "api-token-for-tests"
EVENTS_SECRET = "events-secret/with:odd+chars"


# ------------------------------------------------------------------------------------------ the normaliser
SOURCES = {
    "s3": samples.s3_notification(),
    "s3-batch-with-a-delete": samples.s3_notification(
        samples.s3_record(event_name="ObjectRemoved:Delete"), samples.s3_record()),
    "sqs": samples.sqs_message(samples.s3_notification()),
    "sns": samples.sns_envelope(samples.s3_notification()),
    "sns-in-sqs": samples.sqs_message(samples.sns_envelope(samples.s3_notification())),
    "lambda-sqs": samples.lambda_sqs_event(samples.s3_notification()),
    "eventbridge": samples.eventbridge_object_created(),
    "eventbridge-in-sqs": samples.sqs_message(samples.eventbridge_object_created(reason="CompleteMultipartUpload")),
    "minio": samples.minio_webhook(),
    "ceph": samples.ceph_push(),
    "r2": samples.r2_message(),
    "r2-copy": samples.r2_message(action="CopyObject"),
    "r2-pulled": samples.queues_pulled(samples.r2_message(action="CompleteMultipartUpload")),
    "r2-batch": {"messages": [samples.queues_pulled(samples.r2_message())]},
}
EXPECTED_SOURCE = {"s3": "s3", "s3-batch-with-a-delete": "s3", "sqs": "sqs", "sns": "sns", "sns-in-sqs": "sns",
                   "lambda-sqs": "sqs", "eventbridge": "eventbridge", "eventbridge-in-sqs": "eventbridge",
                   "minio": "minio", "ceph": "ceph", "r2": "r2", "r2-copy": "r2", "r2-pulled": "r2", "r2-batch": "r2"}


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["parsed", "raw-body"])
def test_every_source_becomes_one_storage_event_with_the_decoded_key(name, as_bytes):
    payload = json.dumps(SOURCES[name]).encode() if as_bytes else SOURCES[name]
    result = normalise(payload)
    assert len(result.events) == 1, (result.events, result.ignored)
    event = result.events[0]
    assert (event.bucket, event.key, event.source) == (BUCKET, KEY, EXPECTED_SOURCE[name])
    assert event.etag == samples.ETAG and event.event_time is not None
    assert KEY in candidate_keys(event)


def test_key_encodings_per_source():
    # AWS: form encoding ("+" is a space, "%2B" a plus); the key as it arrived is kept beside it.
    aws = normalise(samples.s3_notification(samples.s3_record("inbox/a+b%2Bc%C3%A9.yaml"))).events[0]
    assert (aws.key, aws.raw_key) == ("inbox/a b+cé.yaml", "inbox/a+b%2Bc%C3%A9.yaml")
    assert candidate_keys(aws) == ["inbox/a b+cé.yaml", "inbox/a+b%2Bc%C3%A9.yaml"]
    # MinIO escapes "/" too.
    minio = normalise(samples.minio_webhook("inbox/sub dir/x+y.yaml")).events[0]
    assert minio.key == "inbox/sub dir/x+y.yaml" and minio.raw_key == "inbox%2Fsub+dir%2Fx%2By.yaml"
    # Ceph RGW and R2 send the key as it is: a "+" stays a "+", and the decoded reading is only a fallback.
    for payload in (samples.ceph_push("inbox/x+y z.yaml"), samples.r2_message("inbox/x+y z.yaml")):
        event = normalise(payload).events[0]
        assert event.key == "inbox/x+y z.yaml"
        assert candidate_keys(event) == ["inbox/x+y z.yaml", "inbox/x y z.yaml"]
    # A plain key needs no second reading.
    assert candidate_keys(normalise(samples.s3_notification(samples.s3_record("inbox/plain.yaml"))).events[0]) == [
        "inbox/plain.yaml"]
    # Ceph 16 sends sizes as strings in its documentation and an empty versionId.
    ceph = normalise(samples.ceph_push()).events[0]
    assert ceph.size == 1024 and ceph.version_id is None


@pytest.mark.parametrize("payload, reason", [
    (samples.S3_TEST_EVENT, "test_event"),
    (samples.sqs_message(samples.S3_TEST_EVENT), "test_event"),
    (samples.s3_notification(samples.s3_record(event_name="ObjectRemoved:Delete")), "not_a_create"),
    (samples.s3_notification(samples.s3_record(event_name="ObjectRestore:Completed")), "not_a_create"),
    (samples.minio_webhook(event_name="s3:ObjectRemoved:Delete"), "not_a_create"),
    (samples.ceph_push(event_name="ObjectRemoved:DeleteMarkerCreated"), "not_a_create"),
    (samples.eventbridge_object_created(detail_type="Object Deleted"), "not_a_create"),
    (samples.r2_message(action="DeleteObject"), "not_a_create"),
    (samples.sns_envelope("{}", type_="SubscriptionConfirmation"), "sns_subscriptionconfirmation"),
    (b"<xml>not json</xml>", "not_json"),
    ({"hello": "world"}, "unrecognised"),
    ({"Records": [{"eventName": "ObjectCreated:Put"}]}, "invalid_notification"),
])
def test_what_is_not_an_object_creation_is_ignored_with_a_reason(payload, reason):
    result = normalise(payload)
    assert result.events == []
    assert [i.reason for i in result.ignored] == [reason]


def test_events_secret_checks_bearer_and_basic():
    secret = EVENTS_SECRET.encode()
    basic = base64.b64encode(f"ceph:{EVENTS_SECRET}".encode()).decode()
    assert check_authorization(f"Bearer {EVENTS_SECRET}", secret)
    assert check_authorization(f"bearer {EVENTS_SECRET}", secret)
    assert check_authorization(f"Basic {basic}", secret)
    for header in (None, "", "Bearer", "Bearer nope", f"Token {EVENTS_SECRET}", "Basic !!!",
                   "Basic " + base64.b64encode(EVENTS_SECRET.encode()).decode(),  # no "user:" part
                   "Basic " + base64.b64encode(b"ceph:wrong").decode()):
        assert not check_authorization(header, secret), header


# ------------------------------------------------------------------------------------------ submitting, on S3
@pytest.fixture
def s3_runner(moto_server, s3_env, tmp_path):
    s3_env(moto_server)
    bucket = moto_server.new_bucket("media")
    storage = S3Storage(f"s3://{bucket}", config=S3Config())
    settings = Settings(bucket=f"s3://{bucket}", api_token=API_TOKEN, events_secret=EVENTS_SECRET,
                        state_dir=str(tmp_path / "state"))
    runner = Runner(storage, SqliteQueue(tmp_path / "queue.sqlite3"), default_pipeline(), settings)
    runner.raw = moto_server.client()  # type: ignore[attr-defined]
    return runner


def upload(runner, key: str, body: str) -> str:
    """Put an object the way a user's tool would (plain boto3, no metadata); returns its ETag."""
    return runner.raw.put_object(Bucket=runner.storage.bucket, Key=key, Body=body.encode())["ETag"].strip('"')


def retarget(payload, bucket: str):
    """The sample with its bucket renamed, inside envelopes (JSON strings in JSON) too."""
    if isinstance(payload, dict):
        return {k: retarget(v, bucket) for k, v in payload.items()}
    if isinstance(payload, list):
        return [retarget(v, bucket) for v in payload]
    if isinstance(payload, str):
        if payload.startswith(("{", "[")):
            return json.dumps(retarget(json.loads(payload), bucket))
        if payload == BUCKET or payload.startswith(f"{BUCKET}/"):
            return bucket + payload[len(BUCKET):]
        return payload.replace(f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{bucket}")
    return payload


@pytest.mark.parametrize("name", ["s3", "sns-in-sqs", "eventbridge", "minio", "ceph", "r2-pulled"])
def test_an_event_starts_the_job_once_whatever_the_source(s3_runner, name):
    upload(s3_runner, KEY, TINY_BRIEF.format(steps=2, seed=1))
    payload = retarget(SOURCES[name], s3_runner.storage.bucket)
    first = handle_payload(s3_runner, payload)
    [submitted] = [o for o in first.outcomes if o.status == "submitted"]
    assert submitted.created and submitted.key == KEY and submitted.source == EXPECTED_SOURCE[name]
    manifest = ManifestStore(s3_runner.storage).load(submitted.job_id)
    assert manifest.input.key == KEY and manifest.input.source == EXPECTED_SOURCE[name]
    assert s3_runner.queue.pending(submitted.job_id) == 1
    # The same event again (at-least-once delivery): the same job, nothing new queued.
    again = handle_payload(s3_runner, payload)
    assert [(o.job_id, o.created) for o in again.outcomes if o.status == "submitted"] == [(submitted.job_id, False)]
    assert s3_runner.queue.pending(submitted.job_id) == 1


def test_duplicates_out_of_order_and_other_keys(s3_runner):
    bucket = s3_runner.storage.bucket
    old_etag = upload(s3_runner, "inbox/a.yaml", TINY_BRIEF.format(steps=2, seed=1))
    new_etag = upload(s3_runner, "inbox/a.yaml", TINY_BRIEF.format(steps=2, seed=2))  # overwritten at once
    new_event = samples.s3_record("inbox/a.yaml", bucket=bucket, etag=new_etag)
    old_event = samples.s3_record("inbox/a.yaml", bucket=bucket, etag=old_etag)
    # The newer event first, then the older one (out of order), then a duplicate: one job, for the bytes there.
    results = [handle_payload(s3_runner, samples.s3_notification(e)) for e in (new_event, old_event, new_event)]
    jobs = {o.job_id for r in results for o in r.outcomes}
    assert len(jobs) == 1
    assert [o.created for r in results for o in r.outcomes] == [True, False, False]
    # Same bytes uploaded again under the same key: still that job. New bytes: a new job.
    upload(s3_runner, "inbox/a.yaml", TINY_BRIEF.format(steps=2, seed=2))
    assert handle_payload(s3_runner, samples.s3_notification(new_event)).outcomes[0].job_id in jobs
    upload(s3_runner, "inbox/a.yaml", TINY_BRIEF.format(steps=2, seed=3))
    newer = handle_payload(s3_runner, samples.s3_notification(new_event)).outcomes[0]
    assert newer.created and newer.job_id not in jobs

    upload(s3_runner, "uploads/john.mp4", "not an input")
    upload(s3_runner, "jobs/x/render/out.mp4", "an output")
    outcomes = handle_payload(s3_runner, samples.s3_notification(
        samples.s3_record("uploads/john.mp4", bucket=bucket),
        samples.s3_record("jobs/x/render/out.mp4", bucket=bucket),
        samples.s3_record("inbox/.hidden.yaml.part", bucket=bucket),
        samples.s3_record("inbox/gone.yaml", bucket=bucket),
        samples.s3_record("inbox/a.yaml", bucket="another-bucket"),
    )).outcomes
    assert [(o.status, o.reason) for o in outcomes] == [
        ("ignored", "not_an_input"), ("ignored", "not_an_input"), ("ignored", "not_an_input"),
        ("ignored", "input_not_found"), ("ignored", "other_bucket")]


def test_a_prefixed_bucket_only_takes_its_own_keys(s3_runner, tmp_path):
    bucket = s3_runner.storage.bucket
    prefixed = Runner(S3Storage(f"s3://{bucket}/team-a", config=S3Config()), SqliteQueue(tmp_path / "q2.sqlite3"),
                      default_pipeline(), s3_runner.settings)
    upload(s3_runner, "team-a/inbox/b c.yaml", TINY_BRIEF.format(steps=2, seed=1))
    upload(s3_runner, "team-b/inbox/b c.yaml", TINY_BRIEF.format(steps=2, seed=1))
    outcomes = handle_payload(prefixed, samples.s3_notification(
        samples.s3_record("team-a/inbox/b+c.yaml", bucket=bucket),
        samples.s3_record("team-b/inbox/b+c.yaml", bucket=bucket))).outcomes
    assert [(o.status, o.key, o.reason) for o in outcomes] == [
        ("submitted", "inbox/b c.yaml", None), ("ignored", "team-b/inbox/b c.yaml", "other_bucket")]


def test_the_inbox_scan_creates_missing_jobs_on_s3_and_hashes_each_object_once(s3_runner, monkeypatch):
    upload(s3_runner, "inbox/one.yaml", TINY_BRIEF.format(steps=2, seed=1))
    upload(s3_runner, "inbox/two words.yaml", TINY_BRIEF.format(steps=2, seed=2))
    upload(s3_runner, "uploads/video.mp4", "not an input")
    assert len(InboxScanner(s3_runner).scan()) == 2
    # A fresh scanner (a restarted worker, a cold container) learns from the manifests, not by hashing.
    hashed = []
    original = s3_runner.storage.content_hash
    monkeypatch.setattr(s3_runner.storage, "content_hash", lambda key: hashed.append(key) or original(key))
    fresh = InboxScanner(s3_runner)
    assert fresh.scan() == [] and hashed == []
    upload(s3_runner, "inbox/three.yaml", TINY_BRIEF.format(steps=2, seed=3))
    assert len(fresh.scan()) == 1 and hashed == ["inbox/three.yaml"]


# ------------------------------------------------------------------------------------------ POST /events
@pytest.fixture
def events_client(s3_runner):
    with TestClient(create_app(s3_runner.settings, runner=s3_runner)) as client:
        yield client


def test_post_events_needs_the_shared_secret(events_client, s3_runner):
    upload(s3_runner, KEY, TINY_BRIEF.format(steps=2, seed=1))
    body = json.dumps(retarget(samples.ceph_push(), s3_runner.storage.bucket))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {API_TOKEN}x"},
                    {"Authorization": "Basic " + base64.b64encode(b"ceph:wrong").decode()}):
        response = events_client.post("/events", content=body, headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"
        assert EVENTS_SECRET not in response.text
    assert not list(ManifestStore(s3_runner.storage).job_ids())

    basic = "Basic " + base64.b64encode(f"videostudio:{EVENTS_SECRET}".encode()).decode()
    response = events_client.post("/events", content=body, headers={"Authorization": basic,
                                                                      "content-type": "application/json"})
    assert response.status_code == 200, response.text
    [submitted] = response.json()["submitted"]
    assert submitted["key"] == KEY and submitted["created"] and submitted["source"] == "ceph"
    again = events_client.post("/events", content=body, headers={"Authorization": f"Bearer {EVENTS_SECRET}"})
    assert again.json()["submitted"][0] == {**submitted, "created": False}

    test_event = events_client.post("/events", json=samples.S3_TEST_EVENT,
                                    headers={"Authorization": f"Bearer {EVENTS_SECRET}"})
    assert test_event.status_code == 200 and test_event.json() == {
        "submitted": [], "ignored": [{"key": None, "reason": "test_event"}]}
    too_big = events_client.post("/events", content=b"x" * (1024 * 1024 + 1),
                                 headers={"Authorization": f"Bearer {EVENTS_SECRET}"})
    assert too_big.status_code == 413


def test_post_events_falls_back_to_the_api_token_and_says_503_when_the_bucket_is_away(s3_runner, monkeypatch):
    settings = s3_runner.settings.model_copy(update={"events_secret": None})
    with TestClient(create_app(settings, runner=s3_runner)) as client:
        upload(s3_runner, KEY, TINY_BRIEF.format(steps=2, seed=1))
        payload = retarget(samples.minio_webhook(), s3_runner.storage.bucket)
        assert client.post("/events", json=payload, headers={"Authorization": f"Bearer {EVENTS_SECRET}"}).status_code == 401
        ok = client.post("/events", json=payload, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert ok.status_code == 200 and ok.json()["submitted"][0]["source"] == "minio"

        from core.storage.base import StorageError

        def away(key):
            raise StorageError("storage_unavailable", "S3 HEAD failed: EndpointConnectionError", retryable=True)

        monkeypatch.setattr(s3_runner.storage, "stat", away)
        failed = client.post("/events", json=payload, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
        assert failed.json()["code"] == "storage_unavailable"


# ------------------------------------------------------------------------------------------ the SQS poller
def test_sqs_poller_submits_s3_notifications_and_deletes_only_what_it_handled(s3_runner, moto_server, monkeypatch):
    sqs = moto_server.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"inbox-{s3_runner.storage.bucket}",
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bucket = s3_runner.storage.bucket
    s3_runner.raw.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"Id": "videostudio", "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
                                 "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}}}]})
    upload(s3_runner, KEY, TINY_BRIEF.format(steps=2, seed=4))       # S3 (moto) sends the notification to SQS
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(samples.S3_TEST_EVENT))
    sqs.send_message(QueueUrl=queue_url, MessageBody="garbage")

    client = sqs_client(endpoint_url=moto_server.endpoint)
    seen = []
    stats = poll_sqs(s3_runner, queue_url, client=client, wait_s=1, once=True,
                     on_result=lambda message_id, result: seen.append(result.summary()))
    # received: the s3:TestEvent S3 sends when the configuration is saved, ours, the garbage and the upload's
    assert stats.received == 4 and stats.deleted == 4 and stats.left == 0 and stats.submitted == 1
    [submitted] = [s for summary in seen for s in summary["submitted"]]
    assert submitted["key"] == KEY and submitted["created"] and submitted["source"] == "sqs"
    assert ManifestStore(s3_runner.storage).load(submitted["job_id"]).input.source == "sqs"

    # A failed submission leaves the message in the queue for another try.
    from core.storage.base import StorageError

    def away(key):
        raise StorageError("storage_unavailable", "S3 HEAD failed", retryable=True)

    upload(s3_runner, "inbox/later.yaml", TINY_BRIEF.format(steps=2, seed=5))
    stat = s3_runner.storage.stat
    monkeypatch.setattr(s3_runner.storage, "stat", away)
    stats = poll_sqs(s3_runner, queue_url, client=client, wait_s=1, once=True)
    assert stats.received == 1 and stats.left == 1 and stats.deleted == 0
    monkeypatch.setattr(s3_runner.storage, "stat", stat)
    time.sleep(1.2)  # the visibility timeout: SQS delivers it again
    stats = poll_sqs(s3_runner, queue_url, client=client, wait_s=2, once=True)
    assert stats.received == 1 and stats.deleted == 1 and stats.submitted == 1


# ------------------------------------------------------------------------------------------ wiring and the CLI
def test_an_s3_bucket_keeps_its_queue_in_a_local_state_dir(moto_server, s3_env, tmp_path, monkeypatch):
    from triggers.wiring import default_state_dir, open_runner

    s3_env(moto_server)
    bucket = moto_server.new_bucket("state")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runner = open_runner(Settings(bucket=f"s3://{bucket}/p"))
    expected = default_state_dir(f"s3://{bucket}/p")
    assert expected.parent == tmp_path / "cache" / "videostudio" and (expected / "queue.sqlite3").exists()
    assert default_state_dir(f"s3://{bucket}/q") != expected
    explicit = open_runner(Settings(bucket=f"s3://{bucket}/p", state_dir=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "queue.sqlite3").exists()
    assert isinstance(runner.storage, S3Storage) and isinstance(explicit.storage, S3Storage)


def test_intake_sqs_verb_polls_once(s3_runner, moto_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from triggers import cli

    sqs = moto_server.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"verb-{s3_runner.storage.bucket}")["QueueUrl"]
    upload(s3_runner, "inbox/verb test.yaml", TINY_BRIEF.format(steps=2, seed=6))
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(samples.sns_envelope(samples.s3_notification(
        samples.s3_record("inbox/verb+test.yaml", bucket=s3_runner.storage.bucket)))))
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(samples.S3_TEST_EVENT))
    monkeypatch.setenv("VIDEOSTUDIO_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(cli.app, ["intake", "sqs", queue_url, "--bucket", f"s3://{s3_runner.storage.bucket}",
                                          "--once", "--wait-s", "1", "--endpoint-url", moto_server.endpoint])
    assert result.exit_code == 0, result.output
    assert "ignored" in result.output and "test_event" in result.output
    assert "received 2, submitted 1, deleted 2, left 0" in result.output
    [manifest] = list(ManifestStore(s3_runner.storage).all())
    assert manifest.input.key == "inbox/verb test.yaml" and manifest.input.source == "sns"
