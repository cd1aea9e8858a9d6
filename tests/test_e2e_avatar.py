"""The whole avatar journey through `videostudio up`: a training video → dataset → LoRA → preview → deployed
avatar → a brief that names the avatar renders."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY_BRIEF, drop_by_rename, wait_for_job
from core.video import probe_video
from synthetic_video import write_face_video

pytestmark = pytest.mark.slow

TRAIN = """\
kind: train
avatar: eileen
video: uploads/eileen.mp4
extract_fps: 5
resolution: 64
clip_frames: 7
epochs: 2
batch_size: 2
mixed_precision: "no"
preview_steps: 3
"""


def test_training_video_becomes_an_avatar_that_briefs_can_render(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    (bucket / "uploads").mkdir(parents=True)
    write_face_video(tmp_path / "eileen.mp4", duration_s=32.0, fps=10)
    shutil.copy(tmp_path / "eileen.mp4", bucket / "uploads" / "eileen.mp4")
    proc = up_process(bucket)
    drop_by_rename(bucket, "eileen.yaml", TRAIN)

    manifest = wait_for_job(bucket, "inbox/eileen.yaml", proc=proc, timeout=300)
    assert manifest["status"] == "succeeded", manifest.get("error")
    assert [s["status"] for s in manifest["stages"].values()] == ["succeeded"] * 4
    assert {"contact_sheet", "lora", "loss_curve", "video"} <= set(manifest["outputs"])
    avatar = json.loads((bucket / "avatars" / "eileen" / "manifest.json").read_text())
    assert avatar["job_id"] == manifest["job_id"] and (bucket / avatar["lora_key"]).exists()
    preview = probe_video(bucket / manifest["outputs"]["video"])
    assert (preview.width, preview.height, preview.num_frames) == (64, 64, 13)

    drop_by_rename(bucket, "with-avatar.yaml", TINY_BRIEF.format(steps=2, seed=3) + "avatar: eileen\n")
    rendered = wait_for_job(bucket, "inbox/with-avatar.yaml", proc=proc)
    assert rendered["status"] == "succeeded", rendered.get("error")
    assert rendered["stages"]["prepare"]["handoff"]["plan"]["prompt"].startswith("vs_eileen")
    assert rendered["stages"]["render"]["metrics"]["avatar"] == "eileen"
