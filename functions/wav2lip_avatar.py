"""What a Wav2Lip avatar is made of besides its generator: reference footage, its face track, its expert.

- `reference.mp4`: the avatar's reference footage (functions/reference_footage.py: the longest clean
  run of the training video at 25 fps), at most `MAX_REFERENCE_S` seconds, scaled to at most
  `MAX_REFERENCE_HEIGHT` rows, H.264 at CRF `REFERENCE_CRF` (visually lossless). A render plays it
  ping-pong under the speech and regenerates only the mouth.
- `wav2lip.json` (`Wav2LipAvatarFiles`): how the networks were built (width, channel order) and the
  smoothed face track of every reference frame, in the reference footage's pixels.
- `lipsync_expert.pth`: the lip-sync expert the avatar was trained against; every render scores its own
  lip sync with it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.video import probe_video, sample_frames, write_mp4
from functions.reference_footage import ReferenceSegment
from functions.wav2lip_dataset import ChannelOrder

MAX_REFERENCE_S = 10.0  # ping-pong covers any speech length; longer footage only costs storage and memory
MAX_REFERENCE_HEIGHT = 1080
REFERENCE_CRF = 12
REFERENCE_FILE = "reference.mp4"
TRACK_FILE = "wav2lip.json"
EXPERT_FILE = "lipsync_expert.pth"
GENERATOR_FILE = "wav2lip.pth"


class FaceTrack(BaseModel):
    """One reference frame's face, smoothed, in reference-footage pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box: list[float]
    landmarks: list[list[float]]
    matrix: list[list[float]] = Field(description="2×3 similarity, reference pixels → 512 aligned crop")


class Wav2LipAvatarFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: float = Field(description="The networks' channel width (1.0: the public layout)")
    channel_order: ChannelOrder = Field(description="Colour order the networks were trained on (public: bgr)")
    fps: float
    frame_width: int
    frame_height: int
    source_first_frame: int = Field(description="The reference's first frame in the training video (at fps)")
    scale: float = Field(description="Reference pixels per training-video pixel")
    track: list[FaceTrack]
    neutral_frame: int | None = Field(default=None, description=(
        "The reference frame whose face is the generator's identity reference in every render: the quietest "
        "moment of the training audio (a closed mouth). None: each frame is its own reference, as Wav2Lip's "
        "inference.py does, which lets the footage's own mouth movements leak into the new speech."))


def clipped(segment: ReferenceSegment, fps: float, max_s: float = MAX_REFERENCE_S) -> slice:
    """The part of a long segment kept as reference: its middle `max_s` seconds (the ends of a clean run are
    where the face was entering or leaving it)."""
    keep = min(segment.length, max(1, int(round(max_s * fps))))
    start = (segment.length - keep) // 2
    return slice(start, start + keep)


def write_reference(video: Path, segment: ReferenceSegment, dest: Path, *, fps: float, width: float,
                    channel_order: ChannelOrder, max_s: float = MAX_REFERENCE_S) -> Wav2LipAvatarFiles:
    """Cut the reference footage out of the training video (decoded at `fps`, as align saw it) into `dest`."""
    info = probe_video(video)
    part = clipped(segment, fps, max_s)
    first = segment.first_frame + part.start
    count = part.stop - part.start
    scale = min(1.0, MAX_REFERENCE_HEIGHT / info.height)
    out_w, out_h = (2 * round(info.width * scale / 2), 2 * round(info.height * scale / 2))  # yuv420p: even sides
    sx, sy = out_w / info.width, out_h / info.height

    def frames():
        for frame in sample_frames(video, fps=fps, size=(info.width, info.height),
                                   keep=lambda i: first <= i < first + count):
            pixels = frame.pixels
            yield pixels if (sx, sy) == (1.0, 1.0) else cv2.resize(pixels, (out_w, out_h), interpolation=cv2.INTER_AREA)

    write_mp4(frames(), dest, fps=int(round(fps)), crf=REFERENCE_CRF)
    track = []
    for n in range(part.start, part.stop):
        box = segment.boxes[n] * np.array([sx, sy, sx, sy])
        landmarks = segment.landmarks[n] * np.array([sx, sy])
        matrix = np.asarray(segment.matrices[n], dtype=np.float64).copy()
        matrix[:, 0] /= sx  # crop = M · (x / sx, y / sy, 1): the linear part takes the scale
        matrix[:, 1] /= sy
        track.append(FaceTrack(box=np.round(box, 3).tolist(), landmarks=np.round(landmarks, 3).tolist(),
                               matrix=np.round(matrix, 8).tolist()))
    return Wav2LipAvatarFiles(width=width, channel_order=channel_order, fps=fps, frame_width=out_w, frame_height=out_h,
                              source_first_frame=first, scale=round(scale, 6), track=track)


def quietest_frame(wav: np.ndarray, sample_rate: int, first_frame: int, count: int, fps: float,
                   hold: int = 5) -> int:
    """The position (0 … count − 1) in the reference whose `hold` frames around it have the least audio energy
    in the training video's track: the speaker is silent there, so the mouth is closed or at rest."""
    per_frame = sample_rate / fps
    energy = np.empty(count)
    for n in range(count):
        start = int(round((first_frame + n) * per_frame))
        chunk = wav[start:int(round(start + per_frame))]
        energy[n] = float(np.mean(chunk.astype(np.float64) ** 2)) if len(chunk) else 0.0
    held = np.convolve(energy, np.ones(hold) / hold, mode="same") if count >= hold else energy
    return int(np.argmin(held))


def read_reference(path: Path, files: Wav2LipAvatarFiles) -> np.ndarray:
    """The reference footage's frames, [T, H, W, 3] uint8 RGB, as many as its track has (read into one array:
    at 1080p the footage is ~0.9 GB, so it is never held twice)."""
    frames = np.empty((len(files.track), files.frame_height, files.frame_width, 3), np.uint8)
    count = 0
    for frame in sample_frames(path, fps=files.fps, size=(files.frame_width, files.frame_height),
                               keep=lambda i: i < len(files.track)):
        frames[count] = frame.pixels
        count += 1
    if count == 0:
        raise ValueError(f"{path.name} holds no frames")
    return frames[:count]
