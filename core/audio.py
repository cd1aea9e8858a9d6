"""Audio I/O with real ffmpeg (through ffmpeg-python): probe, decode to 16 kHz mono PCM, loudness.

Model-agnostic: every speech consumer (Wav2Lip's mel, the lip-sync expert, the VAD) takes
16 kHz mono, so that is the one working format.

- **decode** (`extract_speech_wav`): one ffmpeg pass from anything ffmpeg reads — a video's
  AAC track, or an uploaded wav/mp3/m4a/ogg/flac — to 16 kHz mono PCM s16 WAV. Samples are
  placed at their timestamps (`aresample=async`, `first_pts=0`), so sample `n` is at
  t = n / 16000 of the video, which is what pairing frame `i` with t = i / fps needs.
  A track the decoder rejects for more than `1 − MIN_DECODED_SHARE` of its packets is
  `unreadable_audio` (a garbled AAC stream decodes with errors but exit code 0).
- **loudness** (`loudness_lufs`, `normalize_loudness`): integrated loudness per ITU-R BS.1770-4
  (pyloudnorm), normalised to `TARGET_LUFS` = −23 LUFS (EBU R128, InfiniteTalk's convention).
  Where the gain pushes a sample peak past `PEAK_CEILING_DBFS` (−1 dBFS; speech often peaks
  20+ dB above its loudness, piper's voice 17–23 dB), ffmpeg's look-ahead limiter turns those
  peaks down, so normalising never clips and still lands on the target (within 0.1 LU).
  Silence (−inf LUFS) and audio shorter than one 400 ms gating block have no loudness (None)
  and get no gain.
- voice activity is a model, so it lives in the model layer: functions/voice_activity.py.
- **resampling** of audio already in memory (`resample`, e.g. piper's 22,050 Hz): soxr, once.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from schemas.errors import VideostudioError

SPEECH_SAMPLE_RATE = 16_000
TARGET_LUFS = -23.0  # EBU R128 programme loudness; InfiniteTalk normalises its conditioning audio to the same
PEAK_CEILING_DBFS = -1.0  # EBU R128's peak limit; keeps the 16-bit file (and a later AAC encode) from clipping
LOUDNESS_BLOCK_S = 0.4  # BS.1770's gating block: shorter audio has no integrated loudness
LIMIT_PASSES = 3  # gain + limiter rounds normalize_loudness may take to land within 0.1 LU of the target
MIN_DECODED_SHARE = 0.9  # fewer decodable audio packets than this: the track is corrupt, not merely glitched


@dataclass(frozen=True)
class AudioStream:
    index: int  # the stream's index in the file
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None  # None where the container does not say
    packets: int | None = None  # with count_frames: packets read and frames the decoder accepted
    decoded_frames: int | None = None


@dataclass(frozen=True)
class AudioProbe:
    format_name: str
    duration_s: float  # the file's duration (the container's, or the first audio stream's)
    streams: tuple[AudioStream, ...]  # audio streams only; empty for a file without sound


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Loudness:
    """What `normalize_loudness` measured and did."""

    source_lufs: float | None  # None: silent, or shorter than one gating block
    lufs: float | None  # after the gain
    gain_db: float
    peak_limited: bool  # the gain would have pushed peaks past the ceiling: the limiter turned them down


def _ffmpeg_detail(exc: ffmpeg.Error, *paths: Path) -> str:
    """ffmpeg's last stderr line, without machine paths (messages end up in manifests)."""
    lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
    if not lines:
        return "unknown error"
    detail = lines[-1]
    for path in paths:
        detail = detail.replace(str(path), f"<{path.suffix.lstrip('.') or 'file'}>")
    return detail[-300:]


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def probe_audio(path: Path, *, count_frames: bool = False) -> AudioProbe:
    """ffprobe the audio streams of any media file; `count_frames` decodes them to count the packets the decoder
    accepts (cheap: AAC decodes at hundreds of times real time, and no video frame is decoded).

    Raises `unreadable_audio` where ffprobe cannot parse the file at all.
    """
    counting = {"count_frames": None, "count_packets": None} if count_frames else {}
    try:
        info = ffmpeg.probe(str(path), select_streams="a", **counting)  # audio only: no video frame is decoded
    except ffmpeg.Error as exc:
        raise VideostudioError("unreadable_audio", f"ffprobe cannot read the file: {_ffmpeg_detail(exc, path)}") from None
    streams = tuple(AudioStream(
        index=int(s["index"]), codec=s.get("codec_name", ""), sample_rate=int(s.get("sample_rate") or 0),
        channels=int(s.get("channels") or 0), duration_s=_float(s.get("duration")),
        packets=int(s["nb_read_packets"]) if "nb_read_packets" in s else None,
        decoded_frames=int(s["nb_read_frames"]) if "nb_read_frames" in s else None)
        for s in info.get("streams", []) if s.get("codec_type") == "audio")
    fmt = info.get("format", {})
    duration = _float(fmt.get("duration")) or (streams[0].duration_s if streams else None) or 0.0
    return AudioProbe(format_name=fmt.get("format_name", ""), duration_s=duration, streams=streams)


def extract_speech_wav(src: Path, dest: Path, *, duration_s: float | None = None) -> Path:
    """The first audio stream of `src` (a video or an audio file) → 16 kHz mono PCM s16 WAV at `dest`, in one
    ffmpeg pass. `duration_s`: pad with silence or cut to exactly this long (a video's duration).

    Raises `no_audio_stream` (nothing to hear) and `unreadable_audio` (ffmpeg cannot decode the track, or
    rejects too many of its packets).
    """
    probe = probe_audio(src, count_frames=True)
    if not probe.streams:
        raise VideostudioError("no_audio_stream", "the file has no audio stream")
    stream = probe.streams[0]
    if not stream.packets:
        raise VideostudioError("unreadable_audio", "the audio track is empty")
    if (stream.decoded_frames or 0) < MIN_DECODED_SHARE * stream.packets:
        raise VideostudioError("unreadable_audio", f"the audio track is corrupt: only {stream.decoded_frames} of "
                               f"{stream.packets} audio packets could be decoded")
    # async=1 + min_hard_comp: fill timestamp gaps with silence and drop overlaps, so samples sit at their
    # timestamps; first_pts=0: an audio track that starts late is padded at the front (synced to t = 0).
    audio = ffmpeg.input(str(src))["a:0"].filter("aresample", SPEECH_SAMPLE_RATE, min_hard_comp=0.01, first_pts=0,
                                                  **{"async": 1})
    extra: dict = {}
    if duration_s is not None:
        audio = audio.filter("apad", whole_dur=duration_s)
        extra["t"] = duration_s
    try:
        (audio.output(str(dest), ac=1, ar=SPEECH_SAMPLE_RATE, acodec="pcm_s16le", format="wav", **extra)
         .overwrite_output().global_args("-nostdin", "-v", "error")
         .run(capture_stdout=True, capture_stderr=True))
    except ffmpeg.Error as exc:
        detail = _ffmpeg_detail(exc, src, dest)
        raise VideostudioError("unreadable_audio", f"ffmpeg could not decode the audio: {detail}") from None
    return dest


def read_wav(path: Path) -> Audio:
    """A mono PCM s16 WAV (what `extract_speech_wav` and `write_wav` write) as float32 samples."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(f"expected mono 16-bit PCM, got {wav.getnchannels()} channels × {wav.getsampwidth()} bytes")
        data = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
    return Audio(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate)


def write_wav(path: Path, audio: Audio) -> Path:
    """Mono PCM s16 WAV; samples are rounded, and clipped only beyond full scale."""
    pcm = np.clip(np.round(audio.samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.sample_rate)
        wav.writeframes(pcm.tobytes())
    return path


def resample(audio: Audio, sample_rate: int = SPEECH_SAMPLE_RATE) -> Audio:
    """soxr's high-quality resampler; a no-op at the same rate."""
    if audio.sample_rate == sample_rate:
        return audio
    import soxr

    samples = soxr.resample(audio.samples.astype(np.float32), audio.sample_rate, sample_rate, quality="HQ")
    return Audio(samples.astype(np.float32), sample_rate)


def loudness_lufs(audio: Audio) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4, LUFS); None for silence or audio under one 400 ms block."""
    import pyloudnorm

    if audio.duration_s < LOUDNESS_BLOCK_S:
        return None
    value = float(pyloudnorm.Meter(audio.sample_rate).integrated_loudness(audio.samples.astype(np.float64)))
    return value if np.isfinite(value) else None


def peak_dbfs(audio: Audio) -> float:
    peak = float(np.max(np.abs(audio.samples))) if len(audio.samples) else 0.0
    return float(20.0 * np.log10(peak)) if peak > 0 else float("-inf")


def limit_peaks(audio: Audio, *, ceiling_dbfs: float = PEAK_CEILING_DBFS) -> Audio:
    """ffmpeg's look-ahead limiter (`alimiter`, 5 ms attack, 50 ms release, its delay compensated so samples keep
    their times): only the peaks above `ceiling_dbfs` are turned down."""
    ceiling = 10.0 ** (ceiling_dbfs / 20.0)
    out, _ = (ffmpeg.input("pipe:", format="f32le", ar=audio.sample_rate, ac=1)
              .filter("alimiter", limit=ceiling, attack=5, release=50, level=0, latency=1)
              .output("pipe:", format="f32le", ar=audio.sample_rate, ac=1)
              .global_args("-nostdin", "-v", "error")
              .run(input=audio.samples.astype("<f4").tobytes(), capture_stdout=True, capture_stderr=True))
    # The limiter may overshoot by a rounding step; the ceiling is a promise, so hold it exactly.
    limited = np.clip(np.frombuffer(out, dtype="<f4"), -ceiling, ceiling).astype(np.float32)
    return Audio(limited[: len(audio.samples)], audio.sample_rate)


def normalize_loudness(audio: Audio, *, target_lufs: float = TARGET_LUFS,
                       ceiling_dbfs: float = PEAK_CEILING_DBFS) -> tuple[Audio, Loudness]:
    """Scale to `target_lufs`; where that pushes a peak past `ceiling_dbfs`, limit those peaks (speech often has
    peaks 20+ dB above its loudness, so a bare gain would clip). Silence is left as it is.

    A limited take has lost a little loudness with its peaks (much, when a click dominated the measurement), so
    the gain is topped up and the peaks limited again, up to `LIMIT_PASSES` times, until within 0.1 LU.
    """
    source = loudness_lufs(audio)
    if source is None:
        return audio, Loudness(source_lufs=None, lufs=None, gain_db=0.0, peak_limited=False)
    gain_db, current, result, limited = 0.0, source, audio, False
    for _ in range(LIMIT_PASSES):
        step_db = target_lufs - current
        gain_db += step_db
        result = Audio((result.samples * np.float32(10.0 ** (step_db / 20.0))).astype(np.float32), audio.sample_rate)
        if peak_dbfs(result) <= ceiling_dbfs:
            current += step_db  # a bare gain is linear: no second measurement needed
            break
        limited = True
        result = limit_peaks(result, ceiling_dbfs=ceiling_dbfs)
        current = loudness_lufs(result)  # the limiter took some loudness with the peaks: measure again
        if current is None or abs(current - target_lufs) < 0.1:
            break
    return result, Loudness(source_lufs=round(source, 2), lufs=None if current is None else round(float(current), 2),
                            gain_db=round(float(gain_db), 2), peak_limited=limited)
