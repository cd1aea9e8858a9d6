"""Speech for a talking render, made ready in the job: a script spoken, or a recording from the bucket.

prepare (for a render brief) and the train stage (for a talking avatar's preview) call this, so a
bad script, voice or recording fails the job before any frame is rendered. The result is the
16 kHz mono loudness-normalised WAV of functions/speech.py, written as the stage's `speech.wav`,
and the plan's `PreparedSpeech` record (no local paths).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath

from core.stage import StageContext
from functions.speech import BUNDLED_VOICE, load_speech, synthesize
from schemas.avatar import AvatarManifest
from schemas.errors import VideostudioError
from schemas.plan import TalkingPlan
from schemas.speech import PreparedSpeech

TALKING_FPS = 25  # Wav2Lip's (and InfiniteTalk's) frame rate: 80 mel columns per second = 3.2 per frame
PREVIEW_SENTENCE = "Hello! This is my new avatar, speaking a sentence it has never heard before."


def prepare_speech(ctx: StageContext, *, script: str | None = None, audio_key: str | None = None,
                   voice: str | None = None, name: str = "speech.wav", at: float = 0.2,
                   seed: int = 0) -> PreparedSpeech:
    """`script` spoken by `voice` (default: the bundled voice), or the recording at `audio_key`, as this stage's
    output `name`. `at`: the stage's progress while it speaks (a train stage's preview comes at its very end).
    `seed`: the brief's, so the same brief speaks the same samples."""
    dest = ctx.scratch / "speech" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if script is not None:
        ctx.progress(at, "speaking the script")
        speech = synthesize(script, dest=dest, voice=voice or BUNDLED_VOICE, seed=seed)
    elif audio_key is not None:
        if ctx.storage.stat(audio_key) is None:
            raise VideostudioError("audio_not_found", f"no recording at {audio_key!r} in the bucket")
        ctx.progress(at, "reading the recording")
        local = ctx.storage.download(audio_key, ctx.scratch / "speech" / f"source{PurePosixPath(audio_key).suffix}")
        speech = load_speech(local, dest=dest)
    else:
        raise ValueError("prepare_speech needs a script or an audio key")
    key = ctx.put_output_file(name, speech.path, content_type="audio/wav")
    return PreparedSpeech(**speech.record.model_dump(), key=key)


def talking_plan(backend: str, avatar: AvatarManifest, *, avatar_key: str, speech: PreparedSpeech,
                 seed: int, fps: int = TALKING_FPS, quantization: str = "auto", gpus: int | None = None) -> TalkingPlan:
    """The plan of `avatar` speaking `speech`: one frame per 1/fps s of it (at least one)."""
    frames = max(1, math.floor(speech.duration_s * fps + 0.5))
    return TalkingPlan(avatar=avatar.avatar_id, backend=backend, avatar_key=avatar_key, speech=speech, fps=fps,
                       num_frames=frames, duration_s=round(frames / fps, 4), seed=seed, quantization=quantization,
                       gpus=gpus)
