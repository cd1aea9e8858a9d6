"""Unit tests for the pieces of the align stage: frame quality, tracking, alignment geometry, the split."""

from __future__ import annotations

import math
import subprocess
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.video import probe_video, sample_frames, sample_thumbnails, write_mp4
from functions.alignment import (
    CROP_SIZE,
    LANDMARK_WEIGHTS,
    estimate_alignment,
    face_template,
    weighted_similarity,
)
from functions.dataset_split import split_by_time_blocks
from functions.faces import Face, NaiveDetector, TrackingDetector
from functions.frame_quality import FrameFilter
from functions.tracking import link_tracks, main_track
from synthetic_video import eyes_in_frame, render_face_frames


def _face(x: float, y: float, size: float, score: float = 0.999) -> Face:
    """A face whose landmarks are the template's, scaled into a box at (x, y)."""
    landmarks = face_template(112, 0.0) / 112 * size + np.array([x, y])
    return Face(np.array([x, y, x + size, y + size]), score, landmarks)


# --------------------------------------------------------------------------- frame quality
def _textured(seed: int, shape=(144, 256)) -> np.ndarray:
    """Blobs a few pixels across with crisp detail on top, like a real frame's thumbnail."""
    rng = np.random.default_rng(seed)
    blobs = cv2.resize(rng.integers(0, 255, (shape[0] // 8, shape[1] // 8), dtype=np.uint8), shape[::-1],
                       interpolation=cv2.INTER_CUBIC)
    return cv2.addWeighted(blobs, 0.7, rng.integers(0, 255, shape, dtype=np.uint8), 0.3, 0)


def test_frame_filter_drops_black_white_blurry_and_duplicates():
    frames = {
        "ok1": _textured(1), "dup": _textured(1), "ok2": _textured(2),
        "black": np.full((144, 256), 3, np.uint8), "white": np.full((144, 256), 252, np.uint8),
        "grey": np.full((144, 256), 128, np.uint8), "blurry": cv2.GaussianBlur(_textured(3), (0, 0), 3),
        "ok3": _textured(4),
    }
    quality = FrameFilter()
    for n, thumb in enumerate(frames.values()):
        quality.add(n, n / 25, thumb)
    verdicts = dict(zip(frames, (v.reason for v in quality.finish())))
    assert verdicts == {"ok1": None, "dup": "duplicate", "ok2": None, "black": "too_dark", "white": "too_bright",
                        "grey": "blank", "blurry": "blurry", "ok3": None}
    assert quality.counts() == {"total": 8, "kept": 3, "dropped_too_dark": 1, "dropped_too_bright": 1,
                                "dropped_blank": 1, "dropped_blurry": 1, "dropped_duplicate": 1}


# --------------------------------------------------------------------------- tracking
def test_main_track_is_the_persistent_subject_not_the_largest_face():
    per_frame = []
    for n in range(60):
        faces = [_face(100 + n, 100, 80)]  # the subject: present throughout, drifting
        if 20 <= n < 26:
            faces.append(_face(400, 50, 200))  # a passer-by, much larger, for 6 frames
        if n in (30, 31, 32):
            faces = faces[1:]  # the subject is missed for a moment
        per_frame.append(faces)
    tracks = link_tracks(per_frame)
    subject = main_track(tracks)
    assert len(tracks) == 2
    assert len(subject.frames) == 57 and subject.faces[0].box[0] == 100  # gaps bridged, passer-by excluded


# --------------------------------------------------------------------------- alignment
def test_a_followed_face_keeps_its_track_however_far_it_jumps():
    """At a low sampling rate a head moves more than its width between frames: geometry alone cuts its
    track into pieces, and a static bystander then looks like the main subject. The detector's
    `follows` links keep the moving face in one track."""
    from dataclasses import replace

    def frames(followed: bool) -> list[list[Face]]:
        out = []
        for n in range(20):
            mover = _face(100 + 150 * (n % 4), 100, 80)  # jumps ~2 widths every frame
            bystander = _face(900, 100, 80)
            if n < 8:  # the bystander is only there for 8 frames
                out.append([replace(mover, follows=0 if followed and n else None),
                            replace(bystander, follows=1 if followed and n else None)])
            else:
                out.append([replace(mover, follows=0 if followed else None)])
        return out

    assert main_track(link_tracks(frames(followed=False))).faces[0].box[0] == 900  # the bug this prevents
    tracks = link_tracks(frames(followed=True))
    assert len(tracks) == 2 and len(main_track(tracks).frames) == 20 and main_track(tracks).faces[0].box[0] == 100


def test_alignment_maps_landmarks_onto_the_template_and_rejects_bad_geometry():
    template = face_template(CROP_SIZE, 0.2)
    face = _face(300, 200, 150)
    result = estimate_alignment(face, template)
    assert result.ok and abs(result.roll_deg) < 0.5 and result.fit_error < 1e-6
    mapped = face.landmarks @ result.matrix[:, :2].T + result.matrix[:, 2]
    assert np.allclose(mapped, template, atol=1e-6)

    # Rotate the face by 50° about its centre: too much roll for training data.
    angle = math.radians(50)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = face.landmarks.mean(axis=0)
    rolled = Face(face.box, face.score, (face.landmarks - centre) @ rot.T + centre)
    assert estimate_alignment(rolled, template).reason == "roll_too_large"
    # Mouth above the eyes cannot be a face.
    upside = face.landmarks.copy()
    upside[3:, 1] = face.landmarks[0, 1] - 40
    assert estimate_alignment(Face(face.box, 0.99, upside), template).reason == "implausible_landmarks"
    assert estimate_alignment(Face(face.box, 0.5, face.landmarks), template).reason == "low_confidence"
    tiny = _face(0, 0, 20)
    assert estimate_alignment(tiny, template).reason == "face_too_small"


def test_weighted_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = weighted_similarity(src, src @ rot.T + shift, LANDMARK_WEIGHTS)
    assert np.allclose(matrix[:, :2], rot) and np.allclose(matrix[:, 2], shift)
    assert weighted_similarity(np.zeros((5, 2)), src, LANDMARK_WEIGHTS) is None


def test_more_padding_means_a_smaller_face_in_the_crop():
    tight, loose = face_template(512, 0.0), face_template(512, 0.5)
    assert np.linalg.norm(tight[1] - tight[0]) > np.linalg.norm(loose[1] - loose[0])
    assert (loose >= 0).all() and (loose <= 512).all()


# --------------------------------------------------------------------------- split
def test_time_block_split_is_deterministic_and_leak_free():
    times = [n / 25 for n in range(25 * 120)]  # two minutes at 25 fps
    plan = split_by_time_blocks(times, seed=7)
    assert plan.labels == split_by_time_blocks(times, seed=7).labels
    assert plan.labels != split_by_time_blocks(times, seed=8).labels
    kept = [(t, s) for t, s in zip(times, plan.labels) if s]
    counts = {s: sum(1 for _, x in kept if x == s) / len(kept) for s in ("train", "val", "test")}
    assert abs(counts["train"] - 0.85) < 0.03 and abs(counts["val"] - 0.10) < 0.03 and abs(counts["test"] - 0.05) < 0.02
    by_split = {s: np.array([t for t, x in kept if x == s]) for s in ("train", "val", "test")}
    for a, b in combinations(by_split, 2):
        closest = np.min(np.abs(by_split[a][:, None] - by_split[b][None, :]))
        assert closest >= 2 * plan.guard_s - 1e-9
    assert 2 * plan.guard_s > 1 / 25  # wider than the gap between neighbouring frames


# --------------------------------------------------------------------------- rotation metadata
def test_rotated_video_is_probed_and_extracted_upright(tmp_path: Path):
    frames = np.zeros((6, 48, 96, 3), np.uint8)
    frames[:, :, :48] = 255  # left half white: after a 90° rotation it becomes the top or bottom half
    plain = write_mp4(frames, tmp_path / "plain.mp4", fps=6)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(rotated)], check=True)
    info = probe_video(rotated)
    assert info.rotation in (90, 270) and (info.width, info.height) == (48, 96)
    thumbs = list(sample_thumbnails(rotated, fps=6, size=(info.width, info.height), thumb_width=48))
    assert len(thumbs) == 6
    thumb = thumbs[0].pixels
    assert thumb.shape == (96, 48)  # portrait, as displayed
    assert abs(float(thumb[:48].mean()) - float(thumb[48:].mean())) > 100  # the white half moved to top/bottom
    full = list(sample_frames(rotated, fps=6, size=(info.width, info.height)))
    assert [f.index for f in full] == [t.index for t in thumbs]
    assert full[0].pixels.shape == (96, 48, 3)
    assert abs(float(full[0].pixels[:48].mean()) - float(full[0].pixels[48:].mean())) > 100


# --------------------------------------------------------------------------- tracking detector
def test_tracked_faces_are_refitted_as_precisely_as_full_detection_and_lost_faces_fall_back():
    """Between keyframes the R-Net/O-Net refit follows the face; its eyes are as close to the truth as
    full-frame MTCNN's. When the face vanishes, the refit fails and the detector falls back (no ghost)."""
    width, height, fps, face_px = 640, 360, 5, 160.0
    frames = list(render_face_frames(3.0, fps, width, height, face_px=face_px))
    tracker, naive = TrackingDetector(keyframe_every=100), NaiveDetector()

    def eye_error(faces: list[Face], t: float) -> float:
        eyes = eyes_in_frame(t, width, height, face_px)
        best = min(faces, key=lambda f: float(np.abs(f.landmarks[:2] - eyes).sum()))
        return float(np.linalg.norm(best.landmarks[:2] - eyes, axis=1).max() / np.linalg.norm(eyes[1] - eyes[0]))

    tracked = [eye_error(tracker.detect(frame), n / fps) for n, frame in enumerate(frames)]
    assert tracker.keyframes == 1 and tracker.refinements == len(frames) - 1 and tracker.roi_searches == 0
    full = [eye_error(naive.detect(frame), n / fps) for n, frame in enumerate(frames)]
    assert max(tracked) < 0.15 and np.median(tracked) <= np.median(full) + 0.02, (tracked, full)

    blank = next(render_face_frames(1.0, fps, width, height, with_face=False))
    assert tracker.detect(blank) == []
    assert tracker.keyframes == 2 and tracker.roi_searches == 1  # refit failed → region search → keyframe


def test_stopping_a_frame_stream_early_ends_its_ffmpeg_and_reader(tmp_path: Path):
    import threading

    frames = np.zeros((60, 48, 64, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(60, dtype=np.uint8)[:, None, None] * 4
    path = write_mp4(frames, tmp_path / "ramp.mp4", fps=30)
    stream = sample_frames(path, fps=30, size=(64, 48), keep=lambda i: i % 2 == 0)
    first = [next(stream) for _ in range(3)]
    assert [f.index for f in first] == [0, 2, 4] and first[0].pixels.shape == (48, 64, 3)
    stream.close()  # the caller stops early: ffmpeg is stopped and the reader thread ends
    assert not [t for t in threading.enumerate() if t.name == "ffmpeg-frames"]
    assert [f.index for f in sample_frames(path, fps=30, size=(64, 48))] == list(range(60))
