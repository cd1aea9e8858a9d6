"""Wav2Lip training loops (CPU, small widths) on a synthetic audio-visual pair: real speech and a swaying
face whose mouth follows it (tests/av_corpus.py).

Everything runs on one thread: the loops are deterministic at a fixed thread count, and on a shared
2-core machine one thread is several times faster than two.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from functions.lora_training import LoopHooks
from functions.models.syncnet import LipSyncExpert
from functions.models.wav2lip import Wav2LipGenerator
from functions.models.wav2lip_audio import load_wav, mel_window, melspectrogram
from functions.models.wav2lip_disc import VisualQualityDiscriminator, load_discriminator
from functions.wav2lip_training import (
    GAN_WEIGHT,
    ExpertConfig,
    GeneratorConfig,
    GeneratorQuality,
    WindowSet,
    draw_negatives,
    evaluate_expert,
    evaluate_generator,
    generate,
    seeded,
    train_expert,
    train_generator,
)
from schemas.errors import VideostudioError
from tests.av_corpus import FPS, frame_windows, speech_envelope, talking_faces
from tests.real_media import media_file

DRIFT_PX = 3  # the head sways: a reference frame from another moment is not aligned with the target


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(faces (N, 3, 96, 96), per-frame mel windows (N, 80, 16)) for the minute of speech."""
    wav = load_wav(media_file("speech-en.wav"))
    envelope = speech_envelope(wav)
    mel = melspectrogram(wav)
    mels = torch.from_numpy(np.stack([mel_window(mel, t, FPS) for t in range(len(envelope))]))
    return talking_faces(envelope, drift_px=DRIFT_PX), mels


def windows(corpus, start: int, stop: int, *, references: bool = True) -> WindowSet:
    return frame_windows(*corpus, start, stop, with_references=references)


def built(cls, width: float, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(width)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Killed(Exception):
    """The worker dies here."""


# --- learning ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_expert(corpus):
    """A width-1/8 expert, 6 epochs over 26 s of the clip; validated on 8 s further on."""
    expert = built(LipSyncExpert, 0.125, 0)
    val = windows(corpus, 700, 900, references=False)
    before = evaluate_expert(expert, val, ExpertConfig(batch_size=32))
    report = train_expert(expert, windows(corpus, 0, 650, references=False), val,
                          config=ExpertConfig(epochs=6, batch_size=32, learning_rate=2e-3, seed=0, checkpoint_every=1000))
    return expert, report, before


def test_expert_val_accuracy_rises_above_chance(trained_expert) -> None:
    expert, report, (loss_before, accuracy_before) = trained_expert
    history = report.history
    assert len(history["val_accuracy"]) == len(history["train_accuracy"]) == len(history["val_loss"]) == 6
    assert len(history["step_loss"]) == report.steps == 6 * 21  # ⌈650 / 32⌉ steps per epoch
    assert abs(accuracy_before - 0.5) < 0.05  # untrained: chance (every window in and out of sync)
    # held-out accuracy swings by several points from epoch to epoch at this size: judge the last three
    last = history["val_accuracy"][-3:]
    assert max(last) >= 0.62 and np.mean(last) >= 0.58, history["val_accuracy"]
    assert report.val_loss < min(loss_before, np.log(2)) - 0.05  # better than chance, not only miscalibrated
    assert np.mean(history["train_loss"][-2:]) < np.mean(history["train_loss"][:1]) - 0.1
    assert report.converged == (report.val_loss <= report.converged_loss) and not expert.training


@pytest.fixture(scope="module")
def trained_generator(corpus, trained_expert):
    """A width-1/8 generator, 300 steps of one window (5 frames) on 5 s of the clip, with the expert
    reporting sync (not converged, so not in the loss)."""
    generator = built(Wav2LipGenerator, 0.125, 0)
    expert = trained_expert[0]
    config = GeneratorConfig(epochs=3, max_steps=300, batch_size=1, learning_rate=3e-3, checkpoint_every=1000)
    report = train_generator(generator, windows(corpus, 0, 120), windows(corpus, 950, 990), expert=expert,
                             expert_converged=False, config=config)
    return generator, report


def test_generator_beats_copying_the_reference_on_held_out_windows(corpus, trained_expert, trained_generator) -> None:
    generator, report = trained_generator
    test = windows(corpus, 1200, 1300)
    quality = evaluate_generator(generator, test)
    assert isinstance(quality, GeneratorQuality) and quality.windows == 100
    assert quality.l1 < 0.85 * quality.reference_l1, quality
    assert quality.quality_basis == "reconstruction" and quality.sync_ratio is None
    assert quality.quality == quality.reconstruction_gain == pytest.approx(
        max(0.0, 1 - quality.mouth_l1 / quality.mouth_reference_l1))

    history = report.history
    assert report.steps == 300 and len(history["step_l1"]) == len(history["step_sync"]) == 300
    assert len(history["val_l1"]) == len(history["val_sync"]) == 2 and report.sync_on_step is None
    assert history["step_loss"] == history["step_l1"]  # sync reported, not in the loss: the expert has not converged
    assert report.val_l1 < history["val_l1"][0] < np.mean(history["step_l1"][:10])

    # scored against the expert as if converged: the sync margins are filled in and bounded
    scored = evaluate_generator(generator, test, expert=trained_expert[0], expert_converged=True)
    assert scored.real_sync_margin is not None and scored.real_sync_margin > 0
    assert scored.l1 == quality.l1
    if scored.sync_ratio is not None:
        assert scored.quality == pytest.approx((scored.reconstruction_gain * scored.sync_ratio) ** 0.5)


# --- checkpoints -------------------------------------------------------------------------------

def recorder(kill_at: int | None = None) -> tuple[LoopHooks, dict[int, bytes]]:
    """Hooks that keep every checkpoint; with `kill_at` the worker dies right after writing that one."""
    saved: dict[int, bytes] = {}

    def save(step: int, data: bytes) -> None:
        saved[step] = data
        if step == kill_at:
            raise Killed

    return LoopHooks(save_checkpoint=save), saved


EXPERT_RESUME = ExpertConfig(epochs=2, batch_size=4, grad_accumulation=2, learning_rate=1e-3, checkpoint_every=2,
                             seed=3)


def test_expert_resumed_after_a_kill_equals_an_uninterrupted_run(corpus) -> None:
    train, val = windows(corpus, 0, 21, references=False), windows(corpus, 30, 40, references=False)
    straight = built(LipSyncExpert, 0.0625, 0)
    report = train_expert(straight, train, val, config=EXPERT_RESUME)
    assert report.steps == 6  # 21 windows → 20 (a last micro-batch of one is left out): steps of 8, 8, 4

    hooks, saved = recorder(kill_at=2)
    killed = built(LipSyncExpert, 0.0625, 0)
    with pytest.raises(Killed):
        train_expert(killed, train, val, config=EXPERT_RESUME, hooks=hooks)
    resumed = built(LipSyncExpert, 0.0625, 99)  # a fresh process: other weights until the checkpoint loads
    again = train_expert(resumed, train, val, config=EXPERT_RESUME, resume=saved[2])

    assert states_equal(resumed, straight)
    assert again.history == report.history and again.val_loss == report.val_loss


def test_generator_with_expert_and_gan_resumed_after_a_kill_equals_an_uninterrupted_run(corpus) -> None:
    train, val = windows(corpus, 0, 6), windows(corpus, 40, 43)
    config = GeneratorConfig(epochs=2, batch_size=1, grad_accumulation=2, learning_rate=1e-3, checkpoint_every=2,
                             sync_switch_loss=None, gan_weight=GAN_WEIGHT, seed=5)
    expert = built(LipSyncExpert, 0.0625, 1)

    def run(seed: int, **kwargs):
        generator = built(Wav2LipGenerator, 0.0625, seed)
        discriminator = built(VisualQualityDiscriminator, 0.0625, seed)
        report = train_generator(generator, train, val, expert=expert, expert_converged=True,
                                 discriminator=discriminator, config=config, **kwargs)
        return generator, discriminator, report

    generator, discriminator, report = run(0)
    assert report.steps == 6 and report.sync_on_step == 0 and report.gan
    assert {"step_l1", "step_sync", "step_gan", "step_disc_real", "step_disc_fake", "val_l1", "val_sync"} <= set(
        report.history)
    first = report.history
    assert first["step_loss"][0] == pytest.approx(0.9 * first["step_l1"][0] + 0.03 * first["step_sync"][0]
                                                  + 0.07 * first["step_gan"][0])

    hooks, saved = recorder(kill_at=2)
    with pytest.raises(Killed):
        run(0, hooks=hooks)
    resumed_generator, resumed_discriminator, again = run(42, resume=saved[2])
    assert states_equal(resumed_generator, generator) and states_equal(resumed_discriminator, discriminator)
    assert again.history == report.history


def test_cancel_between_steps_leaves_the_last_checkpoint_whole(corpus) -> None:
    train, val = windows(corpus, 0, 21, references=False), windows(corpus, 30, 40, references=False)
    straight = built(LipSyncExpert, 0.0625, 0)
    report = train_expert(straight, train, val, config=EXPERT_RESUME)

    class Cancelled(Exception):
        pass

    saved: dict[int, bytes] = {}

    def on_step(state, total, loss, rate) -> None:
        if state.step == 5:
            raise Cancelled  # a cancel request seen by the stage's progress callback

    hooks = LoopHooks(on_step=on_step, save_checkpoint=lambda step, data: saved.__setitem__(step, bytes(data)))
    cancelled = built(LipSyncExpert, 0.0625, 0)
    with pytest.raises(Cancelled):
        train_expert(cancelled, train, val, config=EXPERT_RESUME, hooks=hooks)
    assert sorted(saved) == [2, 4]  # nothing written for the cancelled step
    assert not cancelled.training  # the models are left in eval mode even when a hook raises
    resumed = built(LipSyncExpert, 0.0625, 7)
    again = train_expert(resumed, train, val, config=EXPERT_RESUME, resume=saved[4])
    assert states_equal(resumed, straight) and again.history == report.history


def test_a_checkpoint_of_another_run_or_with_code_is_refused(corpus, tmp_path) -> None:
    train, val = windows(corpus, 0, 21, references=False), windows(corpus, 30, 40, references=False)
    hooks, saved = recorder()
    train_expert(built(LipSyncExpert, 0.0625, 0), train, val, config=EXPERT_RESUME, hooks=hooks)
    other = replace(EXPERT_RESUME, batch_size=2)
    with pytest.raises(VideostudioError) as caught:
        train_expert(built(LipSyncExpert, 0.0625, 0), train, val, config=other, resume=saved[6])
    assert caught.value.code == "checkpoint_incompatible" and "batch_size" in caught.value.message

    buffer = io.BytesIO()
    torch.save({"format": 1, "payload": Killed()}, buffer)  # an arbitrary object: a weights-only load refuses it
    with pytest.raises(VideostudioError) as refused:
        train_expert(built(LipSyncExpert, 0.0625, 0), train, val, config=EXPERT_RESUME, resume=buffer.getvalue())
    assert refused.value.code == "checkpoint_incompatible" and "weights only" in refused.value.message


# --- gradient accumulation, precision, negatives ---------------------------------------------

def one_step(corpus, *, batch_size: int, grad_accumulation: int, freeze_batchnorm: bool):
    generator = built(Wav2LipGenerator, 0.0625, 0)
    config = GeneratorConfig(epochs=1, max_steps=1, batch_size=batch_size, grad_accumulation=grad_accumulation,
                             learning_rate=1e-4, freeze_batchnorm=freeze_batchnorm)
    report = train_generator(generator, windows(corpus, 0, 4), windows(corpus, 40, 42), config=config)
    return generator, report


@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_accumulating_two_micro_batches_is_one_step_over_both(corpus, freeze_batchnorm: bool) -> None:
    """With BatchNorm on running statistics, 2 × 2 windows accumulated = one step over 4; with BatchNorm
    training, each micro-batch has its own batch statistics, so they differ (close, not equal)."""
    start = built(Wav2LipGenerator, 0.0625, 0).state_dict()
    small, small_report = one_step(corpus, batch_size=2, grad_accumulation=2, freeze_batchnorm=freeze_batchnorm)
    big, big_report = one_step(corpus, batch_size=4, grad_accumulation=1, freeze_batchnorm=freeze_batchnorm)
    params_small, params_big = dict(small.named_parameters()), dict(big.named_parameters())
    moved = max((params_big[k] - start[k]).abs().max().item() for k in params_big)
    gap = max((params_small[k] - params_big[k]).abs().max().item() for k in params_big)
    assert moved > 5e-5  # Adam's first step moves weights by about lr
    loss_gap = abs(small_report.history["step_loss"][0] - big_report.history["step_loss"][0])
    if freeze_batchnorm:
        assert gap < 1e-6 and loss_gap < 1e-6, (gap, loss_gap)
        assert all(torch.equal(small.state_dict()[k], start[k]) for k in start if "running" in k)  # kept
    else:
        assert gap > 1e-6 and loss_gap > 1e-6


def test_bf16_autocast_trains_both_networks(corpus) -> None:
    train, val = windows(corpus, 0, 12), windows(corpus, 40, 50)  # the expert needs windows 5 frames apart
    expert = built(LipSyncExpert, 0.0625, 0)
    bf16 = dict(epochs=1, max_steps=2, batch_size=2, mixed_precision="bf16")
    expert_report = train_expert(expert, train, val, config=ExpertConfig(**bf16))
    generator = built(Wav2LipGenerator, 0.0625, 0)
    report = train_generator(generator, train, val, expert=expert, expert_converged=True,
                             config=GeneratorConfig(**bf16, sync_switch_loss=None))
    for value in (*expert_report.history["step_loss"], *report.history["step_loss"], *report.history["step_sync"]):
        assert np.isfinite(value)
    assert all(p.dtype == torch.float32 for p in generator.parameters())  # weights stay fp32 under autocast
    assert not any(p.requires_grad for p in expert.parameters())  # the expert is frozen for the generator


def test_off_sync_audio_is_at_least_five_frames_away() -> None:
    first_frames = torch.tensor([0, 1, 2, 3, 4, 5, 6, 30, 31, 60])
    anchors = torch.arange(10).repeat(50)
    negatives = draw_negatives(first_frames, anchors, seeded(0))
    assert ((first_frames[negatives] - first_frames[anchors]).abs() >= 5).all()
    assert len(set(negatives[anchors == 0].tolist())) > 2  # drawn among all the far windows
    assert torch.equal(negatives, draw_negatives(first_frames, anchors, seeded(0)))  # from the seed alone
    with pytest.raises(VideostudioError) as caught:
        draw_negatives(torch.arange(6), torch.arange(6), seeded(0))
    assert caught.value.code == "too_few_windows"


# --- the GAN's discriminator -------------------------------------------------------------------

# Wav2Lip_disc_qual (Rudrabha/Wav2Lip models/wav2lip.py): nonorm convs (in, out, kernel).
DISC_LAYOUT = """
face_encoder_blocks.0.0 3 32 7
face_encoder_blocks.1.0 32 64 5
face_encoder_blocks.1.1 64 64 5
face_encoder_blocks.2.0 64 128 5
face_encoder_blocks.2.1 128 128 5
face_encoder_blocks.3.0 128 256 5
face_encoder_blocks.3.1 256 256 5
face_encoder_blocks.4.0 256 512 3
face_encoder_blocks.4.1 512 512 3
face_encoder_blocks.5.0 512 512 3
face_encoder_blocks.5.1 512 512 3
face_encoder_blocks.6.0 512 512 3
face_encoder_blocks.6.1 512 512 1
"""


def test_discriminator_has_the_public_layout_and_loads_strictly() -> None:
    shapes = {}
    for line in filter(str.strip, DISC_LAYOUT.splitlines()):
        name, cin, cout, k = line.split()
        shapes[f"{name}.conv_block.0.weight"] = (int(cout), int(cin), int(k), int(k))
        shapes[f"{name}.conv_block.0.bias"] = (int(cout),)
    shapes |= {"binary_pred.0.weight": (1, 512, 1, 1), "binary_pred.0.bias": (1,)}
    model = VisualQualityDiscriminator()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    state = {"module." + k: torch.randn(s) * 0.01 for k, s in shapes.items()}
    loaded = load_discriminator(state)
    assert torch.equal(loaded.state_dict()["binary_pred.0.bias"], state["module.binary_pred.0.bias"])
    with torch.no_grad():
        p = loaded(torch.rand(2, 3, 96, 96))
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


def test_the_discriminator_learns_to_tell_generated_frames(corpus) -> None:
    train, val = windows(corpus, 0, 10), windows(corpus, 40, 44)
    discriminator = built(VisualQualityDiscriminator, 0.125, 0)  # at 1/16 its 2-channel layers stay at logit 0
    config = GeneratorConfig(epochs=3, batch_size=1, gan_weight=GAN_WEIGHT, learning_rate=1e-3,
                             disc_learning_rate=3e-4)
    generator = built(Wav2LipGenerator, 0.0625, 0)
    report = train_generator(generator, train, val, discriminator=discriminator, config=config)
    h = report.history
    disc_loss = np.add(h["train_disc_real"], h["train_disc_fake"])
    assert disc_loss[0] == pytest.approx(2 * np.log(2), abs=0.01)  # at first it cannot tell: logits ≈ 0
    assert disc_loss[-1] < 2 * np.log(2) - 0.5, disc_loss
    assert h["train_gan"][-1] > h["train_gan"][0]  # so the generator's adversarial loss rises
    batch = val.take(torch.arange(len(val)), "cpu")
    with torch.no_grad():
        real = discriminator(batch.targets.flatten(0, 1)).mean()
        fake = discriminator(generate(generator, batch).flatten(0, 1)).mean()
    assert real > 0.5 > fake  # held-out frames: real looks real, generated does not
    with pytest.raises(ValueError):
        train_generator(generator, train, val, config=config)  # gan_weight without a discriminator
