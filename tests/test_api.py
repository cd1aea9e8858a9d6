"""The HTTP API in process (FastAPI's TestClient) on a temp bucket, plus `videostudio serve` as a real server.

The API only writes inputs and reads manifests; where a test needs a job to move, it runs the
runner itself (`work_once`), as `videostudio up` would.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import TINY_BRIEF, start_serve
from core.avatars import AvatarRegistry
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.storage import LocalStorage
from functions.presets import resolve_render_plan
from functions.routes import default_pipeline
from schemas import SCHEMA_VERSION
from schemas.avatar import AvatarManifest
from schemas.brief import RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError
from schemas.events import StorageEvent
from schemas.handoff import TrainOutput
from schemas.manifest import StageStatus
from triggers.api import PUBLIC_PATHS, create_app
from triggers.cli import app as cli_app

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {**AUTH, "Content-Type": "application/yaml"}


def make_runner(bucket: Path, **settings) -> Runner:
    storage = LocalStorage(bucket)
    values = dict(bucket=str(bucket), api_token=TOKEN, progress_interval_s=0.0)
    values.update(settings)
    return Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3"), default_pipeline(), Settings(**values))


@pytest.fixture
def runner(tmp_path) -> Runner:
    return make_runner(tmp_path / "bucket")


@pytest.fixture
def client(runner) -> TestClient:
    with TestClient(create_app(runner.settings, runner=runner)) as test_client:
        yield test_client


def post_brief(client: TestClient, text: str, name: str | None = None) -> dict:
    response = client.post("/briefs", content=text.encode(), headers=YAML, params={"name": name} if name else None)
    assert response.status_code == 201, response.text
    return response.json()


def finish(runner: Runner, job_id: str) -> None:
    while runner.work_once(job_id=job_id):
        pass


def fake_avatar(storage, avatar_id: str = "john", job_id: str = "train-john-0000000000000000") -> AvatarManifest:
    storage.put_bytes(f"jobs/{job_id}/train/lora.safetensors", b"not really weights")
    manifest = AvatarManifest(avatar_id=avatar_id, job_id=job_id, base_model="tiny", trigger_token=f"<{avatar_id}>",
                              lora_key=f"jobs/{job_id}/train/lora.safetensors", lora_rank=4, lora_alpha=4.0,
                              target_modules="attn")
    return AvatarRegistry(storage).deploy(manifest, f"jobs/{job_id}/train/lora.safetensors")


# ------------------------------------------------------------------------------------------ auth and spec
def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id", path)


def test_every_endpoint_but_health_needs_the_bearer_token(client):
    routes = [(route, method) for route in client.app.routes if isinstance(route, APIRoute)
              for method in route.methods]
    assert len(routes) >= 11
    for route, method in routes:
        url = _concrete(route.path)
        missing = client.request(method, url)
        wrong = client.request(method, url, headers={"Authorization": "Bearer nope"})
        basic = client.request(method, url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        if route.path == "/health":
            assert missing.status_code == 200
            continue
        for response in (missing, wrong, basic):
            assert response.status_code == 401, (method, url, response.text)
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert TOKEN not in missing.text + wrong.text
    # Outside the API's own routes only the schema and its docs page are public: they hold no data.
    other = {route.path for route in client.app.routes if not isinstance(route, APIRoute)}
    assert other <= PUBLIC_PATHS


def test_openapi_declares_the_bearer_scheme_on_every_protected_operation(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path == "/health":
                assert "security" not in operation
            else:
                assert operation["security"] == [{"bearer": []}], (method, path)
    assert {"Brief", "RenderBrief", "TrainBrief", "TrainRequest"} <= set(spec["components"]["schemas"])
    body = spec["paths"]["/train"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert spec["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"] == {
        "text/event-stream": {"schema": {"type": "string"}}}


def test_without_a_token_the_app_refuses_unless_explicitly_insecure(tmp_path):
    runner = make_runner(tmp_path / "bucket", api_token=None)
    with pytest.raises(VideostudioError) as refused:
        create_app(runner.settings, runner=runner)
    assert refused.value.code == "no_api_token"
    blank = make_runner(tmp_path / "bucket2", api_token="   ")
    with pytest.raises(VideostudioError):
        create_app(blank.settings, runner=blank)
    open_app = TestClient(create_app(runner.settings, runner=runner, allow_no_auth=True))
    assert open_app.get("/jobs").status_code == 200


def test_health_and_unknown_routes_answer_json(client):
    assert client.get("/health").json()["status"] == "ok"
    missing = client.get("/nope", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong_method = client.put("/jobs", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"


# ------------------------------------------------------------------------------------------ briefs
def test_post_brief_writes_inbox_and_creates_a_queued_job(client, runner):
    body = post_brief(client, TINY_BRIEF.format(steps=2, seed=1), name="dawn")
    assert body["created"] is True and body["kind"] == "render"
    assert body["brief_key"] == "inbox/dawn.yaml"
    assert body["manifest_key"] == f"jobs/{body['job_id']}/manifest.json"
    assert runner.storage.get_bytes("inbox/dawn.yaml") == TINY_BRIEF.format(steps=2, seed=1).encode()
    manifest = runner.store.load(body["job_id"])
    assert manifest.status.value == "queued" and manifest.input.key == "inbox/dawn.yaml"
    assert runner.queue.pending(body["job_id"]) == 1  # queued for a worker, not processed in the request
    assert manifest.stages["prepare"].attempts == 0

    again = client.post("/briefs", content=TINY_BRIEF.format(steps=2, seed=1).encode(), headers=YAML,
                        params={"name": "dawn"})
    assert again.status_code == 200 and again.json()["job_id"] == body["job_id"] and again.json()["created"] is False
    other = client.post("/briefs", content=TINY_BRIEF.format(steps=2, seed=2).encode(), headers=YAML,
                        params={"name": "dawn"})
    assert other.status_code == 409 and other.json()["code"] == "name_taken"
    assert runner.storage.get_bytes("inbox/dawn.yaml") == TINY_BRIEF.format(steps=2, seed=1).encode()


def test_post_brief_as_json_with_a_default_name(client, runner):
    response = client.post("/briefs", json={"prompt": "a red fox", "steps": 2, "width": 64, "height": 48}, headers=AUTH)
    assert response.status_code == 201, response.text
    key = response.json()["brief_key"]
    assert re.fullmatch(r"inbox/[0-9a-f]{32}\.json", key)
    assert parse_brief(runner.storage.get_bytes(key), key).prompt == "a red fox"


@pytest.mark.parametrize("name, key", [("../../etc/passwd", "inbox/passwd.yaml"), ("my brief.yml", "inbox/my-brief.yaml"),
                                       (".hidden", "inbox/hidden.yaml"), ("a/b\\c", "inbox/c.yaml")])
def test_brief_names_are_sanitised(client, name, key):
    response = client.post("/briefs", content=b"prompt: hi\n", headers=YAML, params={"name": name})
    assert response.status_code == 201 and response.json()["brief_key"] == key


@pytest.mark.parametrize("body, headers, status, code", [
    (b"prompt: [unclosed\n", YAML, 422, "invalid_yaml"),
    (b"prompt: ''\n", YAML, 422, "empty_prompt"),
    (b"prompt: hi\nsteps: 1\n", YAML, 422, "invalid_steps"),
    (b"prompt: hi\ncolour: red\n", YAML, 422, "unknown_field"),
    (b"- a list\n", YAML, 422, "invalid_brief"),
    (b"", YAML, 422, "empty_brief"),
    (b'{"prompt": ', {**AUTH, "Content-Type": "application/json"}, 422, "invalid_json"),
    (b"\xff\xfe", YAML, 422, "invalid_encoding"),
    (b"kind: train\navatar: john\n", YAML, 422, "missing_video"),
    (b"kind: train\navatar: john\nvideo: uploads/none.mp4\n", YAML, 422, "video_not_found"),
    (b"prompt: hi\navatar: nobody\n", YAML, 422, "avatar_not_found"),
    (b"prompt: hi\n", {**AUTH, "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    (b"prompt: hi\n", AUTH, 415, "unsupported_media_type"),
    (b"prompt: " + b"x" * 1_000_001, YAML, 413, "payload_too_large"),
])
def test_bad_briefs_are_refused_with_a_code(client, runner, body, headers, status, code):
    response = client.post("/briefs", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.json()["message"]
    assert not runner.storage.list_keys("inbox/") and not list(runner.store.all())


def test_bad_names_are_refused(client):
    for name in ("...", "//", "***"):
        response = client.post("/briefs", content=b"prompt: hi\n", headers=YAML, params={"name": name})
        assert response.status_code == 400 and response.json()["code"] == "invalid_name"


# ------------------------------------------------------------------------------------------ jobs
def test_list_jobs_newest_first_with_a_status_filter(client, runner):
    first = post_brief(client, "prompt: one\n", name="one")["job_id"]
    time.sleep(0.01)
    second = post_brief(client, "prompt: two\n", name="two")["job_id"]
    assert client.post(f"/jobs/{first}/cancel", headers=AUTH).status_code == 202
    jobs = client.get("/jobs", headers=AUTH).json()
    assert [j["job_id"] for j in jobs] == [second, first]
    assert jobs[0]["stage"] == "prepare" and jobs[0]["input_key"] == "inbox/two.yaml"
    assert [j["job_id"] for j in client.get("/jobs?status=cancelled", headers=AUTH).json()] == [first]
    assert [j["job_id"] for j in client.get("/jobs?status=queued", headers=AUTH).json()] == [second]
    assert client.get("/jobs?kind=train", headers=AUTH).json() == []
    assert len(client.get("/jobs?limit=1", headers=AUTH).json()) == 1
    bad = client.get("/jobs?status=sleeping", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request" and "status" in bad.json()["message"]
    assert client.get("/jobs?limit=0", headers=AUTH).status_code == 422


def test_get_job_returns_the_manifest_or_404(client):
    job_id = post_brief(client, "prompt: hi\n", name="hi")["job_id"]
    manifest = client.get(f"/jobs/{job_id}", headers=AUTH).json()
    assert manifest["job_id"] == job_id and manifest["schema_version"] == SCHEMA_VERSION and "stages" in manifest
    missing = client.get("/jobs/no-such-job", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


@pytest.mark.parametrize("path", ["/jobs/%2E%2E", "/jobs/.hidden", "/jobs/-x", "/jobs/a%20b", "/jobs/%2E%2E/cancel",
                                  "/jobs/%2E%2E/events", "/jobs/%2E%2E/deploy", "/avatars/%2E%2E", "/avatars/.x",
                                  "/jobs/" + "a" * 129])
def test_traversal_and_odd_ids_are_refused(client, path):
    method = "POST" if path.endswith(("cancel", "deploy")) else "GET"
    response = client.request(method, path, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["code"] in ("invalid_job_id", "invalid_avatar_id")
    assert client.delete("/avatars/%2E%2E", headers=AUTH).status_code == 400


@pytest.mark.parametrize("path", ["/jobs/..%2F..%2Fetc", "/jobs/a%2F..%2Fmanifest.json", "/avatars/..%2Finbox"])
def test_encoded_slashes_never_reach_a_handler(client, path):
    assert client.get(path, headers=AUTH).status_code in (400, 404)


def test_cancel_a_queued_job_then_cancel_again_is_409(client, runner):
    job_id = post_brief(client, TINY_BRIEF.format(steps=2, seed=3), name="later")["job_id"]
    response = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert runner.store.load(job_id).status.value == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and again.json()["code"] == "job_finished"
    missing = client.post("/jobs/nobody/cancel", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


def test_cancel_of_a_succeeded_job_is_409(client, runner):
    job_id = post_brief(client, TINY_BRIEF.format(steps=2, seed=5), name="done")["job_id"]
    finish(runner, job_id)
    assert runner.store.load(job_id).status.value == "succeeded"
    response = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert response.status_code == 409 and response.json()["code"] == "job_finished"


# ------------------------------------------------------------------------------------------ server-sent events
def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, event, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif line == "" and event is not None:
            events.append((event, json.loads("\n".join(data))))
            event, data = None, []
    return events


def test_events_stream_manifest_changes_and_end_when_the_job_is_done(client, runner):
    # 40 denoising steps keep the job running for several of the stream's 0.25 s polls: a polling stream
    # shows a state only if it lasts longer than a poll (a 2-step tiny render can finish within one).
    job_id = post_brief(client, TINY_BRIEF.format(steps=40, seed=7), name="streamed")["job_id"]
    started = threading.Event()

    def work() -> None:
        started.wait(10)
        time.sleep(0.3)  # let the stream send the queued manifest first
        finish(runner, job_id)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    with client.stream("GET", f"/jobs/{job_id}/events", headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        started.set()
        events = read_events(response)  # returns only because the server closes the stream
    worker.join(30)
    assert events and all(name == "manifest" for name, _ in events)
    statuses = [data["status"] for _, data in events]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert "running" in statuses and len(events) >= 3
    assert all(data["job_id"] == job_id for _, data in events)
    assert events[-1][1] == json.loads(runner.storage.get_bytes(f"jobs/{job_id}/manifest.json"))


def test_events_of_a_finished_job_are_one_manifest(client, runner):
    runner.storage.put_bytes("inbox/bad.yaml", b"prompt: hi\nwidth: 17\n")  # the API refuses it; prepare fails it
    job_id, _ = runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/bad.yaml"))
    finish(runner, job_id)
    with client.stream("GET", f"/jobs/{job_id}/events", headers=AUTH) as response:
        events = read_events(response)
    assert [(name, data["status"]) for name, data in events] == [("manifest", "failed")]
    assert events[0][1]["error"]["code"] == "invalid_dimensions"
    missing = client.get("/jobs/nobody/events", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


# ------------------------------------------------------------------------------------------ train
def test_multipart_train_upload_lands_in_uploads_and_creates_a_train_job(client, runner):
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(200_000)
    response = client.post("/train", headers=AUTH, data={"avatar": "john", "epochs": "3", "lora_rank": "8",
                                                         "webhook": json.dumps({"url": "https://example.com/h"})},
                           files={"video": ("../My Clip.MP4", video, "video/mp4")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "train" and body["created"] is True
    assert body["video_key"] == "uploads/john/My-Clip.mp4"
    assert runner.storage.get_bytes("uploads/john/My-Clip.mp4") == video
    brief = parse_brief(runner.storage.get_bytes(body["brief_key"]), body["brief_key"])
    assert isinstance(brief, TrainBrief)
    assert (brief.avatar, brief.video, brief.epochs, brief.lora_rank) == ("john", "uploads/john/My-Clip.mp4", 3, 8)
    assert str(brief.webhook.url) == "https://example.com/h"
    assert yaml.safe_load(runner.storage.get_bytes(body["brief_key"]))["epochs"] == 3  # typed, not "3"
    manifest = runner.store.load(body["job_id"])
    assert manifest.kind == "train" and manifest.status.value == "queued"
    assert list(manifest.stages) == ["prepare", "align", "train", "render"]

    again = client.post("/train", headers=AUTH, data={"avatar": "john", "epochs": "3", "lora_rank": "8",
                                                      "webhook": json.dumps({"url": "https://example.com/h"})},
                        files={"video": ("../My Clip.MP4", video, "video/mp4")})
    assert again.status_code == 200 and again.json()["job_id"] == body["job_id"]
    other = client.post("/train", headers=AUTH, data={"avatar": "john"},
                        files={"video": ("My Clip.mp4", b"other bytes", "video/mp4")})
    assert other.status_code == 409 and other.json()["code"] == "upload_exists"


def test_train_upload_errors_keep_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    runner = make_runner(tmp_path / "bucket", api_max_upload_bytes=10_000)
    client = TestClient(create_app(runner.settings, runner=runner))
    cases = [
        ({"avatar": "john"}, {"video": ("big.mp4", b"x" * 10_001, "video/mp4")}, 413, "payload_too_large"),
        ({"avatar": "john"}, {"video": ("notes.txt", b"hello", "text/plain")}, 415, "unsupported_video"),
        ({"avatar": "../x"}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "invalid_field_value"),
        ({}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "missing_field"),
        ({"avatar": "john", "epochs": "lots"}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "invalid_field_type"),
        ({"avatar": "john", "colour": "red"}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "unknown_field"),
        ({"avatar": "john", "kind": "render"}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "invalid_kind"),
        ({"avatar": "john", "webhook": "{"}, {"video": ("a.mp4", b"v", "video/mp4")}, 422, "invalid_json"),
        ({"avatar": "john"}, {"other": ("a.mp4", b"v", "video/mp4")}, 400, "invalid_multipart"),
        ({"avatar": "john"}, None, 422, "missing_video"),
    ]
    for data, files, status, code in cases:
        response = client.post("/train", headers=AUTH, data=data, files=files or {"x": (None, "y")})
        assert (response.status_code, response.json()["code"]) == (status, code), (data, response.text)
    broken = client.post("/train", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=zzz"},
                         content=b"--zzz\r\ngarbage")
    assert broken.status_code == 400
    declared = client.post("/train", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=zzz",
                                              "Content-Length": str(50_000_000)}, content=b"--zzz--\r\n")
    assert declared.status_code in (400, 413)
    assert client.post("/train", headers={**AUTH, "Content-Type": "text/csv"}, content=b"a,b").status_code == 415
    assert not runner.storage.list_keys("uploads/") and not runner.storage.list_keys("inbox/")
    assert not list(runner.store.all())
    assert not list((tmp_path / "tmp").iterdir())  # temp files of refused uploads are gone


def test_json_train_names_a_video_already_in_the_bucket(client, runner):
    runner.storage.put_bytes("uploads/ann/ann.mp4", b"video bytes")
    response = client.post("/train", headers=AUTH, json={"avatar": "ann", "video": "uploads/ann/ann.mp4", "epochs": 2})
    assert response.status_code == 201, response.text
    brief = parse_brief(runner.storage.get_bytes(response.json()["brief_key"]), "b.yaml")
    assert (brief.kind, brief.avatar, brief.video, brief.epochs) == ("train", "ann", "uploads/ann/ann.mp4", 2)
    for body, code in [({"avatar": "ann", "video": "uploads/none.mp4"}, "video_not_found"),
                       ({"avatar": "ann", "video": "inbox/ann.mp4"}, "invalid_video_key"),
                       ({"avatar": "ann", "video": "uploads/../../etc/passwd"}, "invalid_key"),
                       ({"avatar": "ann"}, "missing_video"),
                       ({"video": "uploads/ann/ann.mp4"}, "missing_field"),
                       ({"avatar": "ann", "video": "uploads/ann/ann.mp4", "kind": "render"}, "invalid_kind"),
                       ({"avatar": "ann", "video": "uploads/ann/ann.mp4", "backend": "nope"}, "unknown_backend")]:
        refused = client.post("/train", headers=AUTH, json=body)
        assert refused.status_code == 422 and refused.json()["code"] == code, (body, refused.text)
    assert client.post("/train", headers=AUTH, json=["a"]).status_code == 422
    bad_json = client.post("/train", headers={**AUTH, "Content-Type": "application/json"}, content=b"{")
    assert bad_json.status_code == 422 and bad_json.json()["code"] == "invalid_json"


# ------------------------------------------------------------------------------------------ deploy and avatars
def test_deploy_refuses_jobs_that_made_no_avatar(client, runner):
    render_job = post_brief(client, "prompt: hi\n", name="r")["job_id"]
    response = client.post(f"/jobs/{render_job}/deploy", headers=AUTH)
    assert response.status_code == 409 and response.json()["code"] == "not_a_train_job"
    runner.storage.put_bytes("uploads/ann/ann.mp4", b"video bytes")
    train_job = client.post("/train", headers=AUTH, json={"avatar": "ann", "video": "uploads/ann/ann.mp4"}).json()["job_id"]
    response = client.post(f"/jobs/{train_job}/deploy", headers=AUTH)
    assert response.status_code == 409 and response.json()["code"] == "training_not_finished"
    missing = client.post("/jobs/nobody/deploy", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


def test_deploy_a_succeeded_train_job(client, runner):
    runner.storage.put_bytes("uploads/ann/ann.mp4", b"video bytes")
    job_id = client.post("/train", headers=AUTH, json={"avatar": "ann", "video": "uploads/ann/ann.mp4"}).json()["job_id"]
    prefix = f"jobs/{job_id}/train/"
    runner.storage.put_bytes(prefix + "lora.safetensors", b"weights")
    avatar = AvatarManifest(avatar_id="ann", job_id=job_id, base_model="tiny", trigger_token="<ann>",
                            lora_key=prefix + "lora.safetensors", lora_rank=4, lora_alpha=4.0, target_modules="attn")
    runner.storage.put_bytes(prefix + "avatar.json", avatar.model_dump_json().encode())

    def trained(m):  # what a succeeded train stage leaves in the manifest
        m.stages["train"].status = StageStatus.succeeded
        m.stages["train"].outputs = {"avatar": prefix + "avatar.json", "lora": prefix + "lora.safetensors"}
        preview = resolve_render_plan(RenderBrief(prompt="<ann>", model="tiny"), Settings())
        m.stages["train"].handoff = TrainOutput(avatar_id="ann", avatar_key=prefix + "avatar.json",
                                                weights_key=prefix + "lora.safetensors", deployed=False,
                                                preview=preview).model_dump(mode="json")

    runner.store.update(job_id, trained)
    response = client.post(f"/jobs/{job_id}/deploy", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["avatar_id"] == "ann" and response.json()["lora_key"] == "avatars/ann/lora.safetensors"
    assert runner.storage.get_bytes("avatars/ann/lora.safetensors") == b"weights"
    assert [a["avatar_id"] for a in client.get("/avatars", headers=AUTH).json()] == ["ann"]


def test_list_get_and_delete_avatars(client, runner):
    assert client.get("/avatars", headers=AUTH).json() == []
    fake_avatar(runner.storage, "john")
    fake_avatar(runner.storage, "ann")
    listed = client.get("/avatars", headers=AUTH).json()
    assert [a["avatar_id"] for a in listed] == ["ann", "john"] and listed[1]["trigger_token"] == "<john>"
    assert client.get("/avatars/john", headers=AUTH).json()["lora_key"] == "avatars/john/lora.safetensors"
    deleted = client.delete("/avatars/john", headers=AUTH)
    assert deleted.status_code == 204 and deleted.content == b""
    assert not runner.storage.list_keys("avatars/john/")
    assert [a["avatar_id"] for a in client.get("/avatars", headers=AUTH).json()] == ["ann"]
    for response in (client.delete("/avatars/john", headers=AUTH), client.get("/avatars/john", headers=AUTH)):
        assert response.status_code == 404 and response.json()["code"] == "avatar_not_found"


# ------------------------------------------------------------------------------------------ the CLI
cli = CliRunner()


def test_serve_refuses_to_start_open(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEOSTUDIO_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    result = cli.invoke(cli_app, ["serve", "--bucket", str(tmp_path / "b")])
    assert result.exit_code == 2 and "VIDEOSTUDIO_API_TOKEN" in result.output
    result = cli.invoke(cli_app, ["serve", "--bucket", str(tmp_path / "b"), "--insecure-no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "insecure_bind" in result.output


def test_avatars_cli_list_deploy_delete(tmp_path):
    bucket = tmp_path / "bucket"
    storage = LocalStorage(bucket)
    fake_avatar(storage, "john")
    listing = cli.invoke(cli_app, ["avatars", "list", "--bucket", str(bucket), "--json"])
    assert listing.exit_code == 0 and [a["avatar_id"] for a in json.loads(listing.stdout)] == ["john"]
    assert "john" in cli.invoke(cli_app, ["avatars", "list", "--bucket", str(bucket)]).stdout
    refused = cli.invoke(cli_app, ["avatars", "deploy", "nobody", "--bucket", str(bucket)])
    assert refused.exit_code == 2 and "job_not_found" in refused.output
    assert cli.invoke(cli_app, ["avatars", "delete", "john", "--bucket", str(bucket)], input="n\n").exit_code == 1
    assert storage.exists("avatars/john/manifest.json")
    deleted = cli.invoke(cli_app, ["avatars", "delete", "john", "--bucket", str(bucket), "--yes"])
    assert deleted.exit_code == 0 and not storage.list_keys("avatars/")
    again = cli.invoke(cli_app, ["avatars", "delete", "john", "--bucket", str(bucket), "--yes"])
    assert again.exit_code == 2 and "avatar_not_found" in again.output
    traversal = cli.invoke(cli_app, ["avatars", "delete", "../jobs", "--bucket", str(bucket), "--yes"])
    assert traversal.exit_code == 2


@pytest.mark.slow
def test_videostudio_serve_is_a_real_server(tmp_path):
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    proc, base = start_serve(tmp_path, log_path, env, timeout_s=60)
    try:
        assert httpx.get(f"{base}/jobs").status_code == 401
        created = httpx.post(f"{base}/briefs", content=b"prompt: hi\n", params={"name": "served"},
                             headers={**AUTH, "Content-Type": "application/yaml"})
        assert created.status_code == 201, created.text
        jobs = httpx.get(f"{base}/jobs", headers=AUTH).json()
        assert [j["job_id"] for j in jobs] == [created.json()["job_id"]]
        assert (tmp_path / "bucket" / "inbox" / "served.yaml").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert TOKEN not in log_path.read_text()
