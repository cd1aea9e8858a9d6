"""Avatar training on the CPU with the tiny model: losses, resume after a kill, export, deploy, render with the LoRA."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import functions.backends.mochi_lora as train_module
from conftest import TINY_BRIEF
from core.avatars import AvatarRegistry
from core.runner import Runner
from functions.lora_dataset import build_clips, load_face_records
from functions.models.mochi import build_tiny_pipeline
import pipeline_jobs
from pipeline_jobs import SimulatedKill, dies_after_checkpoint, drain, submit
from synthetic_video import write_face_video

TRAIN_BRIEF = """\
kind: train
avatar: {avatar}
video: uploads/astronaut.mp4
extract_fps: 5
resolution: 64
clip_frames: 7
epochs: {epochs}
batch_size: 2
learning_rate: 0.005
mixed_precision: "no"
checkpoint_every: {checkpoint_every}
optimizer: {optimizer}
preview_steps: 3
seed: 5
"""


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    return write_face_video(tmp_path_factory.mktemp("video") / "astronaut.mp4", duration_s=32.0, fps=10)


def make_runner(bucket: Path, face_video: Path, **settings) -> Runner:
    return pipeline_jobs.make_runner(bucket, {"uploads/astronaut.mp4": face_video}, **settings)


@pytest.fixture(scope="module")
def trained(face_video, tmp_path_factory):
    runner = make_runner(tmp_path_factory.mktemp("bucket"), face_video)
    job_id = submit(runner, "astro.yaml", TRAIN_BRIEF.format(avatar="astro", epochs=12, checkpoint_every=20,
                                                          optimizer="auto"))
    return runner, drain(runner, job_id)


def test_training_overfits_reports_metrics_and_exports(trained):
    runner, manifest = trained
    assert manifest.status.value == "succeeded", manifest.error
    assert list(manifest.stages) == ["prepare", "align", "train", "render"]
    metrics = manifest.stages["train"].metrics
    assert len(metrics["train_loss"]) == len(metrics["val_loss"]) == 12
    fixed = metrics["train_fixed_noise_loss"]  # same clips, same noise: only the LoRA changed
    assert fixed["after"] < 0.92 * fixed["before"]  # overfitting a small dataset works (deterministic run)
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert all(v is not None for v in metrics["val_loss"])
    assert metrics["test_loss"] is not None and metrics["base_test_loss"] is not None
    assert 0 <= metrics["quality_score"] <= 100
    assert metrics["optimizer"] == "adamw8bit"  # bitsandbytes' 8-bit AdamW runs on this CPU
    assert metrics["steps_per_s"] > 0 and metrics["clips"]["train"] > 0
    storage = runner.storage
    assert storage.get_bytes(manifest.outputs["loss_curve"])[:8] == b"\x89PNG\r\n\x1a\n"
    # The export is what MochiPipeline.load_lora_weights reads.
    pipe = build_tiny_pipeline()
    path = storage.path(manifest.outputs["lora"])
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="astro")
    assert "astro" in pipe.get_list_adapters()["transformer"]
    # Deployed by default, with the preview rendered through the LoRA.
    avatar = AvatarRegistry(storage).require("astro")
    assert avatar.job_id == manifest.job_id and avatar.trigger_token == "vs_astro" and avatar.base_model == "tiny"
    assert storage.exists(avatar.lora_key)
    assert manifest.stages["render"].metrics["avatar"] == "astro" and storage.exists(manifest.outputs["video"])


def test_validation_and_test_clips_come_only_from_their_splits(trained):
    runner, manifest = trained
    records = load_face_records(runner.storage, manifest.stages["align"].outputs["metadata"])
    metrics = manifest.stages["train"].metrics
    lengths = {"train": metrics["clip_frames"], **metrics["eval_frames"]}  # val/test runs may be shorter
    for split, length in lengths.items():
        clips = build_clips(records, split, length)
        assert len(clips) == metrics["clips"][split] > 0
        for clip in clips:
            assert len(clip.frame_keys) == length
            assert all(f"/faces/{split}/" in key for key in clip.frame_keys)


def _frames(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8)


def test_lora_changes_the_render_and_strength_zero_is_the_base_model(trained):
    runner, _ = trained
    prompt = 'prompt: "vs_astro, a portrait"\n'
    base_brief = TINY_BRIEF.format(steps=3, seed=2).replace('prompt: "A serene mountain landscape at dawn"\n', prompt)
    outputs = {}
    for name, extra in (("base", ""), ("full", "avatar: astro\n"), ("zero", "avatar: astro\navatar_strength: 0\n")):
        manifest = drain(runner, submit(runner, f"{name}.yaml", base_brief + extra))
        assert manifest.status.value == "succeeded", manifest.error
        outputs[name] = _frames(runner.storage.path(manifest.outputs["video"]))
    assert np.array_equal(outputs["zero"], outputs["base"])
    assert not np.array_equal(outputs["full"], outputs["base"])


def test_deleted_avatar_can_no_longer_be_rendered(face_video, tmp_path):
    runner = make_runner(tmp_path / "bucket", face_video)
    manifest = drain(runner, submit(runner, "gone.yaml", TRAIN_BRIEF.format(avatar="gone", epochs=1,
                                                                          checkpoint_every=50, optimizer="adamw")))
    assert manifest.status.value == "succeeded" and manifest.stages["train"].metrics["optimizer"] == "adamw"
    registry = AvatarRegistry(runner.storage)
    registry.delete("gone")
    assert registry.get("gone") is None and not runner.storage.list_keys("avatars/gone/")
    failed = drain(runner, submit(runner, "use.yaml", TINY_BRIEF.format(steps=2, seed=1) + "avatar: gone\n"))
    assert failed.status.value == "failed" and failed.error.code == "avatar_not_found"


def test_killed_training_resumes_to_the_same_adapter(face_video, tmp_path, monkeypatch):
    brief = TRAIN_BRIEF.format(avatar="resume", epochs=4, checkpoint_every=5, optimizer="auto")
    straight = make_runner(tmp_path / "straight", face_video)
    reference = drain(straight, submit(straight, "r.yaml", brief))
    assert reference.status.value == "succeeded"

    runner = make_runner(tmp_path / "killed", face_video, lease_s=0.5)
    job_id = submit(runner, "r.yaml", brief)
    with dies_after_checkpoint(monkeypatch, train_module, "run_training", 2), pytest.raises(SimulatedKill):
        drain(runner, job_id)  # killed right after the checkpoint of step 10
    killed = runner.store.load(job_id)
    assert killed.stages["train"].status.value == "running"
    time.sleep(0.6)  # the dead worker's lease expires; the message comes back
    resumed = drain(runner, job_id)
    assert resumed.status.value == "succeeded", resumed.error
    train = resumed.stages["train"]
    assert train.attempts == 2 and train.metrics["resumed"] is True
    assert train.metrics["steps"] == reference.stages["train"].metrics["steps"]
    assert train.metrics["train_loss"] == reference.stages["train"].metrics["train_loss"]
    a = load_file(str(straight.storage.path(reference.outputs["lora"])))
    b = load_file(str(runner.storage.path(resumed.outputs["lora"])))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cancel_stops_training_between_steps(face_video, tmp_path):
    runner = make_runner(tmp_path / "bucket", face_video)
    job_id = submit(runner, "long.yaml", TRAIN_BRIEF.format(avatar="long", epochs=400, checkpoint_every=1000,
                                                          optimizer="adamw"))
    worker = threading.Thread(target=drain, args=(runner, job_id))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manifest = runner.store.load(job_id)
        progress = manifest.stages["train"].progress
        if progress and progress.step and progress.step > 5:
            break
        time.sleep(0.1)
    runner.cancel(job_id)
    worker.join(timeout=60)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "cancelled"
    assert manifest.stages["train"].status.value == "cancelled"
    assert manifest.stages["render"].status.value == "cancelled"
    assert not runner.storage.exists(f"jobs/{job_id}/train/lora.safetensors")
