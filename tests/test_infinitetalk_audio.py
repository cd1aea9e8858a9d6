"""InfiniteTalk's audio conditioning (functions/infinitetalk_audio.py): frame counts, windows, and wav2vec2 features
of a tiny random encoder on real speech. CPU only, a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.audio import SPEECH_SAMPLE_RATE, Audio, loudness_lufs, read_wav, write_wav
from functions.infinitetalk_audio import (CHUNK_FRAMES, MOTION_FRAMES, SpeechEncoder, chunk_starts, chunk_windows,
                                          frame_windows, prepare_wave, tiny_speech_encoder, video_frame_count)
from tests.real_media import media_file


def indexed_features(frames: int, layers: int = 3, dim: int = 4) -> torch.Tensor:
    """[frames, layers, dim] where every value of row i is i: a window's values name the rows it took."""
    return torch.arange(frames, dtype=torch.float32).view(frames, 1, 1).expand(frames, layers, dim).clone()


def window_rows(windows: torch.Tensor) -> list[list[int]]:
    return windows[:, :, 0, 0].long().tolist()


@pytest.fixture(scope="module")
def encoder():
    return tiny_speech_encoder(seed=0)


@pytest.fixture(scope="module")
def speech_3s(tmp_path_factory):
    """3 s of the real English speech, as a 16 kHz PCM WAV: from 3.0 s, because its first 3 s are the silence
    before the speaker starts (about −55 LUFS), where normalising would mostly amplify the 16-bit noise floor."""
    full = read_wav(media_file("speech-en.wav"))
    assert full.sample_rate == SPEECH_SAMPLE_RATE
    path = tmp_path_factory.mktemp("speech") / "speech-3s.wav"
    start = 3 * SPEECH_SAMPLE_RATE
    return write_wav(path, Audio(full.samples[start: start + 3 * SPEECH_SAMPLE_RATE], SPEECH_SAMPLE_RATE))


# --- windows ------------------------------------------------------------------------------------------------------

def test_each_frame_gets_rows_i_minus_2_to_i_plus_2_clamped_at_both_ends():
    feats = indexed_features(10)
    windows = frame_windows(feats, 0, 10, tail="clamp")
    assert windows.shape == (10, 5, 3, 4)
    expected = [[min(max(j, 0), 9) for j in range(i - 2, i + 3)] for i in range(10)]
    assert window_rows(windows) == expected
    assert window_rows(windows)[:2] == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3]]
    assert window_rows(windows)[-2:] == [[6, 7, 8, 9, 9], [7, 8, 9, 9, 9]]
    # a slice in the middle is the same global windows
    assert window_rows(frame_windows(feats, 4, 3, tail="clamp")) == expected[4:7]


def test_the_default_tail_mirrors_the_end_like_the_officials_flipped_tail():
    """The official appends torch.flip(emb[-m:]) before cutting the last clip: row N+k = row N-1-k."""
    n = 10
    feats = indexed_features(n)
    end = 16  # a last clip that runs 6 frames past the speech
    miss = end - n + 3
    extended = torch.cat([feats, torch.flip(feats[-miss:], dims=[0])])  # the official's extension
    offsets = torch.arange(5) - 2
    official = extended[torch.clamp(torch.arange(0, end).unsqueeze(1) + offsets, 0, extended.shape[0] - 1)]
    ours = frame_windows(feats, 0, end)
    assert torch.equal(ours, official)
    assert window_rows(ours)[9] == [7, 8, 9, 9, 8]  # the last real frame: mirrored, not clamped
    # inside the speech both tails agree
    assert torch.equal(frame_windows(feats, 0, n - 1), frame_windows(feats, 0, n - 1, tail="clamp"))


def test_chunks_use_global_windows_and_overlapping_frames_share_them():
    frames = 300
    feats = indexed_features(frames)
    starts = chunk_starts(frames)
    step = CHUNK_FRAMES - MOTION_FRAMES
    assert starts == [0, 72, 144, 216, 288]  # the last clip is the first whose end reaches the frame count
    chunks = list(chunk_windows(feats, starts))
    assert all(c.shape == (CHUNK_FRAMES, 5, 3, 4) for c in chunks)
    whole = frame_windows(feats, 0, starts[-1] + CHUNK_FRAMES)
    for start, chunk in zip(starts, chunks):
        assert torch.equal(chunk, whole[start: start + CHUNK_FRAMES])
    for earlier, later in zip(chunks, chunks[1:]):  # the 9 motion frames: same windows in both clips
        assert torch.equal(earlier[step:], later[:MOTION_FRAMES])
    assert window_rows(chunks[1])[0] == [70, 71, 72, 73, 74]
    assert chunk_starts(81) == [0] and chunk_starts(82) == [0, 72] and chunk_starts(1) == [0]


# --- frame counts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("duration_s", [1.0, 3.22, 0.5, 2.02, 0.01])
def test_frame_count_is_the_talking_plans_rounding(encoder, duration_s):
    samples = round(duration_s * SPEECH_SAMPLE_RATE)
    expected = max(1, math.floor(duration_s * 25 + 0.5))  # functions/talking.py talking_plan
    assert video_frame_count(samples) == expected
    wave = np.random.default_rng(1).standard_normal(samples).astype(np.float32) * 0.1
    feats = encoder.features(wave)
    assert feats.shape == (expected, encoder.layers, encoder.dim)
    assert torch.isfinite(feats).all()


def test_frames_override_matches_a_plan(encoder):
    wave = np.random.default_rng(2).standard_normal(SPEECH_SAMPLE_RATE).astype(np.float32) * 0.1
    assert encoder.features(wave, frames=30).shape == (30, 2, 32)


# --- features on real speech --------------------------------------------------------------------------------------

def test_features_of_real_speech_are_finite_per_frame_and_stack_every_layer(encoder, speech_3s):
    wave = prepare_wave(speech_3s)
    assert wave.dtype == np.float32 and len(wave) == 3 * SPEECH_SAMPLE_RATE
    feats = encoder.features(wave)
    assert feats.shape == (75, encoder.layers, encoder.dim) == (75, 2, 32)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert feats.std() > 0

    # The official path, step by step: CNN → interpolate to 75 → projection → encoder, capturing each layer.
    model = encoder.model
    values = torch.from_numpy(encoder.processor(wave, sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="np")
                              .input_values.astype(np.float32))
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple)
                                                                               else out))
             for layer in model.encoder.layers]
    try:
        with torch.inference_mode():
            cnn = model.feature_extractor(values).transpose(1, 2)  # [1, ~149 rows, channels]
            assert cnn.shape[1] == 149
            stretched = F.interpolate(cnn.transpose(1, 2), size=75, mode="linear", align_corners=True).transpose(1, 2)
            hidden, _ = model.feature_projection(stretched)
            last = model.encoder(hidden).last_hidden_state[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(captured) == encoder.layers
    torch.testing.assert_close(feats[:, -1], last, atol=1e-5, rtol=1e-5)  # the last stacked = the last hidden state
    for i, layer_out in enumerate(captured):  # layer i's output at index i: hidden_states[1:], in order
        torch.testing.assert_close(feats[:, i], layer_out[0], atol=1e-5, rtol=1e-5)


def test_loudness_normalisation_makes_a_quieter_take_give_the_same_features(encoder, speech_3s, tmp_path):
    original = read_wav(speech_3s)
    quiet = write_wav(tmp_path / "quiet.wav", Audio(original.samples * np.float32(0.3), SPEECH_SAMPLE_RATE))
    loud_wave, quiet_wave = prepare_wave(speech_3s), prepare_wave(quiet)
    for wave in (loud_wave, quiet_wave):
        assert abs(loudness_lufs(Audio(wave, SPEECH_SAMPLE_RATE)) - (-23.0)) < 0.2
    assert float(np.max(np.abs(loud_wave - quiet_wave))) < 2e-4  # a few 16-bit steps: the quieter copy's rounding
    loud, quiet_feats = encoder.features(loud_wave), encoder.features(quiet_wave)
    # the same features up to that rounding (a random tiny model amplifies it most at the quiet onset, frame 0)
    assert float((loud - quiet_feats).norm() / loud.norm()) < 1e-2
    assert float((loud - quiet_feats).abs().mean()) < 1e-2 * float(loud.abs().mean())
    # and a pure gain changes nothing at all: the feature extractor's per-take normalisation divides it out
    torch.testing.assert_close(encoder.features(loud_wave * np.float32(3.0)), loud, atol=1e-4, rtol=1e-4)


def test_prepare_wave_reads_a_videos_sound_track():
    wave = prepare_wave(media_file("talking-1.mp4"))  # AAC in MP4, 6.1 s
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / SPEECH_SAMPLE_RATE - 6.1) < 0.1
    assert abs(loudness_lufs(Audio(wave, SPEECH_SAMPLE_RATE)) - (-23.0)) < 0.2


def test_from_pretrained_loads_a_local_checkpoint(encoder, tmp_path):
    encoder.model.save_pretrained(tmp_path)
    encoder.processor.save_pretrained(tmp_path)
    loaded = SpeechEncoder.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    assert (loaded.layers, loaded.dim) == (encoder.layers, encoder.dim)
    wave = np.random.default_rng(3).standard_normal(SPEECH_SAMPLE_RATE).astype(np.float32) * 0.1
    torch.testing.assert_close(loaded.features(wave), encoder.features(wave))
