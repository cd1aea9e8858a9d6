"""prepare for training jobs: probe the video, extract frames at the requested fps, keep the good ones.

Frames are sampled in one streamed ffmpeg pass (never the whole video in memory) as small
gray thumbnails, enough to judge them. Every sampled frame, kept or dropped with its reason,
is listed in `frames.jsonl`; the video's key, sha256 and probe are handed on to align
(`DatasetPrepared`). The avatar backend's `DatasetPolicy` says at which fps frames are
sampled, whether near-duplicates are dropped, and whether the sound is kept: an audio-driven
backend (`DatasetPolicy.audio`) gets the video's track extracted once to `audio.wav` (16 kHz mono,
loudness-normalised, synced to frame 0), and a video with too little speech in it is refused
before any frame is sampled. No full-size
frame is written: align decodes the kept ones again from the video (a decode costs a fraction
of encoding, storing and re-reading an image per frame), and checks the sha256 first.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from core.audio import SPEECH_SAMPLE_RATE, extract_speech_wav, normalize_loudness, read_wav, write_wav
from functions.voice_activity import speech_share
from core.stage import StageContext, StageResult
from core.storage.base import file_sha256
from core.video import probe_video, sample_thumbnails
from functions.backends import get_backend
from functions.frame_quality import FrameFilter
from schemas.brief import TrainBrief
from schemas.dataset import FrameRecord
from schemas.errors import VideostudioError
from schemas.handoff import AudioPrepared, DatasetPrepared, VideoProbe

MIN_DURATION_S = 30.0
MAX_DURATION_S = 600.0
MAX_PIXELS = 4096 * 2304  # 4K-class and below; larger frames cost memory for no gain at 512×512 crops
MIN_SIDE = 64
MIN_KEPT_FRAMES = 10
TRUNCATION_SHARE = 0.9  # fewer decodable frames than this share of the container's duration: cut short
# An audio-driven avatar learns lips from speech: under this share of the video spoken (Silero VAD), there is
# too little to learn from. Real talking-head clips measure 0.61–0.96; silence, noise and tones measure 0.
MIN_SPEECH_SHARE = 0.3


def avatar_id_from_key(key: str) -> str:
    """A bare video `inbox/John Smith.mp4` trains avatar `john-smith`."""
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    slug = re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).strip("-.")[:64]
    return slug or "avatar"


def default_train_brief(key: str) -> TrainBrief:
    return TrainBrief(kind="train", avatar=avatar_id_from_key(key), video=key)


def prepare_training_video(ctx: StageContext, brief: TrainBrief) -> StageResult:
    video_key = brief.video or ctx.input.key
    backend = get_backend(brief.backend)  # before any work: an unknown backend is the brief's error
    policy = backend.dataset
    sample_fps = policy.sample_fps(brief)
    if ctx.storage.stat(video_key) is None:
        raise VideostudioError("video_not_found", f"the training video {video_key!r} is not in the bucket")

    # 1. fetch and probe
    ctx.progress(0.0, "probing video")
    local = ctx.storage.download(video_key, ctx.scratch / ("input" + Path(video_key).suffix.lower()))
    info = probe_video(local)
    _check_video(info.width, info.height, info.duration_s)
    audio = _prepare_audio(ctx, local, info.duration_s) if policy.audio else None

    # 2. sample and judge every frame in one streamed pass
    clock = time.perf_counter()
    quality = FrameFilter(drop_duplicates=policy.drop_duplicates)
    expected = max(1, int(info.duration_s * sample_fps))
    for frame in sample_thumbnails(local, fps=sample_fps, size=(info.width, info.height)):
        quality.add(frame.index, frame.time_s, frame.pixels)
        if frame.index % 25 == 0:
            ctx.progress(0.9 * min(1.0, frame.index / expected), "checking frames", step=frame.index, total=expected)
    verdicts = quality.finish()
    extract_s = time.perf_counter() - clock
    if len(verdicts) < TRUNCATION_SHARE * expected:
        raise VideostudioError("truncated_video", f"the video claims {info.duration_s:.1f} s but only "
                               f"{len(verdicts) / sample_fps:.1f} s could be decoded: the file is cut short")
    counts = quality.counts()
    if counts["kept"] < MIN_KEPT_FRAMES:
        raise VideostudioError("too_few_usable_frames", f"only {counts['kept']} of {counts['total']} frames are usable "
                               f"(dropped: {_dropped_summary(counts)})")

    # 3. output: the frame list
    ctx.progress(0.9, "writing the frame list")
    records = [FrameRecord(index=v.index, time_s=round(v.time_s, 4), mean_luma=v.mean_luma, sharpness=v.sharpness,
                           dropped=v.reason) for v in verdicts]
    frames_key = ctx.put_output_bytes("frames.jsonl", "".join(r.model_dump_json() + "\n" for r in records).encode(),
                                      content_type="application/x-ndjson")

    prepared = DatasetPrepared(
        video_key=video_key,
        video_sha256=file_sha256(local),  # align decodes this video again: it must be the same one
        video=VideoProbe(width=info.width, height=info.height, fps=round(info.fps, 3),
                         duration_s=round(info.duration_s, 3), codec=info.codec, rotation=info.rotation,
                         variable_frame_rate=info.variable_frame_rate, bit_depth=info.bit_depth),
        frames_key=frames_key, sample_fps=sample_fps, backend=backend.name, audio=audio)
    warnings = []
    if counts["kept"] < 0.5 * counts["total"]:
        warnings.append(f"prepare kept only {counts['kept']} of {counts['total']} frames ({_dropped_summary(counts)})")
    outputs, metrics = {"frames": frames_key}, {
        **counts, "extract_fps": sample_fps, "duration_s": round(info.duration_s, 3), "source_fps": round(info.fps, 3),
        "extract_s": round(extract_s, 3), "frames_per_s": round(counts["total"] / extract_s, 2) if extract_s else None}
    if audio is not None:
        outputs["audio"] = audio.key
        metrics.update(audio_duration_s=audio.duration_s, audio_lufs=audio.lufs, audio_speech_share=audio.speech_share)
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        request=brief.model_copy(update={"video": video_key}),
        handoff=prepared,
        warnings=warnings,
    )


def _prepare_audio(ctx: StageContext, video: Path, duration_s: float) -> AudioPrepared:
    """The video's sound → prepare/audio.wav (one ffmpeg pass, then the loudness gain), if it holds enough speech."""
    ctx.progress(0.0, "extracting audio")
    decoded = read_wav(extract_speech_wav(video, ctx.scratch / "audio-decoded.wav", duration_s=duration_s))
    normalized, loudness = normalize_loudness(decoded)
    share = speech_share(normalized)  # at the target level, so a quiet recording is judged like a loud one
    if share < MIN_SPEECH_SHARE:
        raise VideostudioError("not_enough_speech", f"speech was heard in {share:.0%} of the video; an audio-driven "
                               f"avatar needs someone talking for at least {MIN_SPEECH_SHARE:.0%} of it")
    key = ctx.put_output_file("audio.wav", write_wav(ctx.scratch / "audio.wav", normalized), content_type="audio/wav")
    return AudioPrepared(key=key, sample_rate=SPEECH_SAMPLE_RATE, duration_s=round(normalized.duration_s, 3),
                         lufs=loudness.source_lufs, normalized_lufs=loudness.lufs, gain_db=loudness.gain_db,
                         speech_share=share)


def _check_video(width: int, height: int, duration_s: float) -> None:
    if duration_s < MIN_DURATION_S:
        raise VideostudioError("video_too_short", f"the video lasts {duration_s:.1f} s; training needs "
                               f"{MIN_DURATION_S:.0f}–{MAX_DURATION_S:.0f} s")
    if duration_s > MAX_DURATION_S:
        raise VideostudioError("video_too_long", f"the video lasts {duration_s:.1f} s; training needs "
                               f"{MIN_DURATION_S:.0f}–{MAX_DURATION_S:.0f} s")
    if width * height > MAX_PIXELS:
        raise VideostudioError("resolution_too_high", f"{width}×{height} is above the {MAX_PIXELS / 1e6:.1f} MP limit; "
                               "downscale to 4K or less")
    if min(width, height) < MIN_SIDE:
        raise VideostudioError("resolution_too_low", f"{width}×{height} is too small to find faces in")


def _dropped_summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in counts.items() if k.startswith("dropped_") and v)
