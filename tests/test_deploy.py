"""The Modal app, offline: its functions' resources through Modal's own inspection, and the
stage bodies run in process with `.local()` against a temp bucket.

No Modal token and no network here: `.spawn()`, Volume commit/reload and `.remote()` need
Modal's servers, so the one thing replaced is the spawn boundary (`deploy.spawn_target`):
a recorder keeps each spawn, and the test delivers it by calling that function's `.local()`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from conftest import REPO, TEST_SECRET, TINY_BRIEF
from core.queue.spawn import SpawnQueue
from functions.routes import default_pipeline
from schemas.errors import VideostudioError
from schemas.events import TaskMessage

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
deploy = importlib.import_module("deploy")

# `.local()` warns that a function defined with volumes runs without them: that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")


class SpawnRecorder:
    """Stands in for Modal's spawn: records (function name, args) in order."""

    def __init__(self, log: list | None = None) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.log = log if log is not None else []

    def target(self, name: str):
        recorder = self

        class Handle:
            def spawn(self, *args):
                recorder.calls.append((name, args))
                recorder.log.append(("spawn", name))

        return Handle()

    def deliver_all(self, limit: int = 50) -> list[tuple[str, dict]]:
        """Run every recorded spawn with `.local()`, including those the runs spawn, in order."""
        results = []
        for _ in range(limit):
            if not self.calls:
                return results
            name, args = self.calls.pop(0)
            results.append((name, deploy.FUNCTIONS[name].local(*args)))
        raise AssertionError(f"still spawning after {limit} calls: {self.calls[:5]}")


@pytest.fixture
def offline_app(tmp_path, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("VIDEOSTUDIO_BUCKET", str(bucket))
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_SECRET", TEST_SECRET)
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_BACKOFF_BASE_S", "0.05")
    monkeypatch.setattr(deploy, "_runners", {})
    recorder = SpawnRecorder()
    monkeypatch.setattr(deploy, "spawn_target", recorder.target)
    return bucket, recorder


def drop(bucket: Path, name: str, text: str) -> None:
    (bucket / "inbox").mkdir(parents=True, exist_ok=True)
    (bucket / "inbox" / name).write_text(text)


# ---------------------------------------------------------------------------- inspection
def test_each_function_declares_its_gpu_timeout_retries_volumes_secret_and_schedule():
    info = {name: fn.info() for name, fn in deploy.FUNCTIONS.items()}
    bucket = {"/bucket"}

    assert info["run_prepare"].gpus == []
    assert info["run_prepare"].timeout == 10 * deploy.MINUTES
    assert info["run_prepare"].max_retries == 2
    assert set(info["run_prepare"].volumes) == bucket

    assert info["run_align"].gpus == []  # MTCNN on downscaled keyframes runs on CPU
    assert info["run_align"].timeout == 30 * deploy.MINUTES and info["run_align"].max_retries == 2
    assert set(info["run_align"].volumes) == bucket

    assert info["run_train"].gpus == [("H100", 1), ("A100-80GB", 1)]  # H100, falling back to A100-80GB
    assert info["run_train"].timeout == 12 * deploy.HOURS and info["run_train"].max_retries == 2
    assert set(info["run_train"].volumes) == {"/bucket", "/models"}  # checkpoints live in the bucket

    assert info["run_render"].gpus == [("H100", 1), ("A100-80GB", 1)]
    assert info["run_render"].timeout == 2 * deploy.HOURS
    assert info["run_render"].max_retries == 2
    assert set(info["run_render"].volumes) == {"/bucket", "/models"}

    assert info["run_webhook"].gpus == [] and info["run_webhook"].max_retries == 2
    assert info["run_webhook"].timeout == 2 * deploy.MINUTES
    assert set(info["run_webhook"].volumes) == bucket

    assert info["wake_later"].volumes == {}  # it only waits and sends
    assert info["wake_later"].timeout > deploy.MAX_WAIT_S

    assert info["reconcile"].schedule == "Period(minutes=2)"
    assert info["reconcile"].gpus == [] and set(info["reconcile"].volumes) == bucket
    assert all(i.schedule is None for name, i in info.items() if name != "reconcile")

    for name in ("run_prepare", "run_align", "run_train", "run_render", "run_webhook", "reconcile"):
        assert info[name].volumes["/bucket"].name == deploy.BUCKET_VOLUME
        assert not info[name].volumes["/bucket"].read_only
    assert all(i.secrets == ["modal.Secret.from_name('videostudio')"] for i in info.values())


def test_every_stage_of_the_routing_table_has_a_function():
    assert set(default_pipeline().stages) <= set(deploy.STAGE_FUNCTIONS)
    assert set(deploy.STAGE_FUNCTIONS.values()) | {deploy.WEBHOOK_FUNCTION, deploy.DELAY_FUNCTION} <= set(deploy.FUNCTIONS)


def test_modal_is_imported_only_by_deploy_and_lazily_by_the_spawn_queue():
    # Nothing that deploy.py imports pulls modal in at import time.
    code = ("import sys, core.queue.spawn, core.runner, functions.routes, triggers.reconciler, triggers.cli, "
            "triggers.wiring; print('modal' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
    # And in the source: only deploy.py at top level, only core/queue/spawn.py inside a function.
    importing = re.compile(r"^(\s*)(import modal\b|from modal\b)", re.M)
    for package in ("core", "schemas", "functions", "triggers"):
        for path in (REPO / package).rglob("*.py"):
            for indent, _ in importing.findall(path.read_text()):
                assert path.relative_to(REPO).as_posix() == "core/queue/spawn.py" and indent, path


# ---------------------------------------------------------------------------- .local() runs
def test_reconcile_prepare_render_and_webhook_bodies_run_locally(offline_app, webhook_receiver):
    bucket, recorder = offline_app
    drop(bucket, "dawn.yaml", TINY_BRIEF.format(steps=2, seed=3)
         + f"webhook: {{url: '{webhook_receiver.url}', events: [stage.succeeded, job.succeeded]}}\n")

    # 1. the scheduled reconcile finds the brief in inbox/ and sends its first stage to run_prepare
    assert deploy.reconcile.local() is None
    assert [name for name, _ in recorder.calls] == ["run_prepare"]
    message, attempt = recorder.calls[0][1]
    assert attempt == 1 and message["stage"] == "prepare"
    job_id = message["job_id"]

    # 2. prepare runs through the runner, commits, then wakes render and the stage webhook
    name, args = recorder.calls.pop(0)
    summary = deploy.run_prepare.local(*args)
    assert summary == {"job_id": job_id, "action": "stage", "stage": "prepare", "status": "running",
                       "stage_status": "succeeded"}
    assert sorted(name for name, _ in recorder.calls) == ["run_render", "run_webhook"]

    # 3. everything else: render (tiny Mochi on CPU here), then every webhook delivery
    results = recorder.deliver_all()
    render = [r for n, r in results if n == "run_render"]
    assert render == [{"job_id": job_id, "action": "stage", "stage": "render", "status": "succeeded",
                       "stage_status": "succeeded"}]
    manifest = json.loads((bucket / "jobs" / job_id / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert (bucket / manifest["outputs"]["video"]).stat().st_size > 0
    assert {d["event"]: d["status"] for d in manifest["webhooks"]} == {"stage.succeeded": "delivered",
                                                                        "job.succeeded": "delivered"}
    assert len(webhook_receiver.received) == 3  # prepare's and render's stage.succeeded, then job.succeeded
    for hook in webhook_receiver.received:
        Webhook(TEST_SECRET).verify(hook.body, hook.headers)

    # 4. a second reconcile pass has nothing to re-send and starts no second job
    deploy.reconcile.local()
    assert recorder.calls == []


def test_a_message_sent_to_the_wrong_function_is_passed_on(offline_app):
    _, recorder = offline_app
    message = TaskMessage(job_id="j-1", stage="render").model_dump(mode="json")
    assert deploy.run_prepare.local(message, 2) == {"job_id": "j-1", "forwarded_to": "run_render"}
    assert recorder.calls == [("run_render", (message, 2))]


def test_a_duplicate_message_is_forwarded_to_the_current_stage_and_then_does_nothing(offline_app):
    # At least once: a copy of prepare's message (a Modal retry, a reconcile re-send) arriving after
    # prepare committed wakes the current stage again; the later copy of render finds the job done.
    bucket, recorder = offline_app
    drop(bucket, "twice.yaml", TINY_BRIEF.format(steps=2, seed=2))
    deploy.reconcile.local()
    prepare_args = recorder.calls.pop(0)[1]
    deploy.run_prepare.local(*prepare_args)
    deploy.run_prepare.local(*prepare_args)
    assert [name for name, _ in recorder.calls] == ["run_render", "run_render"]
    first, second = (deploy.run_render.local(*args) for _, args in recorder.calls)
    assert first["status"] == second["status"] == "succeeded"
    manifest = json.loads((bucket / "jobs" / first["job_id"] / "manifest.json").read_text())
    assert {name: stage["attempts"] for name, stage in manifest["stages"].items()} == {"prepare": 1, "render": 1}


def test_in_a_container_the_volume_reloads_first_and_commits_before_the_next_spawn(offline_app, monkeypatch):
    bucket, recorder = offline_app
    events: list = []
    recorder.log = events

    class VolumeRecorder:
        def reload(self):
            events.append(("reload",))

        def commit(self):
            events.append(("commit",))

    monkeypatch.setattr(deploy, "bucket_volume", VolumeRecorder())
    monkeypatch.setattr(deploy.modal, "is_local", lambda: False)  # as inside a Modal container
    drop(bucket, "a.yaml", TINY_BRIEF.format(steps=2, seed=1))
    deploy.reconcile.local()
    assert events == [("reload",), ("commit",), ("spawn", "run_prepare")]
    events.clear()
    deploy.run_prepare.local(*recorder.calls.pop(0)[1])
    assert events == [("reload",), ("commit",), ("spawn", "run_render")]


def test_volume_calls_are_skipped_outside_a_container(monkeypatch):
    class Exploding:
        def reload(self):
            raise AssertionError("reload needs Modal's servers")

        commit = reload

    monkeypatch.setattr(deploy, "bucket_volume", Exploding())
    deploy.reload_bucket()
    deploy.commit_bucket()


def test_wake_later_waits_then_sends_and_chains_long_waits(offline_app, monkeypatch):
    _, recorder = offline_app
    monkeypatch.setattr(deploy, "MAX_WAIT_S", 0.05)
    message = TaskMessage(job_id="j-2", action="webhook", webhook_id="w-1").model_dump(mode="json")
    deploy.wake_later.local(message, 3, 0.2)
    assert recorder.calls == [("wake_later", (message, 3, pytest.approx(0.15)))]
    recorder.calls.clear()
    deploy.wake_later.local(message, 3, 0.01)
    assert recorder.calls == [("run_webhook", (message, 3))]


# ---------------------------------------------------------------------------- the spawn queue
def spawn_queue(recorder: SpawnRecorder, **kwargs) -> SpawnQueue:
    return SpawnQueue(app_name="videostudio", stage_functions={"prepare": "run_prepare", "render": "run_render"},
                      webhook_function="run_webhook", resolve=recorder.target, **kwargs)


def test_spawn_queue_semantics():
    recorder = SpawnRecorder()
    queue = spawn_queue(recorder, delay_function="wake_later", max_attempts=3)
    render = TaskMessage(job_id="j", stage="render")
    assert queue.put(render) and queue.put(render)  # no dedupe possible: both are sent
    assert recorder.calls == [("run_render", (render.model_dump(mode="json"), 1))] * 2
    assert queue.get(lease_s=10) is None and queue.pending() == 0 and queue.pending("j") == 0

    lease = SpawnQueue.lease(render.model_dump(mode="json"), attempt=1)
    assert lease.message == render and queue.ack(lease) and queue.extend(lease, lease_s=5)
    recorder.calls.clear()
    assert queue.nack(lease) and recorder.calls == [("run_render", (render.model_dump(mode="json"), 2))]
    recorder.calls.clear()
    assert queue.nack(lease, delay_s=4.0)  # delayed: the waiting function, never a sleep here
    assert recorder.calls == [("wake_later", (render.model_dump(mode="json"), 2, 4.0))]
    recorder.calls.clear()
    assert not queue.nack(SpawnQueue.lease(render, attempt=3)) and recorder.calls == []  # dead letter

    # A stage nobody wired: nothing is sent (an error is logged) rather than aborting a reconcile pass.
    unwired = TaskMessage(job_id="j", stage="train")
    assert queue.put(unwired) is False and recorder.calls == []
    with pytest.raises(VideostudioError) as excinfo:
        queue.function_for(unwired)
    assert excinfo.value.code == "no_function_for_stage"


def test_spawn_queue_without_a_delay_function_leaves_delays_to_the_reconciler():
    recorder = SpawnRecorder()
    queue = spawn_queue(recorder)
    assert queue.put(TaskMessage(job_id="j", stage="prepare"), delay_s=2.0) is False
    assert recorder.calls == []


def test_hold_sends_after_a_clean_exit_and_drops_on_error():
    recorder = SpawnRecorder()
    queue = spawn_queue(recorder)
    message = TaskMessage(job_id="j", stage="prepare")
    with queue.hold() as held:
        queue.put(message)
        assert recorder.calls == [] and len(held) == 1
    assert [name for name, _ in recorder.calls] == ["run_prepare"]
    recorder.calls.clear()
    with pytest.raises(RuntimeError), queue.hold():
        queue.put(message)
        raise RuntimeError("commit failed")
    assert recorder.calls == []
    queue.put(message)  # not holding any more
    assert len(recorder.calls) == 1


def test_default_lookup_is_a_lazy_modal_function_by_name():
    queue = SpawnQueue(app_name="videostudio", stage_functions={"prepare": "run_prepare"}, webhook_function="run_webhook")
    import modal

    handle = queue._function("run_prepare")
    assert isinstance(handle, modal.Function)  # looked up in the deployed app on first use, not now


# ---------------------------------------------------------------------------- the CLI verb
def test_deploy_verb_explains_a_missing_token_or_modal_cli(tmp_path, monkeypatch):
    from triggers import cli as cli_module

    cli = CliRunner()
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    result = cli.invoke(cli_module.app, ["deploy"])
    assert result.exit_code == 2 and "no Modal token" in result.output

    (tmp_path / "modal.toml").write_text('[default]\ntoken_id = "ak-x"\ntoken_secret = "as-y"\n')
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "modal.toml"))
    assert cli_module._has_modal_token()

    monkeypatch.setattr(cli_module, "_modal_cli", lambda: None)
    result = cli.invoke(cli_module.app, ["deploy"])
    assert result.exit_code == 2 and "`modal` command is not installed" in result.output


# ---------------------------------------------------------------------------- S3 bucket and the web endpoint
def test_the_web_endpoint_serves_the_http_app():
    info = {name: fn.info() for name, fn in deploy.FUNCTIONS.items()}
    web = info["web"]
    assert web.web_info is not None  # an ASGI web endpoint: triggers.api.create_app
    assert web.gpus == [] and web.timeout == 15 * deploy.MINUTES and web.schedule is None
    assert web.concurrency_info.max_inputs == deploy.WEB_CONCURRENT_INPUTS
    assert web.secrets == ["modal.Secret.from_name('videostudio')"]
    assert all(i.web_info is None for name, i in info.items() if name != "web")
    # weights are cached in a Volume for the GPU stages; the bucket itself is S3 when the Secret says so
    assert info["run_render"].volumes["/models"].name == deploy.MODELS_VOLUME


@pytest.fixture
def s3_app(moto_server, s3_env, monkeypatch):
    """The app as it runs with VIDEOSTUDIO_BUCKET=s3://… in its Secret, inside a container (Volume calls explode)."""
    s3_env(moto_server)
    bucket = moto_server.new_bucket("modal")
    monkeypatch.setenv("VIDEOSTUDIO_BUCKET", f"s3://{bucket}/studio")
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_SECRET", TEST_SECRET)
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_BACKOFF_BASE_S", "0.05")
    monkeypatch.setenv("VIDEOSTUDIO_API_TOKEN", "api-token")
    monkeypatch.setenv("VIDEOSTUDIO_EVENTS_SECRET", "events-secret")
    monkeypatch.setattr(deploy, "_runners", {})
    recorder = SpawnRecorder()
    monkeypatch.setattr(deploy, "spawn_target", recorder.target)

    class Exploding:
        def reload(self):
            raise AssertionError("an S3 deployment never touches the bucket Volume")

        commit = reload

    monkeypatch.setattr(deploy, "bucket_volume", Exploding())
    monkeypatch.setattr(deploy.modal, "is_local", lambda: False)  # as inside a Modal container
    return bucket, recorder, moto_server.client()


def test_with_an_s3_bucket_the_stages_run_on_s3_without_the_volume(s3_app, webhook_receiver):
    bucket, recorder, s3 = s3_app
    assert not deploy.uses_volume()
    brief = TINY_BRIEF.format(steps=2, seed=8) + f"webhook: {{url: '{webhook_receiver.url}', events: [job.succeeded]}}\n"
    s3.put_object(Bucket=bucket, Key="studio/inbox/dawn light.yaml", Body=brief.encode())

    deploy.reconcile.local()  # the scheduled scan lists inbox/ on S3
    assert [name for name, _ in recorder.calls] == ["run_prepare"]
    results = recorder.deliver_all()
    [render] = [r for name, r in results if name == "run_render"]
    assert render["status"] == "succeeded"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"studio/jobs/{render['job_id']}/manifest.json")["Body"].read())
    assert manifest["status"] == "succeeded" and manifest["input"]["key"] == "inbox/dawn light.yaml"
    assert s3.head_object(Bucket=bucket, Key=f"studio/{manifest['outputs']['video']}")["ContentLength"] > 0
    [hook] = webhook_receiver.received
    payload = Webhook(TEST_SECRET).verify(hook.body, hook.headers)
    assert payload["data"]["output_urls"]["video"].startswith(os.environ["AWS_ENDPOINT_URL"])
    assert "X-Amz-Signature=" in payload["data"]["output_urls"]["video"]


def test_the_web_endpoint_takes_bucket_notifications_and_spawns_the_first_stage(s3_app):
    from fastapi.testclient import TestClient

    bucket, recorder, s3 = s3_app
    s3.put_object(Bucket=bucket, Key="studio/inbox/from event.yaml", Body=TINY_BRIEF.format(steps=2, seed=9).encode())
    notification = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                 "eventTime": "2026-11-12T00:00:00.000Z",
                                 "s3": {"bucket": {"name": bucket},
                                        "object": {"key": "studio/inbox/from+event.yaml", "size": 1}}}]}
    with TestClient(deploy.web.local()) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/events", json=notification).status_code == 401
        response = client.post("/events", json=notification, headers={"Authorization": "Bearer events-secret"})
        assert response.status_code == 200, response.text
        [submitted] = response.json()["submitted"]
        assert submitted["key"] == "inbox/from event.yaml" and submitted["created"]
        assert recorder.calls == [("run_prepare", ({"job_id": submitted["job_id"], "action": "stage",
                                                    "stage": "prepare", "webhook_id": None}, 1))]
        jobs = client.get("/jobs", headers={"Authorization": "Bearer api-token"}).json()
        assert [j["job_id"] for j in jobs] == [submitted["job_id"]]
