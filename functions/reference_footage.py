"""Reference footage for a talking avatar: the stretch of the training video the new mouth is pasted onto.

A Wav2Lip render regenerates only the mouth; the rest of every output frame is a real frame of the
training video. Those frames come from one **clean segment**: consecutive frames (at the
audio-visual fps, 25) that all have an aligned face of the subject — no missing detection, no
rejected alignment, no jump of the face box from one frame to the next (a cut, a detector swap)
and, optionally, no blurred frame. The longest such segment is used; a render longer than it
plays it forward, then backward, then forward again (`ping_pong`), so there is never a jump cut.

MTCNN's boxes and landmarks jitter by a few pixels from frame to frame (measured on the clips in
../shared/media at 25 fps: landmark second differences of 3–5 px RMS on 90–135 px eye distances).
A mouth pasted through those raw numbers would shimmer, so the segment's boxes, landmarks and
alignment matrices are smoothed over time with a Savitzky–Golay filter (least-squares quadratic
over a centred 9-frame window, 0.36 s at 25 fps): it removes the jitter without the lag of a
causal filter and follows real head motion better than a moving average of the same width. The
matrices are filtered through their similarity parameters (a, b, tx, ty) of
[[a, −b, tx], [b, a, ty]]: the filter is linear and similarities form a linear subspace, so the
smoothed matrices are still exact similarities (no shear). The render must crop the generator's
input with the same smoothed matrix it pastes back with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import savgol_filter

from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError


@dataclass(frozen=True)
class SegmentLimits:
    """When two consecutive frames cannot be played one after the other."""

    max_jump: float = 0.25  # box-centre move between consecutive frames, in box widths (real clips: ≤ 0.09)
    max_scale_change: float = 0.25  # relative change of the box width between consecutive frames (real: ≤ 0.11)
    min_sharpness: float | None = None  # FrameRecord.sharpness below this breaks a segment (None: not checked)


@dataclass(frozen=True)
class Smoothing:
    window: int = 9  # frames, odd (a centred window); shortened, still odd, for shorter segments
    polyorder: int = 2

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0 or self.polyorder < 0:
            raise ValueError(f"Smoothing needs an odd window ≥ 1 and polyorder ≥ 0, got {self.window}, "
                             f"{self.polyorder}")


@dataclass(frozen=True)
class ReferenceSegment:
    """A clean run of frames `first_frame` … `last_frame` (inclusive, FaceRecord.frame_index), smoothed."""

    records: tuple[FaceRecord, ...]  # the raw records, one per frame, in order
    boxes: np.ndarray  # [T, 4] smoothed [x1, y1, x2, y2], source pixels
    landmarks: np.ndarray  # [T, 5, 2] smoothed, source pixels
    matrices: np.ndarray  # [T, 2, 3] smoothed similarity transforms, source → 512 crop

    @property
    def first_frame(self) -> int:
        return self.records[0].frame_index

    @property
    def last_frame(self) -> int:
        return self.records[-1].frame_index

    @property
    def length(self) -> int:
        return len(self.records)

    def frame_indices(self) -> np.ndarray:
        return np.arange(self.first_frame, self.last_frame + 1)


def _usable(records: Sequence[FaceRecord], frames: Sequence[FrameRecord] | None,
            limits: SegmentLimits) -> list[FaceRecord]:
    """The aligned faces in frame order; a frame with several records of the subject is ambiguous: left out."""
    counts = Counter(r.frame_index for r in records)
    blurred: set[int] = set()
    if frames is not None:
        blurred = {f.index for f in frames if f.dropped is not None
                   or (limits.min_sharpness is not None and f.sharpness < limits.min_sharpness)}
    usable = [r for r in records if r.rejected is None and counts[r.frame_index] == 1 and r.frame_index not in blurred]
    return sorted(usable, key=lambda r: r.frame_index)


def _continues(previous: FaceRecord, current: FaceRecord, limits: SegmentLimits) -> bool:
    if current.frame_index != previous.frame_index + 1:
        return False
    a, b = np.asarray(previous.box), np.asarray(current.box)
    width = a[2] - a[0]
    if width <= 0:
        return False
    move = float(np.linalg.norm((b[:2] + b[2:]) / 2 - (a[:2] + a[2:]) / 2)) / width
    return move <= limits.max_jump and abs((b[2] - b[0]) / width - 1.0) <= limits.max_scale_change


def clean_runs(records: Sequence[FaceRecord], *, frames: Sequence[FrameRecord] | None = None,
               limits: SegmentLimits = SegmentLimits()) -> list[list[FaceRecord]]:
    """Every maximal run of consecutive, clean frames, in time order."""
    runs: list[list[FaceRecord]] = []
    for record in _usable(records, frames, limits):
        if runs and _continues(runs[-1][-1], record, limits):
            runs[-1].append(record)
        else:
            runs.append([record])
    return runs


def smooth_track(values: np.ndarray, smoothing: Smoothing = Smoothing()) -> np.ndarray:
    """Savitzky–Golay along axis 0 (time); the window shrinks to fit short tracks, too short ones stay as is."""
    window = min(smoothing.window, len(values) - (1 - len(values) % 2))  # the largest odd ≤ both
    if window <= smoothing.polyorder:
        return np.array(values, dtype=np.float64)
    return savgol_filter(np.asarray(values, dtype=np.float64), window, smoothing.polyorder, axis=0, mode="interp")


def smooth_similarities(matrices: np.ndarray, smoothing: Smoothing = Smoothing()) -> np.ndarray:
    """[T, 2, 3] similarity matrices smoothed through (a, b, tx, ty): the results are similarities too."""
    m = np.asarray(matrices, dtype=np.float64)
    params = np.stack([(m[:, 0, 0] + m[:, 1, 1]) / 2, (m[:, 1, 0] - m[:, 0, 1]) / 2, m[:, 0, 2], m[:, 1, 2]], axis=1)
    a, b, tx, ty = smooth_track(params, smoothing).T
    return np.stack([np.stack([a, -b, tx], axis=1), np.stack([b, a, ty], axis=1)], axis=1)


def reference_segment(records: Sequence[FaceRecord], *, frames: Sequence[FrameRecord] | None = None,
                      limits: SegmentLimits = SegmentLimits(), smoothing: Smoothing = Smoothing(),
                      min_frames: int = 1) -> ReferenceSegment:
    """The longest clean run (the earliest of equal ones), with its boxes, landmarks and matrices smoothed.

    `records`: the subject's FaceRecords of an audio-visual dataset (every frame at the backend's fps);
    `frames`: prepare's FrameRecords, to leave out dropped or (with `limits.min_sharpness`) blurred frames.
    """
    runs = clean_runs(records, frames=frames, limits=limits)
    best = max(runs, key=len, default=[])  # max keeps the first of equal lengths
    if len(best) < max(1, min_frames):
        raise VideostudioError("no_reference_footage", f"the longest run of consecutive frames with a clean aligned "
                               f"face is {len(best)} frames (need {max(1, min_frames)})")
    return ReferenceSegment(
        records=tuple(best),
        boxes=smooth_track(np.array([r.box for r in best]), smoothing),
        landmarks=smooth_track(np.array([r.landmarks for r in best]), smoothing),
        matrices=smooth_similarities(np.array([r.matrix for r in best]), smoothing))


def landmark_jitter(landmarks: np.ndarray) -> float:
    """RMS length of the landmarks' second difference x[t+1] − 2x[t] + x[t−1], in pixels.

    Steady motion has a small second difference; detector noise a large one (white noise of σ per
    coordinate gives √12·σ), so this measures jitter rather than how much the head moves.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if len(points) < 3:
        return 0.0
    second = points[2:] - 2 * points[1:-1] + points[:-2]
    return float(np.sqrt((np.linalg.norm(second, axis=-1) ** 2).mean()))


def ping_pong(n_frames_needed: int, segment_length: int) -> np.ndarray:
    """Positions 0 … L − 1 (L = segment_length) to play, forward, backward, forward…: 0 1 … L−1 L−2 … 1 0 1 …

    Neighbours always differ by exactly 1: the turn points are not repeated (a repeated frame is a
    visible stall). A one-frame segment can only be held: all zeros.
    """
    if n_frames_needed < 0 or segment_length < 1:
        raise ValueError(f"need n_frames_needed ≥ 0 and segment_length ≥ 1, got {n_frames_needed}, "
                         f"{segment_length}")
    if segment_length == 1:
        return np.zeros(n_frames_needed, dtype=np.int64)
    period = 2 * (segment_length - 1)
    phase = np.arange(n_frames_needed) % period
    return np.where(phase < segment_length, phase, period - phase)
