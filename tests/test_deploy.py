"""The Modal app, offline: its functions' resources through Modal's own inspection, and the
stage bodies run in process with `.local()` against a temp bucket; the per-backend routing on
in-memory manifests; the image's lock file against pyproject.toml.

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
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from conftest import REPO, TEST_SECRET, TINY_BRIEF
from core.jobs import ManifestStore, new_manifest
from core.queue.spawn import SpawnQueue
from core.settings import Settings
from core.storage import open_storage
from functions.routes import BACKEND_FUNCTIONS, ROUTED_STAGES, default_pipeline, stage_backend, stage_function
from schemas.brief import InfiniteTalkOptions, RenderBrief, TrainBrief
from schemas.errors import VideostudioError
from schemas.events import TaskMessage
from schemas.handoff import RenderPrepared, TrainOutput
from schemas.manifest import InputRecord, JobManifest, StageStatus
from schemas.plan import RenderPlan, TalkingPlan
from schemas.speech import PreparedSpeech

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
            results.append((name, deploy.app_handle(name).local(*args)))
        raise AssertionError(f"still spawning after {limit} calls: {self.calls[:5]}")


@pytest.fixture
def offline_app(tmp_path, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("VIDEOSTUDIO_BUCKET", str(bucket))
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_SECRET", TEST_SECRET)
    monkeypatch.setenv("VIDEOSTUDIO_WEBHOOK_BACKOFF_BASE_S", "0.05")
    monkeypatch.setenv(deploy.INFINITETALK_PRELOAD_ENV, "0")  # a class method's .local() must not load 14B weights
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
    # every per-backend function of functions/routes.py is a method of one of the app's classes
    assert set(BACKEND_FUNCTIONS.values()) == {deploy.INFINITETALK_TRAIN, deploy.INFINITETALK_RENDER}
    for (_, stage), name in BACKEND_FUNCTIONS.items():
        assert stage in default_pipeline().stages
        assert isinstance(deploy.app_handle(name), deploy.modal.Function), name


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
    assert recorder.calls == [("wake_later", (message, 3, pytest.approx(0.15), "run_webhook"))]
    recorder.calls.clear()
    deploy.wake_later.local(message, 3, 0.01)
    assert recorder.calls == [("run_webhook", (message, 3))]


def test_wake_later_sends_to_the_function_chosen_before_the_wait(offline_app, monkeypatch):
    # wake_later has no bucket to route with: the sender's choice travels with the message.
    _, recorder = offline_app
    monkeypatch.setattr(deploy, "MAX_WAIT_S", 0.05)
    message = TaskMessage(job_id="j-3", stage="render").model_dump(mode="json")
    deploy.wake_later.local(message, 2, 0.2, "InfiniteTalk.render")
    assert recorder.calls == [("wake_later", (message, 2, pytest.approx(0.15), "InfiniteTalk.render"))]
    recorder.calls.clear()
    deploy.wake_later.local(message, 2, 0.01, "InfiniteTalk.render")
    assert recorder.calls == [("InfiniteTalk.render", (message, 2))]
    recorder.calls.clear()
    deploy.wake_later.local(message, 2, 0.01)  # a message spawned before the function argument existed
    assert recorder.calls == [("run_render", (message, 2))]


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
    assert recorder.calls == [("wake_later", (render.model_dump(mode="json"), 2, 4.0, "run_render"))]
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
                                                    "stage": "prepare", "webhook_id": None, "lane": None}, 1))]
        jobs = client.get("/jobs", headers={"Authorization": "Bearer api-token"}).json()
        assert [j["job_id"] for j in jobs] == [submitted["job_id"]]


# ---------------------------------------------------------------------------- per-backend GPU functions
def test_the_infinitetalk_class_declares_its_gpus_timeout_retries_volumes_and_secret():
    for method in ("train", "render"):
        info = getattr(deploy.InfiniteTalk(), method).info()
        assert info.gpus == [("H100", 1), ("A100-80GB", 1)]  # bf16 14B: 80 GB, H100 first
        assert info.timeout == 12 * deploy.HOURS and info.max_retries == 2
        assert {path: volume.name for path, volume in info.volumes.items()} == {
            "/bucket": deploy.BUCKET_VOLUME, "/models": deploy.MODELS_VOLUME}  # weights: the HF cache Volume
        assert info.secrets == ["modal.Secret.from_name('videostudio')"] and info.schedule is None
    assert deploy.app_handle("InfiniteTalk.render").info().gpus == [("H100", 1), ("A100-80GB", 1)]
    with pytest.raises(KeyError):
        deploy.app_handle("NoSuchClass.render")


def test_the_infinitetalk_gpus_can_be_chosen_when_deploying():
    assert deploy.gpu_list(None, ["H100"]) == ["H100"] and deploy.gpu_list(" ", ["H100"]) == ["H100"]
    assert deploy.gpu_list("L40S, A100-40GB,", ["H100"]) == ["L40S", "A100-40GB"]
    code = "import deploy; print(deploy.InfiniteTalk().render.info().gpus, deploy.run_render.info().gpus)"
    env = {**os.environ, "VIDEOSTUDIO_INFINITETALK_GPUS": "L40S,L4"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert out.stdout.strip() == "[('L40S', 1), ('L4', 1)] [('H100', 1), ('A100-80GB', 1)]"  # only the class changes


def test_the_class_methods_hand_their_message_to_handle(monkeypatch):
    monkeypatch.setenv(deploy.INFINITETALK_PRELOAD_ENV, "0")
    calls = []
    monkeypatch.setattr(deploy, "handle", lambda name, message, attempt: calls.append((name, message, attempt))
                        or {"ran": name})
    message = TaskMessage(job_id="j-4", stage="train").model_dump(mode="json")
    assert deploy.InfiniteTalk().train.local(message, 3) == {"ran": "InfiniteTalk.train"}
    assert deploy.InfiniteTalk().render.local(message) == {"ran": "InfiniteTalk.render"}
    assert calls == [("InfiniteTalk.train", message, 3), ("InfiniteTalk.render", message, 1)]


def test_a_container_loads_the_default_models_once_unless_told_not_to(monkeypatch):
    import functions.models.infinitetalk_loading as loading

    loads = []
    monkeypatch.setattr(loading, "load_models", lambda options, *, device, dtype=None: loads.append((options, device)))
    monkeypatch.setattr(deploy, "handle", lambda *args: {})
    monkeypatch.delenv(deploy.INFINITETALK_PRELOAD_ENV, raising=False)
    message = TaskMessage(job_id="j-5", stage="render").model_dump(mode="json")
    container = deploy.InfiniteTalk()
    container.render.local(message)
    container.train.local(message)
    container.render.local(message)
    assert loads == [(InfiniteTalkOptions(), "cuda")]  # @modal.enter: once per container, the default checkpoint

    loads.clear()
    for off in ("0", "false", "off"):
        monkeypatch.setenv(deploy.INFINITETALK_PRELOAD_ENV, off)
        deploy.InfiniteTalk().render.local(message)
    assert loads == []

    def unavailable(options, *, device, dtype=None):
        raise OSError("no weights in the cache")

    monkeypatch.setenv(deploy.INFINITETALK_PRELOAD_ENV, "1")
    monkeypatch.setattr(loading, "load_models", unavailable)
    assert deploy.InfiniteTalk().render.local(message) == {}  # logged; the stage loads (and reports) itself


def _speech() -> PreparedSpeech:
    return PreparedSpeech(source="script", voice="en_US-joe-medium", characters=12, sample_rate=16000, duration_s=1.0,
                          lufs=-23.0, source_lufs=-20.0, gain_db=-3.0, speech_share=0.9, key="jobs/j/prepare/speech.wav")


def _render_plan(backend: str | None = None) -> RenderPlan:
    return RenderPlan(prompt="a lighthouse at dawn", negative_prompt="", preset="fast", model="tiny", seed=1, steps=2,
                      fps=24, width=64, height=64, num_frames=7, frames_requested=7, frames_snapped=False,
                      duration_s=0.3, guidance_scale=4.5, quantization="bf16", avatar="ann" if backend else None,
                      backend=backend, weights_key="avatars/ann/lora.safetensors" if backend else None,
                      random_weights=True)


def _talking_plan(backend: str) -> TalkingPlan:
    return TalkingPlan(avatar="ann", backend=backend, avatar_key="avatars/ann/avatar.json", speech=_speech(), fps=25,
                       num_frames=25, duration_s=1.0, seed=1)


def _train_job(backend: str, *, trained: bool = True) -> JobManifest:
    manifest = new_manifest(f"train-{backend}", "train", InputRecord(key="inbox/ann.yaml"),
                            ["prepare", "align", "train", "render"])
    manifest.request = TrainBrief(kind="train", avatar="ann", video="uploads/ann.mp4", backend=backend)
    if trained:
        preview = _render_plan(backend) if backend == "mochi-lora" else _talking_plan(backend)
        manifest.stages["train"].handoff = TrainOutput(
            avatar_id="ann", avatar_key="jobs/x/train/avatar.json", weights_key="jobs/x/train/lora.safetensors",
            deployed=True, preview=preview).model_dump(mode="json")
    return manifest


def _render_job(job_id: str, plan: RenderPlan | TalkingPlan | None) -> JobManifest:
    manifest = new_manifest(job_id, "render", InputRecord(key=f"inbox/{job_id}.yaml"), ["prepare", "render"])
    talking = isinstance(plan, TalkingPlan)
    manifest.request = (RenderBrief(avatar="ann", script="Hello there!") if talking
                        else RenderBrief(prompt="a lighthouse at dawn"))
    if plan is not None:
        manifest.stages["prepare"].status = StageStatus.succeeded
        manifest.stages["prepare"].handoff = RenderPrepared(plan=plan).model_dump(mode="json")
        manifest.stages["render"].status = StageStatus.queued
    return manifest


class MemoryStore:
    """The ManifestStore's `load`, over manifests in memory, counting the reads (one GET each on S3)."""

    def __init__(self, *manifests: JobManifest) -> None:
        self.manifests = {m.job_id: m for m in manifests}
        self.loads: list[str] = []

    def load(self, job_id: str) -> JobManifest | None:
        self.loads.append(job_id)
        return self.manifests.get(job_id)


ROUTING = [
    pytest.param(_train_job("mochi-lora"), {"train": "run_train", "render": "run_render"}, id="train-mochi-lora"),
    pytest.param(_train_job("wav2lip"), {"train": "run_train", "render": "run_render"}, id="train-wav2lip"),
    pytest.param(_train_job("infinitetalk"), {"train": "InfiniteTalk.train", "render": "InfiniteTalk.render"},
                 id="train-infinitetalk"),
    pytest.param(_render_job("mochi", _render_plan()), {"render": "run_render"}, id="render-text-to-video"),
    pytest.param(_render_job("lora", _render_plan("mochi-lora")), {"render": "run_render"}, id="render-mochi-lora"),
    pytest.param(_render_job("lips", _talking_plan("wav2lip")), {"render": "run_render"}, id="render-wav2lip"),
    pytest.param(_render_job("talk", _talking_plan("infinitetalk")), {"render": "InfiniteTalk.render"},
                 id="render-infinitetalk"),
]


@pytest.mark.parametrize(("manifest", "expected"), ROUTING)
def test_train_and_render_go_to_their_backends_function(manifest, expected):
    store = MemoryStore(manifest)
    queue = deploy.make_queue(Settings(), store)
    for stage, function in expected.items():
        assert queue.function_for(TaskMessage(job_id=manifest.job_id, stage=stage)) == function, stage
        assert stage_function(manifest, stage) == (function if "." in function else None)
    assert store.loads == [manifest.job_id] * len(expected)  # one manifest read per routed message
    # prepare, align and webhooks never need the manifest to be routed
    store.loads.clear()
    for stage in ("prepare", "align"):
        assert queue.function_for(TaskMessage(job_id=manifest.job_id, stage=stage)) == deploy.STAGE_FUNCTIONS[stage]
    assert queue.function_for(TaskMessage(job_id=manifest.job_id, action="webhook", webhook_id="w")) == "run_webhook"
    assert store.loads == []


def test_routing_when_the_manifest_does_not_say_yet():
    # A train job's render before its train handoff: the brief's backend. A render job before prepare's plan,
    # a malformed handoff or no manifest at all: the stage's own function (which can run every backend).
    untrained = _train_job("infinitetalk", trained=False)
    assert stage_backend(untrained, "render") == "infinitetalk"
    assert stage_function(untrained, "render") == "InfiniteTalk.render"
    unprepared = _render_job("early", None)
    assert stage_backend(unprepared, "render") is None
    broken = _render_job("broken", _talking_plan("infinitetalk"))
    broken.stages["prepare"].handoff = {"plan": {"backend": "infinitetalk"}}
    assert stage_backend(broken, "render") is None
    assert stage_backend(_train_job("infinitetalk"), "align") is None and stage_backend(unprepared, None) is None
    assert ROUTED_STAGES == {"train", "render"}

    queue = deploy.make_queue(Settings(), MemoryStore(untrained, unprepared, broken))
    assert queue.function_for(TaskMessage(job_id=untrained.job_id, stage="train")) == "InfiniteTalk.train"
    for job_id in ("early", "broken", "no-such-job"):
        assert queue.function_for(TaskMessage(job_id=job_id, stage="render")) == "run_render"
    # without a store (wake_later's queue) nothing is routed
    assert deploy.make_queue(Settings()).function_for(TaskMessage(job_id=untrained.job_id, stage="train")) == "run_train"


def test_spawn_queue_route_hook_is_asked_first_and_falls_back_to_the_stage_function(caplog):
    recorder = SpawnRecorder()
    asked: list[str] = []

    def route(message: TaskMessage) -> str | None:
        asked.append(message.job_id)
        if message.job_id == "flaky":
            raise ConnectionError("bucket unreachable")
        return "Gpu.render" if message.job_id == "special" else None

    queue = spawn_queue(recorder, route=route, delay_function="wake_later")
    payload = {job: TaskMessage(job_id=job, stage="render") for job in ("special", "plain", "flaky")}
    for message in payload.values():
        assert queue.put(message)
    assert [name for name, _ in recorder.calls] == ["Gpu.render", "run_render", "run_render"]
    assert "route failed" in caplog.text  # a send falls back to the stage's function ...
    with pytest.raises(ConnectionError):
        queue.function_for(payload["flaky"])  # ... a function checking its message fails (and is retried)
    asked.remove("flaky")
    recorder.calls.clear()
    assert queue.put(TaskMessage(job_id="special", action="webhook", webhook_id="w"))  # webhooks: never routed
    assert asked == ["special", "plain", "flaky"]
    # a delayed send carries the routed choice to the waiting function; an explicit function skips the route
    assert queue.nack(SpawnQueue.lease(payload["special"]), delay_s=3.0)
    assert recorder.calls[-1] == ("wake_later", (payload["special"].model_dump(mode="json"), 2, 3.0, "Gpu.render"))
    asked.clear()
    assert queue.dispatch(payload["plain"], function="Gpu.render") and asked == []
    assert recorder.calls[-1] == ("Gpu.render", (payload["plain"].model_dump(mode="json"), 1))


def test_default_lookup_of_a_class_method_is_a_lazy_modal_cls_by_name():
    queue = SpawnQueue(app_name="videostudio", stage_functions={"render": "run_render"}, webhook_function="run_webhook")
    import modal

    handle = queue._function("InfiniteTalk.render")  # modal.Cls.from_name("videostudio", "InfiniteTalk")().render
    assert isinstance(handle, modal.Function)  # resolved on first use, not now
    with pytest.raises(Exception, match="Cls.from_name"):
        modal.Function.from_name("videostudio", "InfiniteTalk.render")  # why the queue cannot use Function here


def _bucket_store(bucket: Path) -> ManifestStore:
    return ManifestStore(open_storage(str(bucket)))


def test_an_infinitetalk_render_is_passed_to_its_class_and_a_mochi_one_back_to_run_render(offline_app):
    bucket, recorder = offline_app
    store = _bucket_store(bucket)
    assert store.create(_render_job("talk-1", _talking_plan("infinitetalk")))
    message = TaskMessage(job_id="talk-1", stage="render").model_dump(mode="json")

    # run_render (where an old or re-sent message may land) passes it on to the class
    assert deploy.run_render.local(message, 1) == {"job_id": "talk-1", "forwarded_to": "InfiniteTalk.render"}
    assert recorder.calls == [("InfiniteTalk.render", (message, 1))]
    recorder.calls.clear()

    # the class runs it with the infinitetalk backend (here its avatar is not deployed, so the render fails)
    summary = deploy.InfiniteTalk().render.local(message, 1)
    assert summary["stage"] == "render" and "forwarded_to" not in summary
    assert store.load("talk-1").stages["render"].error.code == "avatar_not_found"

    # a Mochi render delivered to the class goes back to run_render, with its attempt
    assert store.create(_render_job("mochi-1", _render_plan()))
    mochi = TaskMessage(job_id="mochi-1", stage="render").model_dump(mode="json")
    recorder.calls.clear()
    assert deploy.InfiniteTalk().render.local(mochi, 2) == {"job_id": "mochi-1", "forwarded_to": "run_render"}
    assert recorder.calls == [("run_render", (mochi, 2))]


def test_the_wired_queue_routes_with_the_buckets_manifests(offline_app):
    # The queue every function uses (the runner's sends after a commit, the reconciler's re-sends) reads
    # the job's manifest from the bucket: align's success wakes InfiniteTalk.train, not run_train.
    bucket, recorder = offline_app
    store = _bucket_store(bucket)
    manifest = _train_job("infinitetalk", trained=False)
    manifest.stages["prepare"].status = StageStatus.succeeded
    manifest.stages["align"].status = StageStatus.queued
    assert store.create(manifest)
    _, queue, _ = deploy.wiring()
    with queue.hold():
        assert queue.put(TaskMessage(job_id=manifest.job_id, stage="train"))
        assert queue.put(TaskMessage(job_id=manifest.job_id, stage="align"))
    assert [name for name, _ in recorder.calls] == ["InfiniteTalk.train", "run_align"]


# ---------------------------------------------------------------------------- the image's lock file
def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in deploy.MODAL_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        [spec] = requirement.specifier
        assert spec.operator == "==" and not requirement.marker and not requirement.url, line  # exact, unconditional
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_image_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    pins = _lock_pins()
    image_env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    missing, outside = [], []
    for text in tomllib.loads(deploy.PYPROJECT.read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(image_env):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            missing.append(text)
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{text} (locked {pins[name]})")
    assert not missing and not outside, f"re-lock with scripts/lock-modal.sh: missing {missing}, outside {outside}"
    # torch as deploy.py pins it (its own layer, installed first); facenet-pytorch stays out (--no-deps later)
    for pin in deploy.TORCH_PINS:
        name, version = pin.split("==")
        assert pins[canonicalize_name(name)] == version
    assert "facenet-pytorch" not in pins
    assert deploy.MODAL_REQUIREMENTS == REPO / "scripts" / "modal-requirements.txt"
    assert os.access(REPO / "scripts" / "lock-modal.sh", os.X_OK)


def test_a_function_that_cannot_read_the_manifest_to_check_its_message_fails_and_sends_nothing(offline_app,
                                                                                                monkeypatch):
    # Modal retries the call (and the reconciler re-sends): better than passing it on by guesswork.
    _, recorder = offline_app

    def unreachable(store, task):
        raise ConnectionError("bucket unreachable")

    monkeypatch.setattr(deploy, "backend_route", unreachable)
    message = TaskMessage(job_id="j-6", stage="render").model_dump(mode="json")
    with pytest.raises(ConnectionError):
        deploy.InfiniteTalk().render.local(message, 1)
    assert recorder.calls == []


INFINITETALK_TRAIN_BRIEF = """\
kind: train
avatar: ann
video: uploads/ann.mp4
backend: infinitetalk
epochs: 1
batch_size: 8
checkpoint_every: 4
mixed_precision: "no"
infinitetalk: {base_model: tiny, clip_frames: 9, height: 32, width: 32, steps: 2, chunk_frames: 17, motion_frames: 5,
               lora_rank: 4}
"""


@pytest.mark.slow
def test_an_infinitetalk_train_job_trains_and_previews_on_its_class(offline_app, tmp_path):
    # The whole job through the app's functions (tiny random weights on the CPU): the runner's own sends
    # take train and the preview render to InfiniteTalk's methods, and everything else to the stage functions.
    from tests.real_media import looped_talking_video

    bucket, recorder = offline_app
    video = looped_talking_video(tmp_path / "ann.mp4", clip="talking-3.mp4", seconds=32, side=160)
    (bucket / "uploads").mkdir(parents=True)
    (bucket / "uploads" / "ann.mp4").write_bytes(video.read_bytes())
    drop(bucket, "ann.yaml", INFINITETALK_TRAIN_BRIEF)
    deploy.reconcile.local()
    results = recorder.deliver_all()
    assert [name for name, _ in results] == ["run_prepare", "run_align", "InfiniteTalk.train", "InfiniteTalk.render"]
    [job_id] = {summary["job_id"] for _, summary in results}
    manifest = ManifestStore(open_storage(str(bucket))).load(job_id)
    assert manifest.status.value == "succeeded", manifest.error
    assert (bucket / manifest.outputs["video"]).stat().st_size > 0
