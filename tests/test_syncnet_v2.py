"""SyncNet v2 and the standard LSE-D / LSE-C (functions/models/syncnet_v2.py, functions/standard_lse.py).

The public `syncnet_v2.model` cannot be fetched here, so a random state dict with the public key names and
shapes (written out below from syncnet_python's `S`, not taken from the model code) stands in for it. A
random network cannot tell sync from no sync; the plumbing is tested instead: the windowing (exact shift
of the embeddings when the audio is shifted), the pipeline against a plain re-statement of syncnet_python's
evaluate(), and the offset search end to end with a stand-in network whose embeddings do match in sync.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from functions.models.syncnet_v2 import SyncNetV2, load_syncnet_v2
from functions.standard_lse import (
    WEIGHTS_ENV,
    mfcc_window,
    pcm16,
    standard_lse,
    syncnet_crop,
    syncnet_embeddings,
    syncnet_mfcc,
    syncnet_offset_distances,
    syncnet_track_crops,
    syncnet_weights_from_env,
)
from schemas.errors import VideostudioError

# syncnet_python SyncNetModel.S: Sequential index → conv weight shape (a BatchNorm of cout follows at index + 1).
AUDIO_CONVS = {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
               14: (256, 256, 3, 3), 18: (512, 256, 5, 4)}
LIP_CONVS = {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3), 11: (256, 256, 1, 3, 3),
             14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}


def public_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    for net, convs in (("netcnnaud", AUDIO_CONVS), ("netcnnlip", LIP_CONVS)):
        for idx, shape in convs.items():
            shapes[f"{net}.{idx}.weight"], shapes[f"{net}.{idx}.bias"] = shape, (shape[0],)
            bn(f"{net}.{idx + 1}", shape[0])
    for net in ("netfcaud", "netfclip"):
        shapes[f"{net}.0.weight"], shapes[f"{net}.0.bias"] = (512, 512), (512,)
        bn(f"{net}.1", 512)
        shapes[f"{net}.3.weight"], shapes[f"{net}.3.bias"] = (1024, 512), (1024,)
    return shapes


def random_public_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every public key; weights scaled by fan-in, BatchNorm statistics plausible."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in public_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:  # BatchNorm scale
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(random_public_state(), path)  # a bare state dict, as the public file is
    return path


@pytest.fixture(scope="module")
def model(weights_file: Path) -> SyncNetV2:
    torch.manual_seed(0)
    return load_syncnet_v2(weights_file)


# --- the network and its weights ----------------------------------------------------------------------

def test_layout_matches_the_public_state_dict(weights_file: Path) -> None:
    own = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    assert own == public_shapes()
    assert len(own) == 102 and sum(math.prod(s) for k, s in own.items() if "running" not in k
                                   and "num_batches" not in k) == 13_631_616
    loaded = load_syncnet_v2(weights_file)
    assert not loaded.training
    expected = random_public_state()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        assert loaded.forward_audio(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert loaded.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)


def test_old_files_without_batchnorm_counters_load(tmp_path: Path) -> None:
    state = {k: v for k, v in random_public_state(1).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.model")
    assert isinstance(load_syncnet_v2(tmp_path / "old.model"), SyncNetV2)


@pytest.mark.parametrize("damage", ["reshaped", "missing", "prefixed", "not_torch", "other_model"])
def test_a_wrong_file_fails_with_syncnet_weights_incompatible(tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bad.model"
    state = random_public_state(2)
    if damage == "reshaped":
        state["netcnnlip.0.weight"] = torch.zeros(96, 3, 5, 5, 5)
    elif damage == "missing":
        del state["netfcaud.3.bias"]
    elif damage == "prefixed":
        state = {f"__S__.{k}": v for k, v in state.items()}
    elif damage == "other_model":
        from functions.models.syncnet import LipSyncExpert

        state = LipSyncExpert(width=0.125).state_dict()
    if damage == "not_torch":
        bad.write_bytes(b"not a checkpoint at all")
    else:
        torch.save(state, bad)
    with pytest.raises(VideostudioError) as caught:
        load_syncnet_v2(bad)
    assert caught.value.code == "syncnet_weights_incompatible"
    if damage == "reshaped":
        assert "netcnnlip.0.weight" in caught.value.message
    if damage == "missing":
        assert "netfcaud.3.bias" in caught.value.message


def test_weights_from_env(monkeypatch: pytest.MonkeyPatch, weights_file: Path, tmp_path: Path) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert syncnet_weights_from_env() is None
    monkeypatch.setenv(WEIGHTS_ENV, "  ")
    assert syncnet_weights_from_env() is None
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_file))
    assert isinstance(syncnet_weights_from_env(), SyncNetV2)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.model"))
    with pytest.raises(VideostudioError) as caught:
        syncnet_weights_from_env()
    assert caught.value.code == "syncnet_weights_unavailable" and WEIGHTS_ENV in caught.value.message
    (tmp_path / "junk.model").write_bytes(b"\x00" * 64)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "junk.model"))
    with pytest.raises(VideostudioError) as caught:
        syncnet_weights_from_env()
    assert caught.value.code == "syncnet_weights_incompatible"


# --- crops ---------------------------------------------------------------------------------------------

def test_crop_is_run_pipelines_square() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    # box w 100, h 120: half-size 60, centre (150, 140); rows 140−60 … 140+60·1.8, cols 150 ± 60·1.4
    crop = syncnet_crop(frame, [100, 80, 200, 200])
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, cv2.resize(frame[80:248, 66:234], (224, 224)))
    # near the corner the frame is padded with grey 110
    corner = syncnet_crop(frame, [0, 0, 40, 40])
    assert np.all(corner[:20, :20] == 110)
    boxes = np.tile([100, 80, 200, 200], (7, 1))
    track = syncnet_track_crops([frame] * 7, boxes)
    assert track.shape == (7, 224, 224, 3) and all(np.array_equal(c, crop) for c in track)


# --- audio windowing -----------------------------------------------------------------------------------

def test_mfcc_has_four_columns_per_video_frame() -> None:
    rng = np.random.default_rng(1)
    for frames in (6, 25, 50):
        wav = (rng.standard_normal(640 * frames) * 0.1).astype(np.float32)
        mfcc = syncnet_mfcc(wav)
        assert mfcc.shape == (13, 4 * frames - 1)  # 1 + ceil((640·T − 400) / 160)
        assert mfcc_window(mfcc, frames - 6).shape == (13, 20)  # the last window syncnet_python scores fits
    # floats are quantised as ffmpeg writes pcm_s16le, and the MFCC is python_speech_features' on those samples
    from python_speech_features import mfcc as psf_mfcc

    assert np.array_equal(pcm16(np.array([0.5, -1.0, 1.0, 1e-5], np.float32)), np.array([16384, -32768, 32767, 0]))
    assert np.allclose(syncnet_mfcc(wav), psf_mfcc(pcm16(wav), 16000).T.astype(np.float32))
    # a change inside video frame t (samples 640t … 640t+639) reaches only the columns overlapping it, 4t−2 …
    # 4t+3, and 4t+4, whose first sample is pre-emphasised with the last changed one
    t, changed = 20, wav.copy()
    changed[640 * t:640 * (t + 1)] += 0.3
    touched = np.flatnonzero(np.any(syncnet_mfcc(changed) != mfcc, axis=0))
    assert list(touched) == list(range(4 * t - 2, 4 * t + 5))
    # a 5-frame window is 20 columns starting at 4t
    assert np.array_equal(mfcc_window(mfcc, 7), mfcc[:, 28:48])
    with pytest.raises(ValueError):
        mfcc_window(mfcc, 49)


# --- the random network: windowing and the pipeline -----------------------------------------------------

def clip(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothly moving random faces and noisy tones: (frames, 224, 224, 3) uint8 and 16 kHz float32."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (frames + 4, 28, 28, 3)).astype(np.float32)
    smooth = np.stack([base[i:i + 5].mean(0) for i in range(frames)])
    video = np.stack([cv2.resize(f, (224, 224), interpolation=cv2.INTER_CUBIC) for f in smooth])
    video = np.clip(video, 0, 255).astype(np.uint8)
    t = np.arange(640 * frames) / 16_000
    pitch = np.repeat(rng.uniform(150, 900, frames), 640)
    audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.shape)
    return video, audio.astype(np.float32)


def test_shifting_the_audio_shifts_the_audio_embeddings_exactly(model: SyncNetV2) -> None:
    video, audio = clip(30, seed=3)
    k, frames = 3, 26
    orig_v, orig_a = syncnet_embeddings(video[:frames], audio[:640 * frames], model)
    shift_v, shift_a = syncnet_embeddings(video[:frames], audio[640 * k:640 * (frames + k)], model, batch_size=7)
    windows = frames - 5
    assert orig_v.shape == shift_v.shape == (windows, 1024)
    assert torch.allclose(shift_v, orig_v, rtol=1e-4, atol=1e-4)
    # shifted audio window s is original window s + k (window 0 differs: pre-emphasis restarts at the cut)
    assert torch.allclose(shift_a[1:windows - k], orig_a[1 + k:windows], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shift_a[1:windows - k], orig_a[1:windows - k], rtol=1e-2, atol=1e-2)
    # … so the distance between video t and audio s moves by k: the offset curve of the pairs shifts by k
    d_orig, d_shift = torch.cdist(orig_v, orig_a), torch.cdist(shift_v, shift_a)
    assert torch.allclose(d_shift[:, 1:windows - k], d_orig[:, 1 + k:windows], rtol=1e-4, atol=1e-3)


def reference_evaluate(video_rgb: np.ndarray, audio: np.ndarray, net: SyncNetV2, vshift: int) -> tuple[int, float, float, np.ndarray]:
    """syncnet_python's evaluate() restated: (offset, conf, min dist, mdist over its shifts j)."""
    from python_speech_features import mfcc as psf_mfcc

    pcm = np.clip(np.rint(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    im = torch.from_numpy(video_rgb[..., ::-1].astype(float)).float()  # BGR as cv2.imread gives
    imtv = im.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, T, 224, 224)
    cct = torch.from_numpy(psf_mfcc(pcm, 16000).T.astype(float)).float()[None, None]
    last = min(len(video_rgb), len(pcm) // 640) - 5
    with torch.no_grad():
        im_feat = net.forward_lip(torch.cat([imtv[:, :, v:v + 5] for v in range(last)]))
        cc_feat = net.forward_audio(torch.cat([cct[:, :, :, 4 * v:4 * v + 20] for v in range(last)]))
    padded = F.pad(cc_feat, (0, 0, vshift, vshift))
    rows = [F.pairwise_distance(im_feat[[i]].repeat(2 * vshift + 1, 1), padded[i:i + 2 * vshift + 1])
            for i in range(last)]
    mdist = torch.stack(rows, 1).mean(1)
    minval, minidx = torch.min(mdist, 0)
    return int(vshift - minidx), float(torch.median(mdist) - minval), float(minval), mdist.numpy()


def test_standard_lse_matches_syncnet_pythons_evaluate(model: SyncNetV2) -> None:
    video, audio = clip(24, seed=4)
    audio = audio[:640 * 24 + 333]  # audio a little longer than the video, as decoded files often are
    metrics = standard_lse(video, audio, model, vshift=15)
    offset, conf, min_dist, mdist = reference_evaluate(video, audio, model, vshift=15)
    assert len(metrics.distances) == 31 and metrics.windows == 19 and metrics.vshift == 15 and metrics.fps == 25.0
    assert metrics.scorer == "syncnet_v2" and metrics.comparable_with_published
    assert np.allclose(metrics.distances, mdist[::-1], rtol=1e-4)
    assert metrics.offset_frames == offset
    assert metrics.min_dist == pytest.approx(min_dist, rel=1e-4)
    assert metrics.confidence == pytest.approx(conf, rel=1e-3, abs=1e-4)
    # channel order matters to the network: the same crops in the other order embed otherwise
    as_given, _ = syncnet_embeddings(video[:7], audio, model)
    swapped, _ = syncnet_embeddings(np.ascontiguousarray(video[:7, ..., ::-1]), audio, model)
    assert not torch.allclose(as_given, swapped, rtol=1e-3, atol=1e-3)


def test_too_short_and_malformed_inputs(model: SyncNetV2) -> None:
    video, audio = clip(8, seed=5)
    with pytest.raises(VideostudioError) as caught:
        standard_lse(video[:5], audio, model)
    assert caught.value.code == "video_too_short"
    with pytest.raises(VideostudioError):
        standard_lse(video, audio[:640 * 5], model)
    with pytest.raises(ValueError):
        standard_lse(video[:, :96, :96], audio, model)
    with pytest.raises(ValueError):
        standard_lse(video.astype(np.float32), audio, model)
    assert standard_lse(video, audio, model, vshift=2).windows == 3


# --- the offset search end to end, with a network that does see sync -----------------------------------

class BlinkSyncNet(SyncNetV2):
    """A stand-in whose embeddings agree in sync: the lip embedding of a window is which of its 5 frames are
    bright in channel 0 (blue, since the input is BGR) at the 0…255 scale; the audio one is which of its
    5 frames are loud, read from log-energy c0 of MFCC columns 4i and 4i+1 (those inside frame i)."""

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        assert video.shape[1:] == (3, 5, 224, 224)
        return (video[:, 0].mean(dim=(2, 3)) > 127.5).float()

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        assert mfcc.shape[1:] == (1, 13, 20)
        c0 = mfcc[:, 0, 0].unflatten(1, (5, 4))[:, :, :2].mean(2)
        return (c0 > 19.0).float()  # loud tone ≈ 24, quiet noise ≈ 13 on 16-bit samples


def blinking_clip(pattern: np.ndarray, lag: int, frames: int, margin: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Video frame t shows pattern[margin + t − lag] (blue or black), audio frame s plays pattern[margin + s]
    (a tone or faint noise): the picture lags the sound by `lag` frames."""
    rng = np.random.default_rng(7)
    video = np.zeros((frames, 224, 224, 3), np.uint8)
    for t in range(frames):
        video[t, ..., 2] = 230 if pattern[margin + t - lag] else 10  # RGB: blue
    t = np.arange(640) / 16_000
    tone, hush = 0.5 * np.sin(2 * np.pi * 440 * t), 0.001 * rng.standard_normal(640)
    audio = np.concatenate([tone if pattern[margin + s] else hush for s in range(frames)])
    return video, audio.astype(np.float32)


@pytest.mark.parametrize("lag", [0, 3, -5, 11])
def test_offset_search_finds_the_lag(lag: int) -> None:
    pattern = np.random.default_rng(11).integers(0, 2, 120).astype(bool)
    video, audio = blinking_clip(pattern, lag, frames=60)
    metrics = standard_lse(video, audio, BlinkSyncNet(), vshift=15)
    assert metrics.offset_frames == lag  # LipSyncMetrics: k > 0 means video frame t matches audio frame t − k
    best = metrics.distances[lag + 15]
    assert best == pytest.approx(min(metrics.distances)) and metrics.confidence > 0.5
    # in sync every scored pair is identical: only the |lag| zero-padded pairs add distance, each ≤ ‖(1,1,1,1,1)‖
    assert best <= abs(lag) / metrics.windows * math.sqrt(5) + 1e-4
    assert metrics.windows == 55


def test_offset_distances_on_planted_embeddings() -> None:
    gen = torch.Generator().manual_seed(5)
    video = torch.randn(40, 8, generator=gen)
    k = 4
    audio = torch.roll(video, shifts=-k, dims=0)  # audio[s] = video[s + k]: video t matches audio t − k
    curve = syncnet_offset_distances(video, audio, vshift=6)
    assert curve.shape == (13,) and int(np.argmin(curve)) == k + 6
    # the curve is syncnet_python's mean over all windows, zero-padded audio out of range
    for offset in range(-6, 7):
        expected = np.mean([float(torch.linalg.vector_norm(video[t] - (audio[t - offset] if 0 <= t - offset < 40
                                                                        else torch.zeros(8)) + 1e-6))
                            for t in range(40)])
        assert curve[offset + 6] == pytest.approx(expected, rel=1e-5)
