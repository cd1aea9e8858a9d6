"""Presets, frame snapping, and the render stage with the tiny Mochi pipeline (in process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_BRIEF
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.storage import LocalStorage
from functions.presets import PRESETS, resolve_render_plan, snap_frames
from functions.routes import default_pipeline
from schemas.brief import parse_brief
from schemas.events import StorageEvent


@pytest.mark.parametrize("requested, expected", [(1, 7), (7, 7), (90, 91), (163, 163), (180, 181), (185, 187)])
def test_frame_counts_snap_to_6k_plus_1(requested, expected):
    assert snap_frames(requested) == expected
    assert (snap_frames(requested) - 1) % 6 == 0


@pytest.mark.parametrize("preset, steps, frames", [("fast", 30, 91), ("balanced", 60, 181), ("quality", 100, 181)])
def test_presets_match_the_product_spec(preset, steps, frames):
    plan = resolve_render_plan(parse_brief(f"prompt: hi\npreset: {preset}\n".encode()), Settings())
    assert (plan.steps, plan.num_frames, plan.fps, plan.width, plan.height) == (steps, frames, 30, 848, 480)
    assert plan.duration_s == pytest.approx(PRESETS[preset].duration_s, abs=0.05)
    assert plan.frames_snapped


def test_brief_steps_override_the_preset_and_model_defaults_to_settings():
    plan = resolve_render_plan(parse_brief(b"prompt: hi\nsteps: 7\n"), Settings(model="genmo/mochi-1-preview"))
    assert plan.steps == 7 and plan.model == "genmo/mochi-1-preview" and not plan.random_weights


def render_in(bucket: Path, brief: str, events: list | None = None):
    storage = LocalStorage(bucket)
    runner = Runner(storage, SqliteQueue(storage.state_dir / "q.sqlite3"), default_pipeline(),
                    Settings(bucket=str(bucket), progress_interval_s=0.0),
                    on_event=(lambda e, d: events.append((e, d))) if events is not None else None)
    storage.put_bytes("inbox/brief.yaml", brief.encode())
    job_id, _ = runner.submit(StorageEvent(bucket=storage.name, key="inbox/brief.yaml"))
    while runner.work_once(job_id=job_id):
        pass
    return runner.store.load(job_id), storage


def decoded_frames(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8)


def test_same_brief_and_seed_give_identical_frames_and_progress_is_reported(tmp_path):
    events: list = []
    brief = TINY_BRIEF.format(steps=3, seed=11)
    first, s1 = render_in(tmp_path / "one", brief, events)
    second, s2 = render_in(tmp_path / "two", brief)
    other, s3 = render_in(tmp_path / "three", TINY_BRIEF.format(steps=3, seed=12))
    assert first.status.value == second.status.value == other.status.value == "succeeded"
    a = decoded_frames(s1.path(first.outputs["video"]))
    b = decoded_frames(s2.path(second.outputs["video"]))
    c = decoded_frames(s3.path(other.outputs["video"]))
    assert a.size == 13 * 48 * 64 * 3
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    steps = [d["step"] for e, d in events if e == "stage.progress" and d["stage"] == "render" and d.get("step")]
    assert steps == [1, 2, 3]
    render = first.stages["render"]
    assert render.metrics["frames"] == 13 and render.metrics["fps"] == 12 and render.metrics["random_weights"]
    assert first.versions.model == "tiny" and first.versions.torch and first.versions.diffusers
    assert first.cost.seconds["render"] > 0 and first.cost.device


def test_missing_avatar_fails_clearly(tmp_path):
    manifest, _ = render_in(tmp_path / "b", TINY_BRIEF.format(steps=2, seed=1) + "avatar: nobody\n")
    assert manifest.status.value == "failed" and manifest.error.code == "avatar_not_found"


def test_unavailable_model_fails_clearly_without_retry_storm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest, _ = render_in(tmp_path / "b", TINY_BRIEF.format(steps=2, seed=1).replace("model: tiny",
                                                                                       "model: no-such/model"))
    assert manifest.status.value == "failed" and manifest.error.code == "model_unavailable"
    assert manifest.stages["render"].attempts == 1
