"""The avatar backend seam: a test-only backend registered in a few lines runs end to end through
`videostudio run`, on real footage (train brief → dataset → train → deployed → a render brief with
`avatar:` reaches that backend), and the manifests keep the typed contract."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from core.stage import StageContext, StageResult
from core.video import write_mp4
from functions.backends import AvatarBackend, DatasetPolicy, TrainedAvatar, register, unregister
from functions.lora_dataset import load_face_records
from real_media import looped_talking_video
from schemas.avatar import AvatarManifest
from schemas.brief import RenderBrief, TrainBrief
from schemas.handoff import AlignOutput
from schemas.plan import RenderPlan
from triggers.cli import app

cli = CliRunner()


class MeanFaceBackend(AvatarBackend):
    """Test-only: the avatar is the mean of its training faces; a render shows it for the plan's frames."""

    name = "mean-face"
    dataset = DatasetPolicy(fps=5, drop_duplicates=False)

    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput) -> TrainedAvatar:
        records = load_face_records(ctx.storage, dataset.metadata_key)
        keys = [r.face_key for r in records if r.split == "train" and r.face_key]
        mean = np.mean([_decode(ctx.storage.get_bytes(k)) for k in keys], axis=0).round().astype(np.uint8)
        key = ctx.put_output_bytes("mean_face.png", cv2.imencode(".png", mean)[1].tobytes(), content_type="image/png")
        avatar = AvatarManifest(avatar_id=brief.avatar, job_id=ctx.job_id, backend=self.name,
                                base_model=brief.model or ctx.settings.model, weights_key=key)
        return TrainedAvatar(avatar=avatar, outputs={"weights": key}, metrics={"faces": len(keys)})

    def render(self, ctx: StageContext, *, plan: RenderPlan) -> StageResult:
        face = cv2.resize(_decode(ctx.storage.get_bytes(plan.weights_key)), (plan.width, plan.height))
        frames = np.repeat(cv2.cvtColor(face, cv2.COLOR_BGR2RGB)[None], plan.num_frames, axis=0)
        key = ctx.put_output_file("video.mp4", write_mp4(frames, ctx.scratch / "video.mp4", fps=plan.fps))
        return StageResult(outputs={"video": key}, job_outputs={"video": key}, metrics={"rendered_by": self.name})


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture
def mean_face_backend():
    backend = register(MeanFaceBackend())
    yield backend
    unregister(backend.name)


def first_frame(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                          "bgr24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def job_manifest(bucket: Path, stdout: str) -> dict:
    job_id = stdout.split("job ", 1)[1].split()[0]
    return json.loads((bucket / "jobs" / job_id / "manifest.json").read_text())


def run_brief(bucket: Path, brief: Path, text: str, kind: type[TrainBrief] | type[RenderBrief]) -> dict:
    """`videostudio run` on a brief that must succeed; its manifest, whose request is the brief and nothing else."""
    brief.write_text(text)
    result = cli.invoke(app, ["run", str(brief), "--bucket", str(bucket)])
    assert result.exit_code == 0, result.stdout
    manifest = job_manifest(bucket, result.stdout)
    assert kind.model_validate(manifest["request"]).model_dump(mode="json") == manifest["request"]
    return manifest


def test_a_registered_backend_trains_deploys_and_renders_through_videostudio_run(tmp_path, mean_face_backend):
    bucket = tmp_path / "bucket"
    (bucket / "uploads").mkdir(parents=True)
    looped_talking_video(bucket / "uploads" / "talker.mp4", seconds=36)
    trained = run_brief(bucket, tmp_path / "talker.yaml", "kind: train\navatar: talker\nvideo: uploads/talker.mp4\n"
                        "backend: mean-face\nresolution: 64\nmodel: tiny\n", TrainBrief)
    # What prepare derived is its typed record, not part of the request.
    prepared = trained["stages"]["prepare"]["handoff"]
    assert prepared["backend"] == "mean-face" and prepared["sample_fps"] == 5
    # The backend's dataset policy: every frame at its 5 fps, near-duplicates kept (a still face still speaks).
    prepare_metrics = trained["stages"]["prepare"]["metrics"]
    assert prepare_metrics["total"] == 180 and prepare_metrics["dropped_duplicate"] == 0
    assert trained["stages"]["train"]["metrics"]["faces"] >= 100

    avatar = json.loads((bucket / "avatars" / "talker" / "manifest.json").read_text())
    weights = (bucket / avatar["weights_key"]).read_bytes()
    assert avatar["backend"] == "mean-face" and avatar["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    mean_face = cv2.resize(_decode(weights), (64, 64)).astype(int)
    preview = first_frame(bucket / trained["outputs"]["video"], 64, 64).astype(int)
    assert np.abs(preview - mean_face).mean() < 6  # the preview is the backend's render (H.264 tolerance)

    rendered = run_brief(bucket, tmp_path / "hello.yaml", "prompt: hello\navatar: talker\nmodel: tiny\nnum_frames: 7\n"
                         "fps: 12\nwidth: 96\nheight: 64\n", RenderBrief)
    plan = rendered["stages"]["prepare"]["handoff"]["plan"]
    assert plan["backend"] == "mean-face" and plan["weights_key"] == avatar["weights_key"]
    assert rendered["stages"]["render"]["metrics"] == {"rendered_by": "mean-face"}
    frame = first_frame(bucket / rendered["outputs"]["video"], 96, 64).astype(int)
    assert np.abs(frame - cv2.resize(_decode(weights), (96, 64)).astype(int)).mean() < 6


def test_an_unknown_backend_fails_naming_the_known_ones(tmp_path, mean_face_backend):
    brief = tmp_path / "nobody.yaml"
    brief.write_text("kind: train\navatar: nobody\nvideo: uploads/nobody.mp4\nbackend: no-such-backend\n")
    result = cli.invoke(app, ["run", str(brief), "--bucket", str(tmp_path / "bucket")])
    assert result.exit_code == 1
    manifest = job_manifest(tmp_path / "bucket", result.stdout)
    assert manifest["status"] == "failed" and manifest["error"]["code"] == "unknown_backend"
    assert "mean-face" in manifest["error"]["message"] and "mochi-lora" in manifest["error"]["message"]
