"""Speech a talking avatar speaks, as made ready for a render (functions/speech.py makes it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SpeechRecord(BaseModel):
    """What `synthesize` or `load_speech` made (no local paths: it may go into a manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["script", "audio"]
    voice: str | None = Field(description="The piper voice id that spoke the script; None for a recording.")
    characters: int | None = Field(default=None, description="Length of the script spoken.")
    sample_rate: int
    duration_s: float
    lufs: float | None = Field(description="Loudness of the WAV (ITU-R BS.1770); None: silent.")
    source_lufs: float | None = Field(description="Loudness before normalisation.")
    gain_db: float
    speech_share: float = Field(ge=0.0, le=1.0, description="Share Silero VAD calls speech.")


class PreparedSpeech(SpeechRecord):
    """The speech of a talking render, in the job: a 16 kHz mono PCM WAV at `key`."""

    key: str = Field(description="jobs/<id>/<stage>/speech.wav")
