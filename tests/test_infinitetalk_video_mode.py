"""`infinitetalk: mode: video` (video-to-video, "sparse-frame dubbing"): every chunk's reference is the avatar's
reference footage at that chunk's start frame, played forward then backward (ping-pong) for speech longer than
the footage, with no jump.

The first two tests are the backend's frame source alone (no model, under a second). The others (slow) go through
the real backend on tiny random weights: a train job with `mode: video`, a script render in video mode, and one
recording rendered in video mode and, with the avatar's options switched, in image mode (same speech, same seed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import functions.infinitetalk_render as render_module
from core.video import sample_frames, write_mp4
from functions.infinitetalk_render import footage_source
from functions.infinitetalk_chunks import plan_chunks
from functions.reference_footage import ping_pong
from tests import pipeline_jobs
from tests.pipeline_jobs import drain, submit
from tests.infinitetalk_jobs import LONG_LINE, tiny_train_brief
from tests.real_media import looped_talking_video, media_file

# The train brief of tests/test_infinitetalk_backend.py, with `mode: video` and two steps (speed: the LoRA is not
# what is tested here).
TRAIN = tiny_train_brief(avatar="vic", video="uploads/vic.mp4", epochs=1, max_steps=2, mode="video")
SCRIPT = f"avatar: vic\nscript: {LONG_LINE}\n"
LINE = "avatar: vic\naudio: uploads/line.wav\n"


def levels(n: int) -> np.ndarray:
    return 10 + 24 * np.arange(n)  # flat grey levels far enough apart to survive H.264


def grey_footage(path: Path, n: int) -> Path:
    frames = np.repeat(levels(n)[:, None, None, None], 32 * 32 * 3).reshape(n, 32, 32, 3).astype(np.uint8)
    return write_mp4(frames, path, fps=25, crf=12)  # as the backend writes reference.mp4


def position(frame: np.ndarray, n: int) -> int:
    """Which footage frame this is: the nearest grey level."""
    return int(np.abs(levels(n) - float(np.asarray(frame).mean())).argmin())


def test_footage_plays_forward_then_backward_without_a_jump(tmp_path):
    n = 10
    source = footage_source(grey_footage(tmp_path / "reference.mp4", n))
    count = 4 * n  # well past the footage: two turns at the end, one back at the start
    played = [position(source(i), n) for i in range(count)]
    assert played[:n] == list(range(n))  # the footage itself first, every frame, in order
    assert played[n:2 * n - 1] == list(range(n - 2, -1, -1))  # then backwards, the last frame not repeated
    assert played == ping_pong(count, n).tolist()
    assert all(abs(b - a) == 1 for a, b in zip(played, played[1:]))  # no jump, no stall
    assert source(count + 3).shape == (32, 32, 3) and source(0).dtype == np.uint8


def test_one_frame_footage_is_held(tmp_path):
    source = footage_source(grey_footage(tmp_path / "reference.mp4", 1))
    assert {position(source(i), 1) for i in range(7)} == {0}


# ------------------------------------------------------------------------------------ through the backend


def video_frames(path: Path) -> np.ndarray:
    return np.stack([f.pixels for f in sample_frames(path, fps=25, size=(32, 32))])


def frame_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "json", str(path)], check=True, capture_output=True)
    return int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])


def plan_of(job) -> dict:
    prepare = job.stages["prepare"]
    return prepare["handoff"]["plan"] if isinstance(prepare, dict) else prepare.handoff["plan"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    video = looped_talking_video(media / "vic.mp4", clip="talking-3.mp4", seconds=30, side=160)
    speech = media / "line.wav"  # a recording: the same speech for both modes (piper's takes vary by a frame or two)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_file("speech-en.wav")), "-t", "4.5", "-ac", "1",
                    str(speech)], check=True)
    runner = pipeline_jobs.make_runner(tmp_path_factory.mktemp("bucket"),
                                       {"uploads/vic.mp4": video, "uploads/line.wav": speech})
    job = drain(runner, submit(runner, "vic.yaml", TRAIN))
    return runner, job


@pytest.fixture(scope="module")
def renders(trained):
    """A script rendered in video mode (as trained); a recording rendered in video mode, then, with the avatar's
    options switched to `mode: image`, again. With the reference each render handed to `iter_talking`."""
    runner, _ = trained
    seen: list = []  # the `reference` of every iter_talking call, in order
    real = render_module.iter_talking

    def spy(components, *, reference, **kwargs):
        seen.append(reference)
        return real(components, reference=reference, **kwargs)

    jobs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(render_module, "iter_talking", spy)
        jobs["script"] = drain(runner, submit(runner, "hello.yaml", SCRIPT))
        jobs["video"] = drain(runner, submit(runner, "line-video.yaml", LINE))
        avatar = json.loads(runner.storage.get_bytes("avatars/vic/manifest.json"))
        key = avatar["assets"]["options"]
        options = json.loads(runner.storage.get_bytes(key))
        runner.storage.put_bytes(key, json.dumps({**options, "mode": "image"}).encode())
        try:
            jobs["image"] = drain(runner, submit(runner, "line-image.yaml", LINE))
        finally:
            runner.storage.put_bytes(key, json.dumps(options).encode())
    return runner, jobs, seen


@pytest.mark.slow
def test_training_keeps_video_mode_and_the_reference_footage(trained):
    runner, job = trained
    assert job.status.value == "succeeded", job.error
    avatar = json.loads(runner.storage.get_bytes("avatars/vic/manifest.json"))
    assert json.loads(runner.storage.get_bytes(avatar["assets"]["options"]))["mode"] == "video"
    footage = video_frames(runner.storage.root / avatar["assets"]["reference"])
    assert len(footage) == job.stages["train"].metrics["reference_footage_frames"] >= 9


@pytest.mark.slow
def test_a_video_mode_script_render_rereferences_each_chunk_from_the_footage(trained, renders):
    runner, jobs, seen = renders
    job = jobs["script"]
    assert job.status.value == "succeeded", job.error
    plan = plan_of(job)
    render = job.stages["render"].metrics
    assert render["mode"] == "video" and render["frames"] == plan["num_frames"] and render["chunks"] >= 3
    assert frame_count(runner.storage.root / job.outputs["video"]) == plan["num_frames"]

    # The reference was a frame source: the footage, a different frame per chunk. It is called again here as the
    # sampler called it, with each chunk's start frame: the footage frame ping-pong order puts there.
    source = seen[0]
    assert callable(source)
    chunks = plan_chunks(plan["num_frames"], chunk_frames=17, motion_frames=5)
    assert len(chunks) == render["chunks"]
    references = [np.asarray(source(c.start)) for c in chunks]
    assert any(not np.array_equal(references[0], r) for r in references[1:])  # the references differ per chunk
    avatar = json.loads(runner.storage.get_bytes("avatars/vic/manifest.json"))
    footage = video_frames(runner.storage.root / avatar["assets"]["reference"])
    for c, r in zip(chunks, references):
        assert np.array_equal(r, footage[ping_pong(c.start + 1, len(footage))[c.start]])


@pytest.mark.slow
def test_video_mode_frames_differ_from_an_image_mode_render_of_the_same_speech(trained, renders):
    runner, jobs, seen = renders
    for mode in ("video", "image"):
        assert jobs[mode].status.value == "succeeded", jobs[mode].error
        assert jobs[mode].stages["render"].metrics["mode"] == mode
    assert callable(seen[1]) and not callable(seen[2])  # footage for one, the reference image for the other
    plan, image_plan = plan_of(jobs["video"]), plan_of(jobs["image"])
    assert image_plan["num_frames"] == plan["num_frames"] and image_plan["seed"] == plan["seed"]
    paths = [runner.storage.root / jobs[mode].outputs["video"] for mode in ("video", "image")]
    assert [frame_count(p) for p in paths] == [plan["num_frames"]] * 2
    a, b = (video_frames(p).astype(np.int16) for p in paths)
    assert a.shape == b.shape
    difference = float(np.abs(a - b).mean())
    assert difference > 1.0, difference  # mean |Δ| per uint8 value (3.5 when written)
