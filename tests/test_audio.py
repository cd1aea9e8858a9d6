"""core/audio.py on real speech and real footage (../shared/media), and prepare's audio for an audio-driven
backend: 16 kHz mono extracted once in sync with frame 0, loudness, voice activity, and the errors a user
can fix (no_audio_stream, not_enough_speech, unreadable_audio)."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from core.audio import (PEAK_CEILING_DBFS, SPEECH_SAMPLE_RATE, TARGET_LUFS, Audio, extract_speech_wav,
                        loudness_lufs, normalize_loudness, peak_dbfs, probe_audio, read_wav, resample)
from functions.voice_activity import speech_share
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import Pipeline
from core.storage import LocalStorage
from functions.backends import DatasetPolicy, register, unregister
from functions.backends.mochi_lora import MochiLoraBackend
from functions.prepare_video import MIN_SPEECH_SHARE
from functions.routes import default_pipeline
from real_media import looped_talking_video, media_file
from schemas.errors import VideostudioError
from schemas.events import StorageEvent

FPS = 25
SECONDS = 32.0


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def plain_decode(path: Path) -> np.ndarray:
    """ffmpeg's own decode to 16 kHz mono float, independent of core/audio (the reference to compare with)."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar",
                          str(SPEECH_SAMPLE_RATE), "-f", "s16le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def garble_audio_packets(src: Path, dest: Path, *, share: float, seed: int = 0) -> Path:
    """Overwrite `share` of the audio packets' bytes with random ones, in place in the container: the file and
    its video stay intact, the AAC stream is garbage (what a bad upload or a broken muxer leaves)."""
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                       "packet=pos,size", "-of", "json", str(src)], check=True, capture_output=True,
                                      text=True).stdout)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for packet in probe["packets"]:
        if rng.random() < share:
            pos, size = int(packet["pos"]), int(packet["size"])
            data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    dest.write_bytes(bytes(data))
    return dest


def wav_format(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def speech_formats(tmp_path_factory) -> dict[str, Path]:
    """speech-en.wav (60 s of real English) as mp3, m4a, ogg (Vorbis) and flac, encoded by ffmpeg."""
    d = tmp_path_factory.mktemp("formats")
    src = media_file("speech-en.wav")
    codecs = {"mp3": ["-c:a", "libmp3lame", "-q:a", "4"], "m4a": ["-c:a", "aac", "-b:a", "96k"],
              "ogg": ["-c:a", "libvorbis"], "flac": ["-c:a", "flac"]}
    out = {"wav": src}
    for ext, codec in codecs.items():
        ffmpeg("-i", str(src), *codec, str(d / f"speech.{ext}"))
        out[ext] = d / f"speech.{ext}"
    return out


@pytest.fixture(scope="module")
def talking(tmp_path_factory) -> Path:
    """A real talking head with its own voice, looped to 32 s (training needs ≥ 30 s)."""
    return looped_talking_video(tmp_path_factory.mktemp("talking") / "talking.mp4", seconds=SECONDS)


# --- decoding -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a", "ogg", "flac"])
def test_every_upload_format_decodes_to_the_same_16k_mono_speech(speech_formats, ext, tmp_path):
    out = extract_speech_wav(speech_formats[ext], tmp_path / "out.wav")
    rate, channels, width, duration = wav_format(out)
    assert (rate, channels, width) == (16_000, 1, 2)
    assert duration == pytest.approx(60.0, abs=0.05)
    # The same speech, not merely the same length: the decode matches the original sample for sample
    # (lossy codecs change the waveform, so compare the 10 ms energy envelope).
    reference, decoded = read_wav(speech_formats["wav"]).samples, read_wav(out).samples[: 60 * 16_000]
    env = [np.sqrt(np.mean(x[: len(x) // 160 * 160].reshape(-1, 160) ** 2, axis=1)) for x in (reference, decoded)]
    assert np.corrcoef(env[0], env[1])[0, 1] > 0.99


def test_a_videos_track_is_extracted_at_its_timestamps(tmp_path):
    """An audio track that starts 0.5 s after the picture is padded at the front: sample n is at t = n / 16 kHz of
    the video, so frame i and the audio at i / fps belong together (what a lip-sync model trains on)."""
    clip = media_file("talking-2.mp4")
    late = tmp_path / "late.mp4"
    ffmpeg("-i", str(clip), "-itsoffset", "0.5", "-i", str(clip), "-map", "0:v", "-map", "1:a", "-c", "copy", str(late))
    on_time, delayed = plain_decode(clip), read_wav(extract_speech_wav(late, tmp_path / "late.wav")).samples
    lead_in = delayed[: 8000]
    assert np.abs(lead_in).max() < 1e-3  # the first 0.5 s is silence
    assert np.abs(on_time[:8000]).max() > 0.01  # where the clip itself already speaks
    lag = np.argmax(np.correlate(delayed[8000 - 400:8000 + 16_000 + 400], on_time[:16_000], mode="valid")) - 400
    assert abs(lag) <= 16  # within 1 ms of t = 0.5 s


def test_duration_pads_or_cuts_the_track_to_the_video(tmp_path):
    clip = media_file("talking-3.mp4")
    assert wav_format(extract_speech_wav(clip, tmp_path / "long.wav", duration_s=7.0))[3] == pytest.approx(7.0, abs=1e-3)
    assert wav_format(extract_speech_wav(clip, tmp_path / "short.wav", duration_s=2.0))[3] == pytest.approx(2.0, abs=1e-3)
    padded = read_wav(tmp_path / "long.wav").samples
    assert np.abs(padded[int(5.1 * 16_000):]).max() < 1e-3  # the clip's 5 s of sound, then silence


def test_probe_lists_the_audio_streams(talking):
    probe = probe_audio(talking, count_frames=True)
    assert len(probe.streams) == 1
    stream = probe.streams[0]
    assert (stream.codec, stream.sample_rate, stream.channels) == ("aac", 44_100, 2)
    assert stream.decoded_frames >= stream.packets - 1 and probe.duration_s == pytest.approx(SECONDS, abs=0.05)


def test_a_video_without_sound_is_no_audio_stream(talking, tmp_path):
    mute = tmp_path / "mute.mp4"
    ffmpeg("-i", str(talking), "-an", "-c:v", "copy", str(mute))
    assert probe_audio(mute).streams == ()
    with pytest.raises(VideostudioError) as caught:
        extract_speech_wav(mute, tmp_path / "out.wav")
    assert caught.value.code == "no_audio_stream"


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_a_garbled_aac_track_is_unreadable_audio(talking, tmp_path, share):
    """Half the packets garbled: ffmpeg decodes the rest and exits 0 (gaps filled with silence), so only the
    decoder's own count of rejected packets shows it. All garbled: ffmpeg itself fails."""
    bad = garble_audio_packets(talking, tmp_path / "bad.mp4", share=share)
    with pytest.raises(VideostudioError) as caught:
        extract_speech_wav(bad, tmp_path / "out.wav")
    assert caught.value.code == "unreadable_audio"
    assert str(tmp_path) not in caught.value.message  # no machine paths in what reaches a manifest


def test_a_file_that_is_not_media_is_unreadable_audio(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideostudioError) as caught:
        extract_speech_wav(junk, tmp_path / "out.wav")
    assert caught.value.code == "unreadable_audio" and str(tmp_path) not in caught.value.message


# --- loudness, resampling, voice activity ------------------------------------------------------------------------

def sine(freq: float, amplitude: float, seconds: float, rate: int = SPEECH_SAMPLE_RATE) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    return Audio((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def test_loudness_follows_bs1770_calibration():
    """BS.1770: a full-scale 997 Hz sine in one channel reads −3.01 LUFS (specified at 48 kHz); −20 dB of
    amplitude is −20 LU. At 16 kHz the K-weighting filters, designed for that rate, read within 0.1 LU."""
    assert loudness_lufs(sine(997, 1.0, 5, rate=48_000)) == pytest.approx(-3.01, abs=0.06)
    assert loudness_lufs(sine(997, 0.1, 5)) == pytest.approx(-23.01, abs=0.1)
    assert loudness_lufs(Audio(np.zeros(16_000 * 5, np.float32), 16_000)) is None  # silence: -inf, no number
    assert loudness_lufs(sine(997, 0.5, 0.3)) is None  # under one 400 ms gating block


def test_normalising_real_speech_reaches_the_target_without_clipping(speech_formats):
    speech = read_wav(speech_formats["wav"])
    normalized, report = normalize_loudness(speech)
    measured = pyloudnorm.Meter(16_000).integrated_loudness(normalized.samples.astype(np.float64))
    assert measured == pytest.approx(TARGET_LUFS, abs=0.05) and report.lufs == pytest.approx(measured, abs=0.05)
    assert report.source_lufs == pytest.approx(-18.95, abs=0.3) and not report.peak_limited
    assert peak_dbfs(normalized) <= PEAK_CEILING_DBFS


def test_peaks_the_gain_would_clip_are_limited_and_the_target_still_met(speech_formats):
    """Real speech, 30 dB too quiet, with one loud click: reaching −23 LUFS by gain alone would push the click (and
    the speech's own peaks) far past full scale. The limiter turns those peaks down; the loudness still lands."""
    speech = read_wav(speech_formats["wav"]).samples[: 20 * 16_000] * np.float32(10 ** (-30 / 20))
    speech[80_000] = 0.9
    normalized, report = normalize_loudness(Audio(speech, 16_000))
    assert report.peak_limited and report.gain_db > 25
    assert peak_dbfs(normalized) <= PEAK_CEILING_DBFS + 1e-6 and len(normalized.samples) == len(speech)
    measured = pyloudnorm.Meter(16_000).integrated_loudness(normalized.samples.astype(np.float64))
    assert measured == pytest.approx(TARGET_LUFS, abs=0.3) and report.lufs == pytest.approx(measured, abs=0.01)
    # Only the peaks are touched, in place: away from the click the waveform is the plain gain of the input.
    gain = np.float32(10 ** (report.gain_db / 20))
    away = slice(160_000, 176_000)  # 5 s after the click: speech peaking near −8 dBFS once normalised
    assert np.abs(speech[away] * gain).max() > 0.3
    assert np.allclose(normalized.samples[away], speech[away] * gain, atol=1e-3)
    silent, report = normalize_loudness(Audio(np.zeros(16_000 * 3, np.float32), 16_000))
    assert report.source_lufs is None and report.gain_db == 0.0 and not np.any(silent.samples)


def test_resampling_22050_to_16k_keeps_pitch_and_length():
    resampled = resample(sine(440, 0.5, 2.0, rate=22_050), 16_000)
    assert resampled.sample_rate == 16_000 and len(resampled.samples) == 32_000
    spectrum = np.abs(np.fft.rfft(resampled.samples))
    assert np.fft.rfftfreq(32_000, 1 / 16_000)[np.argmax(spectrum)] == pytest.approx(440, abs=1)


def test_voice_activity_tells_speech_from_noise_tone_and_silence(speech_formats, tmp_path):
    assert speech_share(read_wav(speech_formats["wav"])) > 0.8
    for name, source in {"pink": "anoisesrc=d=10:c=pink:a=0.3", "white": "anoisesrc=d=10:c=white:a=0.3",
                         "tone": "sine=f=440:d=10", "silence": "anullsrc=r=16000:cl=mono:d=10"}.items():
        ffmpeg("-f", "lavfi", "-i", source, "-t", "10", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
               str(tmp_path / f"{name}.wav"))
        assert speech_share(read_wav(tmp_path / f"{name}.wav")) < 0.05, name


# --- prepare for an audio-driven backend ------------------------------------------------------------------------

class TalkingTestBackend(MochiLoraBackend):
    """Test-only: mochi-lora's training, with an audio-driven backend's dataset (every frame at 25 fps, sound kept)."""

    name = "talking-test"
    dataset = DatasetPolicy(fps=FPS, drop_duplicates=False, audio=True)


@pytest.fixture
def talking_backend():
    backend = register(TalkingTestBackend())
    yield backend
    unregister(backend.name)


def prepare_only(bucket: Path, video: Path, backend: str = "talking-test"):
    """A train job for `video` through the real runner, stopped after prepare."""
    storage = LocalStorage(bucket)
    pipeline = default_pipeline()
    pipeline = Pipeline(routes={**pipeline.routes, "train": ["prepare"]}, stages=pipeline.stages,
                        classify=pipeline.classify)
    runner = Runner(storage, SqliteQueue(storage.state_dir / "q.sqlite3"), pipeline,
                    Settings(bucket=str(bucket), progress_interval_s=0.0))
    storage.put_file("uploads/talker.mp4", video)
    storage.put_bytes("inbox/talker.yaml", f"kind: train\navatar: talker\nvideo: uploads/talker.mp4\n"
                                           f"backend: {backend}\n".encode())
    job_id, _ = runner.submit(StorageEvent(bucket=storage.name, key="inbox/talker.yaml"))
    while runner.work_once(job_id=job_id):
        pass
    return runner.store.load(job_id)


def test_prepare_keeps_every_frame_and_extracts_the_audio_once(talking, talking_backend, tmp_path):
    manifest = prepare_only(tmp_path / "bucket", talking)
    assert manifest.status.value == "succeeded", manifest.error
    prepare = manifest.stages["prepare"]
    handoff, metrics = prepare.handoff, prepare.metrics

    # Every frame at 25 fps, in time order, none dropped as a duplicate.
    frames = [json.loads(line) for line in (tmp_path / "bucket" / prepare.outputs["frames"]).read_text().splitlines()]
    assert len(frames) == metrics["total"] == SECONDS * FPS and metrics["dropped_duplicate"] == 0
    assert [f["index"] for f in frames] == list(range(len(frames)))
    assert not [f for f in frames if f["dropped"] == "duplicate"]

    # audio.wav: 16 kHz mono PCM, the video's duration to within a frame, loudness and speech share recorded.
    audio = handoff["audio"]
    assert prepare.outputs["audio"] == audio["key"] == f"jobs/{manifest.job_id}/prepare/audio.wav"
    rate, channels, width, duration = wav_format(tmp_path / "bucket" / audio["key"])
    assert (rate, channels, width) == (16_000, 1, 2) == (audio["sample_rate"], 1, 2)
    assert duration == pytest.approx(handoff["video"]["duration_s"], abs=1 / FPS)
    assert audio["duration_s"] == metrics["audio_duration_s"] == pytest.approx(duration, abs=1e-3)
    assert -40 < audio["lufs"] < -10 and audio["lufs"] == metrics["audio_lufs"]
    assert audio["normalized_lufs"] == pytest.approx(TARGET_LUFS, abs=0.1)
    assert MIN_SPEECH_SHARE < audio["speech_share"] == metrics["audio_speech_share"] <= 1.0
    # The file holds what the video says: its envelope follows ffmpeg's own decode of the track.
    ours, reference = read_wav(tmp_path / "bucket" / audio["key"]).samples[:5 * 16_000], plain_decode(talking)[:5 * 16_000]
    env = [np.sqrt(np.mean(x.reshape(-1, 160) ** 2, axis=1)) for x in (ours, reference)]
    assert np.corrcoef(env[0], env[1])[0, 1] > 0.99


def test_prepare_without_audio_in_the_policy_ignores_the_sound(tmp_path):
    """mochi-lora (audio: False): a video with no sound at all trains as before, and nothing about audio is written."""
    mute = tmp_path / "mute.mp4"
    looped_talking_video(tmp_path / "talking.mp4", seconds=SECONDS)
    ffmpeg("-i", str(tmp_path / "talking.mp4"), "-an", "-c:v", "copy", str(mute))
    manifest = prepare_only(tmp_path / "bucket", mute, backend="mochi-lora")
    assert manifest.status.value == "succeeded", manifest.error
    prepare = manifest.stages["prepare"]
    assert list(prepare.outputs) == ["frames"] and prepare.handoff["audio"] is None
    assert not any(k.startswith("audio") for k in prepare.metrics)


@pytest.fixture(scope="module")
def bad_sound(talking, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The same real footage with its sound taken away, replaced by silence or by noise, or garbled."""
    d = tmp_path_factory.mktemp("bad-sound")

    def replace_audio(name: str, source: str) -> Path:
        ffmpeg("-i", str(talking), "-f", "lavfi", "-i", source, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
               "-c:a", "aac", "-shortest", str(d / name))
        return d / name

    ffmpeg("-i", str(talking), "-an", "-c:v", "copy", str(d / "mute.mp4"))
    return {
        "mute": (d / "mute.mp4", "no_audio_stream"),
        "silence": (replace_audio("silence.mp4", "anullsrc=r=44100:cl=stereo"), "not_enough_speech"),
        "noise": (replace_audio("noise.mp4", "anoisesrc=c=pink:a=0.2:r=44100"), "not_enough_speech"),
        "garbled": (garble_audio_packets(talking, d / "garbled.mp4", share=0.5), "unreadable_audio"),
    }


@pytest.mark.parametrize("case", ["mute", "silence", "noise", "garbled"])
def test_prepare_refuses_a_video_whose_sound_cannot_train_a_talking_avatar(bad_sound, case, talking_backend, tmp_path):
    video, code = bad_sound[case]
    manifest = prepare_only(tmp_path / "bucket", video)
    assert manifest.status.value == "failed"
    assert manifest.error.code == code, manifest.error
    assert not manifest.error.retryable and str(tmp_path) not in manifest.error.message
    # Refused before the frame pass: nothing but the stage manifest was written.
    written = [k for k in LocalStorage(tmp_path / "bucket").list_keys(f"jobs/{manifest.job_id}/prepare/")
               if not k.endswith("manifest.json")]
    assert written == []
