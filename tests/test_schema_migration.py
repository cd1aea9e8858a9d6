"""Jobs and avatars written by schema 1 (before typed stage records) still load, list, watch, retry,
deploy and render.

tests/fixtures/schema1_bucket holds what videostudio wrote at commit e0706ca (the last schema-1
release) for a train job on real footage that succeeded and a render job that failed at its
render stage (`VIDEOSTUDIO_DEVICE=cuda` on a CPU machine), with the files a retry or a deploy
reads (manifests, plan, LoRA, avatar). Schema 1 kept derived facts (`plan`, `video_sha256`,
`video_info`) in the job's `request`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.avatars import AvatarRegistry, deploy_from_job
from core.jobs import ManifestStore
from core.settings import Settings
from core.storage import LocalStorage
from schemas import SCHEMA_VERSION
from schemas.brief import RenderBrief, TrainBrief
from schemas.handoff import AlignOutput, DatasetPrepared, RenderPrepared, TrainOutput
from triggers.cli import app
from triggers.wiring import open_runner

FIXTURE = Path(__file__).parent / "fixtures" / "schema1_bucket"
RENDER_JOB = "render-813d3369b0f6b673"
TRAIN_JOB = "train-633b8724bba74971"
cli = CliRunner()


@pytest.fixture
def bucket(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "bucket"))


def test_the_fixture_is_schema_1(bucket):
    for job in (RENDER_JOB, TRAIN_JOB):
        raw = json.loads((bucket / "jobs" / job / "manifest.json").read_text())
        assert raw["schema_version"] == 1 and "plan" in raw["request"]
    assert "weights_key" not in json.loads((bucket / "avatars" / "talker" / "manifest.json").read_text())


def test_old_manifests_load_as_the_current_schema_with_typed_records(bucket):
    store = ManifestStore(LocalStorage(bucket))
    render, train = store.load(RENDER_JOB), store.load(TRAIN_JOB)
    assert render.schema_version == train.schema_version == SCHEMA_VERSION
    assert isinstance(render.request, RenderBrief) and isinstance(train.request, TrainBrief)
    assert render.request.prompt == "a lighthouse at dusk" and train.request.video == "uploads/talker.mp4"
    plan = RenderPrepared.model_validate(render.stages["prepare"].handoff).plan
    assert (plan.width, plan.height, plan.num_frames, plan.backend) == (64, 48, 7, None)
    prepared = DatasetPrepared.model_validate(train.stages["prepare"].handoff)
    assert prepared.video.duration_s == 36.0 and len(prepared.video_sha256) == 64 and prepared.sample_fps == 5
    assert AlignOutput.model_validate(train.stages["align"].handoff).splits["train"] > 0
    trained = TrainOutput.model_validate(train.stages["train"].handoff)
    assert trained.preview.backend == "mochi-lora" and trained.weights_key.endswith("train/lora.safetensors")
    assert {m.job_id for m in store.all()} == {RENDER_JOB, TRAIN_JOB}


def test_old_jobs_list_show_and_watch(bucket):
    listing = cli.invoke(app, ["jobs", "--bucket", str(bucket)])
    assert listing.exit_code == 0 and RENDER_JOB in listing.stdout and TRAIN_JOB in listing.stdout
    status = json.loads(cli.invoke(app, ["status", RENDER_JOB, "--bucket", str(bucket), "--json"]).stdout)
    assert status["status"] == "failed" and status["error"]["code"] == "device_unavailable"
    watched = cli.invoke(app, ["watch", TRAIN_JOB, "--bucket", str(bucket)])
    assert watched.exit_code == 0 and "succeeded" in watched.stdout


def test_an_old_failed_job_retries_to_success(bucket):
    retried = cli.invoke(app, ["retry", RENDER_JOB, "--bucket", str(bucket)])
    assert retried.exit_code == 0 and "queued again from render" in retried.stdout
    runner = open_runner(Settings(bucket=str(bucket)))
    while runner.work_once(job_id=RENDER_JOB):
        pass
    manifest = runner.store.load(RENDER_JOB)
    assert manifest.status.value == "succeeded", manifest.error
    assert (bucket / manifest.outputs["video"]).stat().st_size > 0
    written = json.loads((bucket / "jobs" / RENDER_JOB / "manifest.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION and "plan" not in written["request"]


def test_an_old_avatar_deploys_again_and_renders(bucket, tmp_path):
    registry = AvatarRegistry(LocalStorage(bucket))
    old = registry.require("talker")
    assert old.backend == "mochi-lora" and old.weights_key == old.lora_key == "avatars/talker/lora.safetensors"
    redeployed = deploy_from_job(registry, ManifestStore(registry.storage).load(TRAIN_JOB))
    assert redeployed.weights_sha256 and redeployed.trigger_token == old.trigger_token
    brief = tmp_path / "hello.yaml"
    brief.write_text("prompt: hello\navatar: talker\nmodel: tiny\nnum_frames: 7\nfps: 12\nwidth: 64\nheight: 48\n"
                     "steps: 2\n")
    result = cli.invoke(app, ["run", str(brief), "--bucket", str(bucket)])
    assert result.exit_code == 0, result.stdout
