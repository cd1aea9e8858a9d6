"""The wav2lip backend through the pipeline, on real footage with its own sound (../shared/media).

One small avatar (width 1/8, a few steps) is trained from a clip of a real person talking, looped to 32 s;
then it speaks scripts and recordings. What is checked is the plumbing a user relies on: every frame at
25 fps with its audio, the avatar's files, the MP4's streams and timing, the pixels outside the mouth, the
error codes, kill and resume, cancel. Whether the mouth follows the audio is tests/test_talking_sync.py's.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import functions.backends.wav2lip as wav2lip_module
from core.audio import read_wav
from core.runner import Runner
from core.video import write_mp4
from functions.lora_dataset import load_face_records
from functions.models.wav2lip_audio import window_start
from functions.paste_back import mouth_mask
from functions.reference_footage import ping_pong
from functions.wav2lip_avatar import Wav2LipAvatarFiles, read_reference
from functions.wav2lip_dataset import sync_windows
import pipeline_jobs
from pipeline_jobs import SimulatedKill, dies_after_checkpoint, drain, submit
from tests.real_media import looped_talking_video, media_file

pytestmark = pytest.mark.slow

SECONDS = 32
TRAIN = """\
kind: train
avatar: {avatar}
video: uploads/ann.mp4
backend: wav2lip
epochs: 1
batch_size: 8
max_steps: {steps}
checkpoint_every: {every}
mixed_precision: "no"
seed: 3
wav2lip:
  width: 0.125
"""


@pytest.fixture(scope="module")
def talking_video(tmp_path_factory) -> Path:
    return looped_talking_video(tmp_path_factory.mktemp("video") / "ann.mp4", seconds=SECONDS, side=360)


def make_runner(bucket: Path, video: Path, **settings) -> Runner:
    return pipeline_jobs.make_runner(bucket, {"uploads/ann.mp4": video}, **settings)


@pytest.fixture(scope="module")
def trained(talking_video, tmp_path_factory):
    runner = make_runner(tmp_path_factory.mktemp("bucket"), talking_video)
    job = drain(runner, submit(runner, "ann.yaml", TRAIN.format(avatar="ann", steps=4, every=2)))
    assert job.status.value == "succeeded", job.error
    return runner, job


def ffprobe_streams(path: Path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,start_time,duration,"
                          "nb_frames,sample_rate,channels", "-of", "json", str(path)], check=True, capture_output=True)
    return json.loads(out.stdout)["streams"]


def decode(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


# --- the audio-visual dataset of real footage ---------------------------------------------------

def test_real_footage_keeps_every_frame_at_25_fps_with_its_audio(trained):
    runner, job = trained
    prepare = job.stages["prepare"]
    assert prepare.handoff["sample_fps"] == 25
    assert prepare.metrics["total"] == SECONDS * 25 and prepare.metrics["dropped_duplicate"] == 0
    audio = prepare.handoff["audio"]
    wav = read_wav(runner.storage.path(audio["key"]))
    assert wav.sample_rate == 16_000 and wav.samples.ndim == 1
    assert abs(wav.duration_s - SECONDS) < 0.05 and audio["speech_share"] > 0.3 and audio["lufs"] is not None

    records = load_face_records(runner.storage, job.stages["align"].handoff["metadata_key"])
    for record in records:
        assert record.time_s == pytest.approx(record.frame_index / 25, abs=1e-6)
    assert len(records) >= 0.95 * SECONDS * 25  # a face in (nearly) every frame: none were thinned out
    windows = sync_windows(records, "train", fps=25, seed=0)
    assert windows and all(w.mel_start == int(80 * w.frame_indices[0] / 25) == window_start(w.frame_indices[0], 25)
                           for w in windows)
    splits = {r.split for r in records if r.split}
    assert splits == {"train", "val", "test"}


# --- the trained avatar -------------------------------------------------------------------------

def test_training_reports_live_metrics_a_curve_and_deploys_every_file(trained):
    runner, job = trained
    train = job.stages["train"]
    metrics = train.metrics
    assert metrics["expert"]["steps"] == 4 and metrics["generator"]["steps"] == 4
    assert set(metrics["windows"]) == {"train", "val", "test"} and metrics["windows"]["train"] > 500
    assert 0 <= metrics["quality_score"] <= 100 and metrics["test"]["quality_basis"] in ("reconstruction",
                                                                                          "reconstruction+sync")
    assert {"expert_history", "generator_history"} <= set(metrics)  # per epoch (4 steps end none here)
    assert metrics["expert"]["val_loss"] > 0 and metrics["expert"]["val_accuracy"] is not None
    assert metrics["generator"]["val_l1"] > 0 and metrics["generator"]["val_sync"] > 0
    png = runner.storage.get_bytes(job.outputs["loss_curve"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    assert avatar["backend"] == "wav2lip" and avatar["talks"] is True
    assert set(avatar["assets"]) == {"reference", "track", "expert"}
    for key in (avatar["weights_key"], *avatar["assets"].values()):
        assert key.startswith("avatars/ann/") and runner.storage.exists(key)
    files = Wav2LipAvatarFiles.model_validate_json(runner.storage.get_bytes(avatar["assets"]["track"]))
    assert len(files.track) == 250 and (files.frame_width, files.frame_height) == (360, 360)


def test_the_preview_speaks_the_fixed_sentence(trained):
    runner, job = trained
    plan = job.stages["train"].handoff["preview"]
    assert plan["speech"]["source"] == "script" and plan["speech"]["characters"] > 20
    streams = ffprobe_streams(runner.storage.path(job.outputs["video"]))
    assert [s["codec_name"] for s in streams] == ["h264", "aac"]


# --- talking renders ----------------------------------------------------------------------------

def render(runner: Runner, name: str, text: str):
    return drain(runner, submit(runner, name, text))


def test_a_script_becomes_an_mp4_with_its_speech_in_sync(trained, tmp_path):
    runner, _ = trained
    job = render(runner, "hello.yaml", "avatar: ann\nscript: Good morning. This sentence was never in the "
                 "training video, and the mouth has to follow it.\n")
    assert job.status.value == "succeeded", job.error
    plan = job.stages["prepare"].handoff["plan"]
    speech_s = plan["speech"]["duration_s"]
    video_path = runner.storage.path(job.outputs["video"])
    video, audio = ffprobe_streams(video_path)
    assert (video["codec_name"], audio["codec_name"]) == ("h264", "aac")
    assert abs(float(video["start_time"]) - float(audio["start_time"])) <= 1 / 25  # A/V start offset ≤ 1 frame
    assert float(video["start_time"]) == 0.0
    assert abs(float(video["duration"]) - speech_s) <= 1 / 25 + 1e-6  # video = speech ± 1 frame
    assert int(video["nb_frames"]) == plan["num_frames"] == round(speech_s * 25)
    assert abs(float(audio["duration"]) - speech_s) < 0.05
    sync = job.stages["render"].metrics["lip_sync"]
    assert sync["scorer"] == "videostudio_expert" and -15 <= sync["offset_frames"] <= 15
    assert runner.storage.get_bytes(job.outputs["poster"])[:2] == b"\xff\xd8"

    # Outside the pasted mouth every pixel is the reference footage's: compare with the same frames
    # (in the same ping-pong order) encoded the same way.
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    files = Wav2LipAvatarFiles.model_validate_json(runner.storage.get_bytes(avatar["assets"]["track"]))
    reference = read_reference(runner.storage.path(avatar["assets"]["reference"]), files)
    order = ping_pong(plan["num_frames"], len(reference))
    expected_path = write_mp4((reference[p] for p in order), tmp_path / "expected.mp4", fps=25)
    expected = decode(expected_path, files.frame_width, files.frame_height).astype(np.float64)
    output = decode(video_path, files.frame_width, files.frame_height).astype(np.float64)
    assert output.shape == expected.shape
    shape = (files.frame_height, files.frame_width)
    errors = []
    for t, p in enumerate(order):
        mask = mouth_mask((*shape, 3), np.asarray(files.track[p].landmarks))
        outside = np.ones(shape, bool)
        if mask is not None:  # the codec's 16-px macroblocks around the mask may differ: leave a margin
            ys, xs = mask.window
            outside[max(0, ys.start - 16):ys.stop + 16, max(0, xs.start - 16):xs.stop + 16] = False
        errors.append(((output[t] - expected[t]) ** 2)[outside].mean())
    psnr = 10 * np.log10(255 ** 2 / max(np.mean(errors), 1e-12))
    assert psnr >= 40, psnr
    # and the mouth really was regenerated: inside the mask the frames differ
    inside = ((output - expected) ** 2).mean()
    assert inside > np.mean(errors)


def test_an_uploaded_recording_is_spoken_too(trained):
    runner, _ = trained
    runner.storage.put_file("uploads/line.wav", media_file("speech-en.wav"))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_file("speech-en.wav")), "-t", "3", "-c:a", "libmp3lame",
                    str(runner.storage.root / "uploads" / "line.mp3")], check=True)
    job = render(runner, "line.yaml", "avatar: ann\naudio: uploads/line.mp3\n")
    assert job.status.value == "succeeded", job.error
    plan = job.stages["prepare"].handoff["plan"]
    assert plan["speech"]["source"] == "audio" and abs(plan["speech"]["duration_s"] - 3.0) < 0.1
    assert plan["num_frames"] == round(plan["speech"]["duration_s"] * 25)


@pytest.mark.parametrize("brief, code", [
    ("avatar: ann\nscript: ''\n", "empty_script"),
    ("avatar: ann\nscript: '" + "word " * 1100 + "'\n", "script_too_long"),
    ("avatar: ann\naudio: uploads/nowhere.wav\n", "audio_not_found"),
    ("avatar: ann\naudio: uploads/garbage.wav\n", "unreadable_audio"),
    ("avatar: ann\nscript: hello\nvoice: /no/such/voice.onnx\n", "unknown_voice"),
    ("avatar: ann\nprompt: a person smiling\n", "missing_speech"),
    ("avatar: nobody\nscript: hello\n", "avatar_not_found"),
    ("script: hello\n", "missing_avatar"),
    ("avatar: ann\nscript: hi\naudio: uploads/line.wav\n", "conflicting_speech"),
])
def test_bad_speech_fails_with_its_code_and_the_worker_goes_on(trained, brief, code):
    runner, _ = trained
    runner.storage.put_bytes("uploads/garbage.wav", b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    runner.storage.put_file("uploads/line.wav", media_file("speech-en.wav"))
    job = render(runner, f"bad-{code}.yaml", brief)
    assert job.status.value == "failed" and job.error.code == code, job.error
    # the next job on the same worker is served
    ok = render(runner, f"after-{code}.yaml", "avatar: ann\nscript: Still here.\n")
    assert ok.status.value == "succeeded", ok.error


def test_a_script_to_a_mochi_avatar_is_avatar_cannot_talk(trained):
    runner, _ = trained
    runner.storage.put_bytes("avatars/mochi-ann/manifest.json", json.dumps({
        "avatar_id": "mochi-ann", "job_id": "j", "backend": "mochi-lora", "base_model": "tiny",
        "weights_key": "avatars/mochi-ann/lora.safetensors", "trigger_token": "vs_mochi-ann"}).encode())
    job = render(runner, "mochi-talk.yaml", "avatar: mochi-ann\nscript: hello\n")
    assert job.status.value == "failed" and job.error.code == "avatar_cannot_talk", job.error


# --- bad training videos ------------------------------------------------------------------------

def test_a_training_video_without_sound_is_no_audio_stream(talking_video, tmp_path):
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(talking_video), "-an", "-c:v", "copy", str(silent)],
                   check=True)
    runner = make_runner(tmp_path / "bucket", silent)
    job = drain(runner, submit(runner, "silent.yaml", TRAIN.format(avatar="quiet", steps=2, every=2)))
    assert job.status.value == "failed" and job.error.code == "no_audio_stream", job.error
    assert job.stages["align"].status.value != "succeeded"


# --- kill, resume, cancel -----------------------------------------------------------------------

def test_killed_training_resumes_to_the_same_weights(trained, talking_video, tmp_path, monkeypatch):
    _, straight = trained
    reference_runner = trained[0]
    runner = make_runner(tmp_path / "killed", talking_video, lease_s=0.5)
    job_id = submit(runner, "ann.yaml", TRAIN.format(avatar="ann", steps=4, every=2))
    with dies_after_checkpoint(monkeypatch, wav2lip_module, "train_generator", 1), pytest.raises(SimulatedKill):
        drain(runner, job_id)  # killed right after the generator's checkpoint of step 2
    assert runner.store.load(job_id).stages["train"].status.value == "running"
    time.sleep(0.6)  # the dead worker's lease expires; the message comes back
    resumed = drain(runner, job_id)
    assert resumed.status.value == "succeeded", resumed.error
    assert resumed.stages["train"].attempts == 2

    def weights(r: Runner, job) -> dict[str, torch.Tensor]:
        return torch.load(io.BytesIO(r.storage.get_bytes(job.outputs["weights"])), weights_only=True)

    a, b = weights(reference_runner, straight), weights(runner, resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stages["train"].metrics["test"] == straight.stages["train"].metrics["test"]


def test_cancel_stops_training_between_steps(talking_video, tmp_path):
    runner = make_runner(tmp_path / "bucket", talking_video)
    job_id = submit(runner, "long.yaml", TRAIN.format(avatar="long", steps=100000, every=100000))
    worker = threading.Thread(target=drain, args=(runner, job_id))
    worker.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        live = runner.store.load(job_id).stages["train"].metrics or {}  # what a dashboard shows while it trains
        if live.get("phase") == "expert" and live.get("step", 0) > 3:
            break
        time.sleep(0.1)
    assert live["phase"] == "expert" and live["total_steps"] > 3
    assert {"loss", "accuracy"} <= set(live["expert_last"])
    runner.cancel(job_id)
    worker.join(timeout=60)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "cancelled"
    assert manifest.stages["train"].status.value == "cancelled"
    assert not runner.storage.exists(f"jobs/{job_id}/train/wav2lip.pth")


def test_standard_lse_is_added_when_syncnet_v2_weights_are_given(trained, tmp_path, monkeypatch):
    from functions.models.syncnet_v2 import SyncNetV2

    runner, _ = trained
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), weights)  # random weights with the public names: the plumbing, not the score
    monkeypatch.setenv("VIDEOSTUDIO_SYNCNET_WEIGHTS", str(weights))
    job = render(runner, "lse.yaml", "avatar: ann\nscript: Scored the standard way, with SyncNet.\n")
    assert job.status.value == "succeeded", job.error
    standard = job.stages["render"].metrics["lip_sync_standard"]
    assert standard["scorer"] == "syncnet_v2" and standard["comparable_with_published"] is True
    assert standard["lse_d"] == standard["min_dist"] and standard["lse_c"] == standard["confidence"] >= 0

    monkeypatch.setenv("VIDEOSTUDIO_SYNCNET_WEIGHTS", str(tmp_path / "missing.model"))
    job = render(runner, "lse-missing.yaml", "avatar: ann\nscript: Still rendered without it.\n")
    assert job.status.value == "succeeded", job.error
    assert "lip_sync_standard" not in job.stages["render"].metrics
    assert any("no standard LSE" in w for w in job.warnings)
