"""Issue 7.3 — a bad-input corpus, dropped into one `videostudio up`: each case ends in a `failed` manifest with
a specific error code (or `succeeded` where the input is valid), and the worker keeps serving.

The corpus is the table `CORPUS` below (briefs, keys and videos made in a fixture). It extends what
other tests already cover, which it does not repeat:
- tests/test_align.py: zero-byte, truncated, audio-only, image-renamed-.mp4, text-renamed-.mov, too
  short, too long and no-face videos, and a train brief naming a missing video (or none);
- tests/test_e2e_up.py: broken YAML/JSON, a wrong type, an unknown preset, negative steps, an empty prompt;
- tests/test_brief.py and tests/test_api.py: the same parse errors at the parser and over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from conftest import TINY_BRIEF, drop_by_rename, find_job, read_log, wait_for_job
from core.video import write_mp4
from reliability import record
from synthetic_video import _FACE_CENTRE, _MASK_AXES, pose_matrix, render_face_frames, write_face_video, face_pose

pytestmark = pytest.mark.slow

GOOD = TINY_BRIEF.format(steps=2, seed=3)
PROMPT = 'prompt: "A serene mountain landscape at dawn"\n'
TRAIN = """\
kind: train
avatar: {avatar}
video: {video}
extract_fps: {fps}
resolution: 32
clip_frames: 1
epochs: 1
batch_size: 4
learning_rate: 0.005
mixed_precision: "no"
optimizer: adamw
preview_steps: 2
deploy: false
seed: 5
"""


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines).replace("a: &a", "negative_prompt: &a", 1) + "\nprompt: *i\n"


@dataclass(frozen=True)
class Case:
    name: str          # the file dropped into inbox/ (a train brief names its video in uploads/)
    content: bytes | str
    expect: str        # an error code, or "succeeded"
    why: str
    video: str | None = None  # a generated video (fixture key) the train brief points at


def _train(avatar: str, video: str, fps: int = 1) -> str:
    return TRAIN.format(avatar=avatar, video=video, fps=fps)


CORPUS: list[Case] = [
    # --- briefs that do not parse
    Case("tab-indent.yaml", "prompt: hi\n\tsteps: 2\n", "invalid_yaml", "invalid YAML (a tab indent)"),
    Case("trailing-comma.json", '{"prompt": "hi",}', "invalid_json", "invalid JSON (a trailing comma)"),
    Case("deep.json", "[" * 100_000, "invalid_json", "JSON nested 100,000 deep (crashed the parser: fixed)"),
    Case("deep.yaml", "prompt: " + "[" * 100_000, "invalid_yaml", "YAML nested 100,000 deep (fixed)"),
    Case("huge-int.json", '{"prompt": "hi", "seed": 1' + "0" * 5000 + "}", "invalid_json",
         "a 5,001-digit integer (crashed the parser: fixed)"),
    Case("python-tag.yaml", "prompt: !!python/object/apply:os.system [echo pwned]\n", "invalid_yaml",
         "a YAML tag that would run code"),
    Case("laughs.yaml", _billion_laughs(), "invalid_field_type", "a YAML 'billion laughs' alias bomb"),
    Case("not-utf8.yaml", b"prompt: \xff\xfe caf\xe9\n", "invalid_encoding", "bytes that are not UTF-8"),
    Case("zero.yaml", b"", "empty_brief", "zero bytes"),
    Case("a-list.yaml", "- prompt: hi\n", "invalid_brief", "a list, not a mapping"),
    # --- wrong types and values
    Case("prompt-list.yaml", "prompt: [a, b]\n", "invalid_field_type", "prompt is a list"),
    Case("width-word.yaml", GOOD.replace("width: 64", "width: wide"), "invalid_field_type", "width is a word"),
    Case("webhook-string.yaml", GOOD + "webhook: http://example.com/hook\n", "invalid_field_type",
         "webhook is a string, not {url: …}"),
    Case("webhook-file.yaml", GOOD + "webhook: {url: 'file:///etc/passwd'}\n", "invalid_field_value",
         "webhook URL is not http(s)"),
    Case("nan.yaml", GOOD + "guidance_scale: .nan\n", "invalid_field_value", "guidance_scale is NaN"),
    Case("odd-size.yaml", GOOD.replace("width: 64", "width: 100"), "invalid_dimensions", "width not a multiple of 16"),
    Case("kind.yaml", "kind: upscale\nprompt: hi\n", "unknown_kind", "an unknown kind"),
    Case("prompt-1mb.yaml", "prompt: " + "x" * 999_000 + "\n", "prompt_too_long", "a ~1 MB prompt"),
    Case("over-1mb.yaml", "prompt: " + "x" * 1_000_001 + "\n", "brief_too_large", "a brief over 1 MB"),
    # --- references to what is not there, and keys that try to leave the bucket
    Case("no-avatar.yaml", GOOD + "avatar: nobody\n", "avatar_not_found", "a brief naming a missing avatar"),
    Case("dotdot.yaml", _train("dotdot", "../outside.mp4"), "invalid_key", "video key `../outside.mp4`"),
    Case("dotdot-deep.yaml", _train("deep", "uploads/../../etc/passwd.mp4"), "invalid_key",
         "video key `uploads/../../etc/passwd.mp4`"),
    Case("absolute.yaml", _train("absolute", "/etc/passwd"), "invalid_key", "an absolute video key"),
    Case("hidden.yaml", _train("hidden", "uploads/.secret.mp4"), "invalid_key", "a hidden (temp-file) video key"),
    Case("notes.txt", "hello\n", "unsupported_input", "neither a brief nor a video"),
    # --- odd but valid keys
    Case("my brief with spaces.yaml", GOOD, "succeeded", "a key with spaces"),
    Case("ünïcødé 日本語 ✓.yaml", TINY_BRIEF.format(steps=2, seed=4), "succeeded", "a key with unicode"),
    # --- videos (train briefs pointing at uploads/)
    Case("hevc.yaml", _train("hevc", "uploads/hevc.mp4"), "succeeded", "HEVC (libx265)", video="hevc.mp4"),
    Case("tenbit.yaml", _train("tenbit", "uploads/tenbit.mp4"), "succeeded", "10-bit H.264 (yuv420p10le)",
         video="tenbit.mp4"),
    Case("rotated.yaml", _train("rotated", "uploads/rotated.mp4"), "succeeded",
         "stored sideways with rotation metadata", video="rotated.mp4"),
    Case("two-faces.yaml", _train("twofaces", "uploads/two-faces.mp4", fps=5), "succeeded",
         "two faces; the main one present throughout", video="two-faces.mp4"),
    Case("eight-k.yaml", _train("eightk", "uploads/8k.mp4"), "resolution_too_high", "7680×4320 (8K)",
         video="8k.mp4"),
    Case("bomb.yaml", _train("bomb", "uploads/bomb.mkv"), "resolution_too_high",
         "a 1 KB file declaring 16000×16000 frames", video="bomb.mkv"),
    Case("bomb-invalid.yaml", _train("bombx", "uploads/bomb-32k.mkv"), "unreadable_video",
         "a 1 KB file declaring 32768×32768 frames (beyond ffmpeg's limit)", video="bomb-32k.mkv"),
]
# A file whose name is not UTF-8 cannot be a job (no S3 key, no JSON manifest can name it): it is skipped
# with `invalid_key` in the log, and it must not stop the jobs of other inputs (the reconciler's scan
# used to stop at it: fixed).
NOT_UTF8_NAME = b"a-\xff-not-utf8.yaml"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _patched_mkv(source: Path, target: Path, side: int) -> Path:
    """An FFV1 Matroska file whose PixelWidth/PixelHeight elements (256 → `side`) lie about the frame size."""
    data = bytearray(source.read_bytes())
    for element in (0xB0, 0xBA):  # PixelWidth, PixelHeight: 2-byte unsigned integers holding 256
        at = data.find(bytes([element, 0x82, 0x01, 0x00]))
        assert at >= 0
        data[at + 2:at + 4] = side.to_bytes(2, "big")
    target.write_bytes(bytes(data))
    return target


def _two_face_frames(duration_s: float, fps: int, width: int, height: int):
    """The moving main face, plus a smaller second face on the left for the first 40 % of the video."""
    astronaut = skimage.data.astronaut()
    mask = np.zeros(astronaut.shape[:2], np.float32)
    cv2.ellipse(mask, (int(_FACE_CENTRE[0]), int(_FACE_CENTRE[1]) - 10), _MASK_AXES, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)[..., None]
    second = pose_matrix(face_pose(0.0).__class__(centre=(0.16, 0.3), scale=0.55, angle_deg=0.0), width, height,
                         0.45 * height)
    face = cv2.warpAffine(astronaut, second, (width, height), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, second, (width, height), flags=cv2.INTER_LINEAR)[..., None]
    total = int(round(duration_s * fps))
    for n, frame in enumerate(render_face_frames(duration_s, fps, width, height)):
        if n < 0.4 * total:
            frame = (alpha * face + (1 - alpha) * frame).astype(np.uint8)
        yield frame


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus-videos")
    base = write_face_video(d / "base.mp4", duration_s=31.0, fps=5, width=320, height=180)
    out = {}
    _ffmpeg("-i", str(base), "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
            "-tag:v", "hvc1", str(d / "hevc.mp4"))
    _ffmpeg("-i", str(base), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", str(d / "tenbit.mp4"))
    # Stored turned a quarter clockwise; the rotation tag turns it back upright for display.
    _ffmpeg("-i", str(base), "-vf", "transpose=1", "-c:v", "libx264", "-preset", "ultrafast", str(d / "sideways.mp4"))
    _ffmpeg("-i", str(d / "sideways.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    write_mp4(_two_face_frames(31.0, 5, 320, 180), d / "two-faces.mp4", fps=5, crf=20)
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=7680x4320:r=0.25:d=32", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", str(d / "8k.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=256x256:r=0.25:d=32", "-c:v", "ffv1", "-pix_fmt", "gray",
            str(d / "small.mkv"))
    _patched_mkv(d / "small.mkv", d / "bomb.mkv", 16000)
    _patched_mkv(d / "small.mkv", d / "bomb-32k.mkv", 32768)
    for name in ("hevc.mp4", "tenbit.mp4", "rotated.mp4", "two-faces.mp4", "8k.mp4", "bomb.mkv", "bomb-32k.mkv"):
        out[name] = d / name
    return out


def test_corpus_has_at_least_25_cases():
    assert len(CORPUS) + 1 >= 25 and len({c.name for c in CORPUS}) == len(CORPUS)


def test_bad_input_corpus_through_one_worker(tmp_path, up_process, videos):
    bucket = tmp_path / "bucket"
    (bucket / "uploads").mkdir(parents=True)
    for name, path in videos.items():
        (bucket / "uploads" / name).write_bytes(path.read_bytes())
    proc = up_process(bucket)
    clock = time.monotonic()
    inbox = bucket / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / os.fsdecode(NOT_UTF8_NAME)).write_bytes(GOOD.encode())  # first in key order: before every other input
    for case in CORPUS:
        drop_by_rename(bucket, case.name, case.content)

    results = []
    for case in CORPUS:
        manifest = wait_for_job(bucket, f"inbox/{case.name}", proc=proc, timeout=300)
        status = manifest["status"]
        code = (manifest.get("error") or {}).get("code")
        results.append({"case": case.name, "why": case.why, "expected": case.expect,
                        "status": status, "code": code, "seconds": manifest["cost"]["seconds"]})
        if case.expect == "succeeded":
            assert status == "succeeded", (case.name, manifest.get("error"))
            continue
        assert (status, code) == ("failed", case.expect), (case.name, manifest.get("error"))
        error = manifest["error"]
        assert error["message"] and error["retryable"] is False, case.name
        failed = [name for name, r in manifest["stages"].items() if r["status"] == "failed"]
        assert len(failed) == 1 and manifest["stages"][failed[0]]["attempts"] == 1, case.name  # failed at once
        stage_manifest = json.loads((bucket / "jobs" / manifest["job_id"] / failed[0] / "manifest.json").read_text())
        assert stage_manifest["error"]["code"] == case.expect
        assert str(tmp_path) not in error["message"] and "/tmp/videostudio-" not in error["message"], error

    by_name = {case.name: find_job(bucket, f"inbox/{case.name}") for case in CORPUS}
    info = {name: by_name[f"{name}.yaml"]["stages"]["prepare"]["handoff"]["video"] for name in ("hevc", "tenbit", "rotated")}
    assert info["hevc"]["codec"] == "hevc"
    assert info["tenbit"]["bit_depth"] == 10
    assert info["rotated"]["rotation"] in (90, 270) and (info["rotated"]["width"], info["rotated"]["height"]) == (320, 180)
    for name in ("hevc", "tenbit", "rotated", "two-faces"):  # one subject's faces, upright once autorotated
        align = by_name[f"{name}.yaml"]["stages"]["align"]["metrics"]
        assert align["aligned"] >= 10 and align["alignment_success_rate"] >= 0.9, (name, align)
    # The persistent face is the subject: the second one is in only 40 % of the frames.
    assert by_name["two-faces.yaml"]["stages"]["align"]["metrics"]["detection_rate"] >= 0.9

    # The worker keeps serving: nothing crashed it, nothing was an internal error, and a new brief still runs.
    assert proc.poll() is None, read_log(proc)
    jobs = [json.loads(p.read_text()) for p in (bucket / "jobs").glob("*/manifest.json")]
    assert len(jobs) == len(CORPUS)  # none for the name that is not UTF-8
    assert not [j for j in jobs if (j.get("error") or {}).get("code") == "internal_error"]
    assert "not valid UTF-8" in Path(proc.log_path).read_text()  # skipped with a reason, not silently
    drop_by_rename(bucket, "after.yaml", TINY_BRIEF.format(steps=2, seed=9))
    assert wait_for_job(bucket, "inbox/after.yaml", proc=proc)["status"] == "succeeded"
    assert proc.poll() is None
    record("corpus", {"cases": results, "not_utf8_name": "skipped (invalid_key), other inputs unaffected",
                      "wall_s": round(time.monotonic() - clock, 1)})


def test_at_one_frame_per_second_the_persistent_face_is_still_the_subject(videos, tmp_path):
    from core.queue import SqliteQueue
    from core.runner import Runner
    from core.settings import Settings
    from core.stage import Pipeline
    from core.storage import LocalStorage
    from functions.routes import default_pipeline
    from schemas.events import StorageEvent

    storage = LocalStorage(tmp_path / "bucket")
    storage.put_file("uploads/two-faces.mp4", videos["two-faces.mp4"])
    pipeline = default_pipeline()
    pipeline = Pipeline(routes={**pipeline.routes, "train": ["prepare", "align"]}, stages=pipeline.stages,
                        classify=pipeline.classify)
    runner = Runner(storage, SqliteQueue(storage.state_dir / "q.sqlite3"), pipeline, Settings(bucket=str(storage.root)))
    storage.put_bytes("inbox/t.yaml", _train("t", "uploads/two-faces.mp4", fps=1).encode())
    job_id, _ = runner.submit(StorageEvent(bucket=storage.name, key="inbox/t.yaml"))
    while runner.work_once(job_id=job_id):
        pass
    manifest = runner.store.load(job_id)
    records = [json.loads(line) for line in storage.get_bytes(manifest.stages["align"].outputs["metadata"]).splitlines()]
    # The main face drifts around the centre (box left edge ≥ ~70 px); the second sits at the left (~38 px).
    assert min(r["box"][0] for r in records) > 60, [round(r["box"][0]) for r in records]
