"""From the segmenter's coarse probability to a full-resolution alpha matte.

1. temporal smoothing at model size: an exponential moving average whose weight drops where the picture
   moved, so a still person's edge does not flicker and a moving one does not trail;
2. edge refinement at full size: a guided filter (He et al.) steered by the frame's own luminance snaps the
   upsampled mask to the real edges (its coefficients are computed at a working size and upsampled, the "fast
   guided filter", so 1080p costs little more than 480p);
3. a contrast curve, then feathering by a Gaussian of `feather` pixels (at 1080p, scaled with the frame).

The state carried from frame to frame (`MatteState`) is small; the compose stage saves it with every committed
segment, so a resumed compose continues exactly where the killed one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from functions.segmentation import MODEL_SIZE

WORKING_SIDE = 512  # the guided filter's coefficients are solved at this long side
GUIDED_RADIUS = 8  # at the working size
GUIDED_EPS = 1e-3
GUIDE_SIGMA = 1.0  # pixels: the guide's light denoise
MOTION_SCALE = 0.08  # a luminance change (0..1) this large cuts the smoothing weight by a factor e


@dataclass
class MatteState:
    """What the next frame's smoothing needs: the smoothed probability and the luminance it was made on."""

    probability: np.ndarray | None = None  # [MODEL_SIZE, MODEL_SIZE] float32
    luma: np.ndarray | None = None  # [MODEL_SIZE, MODEL_SIZE] float32 in 0..1


def _luma(frame: np.ndarray, size: tuple[int, int] | None = None, *, denoise: bool = False) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if size is not None:
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    if denoise:  # the guide's camera noise would otherwise make the refined edge shimmer from frame to frame
        gray = cv2.GaussianBlur(gray, (0, 0), GUIDE_SIGMA)
    return gray.astype(np.float32) / 255.0


def smooth(state: MatteState, probability: np.ndarray, frame: np.ndarray, *, weight: float) -> np.ndarray:
    """Step 1: the probability averaged with the previous frames' where nothing moved; updates `state`."""
    luma = _luma(frame, (MODEL_SIZE, MODEL_SIZE))
    if state.probability is None or weight <= 0:
        smoothed = probability
    else:
        # Blurred before the difference: camera noise cancels out, real movement does not.
        motion = np.abs(cv2.GaussianBlur(luma, (0, 0), 2.0) - cv2.GaussianBlur(state.luma, (0, 0), 2.0))
        keep = weight * np.exp(-motion / MOTION_SCALE)
        smoothed = keep * state.probability + (1.0 - keep) * probability
    state.probability, state.luma = smoothed.astype(np.float32), luma
    return state.probability


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(image, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def refine(probability: np.ndarray, frame: np.ndarray, *, feather: float) -> np.ndarray:
    """Steps 2 and 3: the coarse probability → [H, W] float32 alpha in 0..1 at the frame's size."""
    height, width = frame.shape[:2]
    scale = min(1.0, WORKING_SIDE / max(height, width))
    work = (max(1, round(width * scale)), max(1, round(height * scale)))
    guide = _luma(frame, work, denoise=True)
    p = cv2.resize(probability, work, interpolation=cv2.INTER_LINEAR)
    # Guided filter: per window, alpha ≈ a·I + b fitted to p; averaging a and b keeps edges where I has them.
    mean_i, mean_p = _box(guide, GUIDED_RADIUS), _box(p, GUIDED_RADIUS)
    var_i = _box(guide * guide, GUIDED_RADIUS) - mean_i * mean_i
    cov_ip = _box(guide * p, GUIDED_RADIUS) - mean_i * mean_p
    a = cov_ip / (var_i + GUIDED_EPS)
    b = mean_p - a * mean_i
    mean_a, mean_b = _box(a, GUIDED_RADIUS), _box(b, GUIDED_RADIUS)
    if work != (width, height):
        mean_a = cv2.resize(mean_a, (width, height), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (width, height), interpolation=cv2.INTER_LINEAR)
        full_guide = _luma(frame, denoise=True)
    else:
        full_guide = guide
    alpha = mean_a * full_guide + mean_b
    # A gentle contrast curve: the segmenter's 0.5 stays the edge; far background and far person become exact
    # 0 and 1, so the replaced background is the target itself, not a faint copy of the old one.
    alpha = np.clip((alpha - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    sigma = feather * max(height, width) / 1920.0
    if sigma > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    return alpha.astype(np.float32)


def coverage(alpha: np.ndarray) -> float:
    """Share of the frame the person covers."""
    return float((alpha > 0.5).mean())
