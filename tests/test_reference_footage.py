"""Reference footage: the longest clean segment of a training video, smoothed, and its ping-pong order."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from core.video import probe_video, sample_frames
from functions.alignment import CROP_SIZE, LANDMARK_WEIGHTS, estimate_alignment, face_template, weighted_similarity
from functions.faces import TrackingDetector
from functions.reference_footage import (SegmentLimits, Smoothing, clean_runs, landmark_jitter, ping_pong,
                                         reference_segment, smooth_similarities, smooth_track)
from real_media import media_file
from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError

TEMPLATE = face_template(CROP_SIZE, 0.2)
FPS = 25.0
# a frontal face of eye distance 1 around (0, 0): eyes, nose, mouth corners
UNIT_FACE = np.array([[-0.5, -0.45], [0.5, -0.45], [0.0, 0.1], [-0.4, 0.6], [0.4, 0.6]])


def face_record(index: int, centre: np.ndarray, eye_distance: float = 100.0, *, rejected: str | None = None,
                landmarks: np.ndarray | None = None) -> FaceRecord:
    """A record as align writes one, its matrix fitted to the landmarks (the real estimator)."""
    points = UNIT_FACE * eye_distance + centre if landmarks is None else landmarks
    half = 1.1 * eye_distance
    box = [centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + 1.2 * half]
    matrix = weighted_similarity(points, TEMPLATE, LANDMARK_WEIGHTS)
    return FaceRecord(frame_index=index, time_s=index / FPS, box=box, landmarks=points.tolist(), score=0.999,
                      track_id=0, roll_deg=0.0, eye_distance_px=eye_distance, fit_error=0.01, rejected=rejected,
                      matrix=matrix.tolist())


def steady_records(n: int, *, start: int = 0, rejected: set[int] = frozenset(), jump_at: int | None = None,
                   missing: set[int] = frozenset()) -> list[FaceRecord]:
    """A face drifting slowly right; from `jump_at` on it is one box width further (a cut)."""
    records = []
    for i in range(start, start + n):
        if i in missing:
            continue
        centre = np.array([300.0 + 0.5 * i + (220.0 if jump_at is not None and i >= jump_at else 0.0), 260.0])
        records.append(face_record(i, centre, rejected="low_confidence" if i in rejected else None))
    return records


def frames_of(records: list[FaceRecord]) -> list[int]:
    return [r.frame_index for r in records]


def test_longest_segment_skips_gaps_rejections_and_jumps():
    # runs: 0–19 (20), [20 missing], 21–44 (24), [45 rejected], 46–69 (24), [jump], 70–99 (30)
    records = steady_records(100, missing={20}, rejected={45}, jump_at=70)
    runs = clean_runs(records)
    assert [(r[0].frame_index, r[-1].frame_index) for r in runs] == [(0, 19), (21, 44), (46, 69), (70, 99)]
    segment = reference_segment(records)
    assert (segment.first_frame, segment.last_frame, segment.length) == (70, 99, 30)
    assert segment.frame_indices().tolist() == list(range(70, 100))
    assert segment.boxes.shape == (30, 4) and segment.landmarks.shape == (30, 5, 2)
    assert segment.matrices.shape == (30, 2, 3)


def test_blurred_frames_and_ties():
    records = steady_records(100, missing={20}, rejected={45}, jump_at=70)
    frames = [FrameRecord(index=i, time_s=i / FPS, mean_luma=120.0, sharpness=30.0 if i == 80 else 400.0)
              for i in range(100)]
    # frame 80 blurred: 70–79 and 81–99 are shorter than 21–44 and 46–69 (24 each): the earlier of those wins
    segment = reference_segment(records, frames=frames, limits=SegmentLimits(min_sharpness=100.0))
    assert (segment.first_frame, segment.last_frame) == (21, 44)
    # without the sharpness limit, a frame prepare dropped still breaks the run
    frames[85] = frames[85].model_copy(update={"dropped": "too_dark"})
    assert (reference_segment(records, frames=frames).first_frame) == 21
    assert reference_segment(records).first_frame == 70


def test_box_size_jump_and_duplicate_frames_break_runs():
    records = steady_records(40)
    # frame 10: the box suddenly 40 % larger (the detector locked onto something else)
    grown = records[10].box
    records[10] = records[10].model_copy(update={"box": [grown[0], grown[1], grown[2] + 0.4 * (grown[2] - grown[0]),
                                                          grown[3]]})
    records.append(records[30].model_copy())  # two faces of the subject in frame 30: ambiguous
    runs = [(r[0].frame_index, r[-1].frame_index) for r in clean_runs(records)]
    assert runs == [(0, 9), (10, 10), (11, 29), (31, 39)]


def test_no_clean_frame_raises():
    with pytest.raises(VideostudioError) as error:
        reference_segment(steady_records(5, rejected=set(range(5))))
    assert error.value.code == "no_reference_footage"
    with pytest.raises(VideostudioError):
        reference_segment(steady_records(30), min_frames=31)
    assert reference_segment(steady_records(30), min_frames=30).length == 30


def test_smoothing_removes_noise_but_keeps_motion():
    rng = np.random.default_rng(0)
    t = np.arange(120, dtype=np.float64)
    truth = UNIT_FACE[None] * 100 + np.stack([300 + 40 * np.sin(t / 20), 250 + 0.05 * t], axis=1)[:, None]
    noisy = truth + rng.normal(0.0, 1.5, truth.shape)
    smoothed = smooth_track(noisy)
    assert landmark_jitter(smoothed) < 0.3 * landmark_jitter(noisy)
    error_raw = np.linalg.norm(noisy - truth, axis=2).mean()
    assert np.linalg.norm(smoothed - truth, axis=2).mean() < 0.6 * error_raw
    # steady motion (a quadratic) passes unchanged, ends included: no lag, no pull at the segment's edges
    quadratic = np.stack([5 + 0.8 * t + 0.01 * t ** 2, 3 - 0.2 * t], axis=1)
    np.testing.assert_allclose(smooth_track(quadratic), quadratic, atol=1e-9)
    # segments shorter than the window are smoothed with a shorter one; a 2-frame one is left as is
    assert smooth_track(noisy[:5]).shape == (5, 5, 2) and not np.allclose(smooth_track(noisy[:5]), noisy[:5])
    np.testing.assert_array_equal(smooth_track(noisy[:2]), noisy[:2])
    with pytest.raises(ValueError):
        Smoothing(window=8)


def test_smoothed_matrices_stay_similarities():
    rng = np.random.default_rng(1)
    records = [face_record(i, np.array([300.0 + i, 260.0]),
                           landmarks=UNIT_FACE * 100 + [300.0 + i, 260.0] + rng.normal(0, 2, (5, 2)))
               for i in range(40)]
    raw = np.array([r.matrix for r in records])
    smoothed = smooth_similarities(raw)
    np.testing.assert_allclose(smoothed[:, 0, 0], smoothed[:, 1, 1], atol=1e-12)  # [[a, −b], [b, a]]: no shear
    np.testing.assert_allclose(smoothed[:, 0, 1], -smoothed[:, 1, 0], atol=1e-12)
    # the crop's placement jitters less: where the true (noise-free) mouth corners land in the crop
    mouth = np.array([UNIT_FACE[3:] * 100 + [300.0 + i, 260.0] for i in range(40)])
    in_crop = lambda m: np.einsum("tij,tkj->tki", m[:, :, :2], mouth) + m[:, None, :, 2]  # noqa: E731
    assert landmark_jitter(in_crop(smoothed)) < 0.5 * landmark_jitter(in_crop(raw))


def test_ping_pong_never_jumps():
    assert ping_pong(10, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    for n, length in [(1, 5), (7, 7), (250, 9), (251, 2), (40, 40), (39, 100)]:
        order = ping_pong(n, length)
        assert len(order) == n and order.min() >= 0 and order.max() < length
        assert np.all(np.abs(np.diff(order)) == 1)  # no jump, no frame held twice
    assert ping_pong(0, 3).tolist() == []
    assert ping_pong(4, 1).tolist() == [0, 0, 0, 0]  # a one-frame segment can only be held
    with pytest.raises(ValueError):
        ping_pong(3, 0)


# ------------------------------------------------------------------------------------------ real footage
@functools.cache
def detect_records(clip: str) -> list[FaceRecord]:
    """Every frame of a real clip at 25 fps through the align stage's detector and alignment."""
    path = media_file(clip)
    info = probe_video(path)
    detector, records = TrackingDetector(), []
    for frame in sample_frames(path, fps=FPS, size=(info.width, info.height)):
        faces = detector.detect(frame.pixels)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.area)
        result = estimate_alignment(face, TEMPLATE)
        records.append(FaceRecord(
            frame_index=frame.index, time_s=frame.time_s, box=face.box.tolist(), landmarks=face.landmarks.tolist(),
            score=face.score, track_id=0, roll_deg=result.roll_deg, eye_distance_px=result.eye_distance_px,
            fit_error=result.fit_error, rejected=result.reason, matrix=result.matrix.tolist()))
    return records


@pytest.fixture(scope="module", params=["talking-2.mp4", "talking-4.mp4"])
def real_records(request) -> list[FaceRecord]:
    return list(detect_records(request.param))


def test_real_clip_segment_and_jitter(real_records):
    segment = reference_segment(real_records)
    usable = [r for r in real_records if r.rejected is None]
    assert segment.length >= 0.6 * len(usable)  # these clips are single shots: one long run at least
    indices = frames_of(list(segment.records))
    assert indices == list(range(segment.first_frame, segment.last_frame + 1))
    assert all(r.rejected is None for r in segment.records)
    rejected = {r.frame_index for r in real_records if r.rejected}
    assert not rejected & set(indices)
    raw = np.array([r.landmarks for r in segment.records])
    before, after = landmark_jitter(raw), landmark_jitter(segment.landmarks)
    eye = float(np.median([r.eye_distance_px for r in segment.records]))
    print(f"{len(real_records)} frames, segment {segment.first_frame}–{segment.last_frame}; landmark jitter "
          f"{before:.2f} → {after:.2f} px (eye distance {eye:.0f} px)")
    assert after < 0.5 * before
    # smoothing follows the face: the landmarks stay within a few per cent of the eye distance of MTCNN's
    assert np.linalg.norm(segment.landmarks - raw, axis=2).mean() < 0.03 * eye


def test_real_cut_between_two_shots_breaks_the_segment():
    """Two real clips played one after the other (a cut to another speaker): never one segment."""
    first = [r for r in detect_records("talking-2.mp4") if r.frame_index < 60]
    # frames 38–137 of the other clip (its clean stretch) as frames 60–159: consecutive, so only the cut can break it
    second = [r.model_copy(update={"frame_index": r.frame_index + 22, "time_s": (r.frame_index + 22) / FPS})
              for r in detect_records("talking-4.mp4") if 38 <= r.frame_index < 138]
    assert frames_of(first + second) == list(range(160))
    runs = clean_runs(first + second)
    assert [(r[0].frame_index, r[-1].frame_index) for r in runs] == [(0, 59), (60, 159)]
    assert reference_segment(first + second).first_frame == 60
