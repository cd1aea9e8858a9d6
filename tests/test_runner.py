"""The runner in process, with small custom pipelines: retries, dead-lettering, reconciliation, cancel, webhooks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import TEST_SECRET
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import Pipeline, StageContext, StageResult
from core.storage import LocalStorage
from schemas.brief import RenderBrief, WebhookSpec
from schemas.errors import VideostudioError
from schemas.events import StorageEvent


def make_runner(tmp_path: Path, stages: dict, **settings) -> Runner:
    storage = LocalStorage(tmp_path / "bucket")
    queue = SqliteQueue(storage.state_dir / "queue.sqlite3", max_attempts=20)
    pipeline = Pipeline(routes={"job": list(stages)}, stages=stages, classify=lambda s, k: "job")
    defaults = dict(bucket=str(storage.root), lease_s=0.5, max_attempts=3, webhook_backoff_base_s=0.0,
                    webhook_secret=TEST_SECRET, progress_interval_s=0.0)
    defaults.update(settings)
    return Runner(storage, queue, pipeline, Settings(**defaults))


def submit(runner: Runner, name: str = "a.yaml", body: bytes = b"x: 1\n") -> str:
    runner.storage.put_bytes(f"inbox/{name}", body)
    job_id, created = runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}"))
    assert created
    return job_id


def drain(runner: Runner, *, max_wait_s: float = 10.0) -> None:
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        if not runner.work_once() and runner.queue.pending() == 0:
            return
        time.sleep(0.01)
    raise AssertionError("queue did not drain")


def ok_stage(ctx: StageContext) -> StageResult:
    key = ctx.put_output_bytes("out.txt", f"{ctx.stage} of {ctx.job_id}".encode())
    return StageResult(outputs={"out": key}, job_outputs={ctx.stage: key}, metrics={"n": 1})


def test_two_stage_chain_commits_outputs_then_manifest(tmp_path):
    runner = make_runner(tmp_path, {"a": ok_stage, "b": ok_stage})
    job_id = submit(runner)
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "succeeded"
    assert [r.status.value for r in manifest.stages.values()] == ["succeeded", "succeeded"]
    for stage in ("a", "b"):
        assert runner.storage.get_bytes(manifest.outputs[stage]) == f"{stage} of {job_id}".encode()
        stage_manifest = json.loads(runner.storage.get_bytes(f"jobs/{job_id}/{stage}/manifest.json"))
        assert stage_manifest["status"] == "succeeded"
    assert set(manifest.cost.seconds) == {"a", "b"}


def test_resubmitting_the_same_input_is_the_same_job(tmp_path):
    runner = make_runner(tmp_path, {"a": ok_stage})
    job_id = submit(runner, "same.yaml")
    again, created = runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/same.yaml"))
    assert (again, created) == (job_id, False)
    runner.storage.put_bytes("inbox/same.yaml", b"x: 2\n")  # new bytes: a new job
    other, created = runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/same.yaml"))
    assert created and other != job_id


def test_retryable_error_is_retried_then_succeeds(tmp_path):
    calls = []

    def flaky(ctx: StageContext) -> StageResult:
        calls.append(ctx.attempt)
        if ctx.attempt < 2:
            raise VideostudioError("gpu_busy", "try again", retryable=True)
        return StageResult()

    runner = make_runner(tmp_path, {"a": flaky})
    job_id = submit(runner)
    runner.work_once()
    manifest = runner.store.load(job_id)
    assert manifest.stages["a"].status.value == "queued" and manifest.stages["a"].error.code == "gpu_busy"
    time.sleep(2.1)  # the retry delay: 2 ** attempt seconds
    drain(runner)
    manifest = runner.store.load(job_id)
    assert calls == [1, 2] and manifest.status.value == "succeeded" and manifest.stages["a"].attempts == 2


def test_user_error_fails_at_once_and_later_stages_are_cancelled(tmp_path):
    def bad(ctx):
        raise VideostudioError("empty_prompt", "prompt must not be empty")

    runner = make_runner(tmp_path, {"a": bad, "b": ok_stage})
    job_id = submit(runner)
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "failed"
    assert manifest.error.code == "empty_prompt" and manifest.stages["a"].attempts == 1
    assert manifest.stages["b"].status.value == "cancelled"


def test_unexpected_exception_is_internal_error_and_dead_letters_after_max_attempts(tmp_path):
    def crash(ctx):
        raise RuntimeError("boom")

    runner = make_runner(tmp_path, {"a": crash}, max_attempts=2)
    job_id = submit(runner)
    runner.work_once()
    time.sleep(2.1)
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "failed"
    assert manifest.error.code == "internal_error" and "boom" in manifest.error.message
    assert manifest.stages["a"].attempts == 2


def test_worker_lost_repeatedly_ends_as_max_attempts_exceeded(tmp_path):
    runner = make_runner(tmp_path, {"a": ok_stage}, max_attempts=2)
    job_id = submit(runner)

    def die(ctx):  # a worker that dies mid-stage: the stage is taken but never committed or acked
        raise SystemExit

    for _ in range(2):
        lease = runner.queue.get(lease_s=0.2)
        runner.pipeline.stages["a"], original = die, runner.pipeline.stages["a"]
        with pytest.raises(SystemExit):
            runner._run_stage(lease, "a")
        runner.pipeline.stages["a"] = original
        time.sleep(0.55)  # the lease and the stage heartbeat (lease_s=0.5) both go stale
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "failed"
    assert manifest.error.code == "max_attempts_exceeded"


def test_reconciler_requeues_a_lost_message(tmp_path):
    runner = make_runner(tmp_path, {"a": ok_stage, "b": ok_stage})
    job_id = submit(runner)
    lease = runner.queue.get(lease_s=60)
    runner.queue.ack(lease)  # the message is lost before anyone ran the stage
    assert runner.queue.pending() == 0
    time.sleep(0.2)  # older than the reconciler's grace for queued stages (lease_s / 4)
    assert runner.reconcile() == [f"{job_id}:a"]
    drain(runner)
    assert runner.store.load(job_id).status.value == "succeeded"


def test_duplicate_message_for_committed_stage_is_harmless(tmp_path):
    calls = []

    def counted(ctx):
        calls.append(ctx.stage)
        return StageResult()

    runner = make_runner(tmp_path, {"a": counted, "b": counted})
    job_id = submit(runner)
    drain(runner)
    from schemas.events import TaskMessage
    runner.queue.put(TaskMessage(job_id=job_id, stage="a"))
    runner.queue.put(TaskMessage(job_id=job_id, stage="b"))
    drain(runner)
    assert calls == ["a", "b"]


def test_cancel_stops_a_running_stage_between_steps(tmp_path):
    def slow(ctx: StageContext) -> StageResult:
        for step in range(200):
            if step == 3:
                ctx.storage.put_bytes(f"jobs/{ctx.job_id}/cancel-requested", b"1")
            ctx.progress(step / 200, "working", step=step, total=200)
            time.sleep(0.01)
        return StageResult()

    runner = make_runner(tmp_path, {"a": slow, "b": ok_stage})
    job_id = submit(runner)
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "cancelled"
    assert manifest.stages["a"].status.value == "cancelled" and manifest.stages["b"].status.value == "cancelled"
    with pytest.raises(VideostudioError) as info:
        runner.cancel(job_id)
    assert info.value.code == "job_finished"


def test_cancel_a_waiting_job_is_immediate(tmp_path):
    runner = make_runner(tmp_path, {"a": ok_stage})
    job_id = submit(runner)
    assert runner.cancel(job_id).status.value == "cancelled"
    drain(runner)
    assert runner.store.load(job_id).stages["a"].attempts == 0


def _with_webhook(url: str, events=("job.succeeded", "job.failed")):
    """A stage that sets a validated request naming a webhook, as prepare does."""
    def stage(ctx: StageContext) -> StageResult:
        return StageResult(request=RenderBrief(prompt="hi", webhook=WebhookSpec(url=url, events=list(events))))
    return stage


def test_webhook_retries_with_backoff_and_records_every_attempt(tmp_path, webhook_receiver):
    webhook_receiver.responses = [(500, {}), (429, {"Retry-After": "0"}), (200, {})]
    runner = make_runner(tmp_path, {"a": _with_webhook(webhook_receiver.url)})
    job_id = submit(runner)
    drain(runner)
    manifest = runner.store.load(job_id)
    delivery = manifest.webhooks[0]
    assert delivery.status == "delivered"
    assert [a.status_code for a in delivery.attempts] == [500, 429, 200]
    ids = {hook.headers["webhook-id"] for hook in webhook_receiver.received}
    assert ids == {delivery.webhook_id}  # stable across retries
    for hook in webhook_receiver.received:
        assert Webhook(TEST_SECRET).verify(hook.body, hook.headers)["type"] == "job.succeeded"


def test_webhook_410_disables_the_endpoint_for_the_job(tmp_path, webhook_receiver):
    webhook_receiver.responses = [(410, {})]
    runner = make_runner(tmp_path, {"a": _with_webhook(webhook_receiver.url)})
    job_id = submit(runner)
    drain(runner)
    delivery = runner.store.load(job_id).webhooks[0]
    assert delivery.status == "disabled" and len(delivery.attempts) == 1


def test_webhook_gives_up_after_its_budget(tmp_path):
    runner = make_runner(tmp_path, {"a": _with_webhook("http://127.0.0.1:9/unreachable")}, webhook_max_attempts=3)
    job_id = submit(runner)
    drain(runner)
    delivery = runner.store.load(job_id).webhooks[0]
    assert delivery.status == "failed"
    assert len(delivery.attempts) == 3 and all(a.status_code is None for a in delivery.attempts)


def test_poison_job_is_dead_lettered_then_retry_runs_it_again(tmp_path, webhook_receiver):
    calls = []

    def fragile(ctx: StageContext) -> StageResult:
        calls.append(ctx.attempt)
        if not ctx.storage.exists("fixed"):
            raise RuntimeError("disk on fire")
        return StageResult()

    runner = make_runner(tmp_path, {"w": _with_webhook(webhook_receiver.url), "a": fragile, "b": ok_stage},
                         max_attempts=2)
    job_id = submit(runner)
    drain(runner)
    time.sleep(2.1)  # the retry's backoff
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "failed" and manifest.stages["a"].attempts == 2
    assert manifest.error.code == "internal_error" and "disk on fire" in manifest.error.message
    assert manifest.stages["b"].status.value == "cancelled"

    runner.storage.put_bytes("fixed", b"1")
    retried = runner.retry(job_id)
    assert retried.status.value == "queued" and retried.stages["a"].attempts == 0
    assert retried.retries[0]["cleared_error"]["code"] == "internal_error"
    drain(runner)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "succeeded" and calls == [1, 2, 1]
    events = [(d.event, d.status) for d in manifest.webhooks]
    assert events == [("job.failed", "delivered"), ("job.succeeded", "delivered")]
    assert len({d.webhook_id for d in manifest.webhooks}) == 2
    with pytest.raises(VideostudioError) as info:
        runner.retry(job_id)
    assert info.value.code == "job_not_failed"
