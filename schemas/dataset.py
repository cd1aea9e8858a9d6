"""Records of the training dataset: extracted frames (prepare) and aligned faces (align)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FrameRecord(BaseModel):
    """One line of `jobs/<id>/prepare/frames.jsonl`: every sampled frame, kept or dropped.

    `index` is the frame's position among the video's frames sampled at the job's `extract_fps`
    (`core.video.sample_frames` yields the same positions); `time_s` = index / extract_fps.
    """

    index: int
    time_s: float
    mean_luma: float
    sharpness: float = Field(description="Variance of the Laplacian on a 256-px-wide grey thumbnail.")
    dropped: str | None = Field(default=None, description="too_dark | too_bright | blank | blurry | duplicate")


class FaceRecord(BaseModel):
    """One line of `jobs/<id>/align/metadata.jsonl`: a detection of the main subject and what became of it."""

    frame_index: int
    time_s: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in source pixels.")
    landmarks: list[list[float]] = Field(description="5 × [x, y]: eyes, nose, mouth corners (image-left first).")
    score: float
    track_id: int
    roll_deg: float
    eye_distance_px: float
    fit_error: float
    rejected: str | None = None
    split: str | None = Field(default=None, description="train | val | test; None for rejected or guard-band frames.")
    face_key: str | None = None
    matrix: list[list[float]] = Field(description="2×3 similarity transform, source → crop pixels.")
