"""Background replacement (the compose stage) on real footage of people talking (../shared/media).

The clips are scaled to 360×360 (their own sound copied as it is) to keep the CPU tests quick. What is
checked: the person's face stays inside the mask, pixels far from the person are the target exactly (within
H.264's tolerance), the mask does not flicker, the matte outputs carry alpha, the sound is untouched, each bad
input fails the job with its code, and a killed compose resumes to the same video.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import functions.compose as compose_module
from core.runner import Runner
from functions.faces import NaiveDetector
from functions.matte import MatteState, refine, smooth
from functions.segmentation import PersonSegmenter
from pipeline_jobs import SimulatedKill, drain, make_runner, run_job, submit
from tests.real_media import media_file

SIDE = 360
TARGET = (0x0B, 0x5F, 0xFF)
BAND = 0.06  # "far from the person": farther than this share of the side from any pixel of the mask


def scaled_clip(src: Path, dest: Path, *, side: int = SIDE, seconds: float | None = None,
                audio: bool = True) -> Path:
    """The real clip scaled to side×side; its audio packets copied untouched (or dropped)."""
    trim = ["-t", str(seconds)] if seconds else []
    sound = ["-c:a", "copy"] if audio else ["-an"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *trim, "-vf", f"scale={side}:{side}",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", *sound, str(dest)], check=True)
    return dest


def decode(path: Path, *, pix_fmt: str = "rgb24", codec: list[str] | None = None) -> np.ndarray:
    """Every frame of `path` as [T, H, W, C] uint8."""
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                      "stream=width,height", "-of", "json", str(path)],
                                     check=True, capture_output=True).stdout)["streams"][0]
    raw = subprocess.run(["ffmpeg", "-v", "error", *(codec or []), "-i", str(path), "-f", "rawvideo", "-pix_fmt",
                          pix_fmt, "-"], check=True, capture_output=True).stdout
    channels = {"rgb24": 3, "rgba": 4, "gray": 1}[pix_fmt]
    frames = np.frombuffer(raw, np.uint8).reshape(-1, info["height"], info["width"], channels)
    return frames[..., 0] if channels == 1 else frames


def audio_md5(path: Path) -> str:
    """MD5 of the first audio stream's packets, as stored (no decoding)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "md5", "-"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def streams(path: Path) -> list[dict]:
    return json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                                     check=True, capture_output=True).stdout)["streams"]


def far_from_person(matte: np.ndarray) -> np.ndarray:
    """[T, H, W] bool: pixels farther than BAND from any pixel the matte gives the person in that frame."""
    radius = round(BAND * matte.shape[1])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate((m > 5).astype(np.uint8), kernel) == 0 for m in matte])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {name: scaled_clip(media_file(name), folder / name) for name in ("talking-1.mp4", "talking-5.mp4")}


@pytest.fixture(scope="module")
def runner(clips, tmp_path_factory) -> Runner:
    bucket = tmp_path_factory.mktemp("bucket")
    folder = tmp_path_factory.mktemp("inputs")
    # A real photo for image backgrounds (a frame of another clip), a real clip of 1 s for video backgrounds,
    # and a real shot with no person in it (the wall beside talking-1's speaker).
    photo = folder / "photo.png"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1", "-i", str(media_file("talking-3.mp4")), "-frames:v",
                    "1", str(photo)], check=True)
    backdrop = folder / "backdrop.mp4"  # a pan across a real photo: every one of its 25 frames differs
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", "25", "-i", str(photo), "-vf",
                    "scale=720:-2,crop=240:240:n*12:0", "-frames:v", "25", "-c:v", "libx264", "-preset", "veryfast",
                    "-crf", "16", "-pix_fmt", "yuv420p", str(backdrop)], check=True)
    empty = folder / "empty.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_file("talking-1.mp4")), "-vf",
                    "crop=110:330:0:0,scale=120:360", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "copy",
                    str(empty)], check=True)
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but not really a picture" * 20)
    uploads = {f"uploads/{name}": path for name, path in clips.items()}
    uploads.update({"uploads/photo.png": photo, "uploads/backdrop.mp4": backdrop, "uploads/empty.mp4": empty,
                    "uploads/garbage.png": garbage, "uploads/garbage.mp4": garbage})
    return make_runner(bucket, uploads)


def compose_job(runner: Runner, name: str, video: str, background: str):
    return run_job(runner, f"{name}.yaml", f"kind: compose\nvideo: uploads/{video}\nbackground: {background}\n")


def local(runner: Runner, job, name: str) -> Path:
    return runner.storage.path(job.outputs[name])


# ---------------------------------------------------------------------------- mask quality
@pytest.fixture(scope="module")
def colour_jobs(runner, clips):
    jobs = {name: compose_job(runner, f"colour-{name[:-4]}", name, '{color: "#0b5fff"}') for name in clips}
    for job in jobs.values():
        assert job.status.value == "succeeded", job.error
    return jobs


@pytest.mark.parametrize("clip", ["talking-1.mp4", "talking-5.mp4"])
def test_every_frames_face_lies_inside_the_person_mask(runner, clips, colour_jobs, clip):
    source = decode(clips[clip])
    matte = decode(local(runner, colour_jobs[clip], "matte"), pix_fmt="gray")
    assert matte.shape == source.shape[:3]
    detector = NaiveDetector()
    checked = 0
    for frame, mask in zip(source, matte):
        faces = detector.detect(np.ascontiguousarray(frame))
        assert faces, "the real clip shows a face in every frame"
        face = max(faces, key=lambda f: f.area)
        # The box's corners are background beside the jaw; the face is the ellipse inscribed in the box.
        x1, y1, x2, y2 = face.box
        oval = np.zeros(mask.shape, np.uint8)
        cv2.ellipse(oval, (round((x1 + x2) / 2), round((y1 + y2) / 2)), (round((x2 - x1) / 2), round((y2 - y1) / 2)),
                    0, 0, 360, 1, -1)
        inside = (mask[oval > 0] > 127).mean()
        assert inside >= 0.95, f"frame {checked}: only {inside:.1%} of the face is masked"
        for x, y in face.landmarks:  # eyes, nose and mouth corners
            assert mask[int(y), int(x)] > 127, f"frame {checked}: a landmark at ({x:.0f}, {y:.0f}) is unmasked"
        checked += 1
    assert checked == len(source)


@pytest.mark.parametrize("clip", ["talking-1.mp4", "talking-5.mp4"])
def test_pixels_far_from_the_person_are_the_target_colour(runner, colour_jobs, clip):
    video = decode(local(runner, colour_jobs[clip], "video")).astype(np.int16)
    far = far_from_person(decode(local(runner, colour_jobs[clip], "matte"), pix_fmt="gray"))
    assert far.mean() > 0.15  # the band is a real part of the picture
    error = np.abs(video[far] - np.array(TARGET, np.int16))
    assert error.mean() < 2.0 and np.percentile(error, 99.9) <= 8, (error.mean(), np.percentile(error, 99.9))


@pytest.mark.parametrize("clip", ["talking-1.mp4", "talking-5.mp4"])
def test_the_mask_does_not_flicker_on_a_still_speaker(runner, colour_jobs, clip):
    person = decode(local(runner, colour_jobs[clip], "matte"), pix_fmt="gray") > 127
    ious = [(a & b).sum() / (a | b).sum() for a, b in zip(person, person[1:])]
    assert min(ious) >= 0.95, min(ious)
    metrics = colour_jobs[clip].stages["compose"].metrics
    assert metrics["frames"] == len(person) and metrics["frames_without_person"] == 0


def test_temporal_smoothing_lowers_flicker_against_the_raw_mask(clips):
    """Flicker is the mask changing where the picture does not: one real frame, shown 30 times with fresh
    camera noise each time. The smoothing halves the mask's frame-to-frame change there."""
    still = decode(clips["talking-5.mp4"])[20].astype(np.float32)
    noise = np.random.default_rng(0)
    frames = [np.clip(still + noise.normal(0, 4, still.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    with PersonSegmenter() as segmenter:
        raw = [segmenter.probability(f) for f in frames]
    changes = {}
    for weight in (0.0, 0.6):
        state = MatteState()
        alphas = [refine(smooth(state, p, f, weight=weight), f, feather=2.0) for p, f in zip(raw, frames)]
        changes[weight] = float(np.mean([np.abs(a - b).mean() for a, b in zip(alphas, alphas[1:])]))
    assert changes[0.0] > 0 and changes[0.6] < 0.7 * changes[0.0], changes


def test_the_output_keeps_the_frame_count_size_and_untouched_audio(runner, clips, colour_jobs):
    job = colour_jobs["talking-1.mp4"]
    video, src = local(runner, job, "video"), clips["talking-1.mp4"]
    out_streams, in_streams = streams(video), streams(src)
    v_out = next(s for s in out_streams if s["codec_type"] == "video")
    v_in = next(s for s in in_streams if s["codec_type"] == "video")
    assert (v_out["width"], v_out["height"], v_out["nb_frames"]) == (v_in["width"], v_in["height"], v_in["nb_frames"])
    assert audio_md5(video) == audio_md5(src)  # the AAC packets copied bit for bit
    assert job.stages["compose"].metrics["audio"] == "copied"
    assert runner.storage.exists(job.outputs["poster"])
    assert not runner.storage.list_keys(f"jobs/{job.job_id}/compose/segments/")  # cleaned up once joined


# ---------------------------------------------------------------------------- other backgrounds
def test_an_image_background_covers_the_frame(runner):
    job = compose_job(runner, "photo", "talking-5.mp4", "{image: uploads/photo.png, fit: cover}")
    assert job.status.value == "succeeded", job.error
    photo = cv2.cvtColor(cv2.imread(str(runner.storage.path("uploads/photo.png"))), cv2.COLOR_BGR2RGB)
    h, w = photo.shape[:2]
    side = min(h, w)  # cover a square: scale the short side to 360, crop the centre
    crop = photo[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    expected = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.int16)
    video = decode(local(runner, job, "video")).astype(np.int16)
    far = far_from_person(decode(local(runner, job, "matte"), pix_fmt="gray"))
    error = np.abs(video - expected[None])[far]
    assert error.mean() < 4.0, error.mean()


def test_a_shorter_background_video_loops(runner):
    job = compose_job(runner, "clip", "talking-5.mp4", "{video: uploads/backdrop.mp4}")
    assert job.status.value == "succeeded", job.error
    backdrop = decode(runner.storage.path("uploads/backdrop.mp4"))  # 25 frames, 240×240, same 25 fps
    expected = np.stack([cv2.resize(f, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR) for f in backdrop]).astype(np.int16)
    video = decode(local(runner, job, "video")).astype(np.int16)
    far = far_from_person(decode(local(runner, job, "matte"), pix_fmt="gray"))
    assert len(video) > 2 * len(backdrop)
    for i in (3, len(backdrop) + 3, 2 * len(backdrop) + 3):  # the same backdrop frame on every loop
        error = np.abs(video[i] - expected[i % len(backdrop)])[far[i]]
        other = np.abs(video[i] - expected[(i + 12) % len(backdrop)])[far[i]]
        assert error.mean() < 6.0 and error.mean() < other.mean(), (i, error.mean(), other.mean())


def test_a_blurred_background_is_the_videos_own_blurred(runner, clips):
    job = compose_job(runner, "blur", "talking-5.mp4", "{blur: 30}")
    assert job.status.value == "succeeded", job.error
    source, video = decode(clips["talking-5.mp4"]), decode(local(runner, job, "video"))
    far = far_from_person(decode(local(runner, job, "matte"), pix_fmt="gray"))
    i = 30
    detail = lambda f: cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_32F)[far[i]].var()  # noqa: E731
    assert detail(video[i]) < 0.5 * detail(source[i])
    assert abs(video[i][far[i]].mean() - source[i][far[i]].mean()) < 12  # the same scene's colours, blurred


# ---------------------------------------------------------------------------- matte outputs
def test_a_webm_matte_has_an_alpha_channel_and_the_sound_once_encoded(runner, clips):
    job = compose_job(runner, "matte-webm", "talking-5.mp4", "{matte: true}")
    assert job.status.value == "succeeded", job.error
    video = local(runner, job, "video")
    assert video.suffix == ".webm"
    v = next(s for s in streams(video) if s["codec_type"] == "video")
    assert v["codec_name"] == "vp9" and v.get("tags", {}).get("ALPHA_MODE") == "1"
    rgba = decode(video, pix_fmt="rgba", codec=["-c:v", "libvpx-vp9"])  # libvpx decodes VP9's alpha plane
    matte = decode(local(runner, job, "matte"), pix_fmt="gray")
    alpha = rgba[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255
    assert np.abs(alpha.astype(np.int16) - matte).mean() < 3  # the alpha channel is the matte
    a_out = next(s for s in streams(video) if s["codec_type"] == "audio")
    a_in = next(s for s in streams(clips["talking-5.mp4"]) if s["codec_type"] == "audio")
    assert a_out["codec_name"] == "opus" and job.stages["compose"].metrics["audio"] == "reencoded"
    duration = lambda p: float(json.loads(subprocess.run(  # noqa: E731
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "packet=pts_time,duration_time", "-of",
         "json", str(p)], check=True, capture_output=True).stdout)["packets"][-1]["pts_time"])
    assert abs(duration(video) - duration(clips["talking-5.mp4"])) < 0.03
    assert a_in["codec_name"] == "aac"


def test_a_prores_matte_keeps_alpha_and_copies_the_sound(runner, clips):
    job = compose_job(runner, "matte-mov", "talking-5.mp4", "{matte: true, format: mov}")
    assert job.status.value == "succeeded", job.error
    video = local(runner, job, "video")
    v = next(s for s in streams(video) if s["codec_type"] == "video")
    assert (video.suffix, v["codec_name"], v["pix_fmt"][:8]) == (".mov", "prores", "yuva444p")  # 4444: alpha
    alpha = decode(video, pix_fmt="rgba")[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255
    assert audio_md5(video) == audio_md5(clips["talking-5.mp4"])


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("background, code", [
    ("{image: uploads/missing.png}", "background_not_found"),
    ("{video: uploads/missing.mp4}", "background_not_found"),
    ("{image: uploads/garbage.png}", "unreadable_background"),
    ("{video: uploads/garbage.mp4}", "unreadable_background"),
    ('{color: "#12345z"}', "invalid_color"),
    ("{matte: true, format: gif}", "unsupported_matte_format"),
    ("{color: red, blur: 3}", "invalid_background"),
])
def test_a_bad_background_fails_the_job_with_its_code(runner, background, code):
    job = compose_job(runner, f"bad-{code}-{abs(hash(background)) % 1000}", "talking-5.mp4", background)
    assert job.status.value == "failed"
    assert job.error.code == code, job.error
    assert job.stages["prepare"].status.value == "failed"


def test_a_video_without_a_person_is_no_person_found(runner):
    job = compose_job(runner, "empty", "empty.mp4", '{color: "#0b5fff"}')
    assert job.status.value == "failed"
    assert job.error.code == "no_person_found", job.error
    assert job.stages["compose"].status.value == "failed"
    assert "/tmp" not in job.error.message and str(runner.storage.root) not in json.dumps(job.model_dump(mode="json"))


def test_a_missing_video_is_video_not_found(runner):
    job = compose_job(runner, "novideo", "nothing-here.mp4", '{color: "#0b5fff"}')
    assert (job.status.value, job.error.code) == ("failed", "video_not_found")


# ---------------------------------------------------------------------------- kill and resume
def framemd5(path: Path) -> list[str]:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
                         check=True, capture_output=True, text=True).stdout
    return [line.split(",")[-1].strip() for line in out.splitlines() if not line.startswith("#")]


def test_a_killed_compose_resumes_after_its_last_segment_to_the_same_video(clips, colour_jobs, runner, tmp_path,
                                                                          monkeypatch):
    killed = make_runner(tmp_path / "bucket", {"uploads/talking-1.mp4": clips["talking-1.mp4"]}, lease_s=0.5)
    brief = 'kind: compose\nvideo: uploads/talking-1.mp4\nbackground: {color: "#0b5fff"}\n'
    job_id = submit(killed, "colour-talking-1.yaml", brief)
    commit = compose_module._Segment.commit
    done: list[int] = []

    def commit_then_die(self, point):
        commit(self, point)
        done.append(self.index)
        if len(done) == 1:
            raise SimulatedKill("killed after the first segment")

    monkeypatch.setattr(compose_module._Segment, "commit", commit_then_die)
    with pytest.raises(SimulatedKill):
        drain(killed, job_id)
    assert killed.store.load(job_id).stages["compose"].status.value == "running"
    time.sleep(0.6)  # the dead worker's lease expires; its message comes back
    resumed = drain(killed, job_id)
    assert resumed.status.value == "succeeded", resumed.error
    metrics = resumed.stages["compose"].metrics
    assert resumed.stages["compose"].attempts == 2 and metrics["segments_resumed"] == 1
    assert done[1] == 1  # the retry went on from the second segment
    straight = colour_jobs["talking-1.mp4"]
    assert metrics["frames"] == straight.stages["compose"].metrics["frames"]
    for name in ("video", "matte"):
        assert framemd5(killed.storage.path(resumed.outputs[name])) == framemd5(local(runner, straight, name))


def test_a_render_brief_with_a_background_runs_compose_after_render(runner):
    """The tiny Mochi's frames are noise: the route is prepare → render → compose, and compose finds no one."""
    job = run_job(runner, "noise.yaml", "prompt: a person talking\nmodel: tiny\nsteps: 2\nwidth: 64\nheight: 64\n"
                  "num_frames: 13\nbackground: {color: white}\n")
    assert list(job.stages) == ["prepare", "render", "compose"]
    assert job.stages["render"].status.value == "succeeded"
    assert (job.status.value, job.error.code, job.stages["compose"].status.value) == ("failed", "no_person_found",
                                                                                       "failed")
    plain = run_job(runner, "plain.yaml", "prompt: a person talking\nmodel: tiny\nsteps: 2\nwidth: 64\nheight: 64\n"
                    "num_frames: 13\n")
    assert list(plain.stages) == ["prepare", "render"] and plain.status.value == "succeeded"


# ---------------------------------------------------------------------------- green screens, odd sizes, silence
def test_real_footage_is_not_taken_for_a_green_screen(clips):
    from functions.spill import screen_colour

    with PersonSegmenter() as segmenter:
        for clip in clips.values():
            frame = decode(clip)[10]
            alpha = cv2.resize(segmenter.probability(frame), (frame.shape[1], frame.shape[0]))
            assert screen_colour(frame, alpha) is None


def test_a_green_screens_spill_is_suppressed_at_the_edge(runner, clips, colour_jobs, tmp_path):
    """A real speaker keyed onto a green screen, with green light spilled on the edge of the person (hair,
    shoulders); composed over blue, the fringe's green excess is removed with spill on, kept with it off."""
    from functions.spill import edge_weight

    source = decode(clips["talking-5.mp4"]).astype(np.float32)
    matte = decode(local(runner, colour_jobs["talking-5.mp4"], "matte"), pix_fmt="gray").astype(np.float32) / 255
    screen = np.array((0, 177, 64), np.float32)
    frames = []
    for frame, alpha in zip(source, matte):
        tinted = frame.copy()
        tinted[..., 1] = np.minimum(255, tinted[..., 1] + 60 * edge_weight(alpha))
        frames.append(np.clip(tinted * alpha[..., None] + screen * (1 - alpha[..., None]), 0, 255).astype(np.uint8))
    path = tmp_path / "greenscreen.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{SIDE}x{SIDE}",
                    "-r", "25", "-i", "-", "-c:v", "libx264", "-crf", "14", "-pix_fmt", "yuv420p", str(path)],
                   input=np.stack(frames).tobytes(), check=True)
    runner.storage.put_file("uploads/greenscreen.mp4", path)
    excess = {}
    for spill in ("auto", "off"):
        job = compose_job(runner, f"green-{spill}", "greenscreen.mp4", f'{{color: "#0b5fff", spill: {spill}}}')
        assert job.status.value == "succeeded", job.error
        assert job.stages["compose"].metrics["screen"] == ("green" if spill == "auto" else "none")
        out = decode(local(runner, job, "video")).astype(np.int16)
        alpha = decode(local(runner, job, "matte"), pix_fmt="gray").astype(np.float32) / 255
        fringe = np.stack([(a > 0.9) & (edge_weight(a) > 0.3) for a in alpha])
        green = out[..., 1] - np.maximum(out[..., 0], out[..., 2])
        excess[spill] = float(np.maximum(green[fringe], 0).mean())
    assert excess["auto"] < 0.4 * excess["off"], excess


def test_a_silent_video_of_odd_size_is_composed_without_sound(runner, tmp_path):
    path = tmp_path / "silent.mp4"  # 4:4:4 H.264 takes odd sides
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_file("talking-3.mp4")), "-t", "2", "-vf",
                    "scale=301:301", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv444p", "-an", str(path)],
                   check=True)
    runner.storage.put_file("uploads/silent.mp4", path)
    job = compose_job(runner, "silent", "silent.mp4", "{color: white}")
    assert job.status.value == "succeeded", job.error
    found = streams(local(runner, job, "video"))
    assert [s["codec_type"] for s in found] == ["video"] and job.stages["compose"].metrics["audio"] == "none"
    assert (found[0]["width"], found[0]["height"]) == (300, 300)  # 4:2:0 needs even sides: one column, one row off
