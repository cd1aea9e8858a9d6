"""Face detection with facenet-pytorch's MTCNN (its weights ship inside the package: works offline).

Naive use — MTCNN on every full-resolution frame — spends nearly all its time in the
P-Net image pyramid. Two things make it much cheaper without finding fewer faces:
- detect on a downscaled frame (the pyramid shrinks with the square of the scale) and
  map boxes and landmarks back to full resolution;
- between keyframes, look for each known face only in a region around where it was,
  resized so that face is a modest, fixed size. A keyframe (full-frame detection) runs
  every `keyframe_every` frames and whenever a tracked face is lost, so new faces are
  picked up within a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import cv2
import numpy as np
import torch

DEFAULT_DETECT_MAX_SIDE = 640
DEFAULT_KEYFRAME_EVERY = 8
ROI_FACE_PX = 64  # a tracked face is resized to about this width inside its search region
ROI_MARGIN = 0.6  # the search region extends this many face widths beyond the last box


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # [x1, y1, x2, y2] in full-resolution pixels
    score: float
    landmarks: np.ndarray  # [5, 2]: right eye, left eye (as seen: image-left first), nose, mouth corners

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _new_mtcnn(device: str):
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device=device, post_process=False, select_largest=False)


@contextmanager
def single_threaded() -> Iterator[None]:
    """MTCNN's convolutions are tiny: spreading them over OpenMP threads costs more than it saves, and when
    another process holds a core the threads' spin-waits make each call 10-50× slower (measured: a 141-px
    search 14 ms on one thread, 770 ms on two with the other core busy). On CPU, detection runs on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run(mtcnn, image: np.ndarray, min_face_size: int) -> list[Face]:
    """MTCNN on one RGB uint8 image. detect() returns object arrays or None: cast and normalise."""
    mtcnn.min_face_size = int(min_face_size)
    threads = single_threaded() if str(mtcnn.device).startswith("cpu") else nullcontext()
    with threads, torch.inference_mode():
        boxes, scores, landmarks = mtcnn.detect(image, landmarks=True)
    if boxes is None:
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    return [Face(b, float(s), l) for b, s, l in zip(boxes, scores, landmarks) if np.isfinite(s)]


def _scaled(face: Face, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
    ox, oy = offset
    box = face.box / scale + np.array([ox, oy, ox, oy])
    return Face(box, face.score, face.landmarks / scale + np.array([ox, oy]))


def _suppress(faces: list[Face], threshold: float = 0.5) -> list[Face]:
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(iou(face.box, k.box) < threshold for k in kept):
            kept.append(face)
    return kept


class NaiveDetector:
    """The baseline: MTCNN on every full-resolution frame with its default settings."""

    def __init__(self, device: str = "cpu") -> None:
        self.mtcnn = _new_mtcnn(device)

    def detect(self, frame: np.ndarray) -> list[Face]:
        return _run(self.mtcnn, frame, 20)


class TrackingDetector:
    """Downscaled keyframe detection plus region-of-interest tracking in between. Feed frames in order."""

    def __init__(self, *, device: str = "cpu", detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
                 keyframe_every: int = DEFAULT_KEYFRAME_EVERY, min_face_fraction: float = 0.05) -> None:
        self.mtcnn = _new_mtcnn(device)
        self.detect_max_side = detect_max_side
        self.keyframe_every = keyframe_every
        self.min_face_fraction = min_face_fraction  # of the frame's short side: smaller faces are not training data
        self._previous: list[Face] = []
        self._since_keyframe = 0
        self.keyframes = 0
        self.roi_searches = 0

    def reset(self) -> None:
        self._previous, self._since_keyframe = [], 0

    def detect(self, frame: np.ndarray) -> list[Face]:
        if self._previous and self._since_keyframe < self.keyframe_every:
            found = [f for face in self._previous for f in self._search_near(frame, face)]
            found = _suppress(found)
            if len(found) >= len(self._previous):  # every tracked face is still there
                self._since_keyframe += 1
                self._previous = found
                return found
        self._previous = self._keyframe(frame)
        self._since_keyframe = 0
        return self._previous

    def _keyframe(self, frame: np.ndarray) -> list[Face]:
        self.keyframes += 1
        height, width = frame.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else frame
        min_face = max(20, round(self.min_face_fraction * min(small.shape[:2])))
        return [_scaled(f, scale) for f in _run(self.mtcnn, small, min_face)]

    def _search_near(self, frame: np.ndarray, face: Face) -> list[Face]:
        self.roi_searches += 1
        height, width = frame.shape[:2]
        size = max(face.width, face.box[3] - face.box[1])
        margin = ROI_MARGIN * size
        x1, y1 = int(max(0, face.box[0] - margin)), int(max(0, face.box[1] - margin))
        x2, y2 = int(min(width, face.box[2] + margin)), int(min(height, face.box[3] + margin))
        if x2 - x1 < 16 or y2 - y1 < 16:
            return []
        scale = min(1.0, ROI_FACE_PX / max(size, 1.0))
        roi = frame[y1:y2, x1:x2]
        if scale < 1.0:
            roi = cv2.resize(roi, (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        min_face = max(12, round(ROI_FACE_PX * 0.5)) if scale < 1.0 else max(12, round(size * 0.5))
        return [_scaled(f, scale, (x1, y1)) for f in _run(self.mtcnn, roi, min_face)]
