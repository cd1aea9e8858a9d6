"""Test videos with a real face: the astronaut photo shipped inside scikit-image, moving over a background.

The face is moved, scaled and slightly rotated with a known affine transform per frame,
so tests know exactly where its eyes are in every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from core.video import write_mp4

# Eye centres in skimage.data.astronaut() (512×512), image-left first.
ASTRONAUT_EYES = np.array([[205.0, 101.7], [246.8, 103.7]])
_FACE_CENTRE = np.array([225.0, 118.0])
_MASK_AXES = (70, 88)  # an ellipse around head and hair, feathered


@dataclass(frozen=True)
class FacePose:
    centre: tuple[float, float]  # where the face centre lands, as fractions of width and height
    scale: float  # relative to `face_px`
    angle_deg: float


def face_pose(t: float) -> FacePose:
    """A slow Lissajous drift with gentle zoom and roll: what a person talking to a camera does."""
    return FacePose(
        centre=(0.5 + 0.18 * math.sin(2 * math.pi * t / 9.0), 0.5 + 0.10 * math.sin(2 * math.pi * t / 6.5)),
        scale=1.0 + 0.12 * math.sin(2 * math.pi * t / 7.0),
        angle_deg=6.0 * math.sin(2 * math.pi * t / 5.0),
    )


def pose_matrix(pose: FacePose, width: int, height: int, face_px: float) -> np.ndarray:
    """2×3 affine: astronaut pixels → frame pixels."""
    scale = pose.scale * face_px / 150.0  # the astronaut's head is ~150 px across
    matrix = cv2.getRotationMatrix2D((float(_FACE_CENTRE[0]), float(_FACE_CENTRE[1])), pose.angle_deg, scale)
    matrix[:, 2] += np.array([pose.centre[0] * width, pose.centre[1] * height]) - _FACE_CENTRE
    return matrix


def eyes_in_frame(t: float, width: int, height: int, face_px: float) -> np.ndarray:
    matrix = pose_matrix(face_pose(t), width, height, face_px)
    return ASTRONAUT_EYES @ matrix[:, :2].T + matrix[:, 2]


def _background(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8).astype(np.float32),
                             (0, 0), 1.5)
    texture = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(40, 160, width, dtype=np.float32)[None, :, None]
    return np.clip(0.5 * texture + ramp, 0, 255).astype(np.uint8)


def render_face_frames(duration_s: float, fps: int, width: int, height: int, *, face_px: float | None = None,
                       with_face: bool = True, seed: int = 0):
    """Yield RGB frames [H, W, 3] uint8."""
    face_px = face_px or 0.45 * height
    astronaut = skimage.data.astronaut()
    mask = np.zeros(astronaut.shape[:2], np.float32)
    cv2.ellipse(mask, (int(_FACE_CENTRE[0]), int(_FACE_CENTRE[1]) - 10), _MASK_AXES, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)[..., None]
    background = _background(width, height, seed)
    for n in range(int(round(duration_s * fps))):
        frame = np.roll(background, 3 * n, axis=1)  # a slow pan: no two frames alike, face or not
        if with_face:
            matrix = pose_matrix(face_pose(n / fps), width, height, face_px)
            face = cv2.warpAffine(astronaut, matrix, (width, height), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            frame = (alpha * face + (1 - alpha) * frame).astype(np.uint8)
        yield frame


def write_face_video(path: Path, *, duration_s: float = 32.0, fps: int = 10, width: int = 640, height: int = 360,
                     with_face: bool = True, face_px: float | None = None) -> Path:
    frames = render_face_frames(duration_s, fps, width, height, face_px=face_px, with_face=with_face)
    return write_mp4(frames, path, fps=fps, crf=20)
