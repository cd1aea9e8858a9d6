"""End to end on a real S3 server: a brief uploaded to Ceph RGW with boto3 → RGW's bucket notification
→ POST /events (uvicorn on 127.0.0.1) → job → `videostudio up --bucket s3://…` (a subprocess, the tiny
model) → a `succeeded` manifest in the bucket and a webhook that standardwebhooks verifies, whose
presigned output URL downloads the video."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import CLI, TEST_SECRET, TINY_BRIEF, read_log, stop, worker_env
from core.jobs import ManifestStore
from core.settings import Settings
from s3_servers import free_port
from triggers.api import create_app
from triggers.wiring import open_runner

pytestmark = [pytest.mark.slow, pytest.mark.ceph,
              pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]  # RGW's self-signed test certificate

EVENTS_SECRET = "ceph-push-secret"
API_TOKEN = "api-token-e2e"
KEY = "inbox/sunrise brief été.yaml"


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


def _wait(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"videostudio up exited with {proc.returncode}:\n{read_log(proc)}")
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{read_log(proc)}" if proc is not None else ""))


def test_brief_uploaded_to_ceph_runs_through_bucket_notifications(ceph_rgw, s3_env, webhook_receiver, tmp_path):
    import subprocess

    s3_env(ceph_rgw)
    bucket = ceph_rgw.new_bucket("studio")
    uri = f"s3://{bucket}/studio"
    state = tmp_path / "state"
    settings = Settings(bucket=uri, api_token=API_TOKEN, events_secret=EVENTS_SECRET, state_dir=str(state),
                        webhook_secret=TEST_SECRET)

    # 1. the HTTP app (POST /events) on 127.0.0.1, sharing the local queue with the worker below
    created: list[dict] = []
    api_runner = open_runner(settings, on_event=lambda event, data: created.append(data) if event == "job.created" else None)
    port = free_port()
    server, thread = _serve(create_app(settings, runner=api_runner), port)

    # 2. RGW pushes ObjectCreated events under studio/inbox/ to it, with the secret as Basic auth.
    #    (RGW only takes a push endpoint holding a password when the topic is created over TLS.)
    sns = ceph_rgw.client("sns", endpoint=ceph_rgw.https_endpoint, verify=False)
    secret = urllib.parse.quote(EVENTS_SECRET, safe="")
    topic = sns.create_topic(Name=f"videostudio-{bucket}", Attributes={
        "push-endpoint": f"http://videostudio:{secret}@127.0.0.1:{port}/events"})["TopicArn"]
    s3 = ceph_rgw.client()
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [{
        "Id": "videostudio-inbox", "TopicArn": topic, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "studio/inbox/"}]}}}]})

    # 3. workers: `videostudio up` on the S3 bucket; its own inbox scan is an hour away, so only the
    #    notification can start the job quickly
    log_path = tmp_path / "up.log"
    env = worker_env(**ceph_rgw.env(), VIDEOSTUDIO_STATE_DIR=str(state), VIDEOSTUDIO_RECONCILE_INTERVAL_S="3600")
    for name in ("AWS_ENDPOINT_URL_S3", "VIDEOSTUDIO_S3_ENDPOINT", "AWS_PROFILE"):
        env.pop(name, None)
    proc = subprocess.Popen([CLI, "up", "--bucket", uri], stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, cwd=tmp_path)
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        _wait(lambda: "videostudio up" in log_path.read_text(errors="replace"), 120, "the worker to start", proc)

        # 4. a user uploads a brief with boto3 (a key with a space and accents: RGW sends it raw)
        brief = TINY_BRIEF.format(steps=2, seed=11) + (
            f"webhook:\n  url: {webhook_receiver.url}\n  events: [job.succeeded, job.failed]\n")
        started = time.monotonic()
        s3.put_object(Bucket=bucket, Key=f"studio/{KEY}", Body=brief.encode(), ContentType="application/yaml")

        # 5. the event made the job (not the scan), and the worker ran it to a succeeded manifest in the bucket
        event = _wait(lambda: next((c for c in created if c["key"] == KEY), None), 30, "the notification")
        assert event["source"] == "ceph"
        store = ManifestStore(api_runner.storage)
        manifest = _wait(lambda: (m := store.load(event["job_id"])) and m.status.terminal and m, 180,
                         "the job to finish", proc)
        elapsed = time.monotonic() - started
        assert manifest.status.value == "succeeded", manifest.model_dump_json(indent=2)[:3000]
        assert manifest.input.key == KEY and manifest.input.source == "ceph"
        raw = s3.get_object(Bucket=bucket, Key=f"studio/jobs/{manifest.job_id}/manifest.json")
        assert json.loads(raw["Body"].read())["status"] == "succeeded"  # the commit marker, in the bucket
        video_key = manifest.outputs["video"]
        assert s3.head_object(Bucket=bucket, Key=f"studio/{video_key}")["ContentLength"] > 0

        # 6. the webhook: signed, verified by standardwebhooks, with a presigned link that downloads the video
        [hook] = webhook_receiver.wait_for(lambda r: len(r) >= 1, timeout=60)
        payload = Webhook(TEST_SECRET).verify(hook.body, hook.headers)
        assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == manifest.job_id
        assert payload["data"]["outputs"]["video"] == video_key
        url = payload["data"]["output_urls"]["video"]
        assert ceph_rgw.secret_key not in hook.body.decode() and EVENTS_SECRET not in hook.body.decode()
        video = httpx.get(url)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"  # an MP4
        print(f"ceph e2e: upload → succeeded manifest in {elapsed:.1f}s")

        # 7. the same bytes uploaded again: RGW notifies again (synchronously, before the PUT returns),
        #    and it is still one job
        s3.put_object(Bucket=bucket, Key=f"studio/{KEY}", Body=brief.encode())
        time.sleep(0.5)
        assert [c["job_id"] for c in created if c["key"] == KEY] == [manifest.job_id]
        assert len(list(store.job_ids())) == 1
        assert EVENTS_SECRET not in read_log(proc)
    finally:
        stop(proc)
        server.should_exit = True
        thread.join(timeout=10)
