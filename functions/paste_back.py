"""Paste a generated mouth back into a full-resolution frame, through a feathered mask, colour-matched.

Wav2Lip's own inference resizes its 96-px output into the detection box and overwrites that
rectangle (`hard_paste`, kept for comparison): a blurry square with a visible edge and a colour
step. Here the generator's input is the aligned crop (`functions/alignment.py`: a similarity
transform of the frame to 512×512, downscaled to 96 px, `face_input`), so its output lives in
that crop's coordinate frame. `paste_back`:

1. **Mask** (`mouth_mask`), built from the 5 landmarks in the face's own frame: x along the eye
   line, y perpendicular to it towards the mouth, lengths in eye distances d, origin at the mouth
   centre m (the midpoint of the mouth corners). An ellipse around the mouth and jaw — centre
   0.15 d below m, half-width ½·mouth width + 0.3 d, reaching 0.75 d below m (the chin, with room
   for the jaw dropping) — cut flat at a line parallel to the eyes, 40 % of the way from the nose
   tip down to the mouth line: the eyes and everything above stay the source's, the nose tip gets
   a trace of the feather at most (in the template that line falls at crop row ~262 of 512, just
   inside the lower half Wav2Lip regenerates). The polygon is rasterised with sub-pixel precision
   (so the mask moves smoothly with the landmarks) and Gaussian-blurred, σ = 0.08 d: the polygon's
   edge is the mask's 0.5 contour, alpha ramps from 1 to 0 over about ±2.5σ and is exactly 0
   beyond ~3σ, so the edge is never hard. (The blur runs on a grid where σ is 6 pixels and is
   upsampled bilinearly: the same smooth ramp at a fraction of a 100-px kernel's cost.)
2. **Colour matching** (Reinhard transfer in CIELAB), on the face's own 96-px grid: the generated
   face is shifted and scaled per channel so that its mean and standard deviation over a **ring**
   — the mask's polygon minus an ellipse around the lips, i.e. skin both images should agree on
   whatever the mouth does — equal those of the source over the same ring. The source is read
   there area-downscaled to the grid's spacing, so both sides have the same resolution and their
   standard deviations compare like with like (a 1080p source has texture a 96-px face lacks).
   The scale is clamped to [0.5, 2], so a flat region cannot blow up noise.
3. **Warp**: only the mask's bounding box is computed. Each of its pixels samples the generated
   face at `M_face · x` (`cv2.warpAffine` with WARP_INVERSE_MAP: the inverse of the crop transform,
   without inverting a matrix, bicubic), `M_face` being the source → crop matrix scaled from 512 to
   the face's size with OpenCV's half-pixel convention (what `cv2.resize` does, `face_matrix`).
4. **Blend**: out = src + α·(generated − src), rounded; where α = 0 this is the source exactly,
   and nothing outside the bounding box is touched: outside the mask's support the frame is
   bit-identical to the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from functions.alignment import CROP_SIZE

WAV2LIP_FACE_SIZE = 96  # functions.models.wav2lip.FACE_SIZE (not imported here: it pulls in torch)
WAV2LIP_PADS = (0, 10, 0, 0)  # Wav2Lip inference.py's default --pads: top, bottom, left, right
FEATHER_GRID_SIGMA = 6.0  # the feather's σ in pixels of the grid it is blurred on (see mouth_mask)


@dataclass(frozen=True)
class MaskShape:
    """The mouth-and-jaw mask, in eye distances d (see the module docstring)."""

    centre_below_mouth: float = 0.15
    half_width_extra: float = 0.3  # added to half the mouth width
    bottom_below_mouth: float = 0.75
    top_from_nose: float = 0.4  # where the flat top cuts, as a share of the nose → mouth-line distance
    feather_sigma: float = 0.08
    # the colour statistics' ring excludes this ellipse around the lips (centre 0.05 d below m)
    lips_half_width_extra: float = 0.1
    lips_half_height: float = 0.3
    max_color_scale: float = 2.0  # per-channel std ratio clamped to [1/this, this]


@dataclass(frozen=True)
class FaceFrame:
    """The face's own frame in source pixels: origin at the mouth centre, unit axes, eye distance."""

    origin: np.ndarray  # [2]
    x_axis: np.ndarray  # [2], along the eye line (image-left eye → image-right eye)
    y_axis: np.ndarray  # [2], perpendicular, towards the mouth
    eye_distance: float
    mouth_width: float
    nose_depth: float  # how far the mouth centre lies below the nose tip along y_axis

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """[N, 2] points in eye distances in this frame → source pixels."""
        d = self.eye_distance
        return self.origin + d * (points[:, :1] * self.x_axis + points[:, 1:] * self.y_axis)


@dataclass(frozen=True)
class MouthMask:
    """alpha [h, w] float32 in [0, 1] for the frame's pixels [y0:y0+h, x0:x0+w]; zero everywhere else."""

    x0: int
    y0: int
    alpha: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.alpha.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask over a whole frame of `shape` (for tests and pictures; pasting never builds it)."""
        alpha = np.zeros(shape, np.float32)
        alpha[self.window] = self.alpha
        return alpha


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_l, mouth_r = points
    eye_vector = right_eye - left_eye
    d = max(float(np.linalg.norm(eye_vector)), 1e-6)
    x_axis = eye_vector / d
    y_axis = np.array([-x_axis[1], x_axis[0]])  # image y points down: this is x rotated by +90°, towards the chin
    mouth = (mouth_l + mouth_r) / 2
    if (mouth - (left_eye + right_eye) / 2) @ y_axis < 0:
        y_axis = -y_axis
    nose_depth = max(float((mouth - nose) @ y_axis), 0.2 * d)  # a degenerate nose below the mouth: keep a band
    return FaceFrame(mouth, x_axis, y_axis, d, float(np.linalg.norm(mouth_r - mouth_l)), nose_depth)


def _ellipse(half_width: float, half_height: float, centre_y: float, top_y: float | None = None) -> np.ndarray:
    """[N, 2] ellipse outline in a face frame (eye distances); with top_y, cut flat there.

    Clamping the points above the line onto it gives exactly the ellipse ∩ half-plane: the arc
    above a chord never reaches out further than the chord's ends.
    """
    angles = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    points = np.stack([half_width * np.cos(angles), centre_y + half_height * np.sin(angles)], axis=1)
    if top_y is not None:
        points[:, 1] = np.maximum(points[:, 1], top_y)
    return points


def mask_polygon(landmarks: np.ndarray, shape: MaskShape = MaskShape()) -> np.ndarray:
    """The mask's 0.5 contour as an [N, 2] polygon in source pixels."""
    frame = face_frame(landmarks)
    d = frame.eye_distance
    top = -(1.0 - shape.top_from_nose) * frame.nose_depth / d
    half_height = shape.bottom_below_mouth - shape.centre_below_mouth
    half_width = 0.5 * frame.mouth_width / d + shape.half_width_extra
    return frame.to_source(_ellipse(half_width, half_height, shape.centre_below_mouth, top))


def _lips_polygon(landmarks: np.ndarray, shape: MaskShape) -> np.ndarray:
    frame = face_frame(landmarks)
    half_width = 0.5 * frame.mouth_width / frame.eye_distance + shape.lips_half_width_extra
    return frame.to_source(_ellipse(half_width, shape.lips_half_height, 0.05))


def _fill(canvas_shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """A polygon (in the canvas's pixel coordinates) rasterised into uint8 (255 inside), anti-aliased, 1/16 px."""
    canvas = np.zeros(canvas_shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(polygon * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return canvas


def mouth_mask(frame_shape: tuple[int, ...], landmarks: np.ndarray, shape: MaskShape = MaskShape()) -> MouthMask | None:
    """The feathered mask's bounding box and alpha; None if it misses the frame.

    The feather is blurred on a grid coarse enough that σ is FEATHER_GRID_SIGMA of its pixels, then
    upsampled bilinearly: a Gaussian edge that wide is smooth on that grid, and a 100-px kernel at
    1080p would cost more than all the rest of the paste.
    """
    height, width = frame_shape[:2]
    polygon = mask_polygon(landmarks, shape)
    sigma = max(shape.feather_sigma * face_frame(landmarks).eye_distance, 0.5)
    grid = min(1.0, FEATHER_GRID_SIGMA / sigma)  # grid pixels per frame pixel
    radius = int(math.ceil(3 * sigma * grid))  # the kernel's reach, grid pixels
    reach = int(math.ceil((radius + 3) / grid))  # frame pixels: the kernel, anti-aliasing, the bilinear neighbour
    x0, y0 = (max(0, int(math.floor(v)) - reach) for v in polygon.min(axis=0))
    x1, y1 = (min(limit, int(math.ceil(v)) + reach + 1) for v, limit in zip(polygon.max(axis=0), (width, height)))
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    gw, gh = max(1, round(w * grid)), max(1, round(h * grid))
    scale = np.array([gw / w, gh / h])
    # frame pixel x ↔ grid pixel (x − x0 + ½)·scale − ½: the pixel centres cv2.resize uses to come back
    hard = _fill((gh, gw), (polygon - [x0, y0] + 0.5) * scale - 0.5).astype(np.float32) * (1 / 255)
    # BORDER_REPLICATE: where the frame's edge cuts the mask, it does not fade towards that edge
    blurred = cv2.GaussianBlur(hard, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma * scale[0],
                               sigmaY=sigma * scale[1], borderType=cv2.BORDER_REPLICATE)
    alpha = blurred if (gw, gh) == (w, h) else cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
    return MouthMask(x0, y0, alpha)


def face_matrix(matrix: np.ndarray, face_size: int, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Source → face-pixel matrix for a crop of `crop_size` resized to `face_size` (cv2.resize's pixel centres:
    crop pixel p ↔ face pixel (p + ½)·k − ½, k = face_size / crop_size)."""
    k = face_size / crop_size
    scaled = np.asarray(matrix, dtype=np.float64) * k
    scaled[:, 2] += 0.5 * k - 0.5
    return scaled


def face_input(frame: np.ndarray, matrix: np.ndarray, size: int = WAV2LIP_FACE_SIZE,
               crop_size: int = CROP_SIZE) -> np.ndarray:
    """The generator's view of a frame: the aligned crop (as align makes it), area-downscaled to size×size."""
    crop = cv2.warpAffine(frame, np.asarray(matrix, dtype=np.float64), (crop_size, crop_size), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) * (1 / 255), cv2.COLOR_RGB2LAB)


def match_colors(generated: np.ndarray, source: np.ndarray, ring: np.ndarray, max_scale: float = 2.0) -> np.ndarray:
    """Reinhard transfer in CIELAB: `generated` (uint8 RGB) with the per-channel mean/std of `source` over `ring`.

    Returns float32 RGB in 0…255. With too few ring pixels to estimate from, `generated` unchanged.
    """
    if int(ring.sum()) < 16:
        return generated.astype(np.float32)
    gen_lab, src_lab = _to_lab(generated), _to_lab(source)
    gen_ring, src_ring = gen_lab[ring], src_lab[ring]
    g_mean, g_std = gen_ring.mean(axis=0), gen_ring.std(axis=0)
    s_mean, s_std = src_ring.mean(axis=0), src_ring.std(axis=0)
    scale = np.clip(s_std / np.maximum(g_std, 1e-3), 1 / max_scale, max_scale)
    matched = (gen_lab - g_mean) * scale + s_mean
    return np.clip(cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB) * 255, 0, 255)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2×3 affine map x ↦ outer(inner(x))."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _source_on_face_grid(source: np.ndarray, origin: tuple[int, int], to_face: np.ndarray,
                         size: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame's mask window resampled onto the face's size×size grid, and where it covers that grid.

    Area-downscaled to about the grid's spacing first: the source then carries no finer texture than
    a generated face, so their standard deviations compare like with like.
    """
    h, w = source.shape[:2]
    k = min(1.0, float(np.hypot(*to_face[0, :2])))  # face pixels per frame pixel
    small = cv2.resize(source, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA) \
        if k < 1.0 else source
    kx, ky = small.shape[1] / w, small.shape[0] / h
    small_to_frame = np.array([[1 / kx, 0.0, origin[0] + 0.5 / kx - 0.5], [0.0, 1 / ky, origin[1] + 0.5 / ky - 0.5]])
    small_to_face = _compose(to_face, small_to_frame)
    view = cv2.warpAffine(small, small_to_face, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    covered = cv2.warpAffine(np.full(small.shape[:2], 255, np.uint8), small_to_face, (size, size),
                             flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return view, covered > 0


def _face_ring(landmarks: np.ndarray, shape: MaskShape, to_face: np.ndarray, size: int) -> np.ndarray:
    """The colour statistics' ring on the face's grid: inside the mask's polygon, outside the lips' ellipse."""
    def on_grid(points: np.ndarray) -> np.ndarray:
        return points @ to_face[:, :2].T + to_face[:, 2]

    outer = _fill((size, size), on_grid(mask_polygon(landmarks, shape)))
    lips = _fill((size, size), on_grid(_lips_polygon(landmarks, shape)))
    return (outer > 127) & (lips == 0)


def _blend(source: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """source + α·(generated − source), rounded to uint8; where α = 0, exactly the source.

    Works in place on `generated` (float32, the warped face)."""
    np.clip(generated, 0, 255, out=generated)  # bicubic overshoot
    base = source.astype(np.float32)
    generated -= base
    generated *= alpha[..., None]
    generated += base
    return cv2.convertScaleAbs(generated)  # rounds and saturates; the values are a convex mix, never negative


def paste_back(frame: np.ndarray, face: np.ndarray, *, matrix: np.ndarray, landmarks: np.ndarray,
               crop_size: int = CROP_SIZE, shape: MaskShape = MaskShape(), color_match: bool = True) -> np.ndarray:
    """`frame` (H×W×3 uint8) with `face` (a generated S×S×3 crop in the aligned-crop frame) blended in.

    `matrix`: the frame's source → `crop_size` crop similarity (the one its generator input was cut
    with); `landmarks`: its 5 landmarks, which shape the mask. Returns a new frame.
    """
    if face.ndim != 3 or face.shape[0] != face.shape[1]:
        raise ValueError(f"the generated face must be a square S×S×3 image, got {face.shape}")
    out = frame.copy()
    mask = mouth_mask(frame.shape, landmarks, shape)
    if mask is None:
        return out
    size = face.shape[0]
    to_face = face_matrix(matrix, size, crop_size)
    source = frame[mask.window]
    if color_match:  # on the face's grid: 96² pixels instead of the mask window's, at the same resolution
        view, covered = _source_on_face_grid(source, (mask.x0, mask.y0), to_face, size)
        ring = _face_ring(landmarks, shape, to_face, size) & covered
        generated = match_colors(face, view, ring, shape.max_color_scale)
    else:
        generated = face.astype(np.float32)
    window_to_face = to_face.copy()  # window pixel (u, v) is frame pixel (u + x0, v + y0)
    window_to_face[:, 2] += to_face[:, :2] @ np.array([mask.x0, mask.y0])
    h, w = mask.alpha.shape
    # WARP_INVERSE_MAP: each window pixel samples the face at window_to_face · (u, v), no matrix inversion.
    # BORDER_REPLICATE: the mask lies well inside the crop; should it reach past it, no black border leaks in.
    warped = cv2.warpAffine(generated, window_to_face, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    out[mask.window] = _blend(source, warped, mask.alpha)
    return out


def wav2lip_box(box: np.ndarray, frame_shape: tuple[int, ...], pads: tuple[int, int, int, int] = WAV2LIP_PADS
                ) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) as Wav2Lip's inference.py cuts a face: the integer detection box, padded, clipped."""
    height, width = frame_shape[:2]
    top, bottom, left, right = pads
    x1, y1, x2, y2 = (int(v) for v in box)
    return max(0, x1 - left), max(0, y1 - top), min(width, x2 + right), min(height, y2 + bottom)


def hard_paste(frame: np.ndarray, face: np.ndarray, *, box: np.ndarray,
               pads: tuple[int, int, int, int] = WAV2LIP_PADS) -> np.ndarray:
    """What Wav2Lip's inference.py does: resize the face (cut from `wav2lip_box`) into that box, overwrite it."""
    out = frame.copy()
    x1, y1, x2, y2 = wav2lip_box(box, frame.shape, pads)
    if x2 > x1 and y2 > y1:
        out[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))  # INTER_LINEAR, as there
    return out
