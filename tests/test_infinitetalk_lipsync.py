"""The lip-sync metrics of `backend: infinitetalk` renders (functions/infinitetalk_lipsync.py).

InfiniteTalk generates whole frames, so the face is found and cut out of each rendered frame as align cut the
training faces, then scored by the avatar's expert. The tiny model renders noise, where no face is found: the
crop-and-score path is therefore tested on real footage (../shared/media) with its own audio, and the tiny
avatar's render only has to say which it did (metrics, or a warning why none). The avatar trained here (tiny
model, two LoRA steps) also shows that the train stage trains and ships the expert.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.audio import extract_speech_wav
from core.stage import StageContext
from core.video import probe_video, sample_frames
from functions.alignment import CROP_SIZE, estimate_alignment, face_template, warp_face
from functions.faces import TrackingDetector
from functions.infinitetalk_lipsync import MIN_FACE_SHARE, ExpertInfo, MouthCrops, RenderLipSync, expert_crop
from functions.lip_sync_expert import state_bytes
from functions.lipsync_metrics import lip_sync_metrics
from functions.models.syncnet import FACE_HEIGHT, FACE_WIDTH, LipSyncExpert
from functions.models.wav2lip_audio import load_wav, melspectrogram
from tests import pipeline_jobs
from tests.pipeline_jobs import drain, submit
from tests.infinitetalk_jobs import tiny_train_brief
from tests.real_media import looped_talking_video, media_file

TRAIN = tiny_train_brief(epochs=1, max_steps=2)


def real_clip(name: str, tmp: Path) -> tuple[list[np.ndarray], Path]:
    """A real clip's frames at 25 fps (RGB, full size) and its own speech as a 16 kHz WAV."""
    path = media_file(name)
    info = probe_video(path)
    frames = [f.pixels for f in sample_frames(path, fps=25, size=(info.width, info.height))]
    return frames, extract_speech_wav(path, tmp / f"{name}.wav")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[list[np.ndarray], Path]:
    return real_clip("talking-1.mp4", tmp_path_factory.mktemp("clip"))  # head and shoulders, 30 fps → 25


@pytest.fixture(scope="module")
def crops(clip) -> MouthCrops:
    frames, _ = clip
    found = MouthCrops(face_padding=0.2, syncnet=True)
    for frame in frames:
        found.add(frame)
    return found


def random_expert(width: float = 0.0625) -> LipSyncExpert:
    torch.manual_seed(0)
    return LipSyncExpert(width).eval()


# --- crops of real footage ----------------------------------------------------------------------

def test_real_footage_gives_one_mouth_crop_per_frame_the_experts_size(clip, crops):
    frames, speech = clip
    assert crops.frames == len(frames) > 100
    assert crops.face_share >= 0.95, crops.summary()  # a real face, found in (nearly) every frame
    halves = crops.lower_halves()
    assert halves.shape == (len(frames), 3, FACE_HEIGHT, FACE_WIDTH) and halves.dtype == torch.float32
    assert 0 <= float(halves.min()) < float(halves.max()) <= 1
    assert len(crops.syncnet_crops) == len(frames) and crops.syncnet_crops[0].shape == (224, 224, 3)
    metrics = lip_sync_metrics(random_expert(), halves, melspectrogram(load_wav(speech)), fps=25)
    assert metrics.windows >= len(frames) - 5 and -15 <= metrics.offset_frames <= 15
    assert all(math.isfinite(v) for v in (metrics.min_dist, metrics.median_dist, metrics.confidence))


def test_a_render_crop_is_cut_as_align_cut_the_training_faces(clip, crops):
    """The same frame through align's steps (detect, align to the template, 512-px warp, JPEG) and `load_face`'s
    96-px resize gives the crop the render scores, to within JPEG's error."""
    frames, _ = clip
    frame = frames[0]
    face = TrackingDetector().detect(frame)[0]
    alignment = estimate_alignment(face, face_template(CROP_SIZE, 0.2))
    assert alignment.ok
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(warp_face(frame, alignment), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])  # align's _encode_jpeg
    trained = cv2.resize(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), (96, 96), interpolation=cv2.INTER_AREA)  # load_face
    trained = cv2.cvtColor(trained, cv2.COLOR_BGR2RGB).astype(np.float32)
    rendered = expert_crop(frame, alignment).astype(np.float32)
    assert np.abs(trained - rendered).mean() < 2.0
    first = crops.lower_halves()[0].permute(1, 2, 0).numpy() * 255  # what MouthCrops kept of frame 0
    assert np.abs(first - rendered[48:]).mean() < 1.0


def test_frames_without_a_face_are_held_and_counted(clip):
    frames, _ = clip
    grey = np.full_like(frames[0], 128)
    sequence = [grey] * 3 + frames[:30] + [grey] * 4 + frames[30:40]
    found = MouthCrops(face_padding=0.2)
    flags = [found.add(frame) for frame in sequence]
    assert flags[:3] == [False] * 3 and flags[33:37] == [False] * 4
    assert found.frames == len(sequence) and found.face_frames == 40
    assert found.summary()["held_frames"] == 7
    halves = found.lower_halves()
    assert halves.shape[0] == len(sequence)
    assert all(torch.equal(halves[n], halves[3]) for n in range(3))  # before the first face: its crop
    # in a gap: the frame itself cut where the face last was (here the grey frame: grey)
    assert float((halves[33] - 128 / 255).abs().max()) < 1e-6


def test_noise_frames_skip_the_metrics_with_a_warning(tmp_path, clip):
    _, speech = clip
    warnings: list[str] = []
    info = ExpertInfo(width=0.0625, face_padding=0.2)
    lip_sync = RenderLipSync(expert=random_expert(), info=info, syncnet=None, device="cpu", warnings=warnings)
    rng = np.random.default_rng(0)
    for _ in range(40):
        lip_sync.add(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # what the tiny model renders
    metrics: dict = {}
    lip_sync.finish(metrics, speech=speech, fps=25)
    assert "lip_sync" not in metrics and metrics["lip_sync_faces"]["face_frames"] == 0
    assert any(w.startswith("no lip-sync metrics: a usable face was found in 0 of 40") for w in warnings), warnings


def test_render_lip_sync_scores_real_frames_with_the_experts_files_and_syncnet_v2(tmp_path, clip, monkeypatch):
    """RenderLipSync as the render uses it: the avatar's expert files, SyncNet v2 from the environment (random
    weights with the public names: the plumbing, not the score), frames streamed in."""
    from functions.models.syncnet_v2 import SyncNetV2

    frames, speech = clip
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), weights)
    monkeypatch.setenv("VIDEOSTUDIO_SYNCNET_WEIGHTS", str(weights))
    expert_path = tmp_path / "lipsync_expert.pth"
    expert_path.write_bytes(state_bytes(random_expert()))
    info_path = tmp_path / "lip_sync_expert.json"
    info_path.write_text(ExpertInfo(width=0.0625, face_padding=0.2).model_dump_json())
    warnings: list[str] = []
    lip_sync = RenderLipSync.for_avatar(expert_path, info_path, device="cpu", warnings=warnings)
    short = frames[:40]  # 35 SyncNet windows: enough for ±15 frames, quick on a CPU
    for frame in short:
        lip_sync.add(frame)
    metrics: dict = {}
    lip_sync.finish(metrics, speech=speech, fps=25)
    assert warnings == []
    assert metrics["lip_sync_faces"]["face_share"] >= MIN_FACE_SHARE
    sync, standard = metrics["lip_sync"], metrics["lip_sync_standard"]
    assert sync["scorer"] == "videostudio_expert" and sync["windows"] == len(short) - 4
    assert standard["scorer"] == "syncnet_v2" and standard["lse_d"] == standard["min_dist"] >= 0
    assert all(math.isfinite(v) for v in (sync["min_dist"], sync["confidence"], standard["lse_c"]))


def test_an_avatar_without_an_expert_renders_with_a_warning():
    warnings: list[str] = []
    lip_sync = RenderLipSync.for_avatar(None, None, device="cpu", warnings=warnings)
    lip_sync.add(np.zeros((32, 32, 3), np.uint8))
    metrics: dict = {}
    lip_sync.finish(metrics, speech=Path("unused.wav"), fps=25)
    assert metrics == {} and any("has no lip-sync expert" in w for w in warnings)


# --- the train stage's expert and the tiny avatar's render ----------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    video = looped_talking_video(tmp_path_factory.mktemp("media") / "ann.mp4", clip="talking-3.mp4", seconds=32,
                                 side=160)
    runner = pipeline_jobs.make_runner(tmp_path_factory.mktemp("bucket"), {"uploads/ann.mp4": video})
    reported: list[tuple[str, float]] = []
    original = StageContext.progress

    def progress(self, fraction, message="", *, step=None, total=None):
        reported.append((self.stage, fraction))
        original(self, fraction, message, step=step, total=total)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageContext, "progress", progress)
        job = drain(runner, submit(runner, "ann.yaml", TRAIN))
    assert job.status.value == "succeeded", job.error
    return runner, job, [f for stage, f in reported if stage == "train"]


@pytest.mark.slow
def test_the_train_stage_ships_a_lip_sync_expert_with_its_validation_metrics(trained):
    runner, job, progress = trained
    expert = job.stages["train"].metrics["lip_sync_expert"]
    assert expert["windows"]["train"] > 100 and expert["windows"]["val"] > 0
    assert expert["steps"] == 2  # the brief's max_steps
    assert expert["val_loss"] > 0 and 0 <= expert["val_accuracy"] <= 1 and expert["width"] == 0.125
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    assert {"expert", "expert_info"} <= set(avatar["assets"])
    info = ExpertInfo.model_validate_json(runner.storage.get_bytes(avatar["assets"]["expert_info"]))
    assert info.width == 0.125 and info.face_padding == 0.2
    assert avatar["metrics"]["expert_val_loss"] == expert["val_loss"]
    assert progress == sorted(progress) and progress[-1] >= 0.95  # never backwards, the expert inside 0.9–0.95


@pytest.mark.slow
def test_the_tiny_avatars_render_records_lip_sync_or_says_why_not(trained):
    """The train job's preview render: the tiny model's noise has no face, so the metric is skipped, saying so."""
    _, job, _ = trained
    render = job.stages["render"]
    assert "lip_sync_faces" in render.metrics
    assert "lip_sync" in render.metrics or any(w.startswith("no lip-sync metrics") for w in job.warnings), job.warnings


@pytest.mark.slow
def test_the_trained_expert_scores_real_footage(trained, tmp_path):
    runner, _, _ = trained
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    expert_path = runner.storage.root / avatar["assets"]["expert"]
    info_path = runner.storage.root / avatar["assets"]["expert_info"]
    frames, speech = real_clip("talking-3.mp4", tmp_path)  # the person the avatar was trained on
    warnings: list[str] = []
    lip_sync = RenderLipSync.for_avatar(expert_path, info_path, device="cpu", warnings=warnings)
    for frame in frames:
        lip_sync.add(frame)
    metrics: dict = {}
    lip_sync.finish(metrics, speech=speech, fps=25)
    assert warnings == [] and metrics["lip_sync_faces"]["face_share"] >= 0.95
    assert metrics["lip_sync"]["windows"] == len(frames) - 4 and math.isfinite(metrics["lip_sync"]["confidence"])
