"""Wav2Lip generator, lip-sync expert, mel front end and LSE-style sync metrics (CPU, small widths).

The key-layout tests check the models against an independent statement of the public checkpoints'
layout (the tables below, written from Rudrabha/Wav2Lip's models/wav2lip.py, models/syncnet.py and
models/conv.py), not against the models themselves.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from functions.lipsync_metrics import (
    LipSyncMetrics,
    lip_sync_metrics,
    lower_half,
)
from functions.models.syncnet import LipSyncExpert, load_expert, stack_window, sync_loss, sync_probability
from functions.models.wav2lip import Wav2LipGenerator, load_generator, masked_input, parameter_count
from functions.models.wav2lip_audio import load_wav, mel_window, melspectrogram
from schemas.errors import VideostudioError
from tests.av_corpus import FPS, SAMPLES_PER_FRAME, speech_envelope, talking_lower_halves
from tests.real_media import media_file

# name  kind  in  out  kernel.  cbr: Conv2d + BatchNorm2d in `conv_block`; tbr: ConvTranspose2d + BatchNorm2d;
# conv: a bare Conv2d.
#
# The two audio encoders share their first 11 layers; the generator then goes 256 → 512, the expert
# has one more 256-channel residual layer first.
AUDIO_ENCODER_FRONT = """
audio_encoder.0 cbr 1 32 3
audio_encoder.1 cbr 32 32 3
audio_encoder.2 cbr 32 32 3
audio_encoder.3 cbr 32 64 3
audio_encoder.4 cbr 64 64 3
audio_encoder.5 cbr 64 64 3
audio_encoder.6 cbr 64 128 3
audio_encoder.7 cbr 128 128 3
audio_encoder.8 cbr 128 128 3
audio_encoder.9 cbr 128 256 3
audio_encoder.10 cbr 256 256 3
"""

GENERATOR_LAYOUT = AUDIO_ENCODER_FRONT + """
face_encoder_blocks.0.0 cbr 6 16 7
face_encoder_blocks.1.0 cbr 16 32 3
face_encoder_blocks.1.1 cbr 32 32 3
face_encoder_blocks.1.2 cbr 32 32 3
face_encoder_blocks.2.0 cbr 32 64 3
face_encoder_blocks.2.1 cbr 64 64 3
face_encoder_blocks.2.2 cbr 64 64 3
face_encoder_blocks.2.3 cbr 64 64 3
face_encoder_blocks.3.0 cbr 64 128 3
face_encoder_blocks.3.1 cbr 128 128 3
face_encoder_blocks.3.2 cbr 128 128 3
face_encoder_blocks.4.0 cbr 128 256 3
face_encoder_blocks.4.1 cbr 256 256 3
face_encoder_blocks.4.2 cbr 256 256 3
face_encoder_blocks.5.0 cbr 256 512 3
face_encoder_blocks.5.1 cbr 512 512 3
face_encoder_blocks.6.0 cbr 512 512 3
face_encoder_blocks.6.1 cbr 512 512 1
audio_encoder.11 cbr 256 512 3
audio_encoder.12 cbr 512 512 1
face_decoder_blocks.0.0 cbr 512 512 1
face_decoder_blocks.1.0 tbr 1024 512 3
face_decoder_blocks.1.1 cbr 512 512 3
face_decoder_blocks.2.0 tbr 1024 512 3
face_decoder_blocks.2.1 cbr 512 512 3
face_decoder_blocks.2.2 cbr 512 512 3
face_decoder_blocks.3.0 tbr 768 384 3
face_decoder_blocks.3.1 cbr 384 384 3
face_decoder_blocks.3.2 cbr 384 384 3
face_decoder_blocks.4.0 tbr 512 256 3
face_decoder_blocks.4.1 cbr 256 256 3
face_decoder_blocks.4.2 cbr 256 256 3
face_decoder_blocks.5.0 tbr 320 128 3
face_decoder_blocks.5.1 cbr 128 128 3
face_decoder_blocks.5.2 cbr 128 128 3
face_decoder_blocks.6.0 tbr 160 64 3
face_decoder_blocks.6.1 cbr 64 64 3
face_decoder_blocks.6.2 cbr 64 64 3
output_block.0 cbr 80 32 3
output_block.1 conv 32 3 1
"""

EXPERT_LAYOUT = AUDIO_ENCODER_FRONT + """
face_encoder.0 cbr 15 32 7
face_encoder.1 cbr 32 64 5
face_encoder.2 cbr 64 64 3
face_encoder.3 cbr 64 64 3
face_encoder.4 cbr 64 128 3
face_encoder.5 cbr 128 128 3
face_encoder.6 cbr 128 128 3
face_encoder.7 cbr 128 128 3
face_encoder.8 cbr 128 256 3
face_encoder.9 cbr 256 256 3
face_encoder.10 cbr 256 256 3
face_encoder.11 cbr 256 512 3
face_encoder.12 cbr 512 512 3
face_encoder.13 cbr 512 512 3
face_encoder.14 cbr 512 512 3
face_encoder.15 cbr 512 512 3
face_encoder.16 cbr 512 512 1
audio_encoder.11 cbr 256 256 3
audio_encoder.12 cbr 256 512 3
audio_encoder.13 cbr 512 512 1
"""


def layout_shapes(table: str) -> dict[str, tuple[int, ...]]:
    """Every key of a checkpoint in `table`, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in filter(str.strip, table.splitlines()):
        name, kind, cin, cout, k = line.split()
        cin, cout, k = int(cin), int(cout), int(k)
        if kind == "conv":
            shapes |= {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}
            continue
        weight = (cin, cout, k, k) if kind == "tbr" else (cout, cin, k, k)  # ConvTranspose2d stores (in, out, …)
        shapes |= {f"{name}.conv_block.0.weight": weight, f"{name}.conv_block.0.bias": (cout,)}
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.conv_block.1.{stat}"] = (cout,)
        shapes[f"{name}.conv_block.1.num_batches_tracked"] = ()
    return shapes


def random_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors for `shapes`, keyed as nn.DataParallel saves them (the public files carry `module.`)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state["module." + key] = torch.tensor(1234, dtype=torch.long)
        elif key.endswith("running_var"):
            state["module." + key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state["module." + key] = torch.randn(shape, generator=gen)
    return state


def trainable_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))


@pytest.fixture(scope="module")
def expert_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = random_checkpoint(layout_shapes(EXPERT_LAYOUT))
    path = tmp_path_factory.mktemp("weights") / "lipsync_expert.pth"
    torch.save({"state_dict": state, "global_step": 10, "global_epoch": 1}, path)
    return path, state


# --- checkpoint layout and loading ---------------------------------------------------------------

def test_public_generator_checkpoint_loads_strictly(tmp_path: Path) -> None:
    shapes = layout_shapes(GENERATOR_LAYOUT)
    state = random_checkpoint(shapes)
    path = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 1}, path)

    model = load_generator(path)
    assert not model.training
    assert parameter_count(model) == trainable_count(shapes) == 36_298_035
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    for key in ("face_encoder_blocks.0.0.conv_block.0.weight", "face_decoder_blocks.3.0.conv_block.0.weight",
                "output_block.1.bias", "audio_encoder.12.conv_block.1.running_var"):
        assert torch.equal(loaded[key], state["module." + key])


def test_public_expert_checkpoint_loads_strictly(expert_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = expert_file
    shapes = layout_shapes(EXPERT_LAYOUT)
    model = load_expert(path)
    assert parameter_count(model) == trainable_count(shapes)
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    assert torch.equal(loaded["face_encoder.1.conv_block.0.weight"], state["module.face_encoder.1.conv_block.0.weight"])
    # a bare state dict without the prefix, in memory, loads the same
    bare = {k.removeprefix("module."): v for k, v in state.items()}
    assert torch.equal(load_expert(bare).state_dict()["audio_encoder.13.conv_block.0.bias"],
                       bare["audio_encoder.13.conv_block.0.bias"])


def _leave_mark(path: str) -> None:
    Path(path).write_text("code ran while loading a checkpoint")


class RunsCodeOnLoad:
    """Unpickling this calls `_leave_mark`: a weights-only load must refuse it before anything runs."""

    def __init__(self, mark: Path) -> None:
        self.mark = str(mark)

    def __reduce__(self) -> tuple:
        return _leave_mark, (self.mark,)


@pytest.mark.parametrize("damage", ["truncated", "renamed", "reshaped", "missing", "text", "pickled_object",
                                    "wrong_width"])
def test_incompatible_checkpoints_are_refused(damage: str, tmp_path: Path,
                                              expert_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = expert_file
    bad = tmp_path / "bad.pth"
    named = "module.audio_encoder.11.conv_block.0.weight"
    width = 1.0
    if damage == "truncated":
        data = path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        bad.write_text("not a checkpoint\n")
    elif damage == "pickled_object":
        torch.save({"state_dict": {"face_encoder.0.conv_block.0.weight": RunsCodeOnLoad(tmp_path / "mark")}}, bad)
    else:
        changed = dict(state)
        if damage == "renamed":
            changed["module.audio_encoder.11.conv_block.0.weights"] = changed.pop(named)
        elif damage == "reshaped":
            changed[named] = torch.zeros(256, 256, 3, 1)
        elif damage == "missing":
            del changed[named]
        elif damage == "wrong_width":
            width = 0.5
        torch.save({"state_dict": changed}, bad)

    with pytest.raises(VideostudioError) as caught:
        load_expert(bad, width=width)
    assert caught.value.code == "avatar_weights_incompatible"
    assert not (tmp_path / "mark").exists()
    message = caught.value.message
    if damage in ("renamed", "reshaped", "missing"):
        assert named.removeprefix("module.") in message
    if damage == "renamed":
        assert "1 missing" in message and "1 unexpected" in message and "audio_encoder.11.conv_block.0.weights" in message
    if damage == "reshaped":
        assert "[256, 256, 3, 1]" in message and "[256, 256, 3, 3]" in message
    if damage == "wrong_width":
        assert "another shape" in message and "face_encoder.0.conv_block.0.weight" in message


def test_generator_refuses_an_expert_checkpoint(expert_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(VideostudioError) as caught:
        load_generator(expert_file[0], width=0.125)
    assert caught.value.code == "avatar_weights_incompatible"
    assert "face_encoder_blocks.0.0.conv_block.0.weight" in caught.value.message  # names the first missing keys


def test_absent_file_and_offline_hub_are_model_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VideostudioError) as caught:
        load_generator(tmp_path / "nowhere.pth")
    assert caught.value.code == "model_unavailable"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    started = time.monotonic()
    with pytest.raises(VideostudioError) as caught:
        load_expert("videostudio-test/not-a-repo:lipsync_expert.pth")
    assert caught.value.code == "model_unavailable"
    assert "HF_HUB_OFFLINE" in caught.value.message and "not-a-repo" in caught.value.message
    assert time.monotonic() - started < 10  # the cache is looked at; no network wait


# --- shapes ----------------------------------------------------------------------------------------

def test_generator_shapes_range_and_time_batching() -> None:
    torch.manual_seed(0)
    model = Wav2LipGenerator(width=0.25).eval()
    target, reference = torch.rand(4, 3, 96, 96), torch.rand(4, 3, 96, 96)
    faces = masked_input(target, reference)
    assert faces.shape == (4, 6, 96, 96) and faces[:, :3, 48:].abs().sum() == 0
    assert torch.equal(faces[:, :3, :48], target[:, :, :48]) and torch.equal(faces[:, 3:], reference)
    mel = torch.rand(4, 1, 80, 16) * 8 - 4
    with torch.no_grad():
        out = model(mel, faces)
        assert out.shape == (4, 3, 96, 96)
        assert out.min() > 0 and out.max() < 1

        # (B, T) batching as the original: clip b, frame t of the 5-D output is the 4-D output of that frame
        clips = faces.reshape(2, 2, 6, 96, 96).permute(0, 2, 1, 3, 4)  # (B=2, 6, T=2, 96, 96)
        mels = mel.reshape(2, 2, 1, 80, 16)
        timed = model(mels, clips)
    assert timed.shape == (2, 3, 2, 96, 96)
    assert torch.allclose(timed[1, :, 0], out[2], atol=1e-6) and torch.allclose(timed[0, :, 1], out[1], atol=1e-6)

    # the audio path reaches the output (in training mode: batch statistics undo the shrinking of
    # activations through default-initialised layers, which running statistics of 0 and 1 keep)
    model.train()
    with torch.no_grad():
        assert (model(mel.flip(0), faces) - model(mel, faces)).abs().max() > 1e-3


def test_expert_embeddings_are_unit_and_probabilities_in_range() -> None:
    torch.manual_seed(0)
    model = LipSyncExpert(width=0.25).eval()
    frames = torch.rand(3, 5, 3, 48, 96)
    faces = stack_window(frames)
    assert faces.shape == (3, 15, 48, 96) and torch.equal(faces[1, 3:6], frames[1, 1])
    with torch.no_grad():
        audio, video = model(torch.rand(3, 1, 80, 16) * 8 - 4, faces)
    assert audio.shape == video.shape == (3, model.embedding_dim) and model.embedding_dim == 128
    assert torch.allclose(audio.norm(dim=1), torch.ones(3)) and torch.allclose(video.norm(dim=1), torch.ones(3))
    assert audio.min() >= 0 and video.min() >= 0  # after the last ReLU: cosine is a probability
    p = sync_probability(audio, video)
    assert ((p >= 0) & (p <= 1)).all()
    assert torch.isfinite(sync_loss(audio, video, torch.tensor([1, 0, 1])))
    with pytest.raises(ValueError):
        model.embed_faces(torch.rand(1, 15, 96, 96))


# --- mel front end ---------------------------------------------------------------------------------

def reference_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's features written out independently: librosa's own mel spectrogram of the pre-emphasised
    signal, then the dB and normalisation formulas of its hparams."""
    import librosa

    emphasised = np.concatenate([wav[:1], wav[1:] - 0.97 * wav[:-1]])
    mel = librosa.feature.melspectrogram(y=emphasised, sr=16000, n_fft=800, hop_length=200, win_length=800,
                                         window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=80,
                                         fmin=55, fmax=7600, htk=False, norm="slaney")
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_matches_an_independent_computation() -> None:
    wav = load_wav(media_file("speech-en.wav"))[16000 * 3:16000 * 6]
    rng = np.random.default_rng(1)
    t = np.arange(20000) / 16000
    synthetic = (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    for signal in (wav, synthetic):
        ours = melspectrogram(signal)
        expected = reference_mel(signal.astype(np.float64))
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        assert np.abs(ours - expected).max() < 1e-4
        assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.5  # spread over the range, not clipped flat


def test_mel_column_rate_and_a_tone_lands_in_its_band() -> None:
    import librosa

    for seconds in (1.0, 2.0, 3.5):
        assert melspectrogram(np.zeros(int(16000 * seconds), np.float32)).shape == (80, int(80 * seconds) + 1)
    silence = melspectrogram(np.zeros(16000, np.float32))
    assert np.all(silence == -4)  # below the −100 dB floor
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32) * 0.5
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600, htk=False)[1:-1]
    loudest = int(np.argmax(melspectrogram(tone)[:, 40]))
    assert abs(loudest - int(np.argmin(np.abs(centres - 1000)))) <= 1


def test_mel_window_starts_at_80_i_over_fps() -> None:
    mel = np.arange(80 * 400, dtype=np.float32).reshape(80, 400)
    for fps in (25, 30, 29.97):
        for i in (0, 1, 2, 3, 7, 11, 50, 100):
            start = int(80 * i / fps)
            window = mel_window(mel, i, fps)
            assert window.shape == (80, 16) and np.array_equal(window, mel[:, start:start + 16])
    assert int(80 * 3 / 30) == 8 and np.array_equal(mel_window(mel, 3, 30)[:, 0], mel[:, 8])
    # past the end: the last 16 columns (Wav2Lip's inference), never a short window
    assert np.array_equal(mel_window(mel, 124, 25), mel[:, 384:400])
    with pytest.raises(VideostudioError) as caught:
        mel_window(mel[:, :10], 0)
    assert caught.value.code == "audio_too_short"


# --- lip-sync metrics --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_expert() -> tuple[LipSyncExpert, np.ndarray, torch.Tensor, int]:
    """A width-1/8 expert trained for 200 steps (cosine + BCE, as Wav2Lip's) on the first 26 s of real
    speech and a face whose mouth follows it; the rest of the minute is held out."""
    wav = load_wav(media_file("speech-en.wav"))
    envelope = speech_envelope(wav)
    faces = talking_lower_halves(envelope)
    mel = melspectrogram(wav)
    windows = torch.from_numpy(np.stack([mel_window(mel, t, FPS) for t in range(len(envelope))])).unsqueeze(1)
    train_frames = 650
    last = train_frames - 5
    rng = np.random.default_rng(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expert = LipSyncExpert(width=0.125)
    optimiser = torch.optim.Adam(expert.parameters(), lr=1e-3)
    expert.train()
    batch = 32
    for _ in range(200):
        starts = rng.integers(0, last, batch)
        in_sync = rng.integers(0, 2, batch)
        # off-sync audio: half near (1-8 frames away, the hard cases), half anywhere else in the clip
        near = np.clip(starts + rng.integers(1, 9, batch) * rng.choice([-1, 1], batch), 0, last - 1)
        far = (starts + rng.integers(1, last, batch)) % last
        wrong = np.where(rng.random(batch) < 0.5, near, far)
        wrong = np.where(wrong == starts, (starts + 1) % last, wrong)
        audio_at = np.where(in_sync == 1, starts, wrong)
        face_windows = torch.stack([faces[s:s + 5].flatten(0, 1) for s in starts])
        audio, video = expert(windows[torch.from_numpy(audio_at)], face_windows)
        loss = sync_loss(audio, video, torch.from_numpy(in_sync))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return expert.eval(), wav, faces, train_frames


@pytest.mark.parametrize("shift", list(range(-6, 7)))
def test_offset_estimator_recovers_a_known_shift(shift: int, trained_expert) -> None:
    expert, wav, faces, train_frames = trained_expert
    start, length = train_frames + 20, 120  # held-out speech
    # video frame j shows the mouth of audio frame j − shift: the picture lags the sound by `shift`
    video = faces[start - shift:start - shift + length]
    audio = wav[start * SAMPLES_PER_FRAME:(start + length) * SAMPLES_PER_FRAME]
    metrics = lip_sync_metrics(expert, video, melspectrogram(audio), fps=FPS)
    assert isinstance(metrics, LipSyncMetrics) and metrics.scorer == "videostudio_expert"
    assert not metrics.comparable_with_published
    assert len(metrics.distances) == 31 and metrics.windows == length - 4
    assert abs(metrics.offset_frames - shift) <= 1, metrics.distances
    assert metrics.confidence > 0 and metrics.min_dist == min(metrics.distances)


def test_metrics_refuse_a_clip_too_short_for_the_offsets() -> None:
    expert = LipSyncExpert(width=0.125)
    with pytest.raises(VideostudioError) as caught:
        lip_sync_metrics(expert, torch.rand(12, 3, 48, 96), melspectrogram(np.zeros(16000, np.float32)))
    assert caught.value.code == "video_too_short"
    assert lower_half(torch.rand(2, 3, 96, 96)).shape == (2, 3, 48, 96)


