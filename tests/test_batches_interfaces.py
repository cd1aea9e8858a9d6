"""Issue 15.1 — batches through the HTTP API (FastAPI's TestClient, same bearer auth as every route) and the CLI
(`videostudio batch list|status|cancel`, `videostudio run x.batch.csv`)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from batch_jobs import TINY_DEFAULTS, submit_batch, tiny_csv, wait_batch, work_all
from pipeline_jobs import make_runner
from schemas.batch import BatchManifest
from schemas.manifest import JobStatus
from triggers.api import create_app
from triggers.cli import app as cli_app

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def runner(tmp_path):
    return make_runner(tmp_path / "bucket", api_token=TOKEN)


@pytest.fixture
def client(runner):
    with TestClient(create_app(runner.settings, runner=runner)) as test_client:
        yield test_client


# ---------------------------------------------------------------------------------------------- API
def test_post_a_json_batch_then_read_list_and_follow_it(client, runner):
    body = {"name": "launch", "defaults": TINY_DEFAULTS,
            "items": [{"prompt": "one"}, {"prompt": "two", "seed": 3}, {"prompt": "bad", "steps": 1}]}
    response = client.post("/batches", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    submitted = response.json()
    assert submitted["batch_key"] == "inbox/launch.batch.yaml" and submitted["created"]
    assert submitted["counts"] == {"queued": 2, "running": 0, "succeeded": 0, "failed": 1, "cancelled": 0}
    again = client.post("/batches", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json()["batch_id"] == submitted["batch_id"]
    other = client.post("/batches", json={**body, "items": [{"prompt": "else"}]}, headers=AUTH)
    assert other.status_code == 409 and other.json()["code"] == "name_taken"

    wait_batch(runner, submitted["batch_id"])
    manifest = BatchManifest.model_validate(client.get(f"/batches/{submitted['batch_id']}", headers=AUTH).json())
    assert manifest.counts.succeeded == 2 and manifest.counts.failed == 1
    written = (runner.storage.root / "inbox/launch.batch.yaml").read_text().splitlines()
    assert [written[i.line - 1].strip() for i in manifest.items] == ["- prompt: one", "- prompt: two", "- prompt: bad"]
    assert [i.error.code if i.error else None for i in manifest.items] == [None, None, "invalid_steps"]
    listed = client.get("/batches", headers=AUTH).json()
    assert [b["batch_id"] for b in listed] == [submitted["batch_id"]] and listed[0]["progress"]["fraction"] == 1.0
    assert "items" not in listed[0]
    job = client.get(f"/jobs/{manifest.items[0].job_id}", headers=AUTH).json()
    assert job["batch"]["batch_id"] == submitted["batch_id"] and job["status"] == "succeeded"
    ended = client.post(f"/batches/{submitted['batch_id']}/cancel", headers=AUTH)
    assert ended.status_code == 409 and ended.json()["code"] == "batch_finished"


def test_post_a_csv_batch_and_cancel_it(client, runner):
    response = client.post("/batches", content=tiny_csv(4).encode(), params={"name": "rows.csv"},
                           headers={**AUTH, "Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    batch_id = response.json()["batch_id"]
    assert response.json()["batch_key"] == "inbox/rows.batch.csv"
    cancelled = client.post(f"/batches/{batch_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 202
    assert cancelled.json()["counts"]["cancelled"] == 4 and cancelled.json()["status"] == "completed"


def test_batch_routes_need_the_token_and_refuse_bad_input(client):
    assert client.get("/batches").status_code == 401
    assert client.post("/batches", json={"name": "x", "items": [{"prompt": "a"}]}).status_code == 401
    assert client.get("/batches/nope-batch-0123456789abcdef", headers=AUTH).status_code == 404
    assert client.get("/batches/..%2Fjobs", headers=AUTH).status_code in (400, 404)
    bad = client.post("/batches", json={"name": "x", "items": []}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_field_value"
    odd = client.post("/batches", content=b"a,b", headers={**AUTH, "Content-Type": "text/plain"})
    assert odd.status_code == 415
    brief = client.post("/briefs", params={"name": "sneaky.batch"}, json={"prompt": "a"}, headers=AUTH)
    assert brief.status_code == 400 and "POST /batches" in brief.json()["message"]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_run_a_batch_csv_lists_status_and_exit_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bucket = str(tmp_path / "bucket")
    (tmp_path / "few.batch.csv").write_text(tiny_csv(3, bad={1: ",1,4.5"}))
    cli = CliRunner()
    result = cli.invoke(cli_app, ["run", "few.batch.csv", "--bucket", bucket])
    assert result.exit_code == 1, result.output  # one item failed
    assert "succeeded 2" in result.output and "failed 1" in result.output and "missing_field" in result.output
    listed = cli.invoke(cli_app, ["batch", "list", "--bucket", bucket, "--json"])
    [summary] = json.loads(listed.output)
    assert summary["status"] == "completed" and summary["counts"]["succeeded"] == 2
    status = cli.invoke(cli_app, ["batch", "status", summary["batch_id"], "--bucket", bucket, "--json"])
    manifest = BatchManifest.model_validate_json(status.output)
    assert [i.status for i in manifest.items] == [JobStatus.succeeded, JobStatus.failed, JobStatus.succeeded]
    missing = cli.invoke(cli_app, ["batch", "status", "nope", "--bucket", bucket])
    assert missing.exit_code == 2 and "batch_not_found" in missing.output


def test_cli_cancel_a_waiting_batch(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    batch_id, _ = submit_batch(runner, "wait.batch.csv", tiny_csv(3))
    result = CliRunner().invoke(cli_app, ["batch", "cancel", batch_id, "--bucket", str(tmp_path / "bucket")])
    assert result.exit_code == 0, result.output
    work_all(runner)
    manifest = runner.batches.store.load(batch_id)
    assert manifest.counts.cancelled == 3 and manifest.status.value == "completed"
    again = CliRunner().invoke(cli_app, ["batch", "cancel", batch_id, "--bucket", str(tmp_path / "bucket")])
    assert again.exit_code == 2 and "batch_finished" in again.output
