"""Talking avatars through the API and the CLI: POST /briefs/speech (a recording uploaded with a talking brief),
POST /briefs with `script:`, and `videostudio say`.

No real talking backend is trained here: a small one registered by the tests (`test-talker`: it speaks,
and its render muxes a still frame with the speech prepare made ready) stands in for it, so prepare's
real speech path (piper for a script, ffmpeg for a recording) runs end to end on the CPU.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.avatars import AvatarRegistry
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import StageContext, StageResult
from core.storage import LocalStorage
from functions.backends import AvatarBackend, register, unregister
from functions.routes import default_pipeline
from real_media import media_file
from schemas.avatar import AvatarManifest
from schemas.brief import RenderBrief, TrainBrief, parse_brief
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput
from schemas.plan import Plan, TalkingPlan
from triggers.api import create_app
from triggers.cli import app as cli_app

TOKEN = "talk-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TALKER = "test-talker"
FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "m4a": "audio/mp4", "ogg": "audio/ogg", "flac": "audio/flac"}
TAKE_S = 1.5                              # of real speech: enough for prepare, small enough to keep tests quick

cli = CliRunner()


class _TestTalker(AvatarBackend):
    """A backend that speaks: prepare makes its speech ready; render is one still frame over that speech."""

    name = TALKER
    talks = True

    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput):
        raise VideostudioError("not_trainable", "the test talker is deployed by the tests, never trained")

    def render(self, ctx: StageContext, *, plan: Plan) -> StageResult:
        assert isinstance(plan, TalkingPlan)
        speech = ctx.storage.download(plan.speech.key, ctx.scratch / "speech.wav")
        video = ctx.scratch / "video.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=gray:s=32x32:r={plan.fps}",
                        "-i", str(speech), "-frames:v", str(plan.num_frames), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-shortest", str(video)], check=True)
        key = ctx.put_output_file("video.mp4", video, content_type="video/mp4")
        return StageResult(outputs={"video": key}, job_outputs={"video": key})


@pytest.fixture(autouse=True)
def talker() -> Iterator[None]:
    register(_TestTalker())
    yield
    unregister(TALKER)


def make_runner(bucket: Path, **settings) -> Runner:
    storage = LocalStorage(bucket)
    values = dict(bucket=str(bucket), api_token=TOKEN, progress_interval_s=0.0, **settings)
    return Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3"), default_pipeline(), Settings(**values))


def deploy_avatar(storage, avatar_id: str, *, backend: str) -> AvatarManifest:
    job_id = f"train-{avatar_id}-0000000000000000"
    weights = f"jobs/{job_id}/train/weights.bin"
    storage.put_bytes(weights, b"not really weights")
    manifest = AvatarManifest(avatar_id=avatar_id, job_id=job_id, backend=backend, base_model="tiny",
                              weights_key=weights, talks=backend == TALKER)
    return AvatarRegistry(storage).deploy(manifest, weights)


@pytest.fixture
def runner(tmp_path) -> Runner:
    runner = make_runner(tmp_path / "bucket")
    deploy_avatar(runner.storage, "ann", backend=TALKER)
    deploy_avatar(runner.storage, "john", backend="mochi-lora")
    return runner


@pytest.fixture
def client(runner) -> Iterator[TestClient]:
    with TestClient(create_app(runner.settings, runner=runner)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def takes(tmp_path_factory) -> dict[str, Path]:
    """TAKE_S seconds of real speech in every format a recording may come in."""
    source = media_file("speech-en.wav")
    folder = tmp_path_factory.mktemp("takes")
    takes = {}
    for ext in FORMATS:
        takes[ext] = folder / f"My Take.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-t", str(TAKE_S), str(takes[ext])],
                       check=True)
    return takes


def run_stage(runner: Runner, job_id: str) -> None:
    assert runner.work_once(job_id=job_id)


def finish(runner: Runner, job_id: str) -> None:
    while runner.work_once(job_id=job_id):
        pass


def bucket_leftovers(runner: Runner) -> list[str]:
    return runner.storage.list_keys("uploads/") + runner.storage.list_keys("inbox/")


# ------------------------------------------------------------------------------------------ POST /briefs/speech
def test_a_recording_in_every_format_becomes_a_talking_job(client, runner, takes):
    for ext, mime in FORMATS.items():
        data = takes[ext].read_bytes()
        response = client.post("/briefs/speech", headers=AUTH, data={"avatar": "ann", "seed": "7"},
                               files={"audio": (f"../{takes[ext].name}", data, mime)})
        assert response.status_code == 201, (ext, response.text)
        body = response.json()
        key = f"uploads/ann/speech/My-Take-{hashlib.sha256(data).hexdigest()[:12]}.{ext}"
        assert (body["kind"], body["created"]) == ("render", True)
        assert body["brief_key"].startswith("inbox/speech-ann-")
        assert runner.storage.get_bytes(key) == data
        written = yaml.safe_load(runner.storage.get_bytes(body["brief_key"]))
        assert written == {"kind": "render", "avatar": "ann", "seed": 7, "audio": key}  # typed, not "7"

        run_stage(runner, body["job_id"])  # prepare: the recording becomes the job's speech
        manifest = runner.store.load(body["job_id"])
        assert manifest.stages["prepare"].status.value == "succeeded", (ext, manifest.error)
        assert isinstance(manifest.request, RenderBrief)
        assert (manifest.request.audio, manifest.request.avatar, manifest.request.seed) == (key, "ann", 7)
        assert manifest.stages["prepare"].metrics["speech_source"] == "audio"
        assert abs(manifest.stages["prepare"].metrics["speech_duration_s"] - TAKE_S) < 0.1

    finish(runner, body["job_id"])
    manifest = runner.store.load(body["job_id"])
    assert manifest.status.value == "succeeded" and runner.storage.exists(manifest.outputs["video"])

    again = client.post("/briefs/speech", headers=AUTH, data={"avatar": "ann", "seed": "7"},
                        files={"audio": (takes["flac"].name, takes["flac"].read_bytes(), "audio/flac")})
    assert again.status_code == 200 and again.json()["job_id"] == body["job_id"]


def test_refused_recordings_leave_nothing_behind(tmp_path, monkeypatch, takes):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    runner = make_runner(tmp_path / "bucket", api_max_upload_bytes=40_000)
    deploy_avatar(runner.storage, "ann", backend=TALKER)
    deploy_avatar(runner.storage, "john", backend="mochi-lora")
    client = TestClient(create_app(runner.settings, runner=runner))
    take = takes["mp3"].read_bytes()
    assert len(take) < 40_000 < takes["wav"].stat().st_size
    cases = [
        ({"avatar": "ann"}, {"audio": ("big.wav", takes["wav"].read_bytes(), "audio/wav")}, 413, "payload_too_large"),
        ({"avatar": "ann"}, {"audio": ("notes.txt", b"hello", "text/plain")}, 415, "unsupported_audio"),
        ({"avatar": "ann"}, {"audio": ("clip.mp4", take, "video/mp4")}, 415, "unsupported_audio"),
        ({}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "missing_avatar"),
        ({"avatar": "../x"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "invalid_field_value"),
        ({"avatar": "nobody"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "avatar_not_found"),
        ({"avatar": "john"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "avatar_cannot_talk"),
        ({"avatar": "ann", "script": "hi"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "conflicting_speech"),
        ({"avatar": "ann", "seed": "soon"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "invalid_field_type"),
        ({"avatar": "ann", "kind": "train"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "invalid_kind"),
        ({"avatar": "ann", "webhook": "{"}, {"audio": ("take.mp3", take, "audio/mpeg")}, 422, "invalid_json"),
        ({"avatar": "ann"}, {"video": ("take.mp3", take, "audio/mpeg")}, 400, "invalid_multipart"),
        ({"avatar": "ann"}, None, 422, "missing_audio"),
    ]
    for data, files, status, code in cases:
        response = client.post("/briefs/speech", headers=AUTH, data=data, files=files or {"x": (None, "y")})
        assert (response.status_code, response.json()["code"]) == (status, code), (data, response.text)
    wrong_type = client.post("/briefs/speech", headers=AUTH, json={"avatar": "ann", "audio": "uploads/a.wav"})
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (415, "unsupported_media_type")
    declared = client.post("/briefs/speech", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=zzz",
                                                      "Content-Length": str(50_000_000)}, content=b"--zzz--\r\n")
    assert (declared.status_code, declared.json()["code"]) == (413, "payload_too_large")
    assert not bucket_leftovers(runner) and not list(runner.store.all())
    assert not list((tmp_path / "tmp").iterdir())  # temp files of refused uploads are gone


def test_the_route_is_in_the_openapi_document(client):
    operation = client.get("/openapi.json").json()["paths"]["/briefs/speech"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["avatar", "audio"] and schema["properties"]["audio"]["format"] == "binary"
    assert operation["security"] == [{"bearer": []}]


# ------------------------------------------------------------------------------------------ POST /briefs with speech
def test_post_briefs_with_a_script_makes_the_avatar_speak_it(client, runner):
    response = client.post("/briefs", headers={**AUTH, "Content-Type": "application/yaml"}, params={"name": "hello"},
                           content=b"avatar: ann\nscript: Hello there, this is a test.\nseed: 3\n")
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    finish(runner, job_id)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "succeeded", manifest.error
    assert (manifest.request.script, manifest.request.avatar) == ("Hello there, this is a test.", "ann")
    assert manifest.stages["prepare"].metrics["speech_source"] == "script"
    assert runner.storage.exists(manifest.outputs["video"])


def test_post_briefs_refuses_speech_it_cannot_say(client, runner):
    runner.storage.put_bytes("uploads/ann/take.wav", b"a recording")
    accepted = client.post("/briefs", headers=AUTH, json={"avatar": "ann", "audio": "uploads/ann/take.wav"})
    assert accepted.status_code == 201, accepted.text
    for brief, code in [({"avatar": "ann", "script": ""}, "empty_script"),
                        ({"avatar": "ann", "script": "x" * 5001}, "script_too_long"),
                        ({"script": "hi"}, "missing_avatar"),
                        ({"avatar": "ann", "script": "hi", "audio": "uploads/ann/take.wav"}, "conflicting_speech"),
                        ({"avatar": "ann", "audio": "uploads/ann/none.wav"}, "audio_not_found"),
                        ({"avatar": "ann", "audio": "uploads/../../etc/passwd"}, "invalid_key"),
                        ({"avatar": "nobody", "script": "hi"}, "avatar_not_found"),
                        ({"avatar": "john", "script": "hi"}, "avatar_cannot_talk"),
                        ({"avatar": "ann", "prompt": "a face"}, "missing_speech")]:
        refused = client.post("/briefs", headers=AUTH, json=brief)
        assert (refused.status_code, refused.json()["code"]) == (422, code), (brief, refused.text)


# ------------------------------------------------------------------------------------------ videostudio say
def say(bucket: Path, *args: str):
    return cli.invoke(cli_app, ["say", *args, "--bucket", str(bucket)])


def test_say_speaks_a_text_and_prints_the_video(runner):
    bucket = Path(runner.settings.bucket)
    result = say(bucket, "ann", "Hello from the command line.", "--seed", "5")
    assert result.exit_code == 0, result.output
    video = Path(result.stdout.strip().splitlines()[-1])
    assert video.is_file() and video.is_relative_to(bucket) and video.suffix == ".mp4"
    job_id = result.stdout.split("job ", 1)[1].split()[0]
    manifest = runner.store.load(job_id)
    assert (manifest.request.script, manifest.request.seed) == ("Hello from the command line.", 5)
    assert manifest.input.key.startswith("inbox/say-ann-") and "succeeded" in result.stdout


def test_say_with_audio_uploads_the_recording_and_copies_the_mp4(runner, takes, tmp_path):
    bucket = Path(runner.settings.bucket)
    out = tmp_path / "out" / "ann.mp4"
    result = say(bucket, "ann", "--audio", str(takes["m4a"]), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out) and out.stat().st_size > 0
    data = takes["m4a"].read_bytes()
    key = f"uploads/ann/speech/My-Take-{hashlib.sha256(data).hexdigest()[:12]}.m4a"
    assert runner.storage.get_bytes(key) == data
    [brief_key] = runner.storage.list_keys("inbox/")
    assert parse_brief(runner.storage.get_bytes(brief_key), brief_key).audio == key
    job_id = result.stdout.split("job ", 1)[1].split()[0]
    assert runner.store.load(job_id).request.audio == key


@pytest.mark.parametrize("avatar, code", [("nobody", "avatar_not_found"), ("john", "avatar_cannot_talk")])
def test_say_fails_cleanly_when_the_avatar_cannot_speak(runner, avatar, code):
    result = say(Path(runner.settings.bucket), avatar, "Hello.")
    assert result.exit_code == 1, result.output
    assert f"error: {code}" in result.stdout
    [manifest] = runner.store.all()
    assert manifest.status.value == "failed" and manifest.error.code == code
    assert manifest.stages["prepare"].status.value == "failed"


def test_say_refuses_bad_speech_before_queueing_anything(runner, takes, tmp_path):
    bucket = Path(runner.settings.bucket)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for args, code in [(["ann", ""], "empty_script"),
                       (["ann", "x" * 5001], "script_too_long"),
                       (["ann"], "missing_speech"),
                       (["ann", "hi", "--audio", str(takes["wav"])], "conflicting_speech"),
                       (["ann", "--audio", str(notes)], "unsupported_audio"),
                       (["../x", "--audio", str(takes["wav"])], "invalid_field_value"),
                       (["ann", "--audio", str(takes["wav"]), "--voice", "en_US-joe-medium"], "conflicting_speech")]:
        result = say(bucket, *args)
        assert result.exit_code == 2 and f"error {code}:" in result.stderr, (args, result.output)
    assert not bucket_leftovers(runner) and not list(runner.store.all())


def test_say_needs_a_readable_recording(runner, tmp_path):
    result = say(Path(runner.settings.bucket), "ann", "--audio", str(tmp_path / "missing.wav"))
    assert result.exit_code == 2 and "missing.wav" in result.output
    assert not bucket_leftovers(runner)
