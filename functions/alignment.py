"""Face alignment: a similarity transform from MTCNN's 5 landmarks to a canonical template.

The template is the widely used 5-point face template (ArcFace's 112×112 points),
re-centred and scaled into a square crop with configurable padding, FFHQ-style: the
whole head with some margin, eyes level. Only rotation, uniform scale and
translation are allowed, so faces are never sheared. Results that cannot be a usable face are
rejected with a reason rather than written to the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from functions.faces import Face

CROP_SIZE = 512
DEFAULT_PADDING = 0.2
# (x, y) for: eye on the image's left, eye on the image's right, nose tip, mouth left, mouth right.
_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                          [41.5493, 92.3655], [70.7299, 92.2041]])
_TEMPLATE_CENTRE_Y = 0.46  # where the landmarks' centroid sits in the crop: room above for hair
# Eyes anchor the fit (as in FFHQ's alignment); nose and mouth corners only steady it. With equal
# weights, faces whose mouth differs from the template's pull the eyes several pixels off it.
LANDMARK_WEIGHTS = np.array([1.0, 1.0, 0.25, 0.25, 0.25])


def face_template(size: int = CROP_SIZE, padding: float = DEFAULT_PADDING) -> np.ndarray:
    """The 5 landmark positions in a `size`×`size` crop. More padding → a smaller face in the crop."""
    unit = _TEMPLATE_112 / 112.0
    centred = (unit - unit.mean(axis=0)) / (1.0 + 2.0 * padding)
    return (centred + np.array([0.5, _TEMPLATE_CENTRE_Y])) * size


@dataclass(frozen=True)
class AlignLimits:
    min_score: float = 0.95
    max_roll_deg: float = 35.0
    min_eye_distance_px: float = 12.0  # smaller faces would be upscaled mush
    max_fit_error: float = 0.18  # mean landmark residual after the fit, in template eye distances


@dataclass(frozen=True)
class Alignment:
    matrix: np.ndarray  # 2×3, source pixels → crop pixels
    roll_deg: float
    eye_distance_px: float
    fit_error: float
    reason: str | None  # None when the face is accepted

    @property
    def ok(self) -> bool:
        return self.reason is None


def roll_degrees(landmarks: np.ndarray) -> float:
    dx, dy = landmarks[1] - landmarks[0]
    return math.degrees(math.atan2(dy, dx))


def _implausible(landmarks: np.ndarray) -> bool:
    """Geometry no frontal-ish face has: checked with eyes level and eye distance 1."""
    left_eye, right_eye, nose, mouth_l, mouth_r = landmarks
    distance = float(np.linalg.norm(right_eye - left_eye))
    if distance <= 0:
        return True
    angle = -math.atan2(*(right_eye - left_eye)[::-1])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    p = ((landmarks - left_eye) @ rot.T) / distance  # left eye at (0,0), right eye at (1,0)
    nose, mouth_l, mouth_r = p[2], p[3], p[4]
    mouth_y = (mouth_l[1] + mouth_r[1]) / 2
    return not (
        -0.3 < nose[0] < 1.3  # nose between the eyes (a profile pushes it outside)
        and 0.1 < nose[1] < mouth_y  # nose below the eyes, above the mouth
        and 0.4 < mouth_y < 2.0  # mouth a plausible distance below the eyes
        and 0.25 < mouth_r[0] - mouth_l[0] < 1.8  # mouth width relative to eye distance, mouth not mirrored
    )


def weighted_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """Weighted least-squares similarity (Umeyama 1991) src → dst as a 2×3 matrix; None if degenerate.

    Written out because scikit-image's and OpenCV's estimators take no per-point weights.
    """
    w = weights / weights.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    variance = float(w @ (src_c ** 2).sum(axis=1))
    if variance < 1e-9:
        return None
    u, sigma, vt = np.linalg.svd((dst_c * w[:, None]).T @ src_c)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])  # a rotation, never a reflection
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d)) / variance
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_dst - scale * rotation @ mu_src
    return matrix


def estimate_alignment(face: Face, template: np.ndarray, limits: AlignLimits = AlignLimits()) -> Alignment:
    landmarks = face.landmarks
    matrix = weighted_similarity(landmarks, template, LANDMARK_WEIGHTS)
    if matrix is None:
        return Alignment(np.zeros((2, 3)), 0.0, 0.0, float("inf"), "implausible_landmarks")
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    template_eye = float(np.linalg.norm(template[1] - template[0]))
    fit_error = float(np.linalg.norm(mapped - template, axis=1).mean() / template_eye)
    roll = roll_degrees(landmarks)
    eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    reason = None
    if face.score < limits.min_score:
        reason = "low_confidence"
    elif abs(roll) > limits.max_roll_deg:
        reason = "roll_too_large"
    elif eye_distance < limits.min_eye_distance_px:
        reason = "face_too_small"
    elif _implausible(landmarks) or fit_error > limits.max_fit_error:
        reason = "implausible_landmarks"
    return Alignment(matrix, round(roll, 2), round(eye_distance, 2), round(fit_error, 4), reason)


def warp_face(frame: np.ndarray, alignment: Alignment, size: int = CROP_SIZE) -> np.ndarray:
    return cv2.warpAffine(frame, alignment.matrix, (size, size), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
