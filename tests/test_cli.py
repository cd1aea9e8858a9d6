"""The CLI verbs, in process (typer's test runner) on a temp bucket."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import TINY_BRIEF
from triggers.cli import app

cli = CliRunner()


def test_schema_prints_json_schema_for_briefs_and_manifests():
    brief = json.loads(cli.invoke(app, ["schema", "brief"]).stdout)
    assert {"RenderBrief", "TrainBrief"} <= set(brief["$defs"])
    manifest = json.loads(cli.invoke(app, ["schema", "manifest"]).stdout)
    assert {"schema_version", "job_id", "stages", "webhooks", "versions", "cost"} <= set(manifest["properties"])
    assert cli.invoke(app, ["schema", "nonsense"]).exit_code == 2


def test_run_exits_zero_only_on_success_and_status_jobs_show_it(tmp_path):
    bucket = tmp_path / "bucket"
    good = tmp_path / "good.yaml"
    good.write_text(TINY_BRIEF.format(steps=2, seed=4))
    result = cli.invoke(app, ["run", str(good), "--bucket", str(bucket)])
    assert result.exit_code == 0, result.stdout
    assert "succeeded" in result.stdout and "video:" in result.stdout and "manifest:" in result.stdout
    job_id = result.stdout.split("job ", 1)[1].split()[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: ''\n")
    result = cli.invoke(app, ["run", str(bad), "--bucket", str(bucket)])
    assert result.exit_code == 1 and "empty_prompt" in result.stdout

    status = cli.invoke(app, ["status", job_id, "--bucket", str(bucket), "--json"])
    assert json.loads(status.stdout)["status"] == "succeeded"
    listing = cli.invoke(app, ["jobs", "--bucket", str(bucket)])
    assert job_id in listing.stdout and "failed" in listing.stdout
    watched = cli.invoke(app, ["watch", job_id, "--bucket", str(bucket)])
    assert watched.exit_code == 0 and "succeeded" in watched.stdout
    assert cli.invoke(app, ["status", "nope", "--bucket", str(bucket)]).exit_code == 2


def test_submit_then_cancel_a_waiting_job(tmp_path):
    bucket = tmp_path / "bucket"
    brief = tmp_path / "later.yaml"
    brief.write_text(TINY_BRIEF.format(steps=2, seed=9))
    result = cli.invoke(app, ["submit", str(brief), "--bucket", str(bucket)])
    assert result.exit_code == 0 and "queued" in result.stdout
    assert (bucket / "inbox" / "later.yaml").read_text() == brief.read_text()
    job_id = result.stdout.split("queued: ", 1)[1].split()[0]
    again = cli.invoke(app, ["submit", str(brief), "--bucket", str(bucket)])
    assert "already known" in again.stdout

    assert "cancelled" in cli.invoke(app, ["cancel", job_id, "--bucket", str(bucket)]).stdout
    status = json.loads(cli.invoke(app, ["status", job_id, "--bucket", str(bucket), "--json"]).stdout)
    assert status["status"] == "cancelled"
    second = cli.invoke(app, ["cancel", job_id, "--bucket", str(bucket)])
    assert second.exit_code == 2 and "job_finished" in second.output


def test_retry_verb_requeues_a_failed_job_and_refuses_others(tmp_path):
    bucket = tmp_path / "bucket"
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: ''\n")
    result = cli.invoke(app, ["run", str(bad), "--bucket", str(bucket)])
    job_id = result.stdout.split("job ", 1)[1].split()[0]
    retried = cli.invoke(app, ["retry", job_id, "--bucket", str(bucket)])
    assert retried.exit_code == 0 and "queued again from prepare" in retried.stdout
    status = json.loads(cli.invoke(app, ["status", job_id, "--bucket", str(bucket), "--json"]).stdout)
    assert status["status"] == "queued" and len(status["retries"]) == 1
    again = cli.invoke(app, ["retry", job_id, "--bucket", str(bucket)])
    assert again.exit_code == 2 and "job_not_failed" in again.output
