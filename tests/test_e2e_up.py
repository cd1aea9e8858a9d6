"""End to end: `videostudio up` as a subprocess on a temp bucket, briefs dropped by rename."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import TEST_SECRET, TINY_BRIEF, drop_by_rename, find_job, read_log, stop, wait_for_job
from core.video import probe_video

pytestmark = pytest.mark.slow


def _brief_with_hook(url: str, **fields) -> str:
    brief = TINY_BRIEF.format(steps=fields.pop("steps", 4), seed=fields.pop("seed", 7))
    brief += f"webhook:\n  url: {url}\n  events: [job.succeeded, job.failed]\n"
    for name, value in fields.items():
        brief += f"{name}: {json.dumps(value)}\n"
    return brief


def test_dropped_brief_becomes_video_manifest_and_signed_webhook(tmp_path, up_process, webhook_receiver):
    bucket = tmp_path / "bucket"
    proc = up_process(bucket)
    drop_by_rename(bucket, "sunrise.yaml", _brief_with_hook(webhook_receiver.url))

    manifest = wait_for_job(bucket, "inbox/sunrise.yaml", proc=proc)
    assert manifest["status"] == "succeeded", manifest
    assert set(manifest) >= {"schema_version", "job_id", "kind", "status", "input", "request", "stages", "outputs",
                             "webhooks", "versions", "cost", "created_at", "updated_at"}
    assert [s["status"] for s in manifest["stages"].values()] == ["succeeded", "succeeded"]
    assert manifest["stages"]["prepare"]["handoff"]["plan"]["random_weights"] is True
    assert any("noise" in w for w in manifest["warnings"])

    # The MP4 matches the brief: 13 frames at 12 fps, 64x48, H.264.
    video = probe_video(bucket / manifest["outputs"]["video"])
    assert (video.width, video.height, video.num_frames, video.codec) == (64, 48, 13, "h264")
    assert video.fps == pytest.approx(12.0)
    assert (bucket / manifest["outputs"]["poster"]).stat().st_size > 0
    assert (bucket / "jobs" / manifest["job_id"] / "render" / "manifest.json").exists()

    # The receiver got job.succeeded, and standardwebhooks verifies the signature.
    hooks = webhook_receiver.wait_for(lambda r: len(r) >= 1)
    payload = Webhook(TEST_SECRET).verify(hooks[0].body, hooks[0].headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == manifest["job_id"]
    assert payload["data"]["outputs"]["video"] == manifest["outputs"]["video"]
    tampered = hooks[0].body.replace(b"succeeded", b"failed")
    with pytest.raises(Exception):
        Webhook(TEST_SECRET).verify(tampered, hooks[0].headers)

    # The delivery is recorded in the manifest, without the secret anywhere.
    final = wait_for_job(bucket, "inbox/sunrise.yaml",
                         lambda m: m["webhooks"] and m["webhooks"][0]["status"] == "delivered", proc=proc)
    assert final["webhooks"][0]["attempts"][0]["status_code"] == 200
    assert final["webhooks"][0]["webhook_id"] == hooks[0].headers["webhook-id"]
    for path in bucket.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml"):
            assert TEST_SECRET not in path.read_text(errors="replace")
    assert TEST_SECRET not in read_log(proc)


def test_same_brief_dropped_twice_is_one_job(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    proc = up_process(bucket)
    brief = TINY_BRIEF.format(steps=2, seed=1)
    drop_by_rename(bucket, "twice.yaml", brief)
    first = wait_for_job(bucket, "inbox/twice.yaml", proc=proc)
    drop_by_rename(bucket, "twice.yaml", brief)  # same key, same bytes
    drop_by_rename(bucket, "other.yaml", TINY_BRIEF.format(steps=2, seed=2))  # a fence: processed after the repeat
    wait_for_job(bucket, "inbox/other.yaml", proc=proc)
    manifests = list((bucket / "jobs").glob("*/manifest.json"))
    assert len(manifests) == 2
    again = find_job(bucket, "inbox/twice.yaml")
    assert again["job_id"] == first["job_id"]
    assert again["stages"]["render"]["attempts"] == 1


def test_bad_briefs_fail_with_codes_and_worker_keeps_serving(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    proc = up_process(bucket)
    good = TINY_BRIEF.format(steps=2, seed=3)
    bad = {
        "broken.yaml": ("prompt: [unclosed\n", "invalid_yaml"),
        "broken.json": ('{"prompt": "x",', "invalid_json"),
        "types.yaml": (good.replace("steps: 2", "steps: many"), "invalid_field_type"),
        "preset.yaml": (good.replace("preset: fast", "preset: cinematic"), "unknown_preset"),
        "negative.yaml": (good.replace("steps: 2", "steps: -5"), "invalid_steps"),
        "empty-prompt.yaml": (good.replace('prompt: "A serene mountain landscape at dawn"', 'prompt: "  "'),
                              "empty_prompt"),
    }
    for name, (content, _) in bad.items():
        drop_by_rename(bucket, name, content)
    for name, (_, code) in bad.items():
        manifest = wait_for_job(bucket, f"inbox/{name}", proc=proc)
        assert manifest["status"] == "failed", name
        assert manifest["error"]["code"] == code, (name, manifest["error"])
        assert manifest["stages"]["prepare"]["error"]["code"] == code
        assert manifest["error"]["message"]
        assert manifest["stages"]["render"]["status"] == "cancelled"
    drop_by_rename(bucket, "good.yaml", good)
    assert wait_for_job(bucket, "inbox/good.yaml", proc=proc)["status"] == "succeeded"
    assert proc.poll() is None


def test_killed_worker_mid_render_is_resumed(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    proc = up_process(bucket, VIDEOSTUDIO_LEASE_S="2")
    # Long enough (about 3.5 s of denoising here) for the poll below to see it mid-render: 200 steps at 64×48
    # took 0.5 s on a quiet machine, and the job could finish between two throttled progress writes.
    long_brief = TINY_BRIEF.format(steps=500, seed=5).replace("width: 64", "width: 256").replace("height: 48",
                                                                                                "height: 192")
    drop_by_rename(bucket, "long.yaml", long_brief)
    running = wait_for_job(
        bucket, "inbox/long.yaml",
        lambda m: ((m["stages"]["render"].get("progress") or {}).get("step") or 0) >= 2, proc=proc)
    assert running["stages"]["render"]["status"] == "running"
    stop(proc, signal.SIGKILL)
    killed = find_job(bucket, "inbox/long.yaml")
    assert killed["status"] == "running" and killed["stages"]["render"]["attempts"] == 1

    proc = up_process(bucket, VIDEOSTUDIO_LEASE_S="2")
    manifest = wait_for_job(bucket, "inbox/long.yaml", proc=proc, timeout=240)
    assert manifest["status"] == "succeeded", manifest
    assert manifest["stages"]["render"]["attempts"] == 2
    assert probe_video(bucket / manifest["outputs"]["video"]).num_frames == 13
