"""Paste-back of a generated 96-px face: feathered landmark mask, colour matching, untouched outside the mask.

Runs on a real frame of ../shared/media with the align stage's detector and alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from core.video import probe_video, sample_frames
from functions.alignment import CROP_SIZE, estimate_alignment, face_template
from functions.faces import Face, TrackingDetector
from functions.paste_back import (MaskShape, face_input, face_matrix, hard_paste, mask_polygon, mouth_mask, paste_back,
                                  wav2lip_box)
from real_media import media_file

TEMPLATE = face_template(CROP_SIZE, 0.2)


@dataclass(frozen=True)
class RealFace:
    frame: np.ndarray  # H×W×3 uint8 RGB
    face: Face
    matrix: np.ndarray


def detect(frame: np.ndarray) -> RealFace:
    face = max(TrackingDetector().detect(frame), key=lambda f: f.area)
    alignment = estimate_alignment(face, TEMPLATE)
    assert alignment.ok, alignment.reason
    return RealFace(frame, face, alignment.matrix)


@pytest.fixture(scope="module")
def real() -> RealFace:
    path = media_file("talking-2.mp4")  # 844×844, eye distance ~135 px
    info = probe_video(path)
    frame = next(f for f in sample_frames(path, fps=25, size=(info.width, info.height)) if f.index == 30)
    return detect(frame.pixels.copy())


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    error = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean()
    return float(10 * np.log10(255.0 ** 2 / max(error, 1e-12)))


def full_mask(real: RealFace, landmarks: np.ndarray | None = None) -> np.ndarray:
    mask = mouth_mask(real.frame.shape, real.face.landmarks if landmarks is None else landmarks)
    return mask.full(real.frame.shape[:2])


def largest_step(alpha: np.ndarray) -> float:
    return float(max(np.abs(np.diff(alpha, axis=0)).max(), np.abs(np.diff(alpha, axis=1)).max()))


def test_outside_the_mask_is_bit_identical(real):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)  # nothing like the face
    out = paste_back(real.frame, noise, matrix=real.matrix, landmarks=real.face.landmarks)
    alpha = full_mask(real)
    assert out.shape == real.frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[alpha == 0], real.frame[alpha == 0])
    changed = np.any(out != real.frame, axis=2)
    assert changed.sum() > 0.9 * (alpha > 0.5).sum()  # it did paste
    assert not (changed & (alpha == 0)).any()
    assert real.frame.flags.writeable and not np.shares_memory(out, real.frame)


def test_mask_is_feathered_and_shaped_by_the_landmarks(real):
    alpha = full_mask(real)
    assert alpha.max() == pytest.approx(1.0, abs=1e-3) and alpha.min() == 0.0
    sigma = MaskShape().feather_sigma * np.linalg.norm(real.face.landmarks[1] - real.face.landmarks[0])
    # a Gaussian-blurred edge rises by at most 1/(σ√2π) ≈ 0.4/σ per pixel; a pasted rectangle by 1
    assert largest_step(alpha) < 0.45 / sigma < 0.05
    # not a rectangle: the corners of its own bounding box are outside it
    ys, xs = np.nonzero(alpha > 0.5)
    assert max(alpha[ys.min(), xs.min()], alpha[ys.min(), xs.max()], alpha[ys.max(), xs.min()],
               alpha[ys.max(), xs.max()]) < 0.5
    # it covers the mouth corners and the chin below the mouth, but not the nose tip or the eyes
    left_eye, right_eye, nose, mouth_l, mouth_r = real.face.landmarks
    at = lambda p: alpha[int(round(p[1])), int(round(p[0]))]  # noqa: E731
    chin = (mouth_l + mouth_r) / 2 + np.array([0.0, 0.45]) * np.linalg.norm(right_eye - left_eye)
    assert at(mouth_l) > 0.95 and at(mouth_r) > 0.95 and at(chin) > 0.95
    assert at(nose) < 0.02 and at(left_eye) == 0.0 and at(right_eye) == 0.0  # the nose tip: a trace of feather


@pytest.mark.parametrize("eye_distance", [20.0, 60.0, 300.0])
def test_feather_scales_with_the_face(eye_distance):
    unit = np.array([[-0.5, -0.45], [0.5, -0.45], [0.0, 0.1], [-0.4, 0.6], [0.4, 0.6]])
    landmarks = unit * eye_distance + 600.0
    alpha = mouth_mask((1200, 1200, 3), landmarks).full((1200, 1200))
    sigma = MaskShape().feather_sigma * eye_distance
    assert largest_step(alpha) < 0.45 / sigma
    assert largest_step(alpha) > 0.2 / sigma  # and it is that Gaussian, not a wider blur


def test_mask_follows_the_landmarks(real):
    landmarks = real.face.landmarks
    base = full_mask(real)

    def centroid(alpha: np.ndarray) -> np.ndarray:
        ys, xs = np.mgrid[:alpha.shape[0], :alpha.shape[1]]
        return np.array([(xs * alpha).sum(), (ys * alpha).sum()]) / alpha.sum()

    # the whole face moved by fractions of a pixel: the mask follows to well under a pixel (not in whole steps)
    for shift in np.array([[0.25, 0.0], [0.5, 0.35], [0.75, 0.5], [7.5, 12.25]]):
        np.testing.assert_allclose(centroid(full_mask(real, landmarks + shift)) - centroid(base), shift, atol=0.2)
    opened = landmarks.copy()
    opened[3:] += np.array([0.0, 20.0])  # mouth corners lower: the chin end follows, the top (tied to the nose) less
    rows, lower_rows = (np.nonzero(m.max(axis=1) > 0.5)[0] for m in (base, full_mask(real, opened)))
    bottom_shift, top_shift = lower_rows.max() - rows.max(), lower_rows.min() - rows.min()
    assert bottom_shift >= 15 and 0 <= top_shift < bottom_shift - 5
    wider = landmarks.copy()
    wider[3] -= np.array([15.0, 0.0])
    wider[4] += np.array([15.0, 0.0])
    assert (full_mask(real, wider) > 0.5).sum() > 1.1 * (base > 0.5).sum()
    # a rolled head: the mask turns with it (its principal axis follows the eye line)
    centre = landmarks.mean(axis=0)
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = full_mask(real, (landmarks - centre) @ rotation.T + centre)
    moments = cv2.moments((rolled > 0.5).astype(np.uint8), binaryImage=True)
    axis = 0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    base_moments = cv2.moments((base > 0.5).astype(np.uint8), binaryImage=True)
    base_axis = 0.5 * np.degrees(np.arctan2(2 * base_moments["mu11"], base_moments["mu20"] - base_moments["mu02"]))
    assert axis - base_axis == pytest.approx(20.0, abs=3.0)


def test_round_trip_of_the_own_face(real):
    """Cut the frame's own face as the generator would see it, paste it back: the frame comes back."""
    inside = full_mask(real) >= 0.5
    crop = face_input(real.frame, real.matrix, CROP_SIZE)  # the 512 crop itself: only warp + blend are measured
    own = paste_back(real.frame, crop, matrix=real.matrix, landmarks=real.face.landmarks)
    assert psnr(own, real.frame, inside) >= 40.0
    # the test sees half a pixel of misregistration
    shifted = real.matrix + np.array([[0, 0, 0.5], [0, 0, 0.5]])
    off = paste_back(real.frame, crop, matrix=shifted, landmarks=real.face.landmarks)
    assert psnr(off, real.frame, inside) < psnr(own, real.frame, inside) - 6.0
    # at 96 px: lossless where the 96 crop has the frame's own resolution (the frame scaled to match it)
    k = 96 / CROP_SIZE * np.hypot(*real.matrix[0, :2])
    small = cv2.resize(real.frame, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    small_face = detect(small)
    small_inside = mouth_mask(small.shape, small_face.face.landmarks).full(small.shape[:2]) >= 0.5
    back = paste_back(small, face_input(small, small_face.matrix), matrix=small_face.matrix,
                      landmarks=small_face.face.landmarks)
    assert psnr(back, small, small_inside) >= 40.0
    # at full resolution the 96-px crop holds ~1/4.5 of the face's detail: what any 96-px generator gives back
    full_res = paste_back(real.frame, face_input(real.frame, real.matrix), matrix=real.matrix,
                          landmarks=real.face.landmarks)
    assert 30.0 <= psnr(full_res, real.frame, inside) < psnr(own, real.frame, inside)


def test_face_matrix_uses_resize_pixel_centres(real):
    crop = face_input(real.frame, real.matrix, CROP_SIZE)
    direct = cv2.warpAffine(real.frame, face_matrix(real.matrix, 96), (96, 96), flags=cv2.INTER_AREA)
    resized = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA)
    # the 96-px grid placed by face_matrix is the one cv2.resize produces (up to the two resamplings)
    core = (slice(30, 90), slice(20, 76))
    assert np.abs(direct[core].astype(float) - resized[core].astype(float)).mean() < 2.0
    unscaled = real.matrix * (96 / CROP_SIZE)  # the half-pixel term left out: a visibly shifted grid
    naive = cv2.warpAffine(real.frame, unscaled, (96, 96), flags=cv2.INTER_AREA)
    assert np.abs(naive[core].astype(float) - resized[core].astype(float)).mean() > \
        np.abs(direct[core].astype(float) - resized[core].astype(float)).mean() + 1.0


def test_colour_matching_removes_a_tint(real):
    own = face_input(real.frame, real.matrix)
    tinted = np.clip(own.astype(np.float32) * [1.25, 0.9, 0.8] + [10, 0, 0], 0, 255).astype(np.uint8)
    inside = full_mask(real) >= 0.9

    def mean_lab(image: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
        return lab[inside].mean(axis=0)

    target = mean_lab(real.frame)
    matched = paste_back(real.frame, tinted, matrix=real.matrix, landmarks=real.face.landmarks)
    unmatched = paste_back(real.frame, tinted, matrix=real.matrix, landmarks=real.face.landmarks, color_match=False)
    delta_unmatched = float(np.linalg.norm(mean_lab(unmatched) - target))
    delta_matched = float(np.linalg.norm(mean_lab(matched) - target))
    assert delta_unmatched > 10.0  # ΔE*ab-ish units: a plainly visible tint
    assert delta_matched < 2.0 and delta_matched < 0.15 * delta_unmatched


def test_mask_at_the_frame_edge_and_beyond(real):
    h, w = real.frame.shape[:2]
    landmarks = real.face.landmarks - real.face.landmarks[3:].mean(axis=0) + [5.0, h - 5.0]  # mouth in the corner
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = paste_back(real.frame, noise, matrix=real.matrix, landmarks=landmarks)
    mask = mouth_mask(real.frame.shape, landmarks)
    assert mask.x0 == 0 and mask.y0 + mask.alpha.shape[0] == h
    alpha = mask.full((h, w))
    np.testing.assert_array_equal(out[alpha == 0], real.frame[alpha == 0])
    assert (out != real.frame).any()
    gone = real.face.landmarks + [3 * w, 0.0]
    assert mouth_mask(real.frame.shape, gone) is None
    np.testing.assert_array_equal(paste_back(real.frame, noise, matrix=real.matrix, landmarks=gone), real.frame)


def test_hard_paste_overwrites_wav2lips_rectangle(real):
    x1, y1, x2, y2 = wav2lip_box(real.face.box, real.frame.shape)
    assert (x1, y1, x2) == tuple(int(v) for v in real.face.box[:3]) and y2 == min(int(real.face.box[3]) + 10, 844)
    face = cv2.resize(real.frame[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA)
    out = hard_paste(real.frame, face, box=real.face.box)
    changed = np.any(out != real.frame, axis=2)
    outside = np.ones_like(changed)
    outside[y1:y2, x1:x2] = False
    assert not changed[outside].any() and changed[y1:y2, x1:x2].mean() > 0.5
    np.testing.assert_array_equal(out[y1:y2, x1:x2], cv2.resize(face, (x2 - x1, y2 - y1)))
    # its "mask" is a hard rectangle: the feathered paste's polygon never reaches the box's corners
    polygon = mask_polygon(real.face.landmarks)
    assert polygon[:, 0].min() > x1 and polygon[:, 0].max() < x2
