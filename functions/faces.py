"""Face detection with facenet-pytorch's MTCNN (its weights ship inside the package: works offline).

Naive use — MTCNN on every full-resolution frame — spends nearly all its time in the
P-Net image pyramid. Two things make it much cheaper without finding fewer faces:
- detect on a downscaled frame (the pyramid shrinks with the square of the scale) and
  map boxes and landmarks back to full resolution;
- between keyframes, follow each known face from where it was: MTCNN's second and third
  networks (R-Net, O-Net) re-fit its box and landmarks from a few candidate boxes around the
  last one, skipping the image pyramid entirely (~4 ms instead of ~25 ms on one CPU thread).
  If that fails (fast motion, occlusion), a full MTCNN search in a region around the last box,
  resized so the face is a modest, fixed size; if that fails too, a keyframe. A keyframe
  (full-frame detection) also runs every `keyframe_every` frames, so new faces are picked up
  within a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

DEFAULT_DETECT_MAX_SIDE = 640
DEFAULT_KEYFRAME_EVERY = 8
ROI_FACE_PX = 64  # a tracked face is resized to about this width inside its search region
ROI_MARGIN = 0.6  # the search region extends this many face widths beyond the last box
REFINE_SHIFT = 0.15  # candidate boxes for R-Net: the last box moved by this share of its size in x and y
REFINE_MIN_IOU = 0.3  # a refined box must still overlap the last one this much (else: search the region)


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # [x1, y1, x2, y2] in full-resolution pixels
    score: float
    landmarks: np.ndarray  # [5, 2]: right eye, left eye (as seen: image-left first), nose, mouth corners
    # The number of the face in the previous frame's list that the detector followed to find this one
    # (None: found afresh). It ties a track together however far the face moved between samples.
    follows: int | None = None

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


@contextmanager
def _inference(mtcnn) -> Iterator[None]:
    threads = single_threaded() if str(mtcnn.device).startswith("cpu") else nullcontext()
    with threads, torch.inference_mode():
        yield


def _run(mtcnn, image: np.ndarray, min_face_size: int) -> list[Face]:
    """MTCNN on one RGB uint8 image. detect() returns object arrays or None: cast and normalise."""
    mtcnn.min_face_size = int(min_face_size)
    with _inference(mtcnn):
        boxes, scores, landmarks = mtcnn.detect(image, landmarks=True)
    if boxes is None:
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    return [Face(b, float(s), l) for b, s, l in zip(boxes, scores, landmarks) if np.isfinite(s)]


# Box arithmetic as facenet-pytorch's detect_face does it (its rerec, pad, bbreg and landmark mapping,
# including the 1-based crop offsets), so refined faces have the same conventions as detected ones.
def _square(boxes: np.ndarray) -> np.ndarray:
    """Squares around the boxes' centres, side = the longer side (detect_face's `rerec`)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1, y1 = boxes[:, 0] + 0.5 * (w - side), boxes[:, 1] + 0.5 * (h - side)
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply a network's box regression (detect_face's `bbreg`)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes[:, :4] + offsets[:, :4] * np.stack([w, h, w, h], axis=1)


def _network_input(batch: np.ndarray, device) -> torch.Tensor:
    """[N, s, s, 3] uint8 RGB → the [N, 3, s, s] floats in [-1, 1] MTCNN's networks take."""
    data = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float()
    return (data - 127.5) * 0.0078125


def _crops(frame: np.ndarray, boxes: np.ndarray, size: int, device) -> torch.Tensor:
    """Network input: each box cut from the frame (clamped to it, as detect_face does), area-resized to size²."""
    height, width = frame.shape[:2]
    batch = np.zeros((len(boxes), size, size, 3), np.uint8)
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        x, y = max(int(x1), 1), max(int(y1), 1)
        ex, ey = min(int(x2), width), min(int(y2), height)
        if ex > x and ey > y:
            batch[n] = cv2.resize(frame[y - 1:ey, x - 1:ex], (size, size), interpolation=cv2.INTER_AREA)
    return _network_input(batch, device)


def _shifted_windows(frame: np.ndarray, box: np.ndarray, shift: float, size: int,
                     device) -> tuple[np.ndarray, torch.Tensor] | None:
    """R-Net input for a square `box` moved by −shift, 0 and +shift of its side in x and y (9 candidates).

    One area resize of the region the candidates cover, then size² windows cut from it: nine
    separate resizes of a large face cost several times more. Returns the candidates' boxes
    (recomputed from the windows actually cut) and the batch; None if the region misses the frame.
    """
    height, width = frame.shape[:2]
    margin = shift * (box[2] - box[0])
    x0, y0 = int(np.floor(box[0] - margin)) - 1, int(np.floor(box[1] - margin)) - 1
    x1, y1 = int(np.ceil(box[2] + margin)) + 1, int(np.ceil(box[3] + margin)) + 1
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 <= sx0 or sy1 <= sy0:
        return None
    region = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)  # zero-padded where it leaves the frame
    region[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    scale = size / (box[2] - box[0] + 1)  # a box spans x2 − x1 + 1 pixels in detect_face's convention
    out_w, out_h = max(size, round((x1 - x0) * scale)), max(size, round((y1 - y0) * scale))
    small = cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)
    kx, ky = out_w / (x1 - x0), out_h / (y1 - y0)
    windows, boxes = [], []
    for dx in (-margin, 0.0, margin):
        for dy in (-margin, 0.0, margin):
            cx = min(max(round((box[0] - 1 + dx - x0) * kx), 0), out_w - size)
            cy = min(max(round((box[1] - 1 + dy - y0) * ky), 0), out_h - size)
            windows.append(small[cy:cy + size, cx:cx + size])
            left, top = x0 + cx / kx + 1, y0 + cy / ky + 1  # the window's first pixel is column x1 − 1
            boxes.append((left, top, left + size / kx - 1, top + size / ky - 1))
    return np.array(boxes), _network_input(np.stack(windows), device)


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


def _closest(faces: list[Face], to: Face) -> Face | None:
    """Of the faces found near a tracked one, the one that overlaps it most (others wait for a keyframe)."""
    return max(faces, key=lambda f: iou(f.box, to.box), default=None)


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
        self.refinements = 0  # tracked faces re-fitted by R-Net + O-Net
        self.roi_searches = 0  # tracked faces looked for with a full MTCNN search near the last box

    def detect(self, frame: np.ndarray) -> list[Face]:
        keyframe_due = not self._previous or self._since_keyframe >= self.keyframe_every
        followed: list[Face] = []
        for number, face in enumerate(self._previous):
            found = self._refine(frame, face)
            if found is None:  # moved too far for the refit, or turned away: search the region around it
                found = _closest(self._search_near(frame, face), face)
            if found is not None:
                followed.append(replace(found, follows=number))
        followed = _suppress(followed)
        if not keyframe_due and len(followed) == len(self._previous):  # every tracked face is still there
            self._since_keyframe += 1
            self._previous = followed
            return followed
        # A keyframe: full detection. Faces where a followed face is are that same person.
        faces = self._keyframe(frame)
        taken: set[int] = set()
        for face in followed:
            overlaps = [(iou(face.box, f.box), n) for n, f in enumerate(faces) if n not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= 0.5:
                taken.add(best[1])
                faces[best[1]] = replace(faces[best[1]], follows=face.follows)
        self._previous = faces
        self._since_keyframe = 0
        return faces

    def _keyframe(self, frame: np.ndarray) -> list[Face]:
        self.keyframes += 1
        height, width = frame.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else frame
        min_face = max(20, round(self.min_face_fraction * min(small.shape[:2])))
        return [_scaled(f, scale) for f in _run(self.mtcnn, small, min_face)]

    def _refine(self, frame: np.ndarray, face: Face) -> Face | None:
        """Re-fit a tracked face with R-Net then O-Net on boxes around its last position (no pyramid, no P-Net)."""
        mtcnn = self.mtcnn
        windows = _shifted_windows(frame, _square(face.box[None])[0], REFINE_SHIFT, 24, mtcnn.device)
        if windows is None:
            return None
        candidates, batch = windows
        with _inference(mtcnn):
            offsets, probs = mtcnn.rnet(batch)
            best = int(torch.argmax(probs[:, 1]))
            if float(probs[best, 1]) < mtcnn.thresholds[1]:
                return None
            box = _square(_regress(candidates[best:best + 1], offsets[best:best + 1].cpu().numpy()))
            offsets, points, probs = mtcnn.onet(_crops(frame, box, 48, mtcnn.device))
        score = float(probs[0, 1])
        if score < mtcnn.thresholds[2]:
            return None
        points = points[0].cpu().numpy()
        w, h = box[0, 2] - box[0, 0] + 1, box[0, 3] - box[0, 1] + 1
        landmarks = np.stack([w * points[:5] + box[0, 0] - 1, h * points[5:] + box[0, 1] - 1], axis=1)
        refined = Face(_regress(box, offsets.cpu().numpy())[0].astype(np.float64), score, landmarks.astype(np.float64))
        if iou(refined.box, face.box) < REFINE_MIN_IOU:
            return None
        self.refinements += 1  # counted only when the refit is used
        return refined

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
