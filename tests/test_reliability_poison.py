"""Issue 7.4 — poison jobs, end to end through `videostudio up` and `videostudio retry`.

A job whose render stage kills its worker every time (SIGKILL from inside the stage, through
tests/fault_worker.py) is retried across worker restarts until VIDEOSTUDIO_MAX_ATTEMPTS (2) is
spent; the next worker dead-letters it: `failed`, `max_attempts_exceeded`, the last error
(`worker_lost`) in the message, later stages cancelled, `job.failed` delivered. Once the cause is
gone, `videostudio retry JOB` queues it again from the failed stage and a worker finishes it.

The in-process variant (a stage that raises until fixed) is
tests/test_runner.py::test_poison_job_is_dead_lettered_then_retry_runs_it_again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import CLI, TEST_SECRET, TINY_BRIEF, drop_by_rename, stop, worker_env
from reliability import job_manifests, read_log, record, start_fault_up, wait_exit

pytestmark = pytest.mark.slow

ENV = dict(VIDEOSTUDIO_MAX_ATTEMPTS="2", VIDEOSTUDIO_LEASE_S="1.5", VIDEOSTUDIO_RECONCILE_INTERVAL_S="0.5")
POISON = {"poison": {"stage": "render", "mode": "kill", "unless": "fixed"}}


def _wait(bucket, predicate, proc, timeout=180.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifests = job_manifests(bucket)
        if manifests and predicate(manifests[0]):
            return manifests[0]
        if proc.poll() is not None:
            return None
        time.sleep(0.1)
    raise AssertionError(f"timed out; {job_manifests(bucket)}\n{read_log(proc)}")


def test_a_job_that_kills_every_worker_is_dead_lettered_then_retried(tmp_path, webhook_receiver):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    log = tmp_path / "up.log"
    brief = TINY_BRIEF.format(steps=2, seed=4) + f"webhook:\n  url: {webhook_receiver.url}\n"
    drop_by_rename(bucket, "poison.yaml", brief)

    kills, starts = 0, 0
    failed = None
    while failed is None and starts < 6:
        proc = start_fault_up(bucket, log, POISON, **ENV)
        starts += 1
        failed = _wait(bucket, lambda m: m["status"] == "failed" and m["webhooks"]
                       and m["webhooks"][0]["status"] == "delivered", proc)
        if failed is None:
            assert wait_exit(proc, 10) == -signal.SIGKILL, read_log(proc)
            kills += 1
        else:
            assert proc.poll() is None  # the worker that dead-lettered it is alive and serving
            stop(proc)
    assert failed is not None and kills == 2, (kills, starts)
    assert failed["error"]["code"] == "max_attempts_exceeded"
    assert "worker_lost" in failed["error"]["message"] and not failed["error"]["retryable"]
    assert failed["stages"]["render"]["status"] == "failed" and failed["stages"]["render"]["attempts"] == 2
    assert failed["stages"]["prepare"]["status"] == "succeeded"
    job_id = failed["job_id"]

    # The cause is fixed; `videostudio retry` queues the job again and a worker finishes it.
    (bucket / "fixed").write_text("1")
    retried = subprocess.run([CLI, "retry", job_id, "--bucket", str(bucket)], capture_output=True, text=True,
                             env=worker_env(**ENV), timeout=120)
    assert retried.returncode == 0 and "queued again from render" in retried.stdout, retried.stdout + retried.stderr
    proc = start_fault_up(bucket, log, POISON, **ENV)
    try:
        done = _wait(bucket, lambda m: m["status"] == "succeeded" and len(m["webhooks"]) == 2
                     and all(d["status"] == "delivered" for d in m["webhooks"]), proc)
    finally:
        stop(proc)
    assert done is not None, read_log(proc)
    assert done["stages"]["render"]["attempts"] == 1 and done["retries"][0]["stage"] == "render"
    assert done["retries"][0]["cleared_error"]["code"] == "max_attempts_exceeded"
    events = [(d["event"], d["status"]) for d in done["webhooks"]]
    assert events == [("job.failed", "delivered"), ("job.succeeded", "delivered")]
    types = [Webhook(TEST_SECRET).verify(h.body, h.headers)["type"] for h in webhook_receiver.received]
    assert types.count("job.failed") >= 1 and types.count("job.succeeded") >= 1
    assert len({h.headers["webhook-id"] for h in webhook_receiver.received}) == 2
    record("poison", {"max_attempts": 2, "worker_kills": kills, "worker_starts": starts + 1,
                      "dead_letter_error": failed["error"], "retries": done["retries"],
                      "webhooks": [json.loads(h.body)["type"] for h in webhook_receiver.received]})
