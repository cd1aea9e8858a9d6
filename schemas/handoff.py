"""What each stage hands on to later stages: one typed record per stage, never string keys.

A stage returns its record in `StageResult.handoff`; the runner stores it in the stage's own
manifest (`jobs/<id>/<stage>/manifest.json`) and in the job manifest's stage record, so a
later stage reads it from the snapshot it already has with `ctx.handoff(AlignOutput)`. A
record names its stage (`stage`), so the accessor needs no other argument; a missing or
malformed one fails with `missing_stage_output` or `invalid_stage_output`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.plan import Plan


class StageHandoff(BaseModel):
    """Base of every stage's record: frozen, no unknown keys, and the stage that writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: ClassVar[str]


class VideoProbe(BaseModel):
    """The training video as prepare probed it (rotation already applied to width/height)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    height: int
    fps: float
    duration_s: float
    codec: str
    rotation: int = 0
    variable_frame_rate: bool = False
    bit_depth: int = 8


class RenderPrepared(StageHandoff):
    """prepare of a render job: the brief's choices made concrete."""

    stage: ClassVar[str] = "prepare"

    plan: Plan


class AudioPrepared(BaseModel):
    """A training video's sound as prepare extracted it: `audio.wav`, 16 kHz mono PCM s16, one sample per
    1/16000 s of the video from t = 0 (frame i is at t = i / sample_fps), loudness-normalised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="jobs/<id>/prepare/audio.wav")
    sample_rate: int
    duration_s: float = Field(description="The video's duration: the track is padded with silence or cut to it.")
    lufs: float | None = Field(description="Integrated loudness of the video's track (ITU-R BS.1770), before "
                               "normalisation; None: silent.")
    normalized_lufs: float | None = Field(description="Loudness of audio.wav: the target, −23 LUFS, within 0.1 LU "
                                          "(peaks the gain would push past −1 dBFS are limited, never clipped).")
    gain_db: float = Field(description="Gain applied before the peak limiter.")
    speech_share: float = Field(ge=0.0, le=1.0, description="Share of the audio Silero VAD calls speech.")


class DatasetPrepared(StageHandoff):
    """prepare of a train job: the video align decodes again, and the frames it judged."""

    stage: ClassVar[str] = "prepare"

    video_key: str
    video_sha256: str = Field(description="align refuses the video if it no longer has these bytes.")
    video: VideoProbe
    frames_key: str = Field(description="frames.jsonl: every sampled frame with its verdict.")
    sample_fps: float = Field(description="The fps frames were sampled at (the backend's, or the brief's extract_fps).")
    backend: str
    audio: AudioPrepared | None = Field(default=None, description=(
        "The extracted sound, for backends whose DatasetPolicy asks for audio; None for the others."))


class AlignOutput(StageHandoff):
    """align: the subject's aligned 512×512 faces, split by time."""

    stage: ClassVar[str] = "align"

    faces_prefix: str
    metadata_key: str = Field(description="metadata.jsonl: one FaceRecord per detection of the subject.")
    dataset_key: str
    contact_sheet_key: str
    splits: dict[str, int] = Field(description="Faces per split (train, val, test).")


class TrainOutput(StageHandoff):
    """train: the avatar as trained (its manifest and weights in the job), whether it was deployed, its preview."""

    stage: ClassVar[str] = "train"

    avatar_id: str
    avatar_key: str = Field(description="The trained avatar's manifest (an AvatarManifest) in the job's outputs.")
    weights_key: str = Field(description="The trained weights in the job's outputs (deploy copies them).")
    deployed: bool
    preview: Plan = Field(description="What the job's render stage renders with the new avatar.")


class RenderOutput(StageHandoff):
    """render: the video it made (a later compose stage puts a new background behind its person)."""

    stage: ClassVar[str] = "render"

    video_key: str
    poster_key: str | None = None


class ComposePrepared(StageHandoff):
    """prepare of a compose job: the bucket video that gets a new background, as probed."""

    stage: ClassVar[str] = "prepare"

    video_key: str
    video_sha256: str = Field(description="compose refuses the video if it no longer has these bytes.")
    video: VideoProbe
    has_audio: bool
