"""Frame clean-up for training data: drop black, blown-out, blank, blurry and near-duplicate frames.

Checks run on small grayscale thumbnails of a fixed width, so thresholds mean the same
thing at any source resolution (the Laplacian's variance is normalised for size that way).
Blur is judged against the video itself as well as an absolute floor: footage that is
soft throughout keeps its sharpest frames instead of losing all of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

DROP_REASONS = ("too_dark", "too_bright", "blank", "blurry", "duplicate")


@dataclass(frozen=True)
class QualityThresholds:
    min_mean_luma: float = 16.0  # below: black frame (fades, lens cap)
    max_mean_luma: float = 240.0  # above: blown out
    min_luma_std: float = 6.0  # below: a flat, blank frame (a title card, a covered lens) whatever its mean
    blur_floor: float = 8.0  # Laplacian variance on the thumbnail below which a frame is always blurry
    blur_relative: float = 0.35  # … or below this share of the video's median sharpness
    duplicate_mad: float = 0.8  # mean absolute difference (0-255) to the last kept frame


@dataclass
class FrameVerdict:
    index: int
    time_s: float
    mean_luma: float
    sharpness: float
    reason: str | None = None


def sharpness(thumb: np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for blur."""
    return float(cv2.Laplacian(thumb, cv2.CV_64F).var())


@dataclass
class FrameFilter:
    """Feed thumbnails in time order with `add`; call `finish` for the verdicts."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    # Backends that pair frames with the audio at the same instant keep near-duplicates (a still face
    # still speaks); stills-only backends drop them (functions/backends: DatasetPolicy).
    drop_duplicates: bool = True
    verdicts: list[FrameVerdict] = field(default_factory=list)
    _last_kept: np.ndarray | None = None

    def add(self, index: int, time_s: float, thumb: np.ndarray) -> FrameVerdict:
        t = self.thresholds
        mean, std = float(thumb.mean()), float(thumb.std())
        verdict = FrameVerdict(index, time_s, round(mean, 2), round(sharpness(thumb), 2))
        if mean < t.min_mean_luma:
            verdict.reason = "too_dark"
        elif mean > t.max_mean_luma:
            verdict.reason = "too_bright"
        elif std < t.min_luma_std:
            verdict.reason = "blank"
        elif self.drop_duplicates and self._last_kept is not None and _mad(thumb, self._last_kept) < t.duplicate_mad:
            verdict.reason = "duplicate"
        else:
            self._last_kept = thumb.copy()
        self.verdicts.append(verdict)
        return verdict

    def finish(self) -> list[FrameVerdict]:
        """Decide blur once the whole video's sharpness is known."""
        candidates = [v.sharpness for v in self.verdicts if v.reason is None]
        if candidates:
            limit = max(self.thresholds.blur_floor, self.thresholds.blur_relative * float(np.median(candidates)))
            for verdict in self.verdicts:
                if verdict.reason is None and verdict.sharpness < limit:
                    verdict.reason = "blurry"
        return self.verdicts

    def counts(self) -> dict[str, int]:
        reasons = Counter(v.reason for v in self.verdicts)
        result = {"total": len(self.verdicts), "kept": reasons.pop(None, 0)}
        result.update({f"dropped_{reason}": reasons.get(reason, 0) for reason in DROP_REASONS})
        return result


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.absdiff(a, b).mean())
