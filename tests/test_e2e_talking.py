"""End to end on the embedded default: `videostudio up` trains a talking avatar from a video with sound, a
dropped script brief makes it speak, and `videostudio say` does the same from the command line (README)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import CLI, drop_by_rename, stop, wait_for_job, worker_env
from tests.real_media import looped_talking_video

pytestmark = pytest.mark.slow

TRAIN = """\
kind: train
avatar: ann
video: uploads/ann.mp4
backend: wav2lip
epochs: 1
batch_size: 8
max_steps: 3
mixed_precision: "no"
wav2lip:
  width: 0.125
"""


def streams(path: Path) -> dict[str, dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,start_time,duration",
                          "-of", "json", str(path)], check=True, capture_output=True)
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


def assert_speaks(path: Path, speech_s: float) -> None:
    found = streams(path)
    assert found["video"]["codec_name"] == "h264" and found["audio"]["codec_name"] == "aac"
    assert float(found["video"]["start_time"]) == 0.0 and float(found["audio"]["start_time"]) <= 1 / 25
    assert abs(float(found["video"]["duration"]) - speech_s) <= 1 / 25 + 1e-6


def test_up_trains_a_talking_avatar_that_speaks_a_dropped_script_and_says_a_line(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    (bucket / "uploads").mkdir(parents=True)
    looped_talking_video(bucket / "uploads" / "ann.mp4", clip="talking-2.mp4", seconds=32, side=320)
    proc = up_process(bucket)
    drop_by_rename(bucket, "ann.yaml", TRAIN)
    trained = wait_for_job(bucket, "inbox/ann.yaml", timeout=400, proc=proc)
    assert trained["status"] == "succeeded", trained.get("error")
    avatar = json.loads((bucket / "avatars" / "ann" / "manifest.json").read_text())
    assert avatar["backend"] == "wav2lip" and avatar["talks"]
    preview = trained["stages"]["train"]["handoff"]["preview"]["speech"]["duration_s"]
    assert_speaks(bucket / trained["outputs"]["video"], preview)

    drop_by_rename(bucket, "hello.yaml", "avatar: ann\nscript: Hello from the embedded default. No cloud account "
                   "was needed for this.\n")
    spoken = wait_for_job(bucket, "inbox/hello.yaml", timeout=200, proc=proc)
    assert spoken["status"] == "succeeded", spoken.get("error")
    speech = spoken["stages"]["prepare"]["handoff"]["plan"]["speech"]
    assert speech["voice"] == "en_US-joe-medium" and speech["source"] == "script"
    assert_speaks(bucket / spoken["outputs"]["video"], speech["duration_s"])
    assert "lip_sync" in spoken["stages"]["render"]["metrics"]
    stop(proc)

    # the one-line verb, as the README shows it
    out = tmp_path / "line.mp4"
    said = subprocess.run([CLI, "say", "ann", "One line, one command.", "--bucket", str(bucket), "-o", str(out)],
                          capture_output=True, text=True, env=worker_env(), timeout=300)
    assert said.returncode == 0, said.stdout + said.stderr
    assert said.stdout.strip().splitlines()[-1].endswith("line.mp4") and out.stat().st_size > 0
    found = streams(out)
    assert set(found) == {"video", "audio"}
