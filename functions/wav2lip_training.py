"""Training Wav2Lip on one person: first the lip-sync expert, then the generator against it.

The loops work on tensors already in memory (a `WindowSet`); the stage loads faces and mels.

1. Expert (`train_expert`). Each training window's 5 lower halves are shown with either their own
   mel window (label 1) or the mel window of another window at least `MIN_NEGATIVE_GAP` frames away
   (label 0), 50/50, as Wav2Lip's color_syncnet_train. Loss: BCE on the cosine similarity
   (`sync_loss`); Adam, lr 1e-4. Validation shows every held-out window twice, in sync and off sync,
   with fixed draws, so epochs are comparable; accuracy thresholds P(sync) at 0.5. The expert is
   `converged` when its val loss on the final weights is at most `converged_loss`: 0.25 by default,
   the level Wav2Lip's README asks of an expert trained on one's own data before the generator is.
   Training does not stop there; the flag is what decides whether the generator may use the expert.
2. Generator (`train_generator`). Wav2Lip's objective (hq_wav2lip_train.py):
   (1 − s − g)·L1 + s·sync + g·GAN. L1 reconstructs the 5 target frames from (target with its lower
   half zeroed + reference, one mel window per frame); sync is the frozen expert's BCE against "in
   sync" on the generated lower halves with the window's first-frame mel; GAN is the
   visual-quality discriminator's BCE against "real" on generated frames. s = 0.03 once switched on;
   g = 0.07 when `gan_weight` is set (off by default). The sync term is switched on only with a
   converged expert and, as the original code, once the generator's val sync loss first falls under
   `sync_switch_loss` (0.75; None: at once). The expert stays in eval mode with frozen parameters.
3. Determinism. Everything random comes from (seed, position): epoch e's window order from
   (seed, e), the expert's labels and negatives from (seed, e) per position of that order,
   validation draws from (seed + EVAL_SEED_OFFSET). A checkpoint (models, optimizers, grad scaler,
   RNG, loop position, histories) resumed after a kill therefore continues bit for bit.
4. Gradient accumulation. A step covers `batch_size × grad_accumulation` windows; each micro-batch's
   loss is weighted by its share of them, so the step's gradient is that of the group's mean loss.
   Both networks use BatchNorm, whose training-mode statistics are per micro-batch: accumulating
   2 × b then equals one step over 2b only with `freeze_batchnorm=True` (running statistics used and
   kept, as when fine-tuning the public checkpoints on a few hundred frames); otherwise it is close,
   not equal.
5. Mixed precision: bf16 autocast (CPU or CUDA), fp16 autocast with a GradScaler on CUDA (fp16 on CPU
   runs in fp32). Losses are computed in fp32 outside autocast (BCE is unsafe under fp16 autocast).

Quality score (`evaluate_generator`, on the test split), in [0, 1]:
- reconstruction gain r = 1 − L1_gen / L1_ref over the *lower halves* (the mouth region the generator
  has to draw; the upper half is given to it), where L1_ref is the copy-the-reference baseline (the
  reference frame shown as the answer: right face, wrong mouth). Clipped to [0, 1]; r = 0 means no
  better than pasting the reference.
- sync ratio c = margin(generated) / margin(real), clipped to [0, 1], with
  margin(x) = mean P_expert(x, own mel) − mean P_expert(x, off-sync mel ≥ 5 frames away): how much
  better the expert finds the frames matching their own audio than other audio (an LSE-C-like
  confidence). Real frames set the scale; c = 1: the generated mouths follow the audio as well as
  the real ones. Undefined (None) without a converged expert or when the expert cannot tell real
  frames' sync (margin(real) < MIN_REAL_MARGIN).
- quality = √(r·c) (both must be good: a sharp copy that ignores the audio scores 0), or r alone
  when c is undefined; `quality_basis` says which.
"""

from __future__ import annotations

import io
import math
import pickle
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from functions.lora_training import EVAL_SEED_OFFSET, LoopHooks, autocast_for
from functions.models.syncnet import SYNC_FRAMES, LipSyncExpert, stack_window, sync_loss, sync_probability
from functions.models.wav2lip import FACE_SIZE, MEL_BANDS, MEL_STEP, Wav2LipGenerator, masked_input
from functions.models.wav2lip_disc import VisualQualityDiscriminator
from schemas.errors import VideostudioError

DEFAULT_LEARNING_RATE = 1e-4  # the paper's, for both networks
SYNC_WEIGHT = 0.03
GAN_WEIGHT = 0.07
EXPERT_CONVERGED_LOSS = 0.25  # Wav2Lip's README: the expert's eval loss should reach ~0.25
SYNC_SWITCH_LOSS = 0.75  # hq_wav2lip_train.py switches the sync term on under this val sync loss
MIN_NEGATIVE_GAP = SYNC_FRAMES  # frames between a window and its off-sync audio: no overlap
MIN_REAL_MARGIN = 0.05  # below this the expert cannot score sync, so the quality leaves it out
CHECKPOINT_FORMAT = 1
HALF = FACE_SIZE // 2
FACE_SHAPE = (SYNC_FRAMES, 3, FACE_SIZE, FACE_SIZE)


# --------------------------------------------------------------------------- data
class Batch(NamedTuple):
    targets: torch.Tensor  # (b, 5, 3, 96, 96)
    references: torch.Tensor  # (b, 5, 3, 96, 96)
    frame_mels: torch.Tensor  # (b, 5, 1, 80, 16)
    sync_mels: torch.Tensor  # (b, 1, 80, 16)


@dataclass(frozen=True)
class WindowSet:
    """N training windows in memory. Faces float in [0, 1] in the order the networks train on; mels from
    `melspectrogram`. `frame_mels[i, k]` drives frame k of window i in the generator; `sync_mels[i]` is
    the expert's window for frame 0. `first_frames[i]`: frame index of window i's first frame on the
    clip's timeline (off-sync audio is drawn ≥ MIN_NEGATIVE_GAP frames away). Overlapping windows may
    be views of one frame tensor (e.g. `unfold`): only the rows of a batch are ever copied."""

    targets: torch.Tensor
    references: torch.Tensor
    frame_mels: torch.Tensor
    sync_mels: torch.Tensor
    first_frames: torch.Tensor

    def __post_init__(self) -> None:
        n = self.targets.shape[0]
        if self.frame_mels.dim() == 4:  # (N, 5, 80, 16): add the channel
            object.__setattr__(self, "frame_mels", self.frame_mels.unsqueeze(2))
        if self.sync_mels.dim() == 3:
            object.__setattr__(self, "sync_mels", self.sync_mels.unsqueeze(1))
        expected = {"targets": (n, *FACE_SHAPE), "references": (n, *FACE_SHAPE),
                    "frame_mels": (n, SYNC_FRAMES, 1, MEL_BANDS, MEL_STEP), "sync_mels": (n, 1, MEL_BANDS, MEL_STEP),
                    "first_frames": (n,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name}: expected {shape}, got {tuple(getattr(self, name).shape)}")

    def __len__(self) -> int:
        return self.targets.shape[0]

    def take(self, index: torch.Tensor, device: str) -> Batch:
        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[index].to(device=device, dtype=torch.float32)

        return Batch(rows(self.targets), rows(self.references), rows(self.frame_mels), rows(self.sync_mels))


def seeded(seed: int, *keys: int) -> torch.Generator:
    """A generator for (seed, keys…): the same numbers for the same position, in any run."""
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key) % (2**63)
    return torch.Generator().manual_seed(value)


def draw_negatives(first_frames: torch.Tensor, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each anchor window, a window whose first frame is ≥ MIN_NEGATIVE_GAP frames from the anchor's
    (uniform among those): its mel is the anchor's off-sync audio."""
    ordered, order = torch.sort(first_frames, stable=True)
    frames = first_frames[anchors]
    lo = torch.searchsorted(ordered, frames - MIN_NEGATIVE_GAP + 1)  # first window too close
    hi = torch.searchsorted(ordered, frames + MIN_NEGATIVE_GAP)  # first window far enough after
    outside = len(ordered) - (hi - lo)
    if bool((outside == 0).any()):
        raise VideostudioError("too_few_windows", f"{int((outside == 0).sum())} of {len(ordered)} windows have no "
                               f"other window {MIN_NEGATIVE_GAP}+ frames away: no off-sync audio for the expert")
    k = torch.minimum((torch.rand(len(anchors), generator=generator) * outside).long(), outside - 1)
    return order[torch.where(k < lo, k, k + (hi - lo))]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=seeded(seed, epoch))


# --------------------------------------------------------------------------- configuration and results
@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 1
    batch_size: int = 2  # windows per micro-batch (the generator sees 5 frames per window)
    learning_rate: float = DEFAULT_LEARNING_RATE
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accumulation: int = 1
    mixed_precision: Literal["bf16", "fp16", "no"] = "no"
    seed: int = 0
    checkpoint_every: int = 100
    max_steps: int | None = None
    device: str = "cpu"
    freeze_batchnorm: bool = False  # BatchNorm on running statistics (see the module docstring, 4.)


@dataclass(frozen=True)
class ExpertConfig(LoopConfig):
    converged_loss: float = EXPERT_CONVERGED_LOSS


@dataclass(frozen=True)
class GeneratorConfig(LoopConfig):
    betas: tuple[float, float] = (0.5, 0.999)  # hq_wav2lip_train.py's, for generator and discriminator
    sync_weight: float = SYNC_WEIGHT
    sync_switch_loss: float | None = SYNC_SWITCH_LOSS
    gan_weight: float = 0.0  # GAN_WEIGHT to train with the visual-quality discriminator
    disc_learning_rate: float = DEFAULT_LEARNING_RATE


@dataclass
class LoopState:
    """Where a loop is; everything here is in the checkpoint. `history` maps a metric to its values:
    `step_*` one per optimizer step, `train_*` / `val_*` one per epoch."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # windows of this epoch's order already trained on
    sync_on: bool = False
    sync_on_step: int | None = None
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_count: int = 0
    history: dict[str, list] = field(default_factory=dict)


class ExpertReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int
    epochs: int
    history: dict[str, list[float | None]]
    val_loss: float | None = Field(description="the last epoch's held-out BCE")
    val_accuracy: float | None
    converged: bool = Field(description="val_loss ≤ converged_loss: the generator may use this expert")
    converged_loss: float


class GeneratorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int
    epochs: int
    history: dict[str, list[float | None]]
    val_l1: float | None
    val_sync: float | None
    sync_on_step: int | None = Field(description="the step from which the sync term was in the loss")
    gan: bool


class GeneratorQuality(BaseModel):
    """Held-out metrics of a generator and the quality score defined in the module docstring."""

    model_config = ConfigDict(extra="forbid")

    windows: int
    l1: float = Field(description="whole-frame L1 of the generated frames")
    reference_l1: float = Field(description="whole-frame L1 of copying the reference frames")
    mouth_l1: float = Field(description="lower-half L1 of the generated frames")
    mouth_reference_l1: float
    reconstruction_gain: float = Field(ge=0, le=1)
    real_sync_margin: float | None
    generated_sync_margin: float | None
    sync_ratio: float | None = Field(None, ge=0, le=1)
    quality: float = Field(ge=0, le=1)
    quality_basis: Literal["reconstruction+sync", "reconstruction"]


# --------------------------------------------------------------------------- the networks' losses
def autocast(config: LoopConfig):
    return autocast_for(torch.device(config.device).type, config.mixed_precision)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train_mode(module: nn.Module, freeze_batchnorm: bool) -> None:
    module.train()
    if freeze_batchnorm:
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()  # running statistics: a frame's output no longer depends on its micro-batch


def expert_embeddings(expert: LipSyncExpert, lower_halves: torch.Tensor, mels: torch.Tensor,
                      config: LoopConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio, video) fp32 embeddings of (b, 5, 3, 48, 96) lower halves and (b, 1, 80, 16) mels."""
    with autocast(config):
        audio, video = expert(mels, stack_window(lower_halves))
    return audio.float(), video.float()


def expert_loss(expert: LipSyncExpert, windows: WindowSet, *, anchors: torch.Tensor, labels: torch.Tensor,
                negatives: torch.Tensor, config: LoopConfig) -> tuple[torch.Tensor, float]:
    """BCE and accuracy of the expert on `anchors`' lower halves with their own mel (label 1) or their
    negative's (label 0)."""
    device = config.device
    lower = windows.targets[anchors, :, :, HALF:].to(device, torch.float32)
    mels = windows.sync_mels[torch.where(labels.bool(), anchors, negatives)].to(device, torch.float32)
    audio, video = expert_embeddings(expert, lower, mels, config)
    labels = labels.to(device)
    right = (sync_probability(audio, video) > 0.5) == labels.bool()
    return sync_loss(audio, video, labels), right.float().mean().item()


def generate(generator: Wav2LipGenerator, batch: Batch) -> torch.Tensor:
    """(b, 5, 3, 96, 96) frames from masked targets + references and one mel window per frame."""
    b = batch.targets.shape[0]
    faces = masked_input(batch.targets.flatten(0, 1), batch.references.flatten(0, 1))
    return generator(batch.frame_mels.flatten(0, 1), faces).view(b, *FACE_SHAPE)


def generated_sync_loss(expert: LipSyncExpert, frames: torch.Tensor, mels: torch.Tensor,
                        config: LoopConfig) -> torch.Tensor:
    """The generator's sync term: the expert's BCE against "in sync" on the frames' lower halves."""
    audio, video = expert_embeddings(expert, frames[:, :, :, HALF:], mels, config)
    return sync_loss(audio, video, torch.ones(frames.shape[0], device=frames.device))


def real_or_fake_loss(discriminator: VisualQualityDiscriminator, frames: torch.Tensor, real: bool,
                      config: LoopConfig) -> torch.Tensor:
    with autocast(config):
        logits = discriminator.logits(frames.flatten(0, 1))
    target = torch.full_like(logits, float(real), dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


# --------------------------------------------------------------------------- held-out evaluation
@torch.no_grad()
def evaluate_expert(expert: LipSyncExpert, windows: WindowSet, config: LoopConfig) -> tuple[float | None, float | None]:
    """Held-out (BCE, accuracy): every window once with its own mel and once with a fixed off-sync one."""
    n = len(windows)
    if n == 0:
        return None, None
    negatives = draw_negatives(windows.first_frames, torch.arange(n), seeded(config.seed + EVAL_SEED_OFFSET))
    was_training = expert.training
    expert.eval()
    loss_sum = right_sum = 0.0
    for start in range(0, n, config.batch_size):
        anchors = torch.arange(start, min(n, start + config.batch_size))
        for label in (1, 0):
            loss, accuracy = expert_loss(expert, windows, anchors=anchors, labels=torch.full((len(anchors),), label),
                                         negatives=negatives[anchors], config=config)
            loss_sum += loss.item() * len(anchors)
            right_sum += accuracy * len(anchors)
    expert.train(was_training)
    return loss_sum / (2 * n), right_sum / (2 * n)


def generated_chunks(generator: Wav2LipGenerator, windows: WindowSet, config: LoopConfig):
    """(window indices, batch, fp32 generated frames) over `windows`, the generator in eval mode."""
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, len(windows), config.batch_size):
            index = torch.arange(start, min(len(windows), start + config.batch_size))
            batch = windows.take(index, config.device)
            with autocast(config):
                generated = generate(generator, batch)
            yield index, batch, generated.float()
    finally:
        generator.train(was_training)


@torch.no_grad()
def evaluate_generator_loss(generator: Wav2LipGenerator, windows: WindowSet, *, expert: LipSyncExpert | None,
                            config: LoopConfig) -> tuple[float | None, float | None]:
    """Held-out (L1, sync loss); sync is None without an expert."""
    if len(windows) == 0:
        return None, None
    l1_sum = sync_sum = 0.0
    for index, batch, generated in generated_chunks(generator, windows, config):
        l1_sum += F.l1_loss(generated, batch.targets).item() * len(index)
        if expert is not None:
            sync_sum += generated_sync_loss(expert, generated, batch.sync_mels, config).item() * len(index)
    n = len(windows)
    return l1_sum / n, (sync_sum / n if expert is not None else None)


@torch.no_grad()
def _quality_sums(generator: Wav2LipGenerator, windows: WindowSet, *, expert: LipSyncExpert | None,
                  config: LoopConfig) -> dict[str, float]:
    """Per-window sums of the L1s and (with an expert) of the sync margins behind GeneratorQuality."""
    negatives = draw_negatives(windows.first_frames, torch.arange(len(windows)), seeded(config.seed + EVAL_SEED_OFFSET))
    sums = dict.fromkeys(("l1", "reference_l1", "mouth_l1", "mouth_reference_l1", "real", "generated"), 0.0)
    for index, batch, generated in generated_chunks(generator, windows, config):
        for name, frames in (("", generated), ("reference_", batch.references)):
            error = (frames - batch.targets).abs()
            sums[f"{name}l1"] += error.mean(dim=(1, 2, 3, 4)).sum().item()
            sums[f"mouth_{name}l1"] += error[:, :, :, HALF:].mean(dim=(1, 2, 3, 4)).sum().item()
        if expert is None:
            continue
        off_mels = windows.sync_mels[negatives[index]].to(config.device, torch.float32)
        for name, frames in (("real", batch.targets), ("generated", generated)):
            lower = frames[:, :, :, HALF:]
            own = sync_probability(*expert_embeddings(expert, lower, batch.sync_mels, config))
            off = sync_probability(*expert_embeddings(expert, lower, off_mels, config))
            sums[name] += (own - off).sum().item()
    return sums


def evaluate_generator(generator: Wav2LipGenerator, windows: WindowSet, *, expert: LipSyncExpert | None = None,
                       expert_converged: bool = False, config: LoopConfig | None = None) -> GeneratorQuality:
    """Held-out metrics and the quality score (see the module docstring) on `windows`, usually the test split.
    The sync ratio needs a converged expert; with another one the score is reconstruction only."""
    config = config or GeneratorConfig()
    n = len(windows)
    if n == 0:
        raise VideostudioError("too_few_windows", "no held-out windows to score the generator on")
    scorer = expert.eval() if expert is not None and expert_converged else None
    sums = {k: v / n for k, v in _quality_sums(generator, windows, expert=scorer, config=config).items()}
    gain = min(1.0, max(0.0, 1.0 - sums["mouth_l1"] / max(sums["mouth_reference_l1"], 1e-12)))
    real = sums["real"] if scorer is not None else None
    generated = sums["generated"] if scorer is not None else None
    ratio = None
    if real is not None and generated is not None and real >= MIN_REAL_MARGIN:
        ratio = min(1.0, max(0.0, generated / real))
    return GeneratorQuality(
        windows=n, l1=sums["l1"], reference_l1=sums["reference_l1"], mouth_l1=sums["mouth_l1"],
        mouth_reference_l1=sums["mouth_reference_l1"], reconstruction_gain=gain, real_sync_margin=real,
        generated_sync_margin=generated, sync_ratio=ratio,
        quality=math.sqrt(gain * ratio) if ratio is not None else gain,
        quality_basis="reconstruction+sync" if ratio is not None else "reconstruction")


# --------------------------------------------------------------------------- what each loop trains
@dataclass
class _ExpertObjective:
    expert: LipSyncExpert
    train: WindowSet
    val: WindowSet
    config: ExpertConfig
    optimizer: torch.optim.Optimizer
    kind: str = "expert"

    @property
    def needs_pairs(self) -> bool:
        return not self.config.freeze_batchnorm
    _draws: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"expert": self.expert}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"expert": self.optimizer}

    def initial_state(self) -> LoopState:
        return LoopState()

    def train_mode(self) -> None:
        train_mode(self.expert, self.config.freeze_batchnorm)

    def epoch_draws(self, epoch: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position of epoch `epoch`'s order: in sync or not (50/50), and the off-sync window."""
        if epoch not in self._draws:
            generator = seeded(self.config.seed, epoch, 1)  # its own stream, beside the order's (seed, epoch)
            labels = torch.randint(0, 2, (len(order),), generator=generator)
            self._draws = {epoch: (labels, draw_negatives(self.train.first_frames, order, generator))}
        return self._draws[epoch]

    def micro(self, state: LoopState, order: torch.Tensor, span: range, share: float,
              scaler: torch.amp.GradScaler | None) -> dict[str, float]:
        labels, negatives = self.epoch_draws(state.epoch, order)
        part = slice(span.start, span.stop)
        loss, accuracy = expert_loss(self.expert, self.train, anchors=order[part], labels=labels[part],
                                     negatives=negatives[part], config=self.config)
        backward(loss * share, scaler)
        return {"loss": loss.item(), "accuracy": accuracy}

    def validate(self, state: LoopState) -> dict[str, float | None]:
        loss, accuracy = evaluate_expert(self.expert, self.val, self.config)
        return {"loss": loss, "accuracy": accuracy}


@dataclass
class _GeneratorObjective:
    generator: Wav2LipGenerator
    train: WindowSet
    val: WindowSet
    config: GeneratorConfig
    optimizer: torch.optim.Optimizer
    expert: LipSyncExpert | None
    expert_converged: bool
    discriminator: VisualQualityDiscriminator | None
    disc_optimizer: torch.optim.Optimizer | None
    kind: str = "generator"
    needs_pairs: bool = False  # a window is 5 frames: BatchNorm always has several values

    @property
    def modules(self) -> dict[str, nn.Module]:
        extra = {"discriminator": self.discriminator} if self.discriminator is not None else {}
        return {"generator": self.generator, **extra}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {"discriminator": self.disc_optimizer} if self.disc_optimizer is not None else {}
        return {"generator": self.optimizer, **extra}

    @property
    def sync_allowed(self) -> bool:
        return self.expert is not None and self.expert_converged and self.config.sync_weight > 0

    def initial_state(self) -> LoopState:
        at_once = self.sync_allowed and self.config.sync_switch_loss is None
        return LoopState(sync_on=at_once, sync_on_step=0 if at_once else None)

    def train_mode(self) -> None:
        train_mode(self.generator, self.config.freeze_batchnorm)
        if self.discriminator is not None:
            self.discriminator.train()
        if self.expert is not None:
            self.expert.eval()  # frozen: running statistics, no updates

    def micro(self, state: LoopState, order: torch.Tensor, span: range, share: float,
              scaler: torch.amp.GradScaler | None) -> dict[str, float]:
        config = self.config
        batch = self.train.take(order[span.start:span.stop], config.device)
        with autocast(config):
            generated = generate(self.generator, batch)
        generated = generated.float()
        l1 = F.l1_loss(generated, batch.targets)
        s = config.sync_weight if state.sync_on else 0.0
        g = config.gan_weight if self.discriminator is not None else 0.0
        loss, metrics = (1.0 - s - g) * l1, {"l1": l1.item()}
        if self.expert is not None:
            with torch.set_grad_enabled(s > 0):  # reported either way; a gradient only once it is in the loss
                sync = generated_sync_loss(self.expert, generated, batch.sync_mels, config)
            loss, metrics["sync"] = loss + s * sync, sync.item()
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the discriminator learns from its own loss only
            perceptual = real_or_fake_loss(self.discriminator, generated, True, config)
            self.discriminator.requires_grad_(True)
            loss, metrics["gan"] = loss + g * perceptual, perceptual.item()
        backward(loss * share, scaler)
        metrics["loss"] = loss.item()
        if self.discriminator is not None:
            real = real_or_fake_loss(self.discriminator, batch.targets, True, config)
            fake = real_or_fake_loss(self.discriminator, generated.detach(), False, config)
            backward((real + fake) * share, scaler)
            metrics |= {"disc_real": real.item(), "disc_fake": fake.item()}
        return metrics

    def validate(self, state: LoopState) -> dict[str, float | None]:
        l1, sync = evaluate_generator_loss(self.generator, self.val, expert=self.expert, config=self.config)
        threshold = self.config.sync_switch_loss
        if not state.sync_on and self.sync_allowed and sync is not None and threshold is not None and sync < threshold:
            state.sync_on, state.sync_on_step = True, state.step  # from the next step on, as the original
        return {"l1": l1, "sync": sync}


# --------------------------------------------------------------------------- the loop
Objective = _ExpertObjective | _GeneratorObjective


@dataclass
class _Loop:
    """Epochs of optimizer steps over a seeded window order, each step of up to grad_accumulation
    micro-batches; hooks after every step, validation after every epoch, checkpoints every
    `checkpoint_every` steps and at the end."""

    objective: Objective
    config: LoopConfig
    train_size: int
    hooks: LoopHooks
    scaler: torch.amp.GradScaler | None

    @property
    def group(self) -> int:
        return self.config.batch_size * self.config.grad_accumulation

    @property
    def epoch_size(self) -> int:
        """Windows per epoch: all, except that a last micro-batch of one window is left out where
        BatchNorm trains on the expert's 1×1 features (batch statistics of one value per channel fail)."""
        n, lone = self.train_size, self.train_size % self.config.batch_size == 1
        return n - 1 if lone and n > 1 and self.objective.needs_pairs else n

    @property
    def total_steps(self) -> int:
        steps = math.ceil(self.epoch_size / self.group) * self.config.epochs
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def run(self, state: LoopState) -> None:
        clock, first_step, total = time.perf_counter(), state.step, self.total_steps
        self.objective.train_mode()
        while state.step < total:
            order = epoch_order(self.config.seed, state.epoch, self.train_size)
            while state.position < self.epoch_size and state.step < total:
                metrics = self._step(state, order)
                rate = (state.step - first_step) / max(time.perf_counter() - clock, 1e-9)
                self.hooks.on_step(state, total, metrics["loss"], rate)  # may raise: a cancel between steps
                epoch_over = state.position >= self.epoch_size
                if epoch_over:
                    self._end_epoch(state)
                if state.step % self.config.checkpoint_every == 0 or state.step >= total:
                    self.hooks.save_checkpoint(state.step, self.checkpoint(state))
                if epoch_over:
                    break  # the next epoch draws its own window order

    def _step(self, state: LoopState, order: torch.Tensor) -> dict[str, float]:
        end = min(self.epoch_size, state.position + self.group)
        for optimizer in self.objective.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        step_metrics: dict[str, float] = {}
        for start in range(state.position, end, self.config.batch_size):
            span = range(start, min(start + self.config.batch_size, end))
            share = len(span) / (end - state.position)  # the step's gradient is that of the group's mean loss
            for key, value in self.objective.micro(state, order, span, share, self.scaler).items():
                step_metrics[key] = step_metrics.get(key, 0.0) + share * value
                state.epoch_sums[key] = state.epoch_sums.get(key, 0.0) + value * len(span)
            state.epoch_count += len(span)
        for optimizer in self.objective.optimizers.values():
            (self.scaler.step(optimizer) if self.scaler is not None else optimizer.step())
        if self.scaler is not None:
            self.scaler.update()
        state.position, state.step = end, state.step + 1
        for key, value in step_metrics.items():
            state.history.setdefault(f"step_{key}", []).append(value)
        return step_metrics

    def _end_epoch(self, state: LoopState) -> None:
        for key, value in state.epoch_sums.items():
            state.history.setdefault(f"train_{key}", []).append(value / max(1, state.epoch_count))
        for key, value in self.objective.validate(state).items():
            state.history.setdefault(f"val_{key}", []).append(value)
        self.objective.train_mode()
        state.epoch, state.position, state.epoch_sums, state.epoch_count = state.epoch + 1, 0, {}, 0
        self.hooks.on_epoch(state)

    # ----- checkpoints
    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the one that saved: else positions would mean other windows."""
        c = self.config
        return {"kind": self.objective.kind, "seed": c.seed, "batch_size": c.batch_size,
                "grad_accumulation": c.grad_accumulation, "windows": self.train_size,
                "modules": sorted(self.objective.modules)}

    def checkpoint(self, state: LoopState) -> bytes:
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint(),
                    "models": {k: m.state_dict() for k, m in self.objective.modules.items()},
                    "optimizers": {k: o.state_dict() for k, o in self.objective.optimizers.items()},
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "rng": torch.get_rng_state(), "state": asdict(state)}, buffer)
        return buffer.getvalue()

    def restore(self, data: bytes) -> LoopState:
        # weights_only: a checkpoint is data, never code, even if someone tampered with the bucket.
        try:
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
            raise VideostudioError("checkpoint_incompatible", f"not a readable checkpoint (weights only): "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise VideostudioError("checkpoint_incompatible", "not a Wav2Lip training checkpoint of this version")
        if saved["fingerprint"] != self.fingerprint():
            raise VideostudioError("checkpoint_incompatible", f"the checkpoint was saved by another run "
                                   f"({saved['fingerprint']}), not {self.fingerprint()}")
        for key, module in self.objective.modules.items():
            module.load_state_dict(saved["models"][key])
            self.objective.optimizers[key].load_state_dict(saved["optimizers"][key])
        if self.scaler is not None and saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        return LoopState(**saved["state"])


def _run(objective: Objective, *, config: LoopConfig, train_size: int, resume: bytes | None,
         hooks: LoopHooks | None) -> LoopState:
    if train_size == 0:
        raise VideostudioError("too_few_windows", "no training windows")
    if config.batch_size < 1 or config.grad_accumulation < 1 or config.checkpoint_every < 1:
        raise ValueError("batch_size, grad_accumulation and checkpoint_every must be at least 1")
    fp16 = config.mixed_precision == "fp16" and torch.device(config.device).type == "cuda"
    loop = _Loop(objective=objective, config=config, train_size=train_size, hooks=hooks or LoopHooks(),
                 scaler=torch.amp.GradScaler("cuda") if fp16 else None)
    state = loop.restore(resume) if resume else objective.initial_state()
    try:
        with torch.enable_grad():  # whatever mode the caller's thread was left in
            loop.run(state)
    finally:
        for module in objective.modules.values():
            module.eval()
    return state


def _last(values: list | None) -> Any:
    return values[-1] if values else None


def train_expert(expert: LipSyncExpert, train: WindowSet, val: WindowSet, *, config: ExpertConfig | None = None,
                 resume: bytes | None = None, hooks: LoopHooks | None = None) -> ExpertReport:
    """Train the lip-sync expert on the person's windows (module docstring, 1.); `expert` is trained in place
    and left in eval mode. The report's val metrics are those of the final weights."""
    config = config or ExpertConfig()
    if config.batch_size < 2 and not config.freeze_batchnorm:
        raise ValueError("the expert's BatchNorm needs batch_size ≥ 2 (or freeze_batchnorm)")
    expert.to(config.device)
    optimizer = torch.optim.Adam(expert.parameters(), lr=config.learning_rate, betas=config.betas)
    objective = _ExpertObjective(expert=expert, train=train, val=val, config=config, optimizer=optimizer)
    state = _run(objective, config=config, train_size=len(train), resume=resume, hooks=hooks)
    val_loss, val_accuracy = evaluate_expert(expert, val, config)
    return ExpertReport(steps=state.step, epochs=state.epoch, history=state.history, val_loss=val_loss,
                        val_accuracy=val_accuracy, converged=val_loss is not None and val_loss <= config.converged_loss,
                        converged_loss=config.converged_loss)


def train_generator(generator: Wav2LipGenerator, train: WindowSet, val: WindowSet, *,
                    expert: LipSyncExpert | None = None, expert_converged: bool = False,
                    discriminator: VisualQualityDiscriminator | None = None, config: GeneratorConfig | None = None,
                    resume: bytes | None = None, hooks: LoopHooks | None = None) -> GeneratorReport:
    """Train the generator (module docstring, 2.) in place. `expert` is frozen (eval mode, no gradients to
    its parameters); its sync loss is reported whenever it is given and enters the loss only with
    `expert_converged` (ExpertReport.converged). `discriminator` is needed iff `config.gan_weight` > 0."""
    config = config or GeneratorConfig()
    if (discriminator is None) != (config.gan_weight == 0):
        raise ValueError("pass a discriminator exactly when gan_weight > 0")
    if config.sync_weight + config.gan_weight >= 1:
        raise ValueError("sync_weight + gan_weight must leave a positive L1 weight")
    generator.to(config.device)
    if expert is not None:
        expert.to(config.device).eval().requires_grad_(False)
    disc_optimizer = None
    if discriminator is not None:
        discriminator.to(config.device)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.disc_learning_rate, betas=config.betas)
    objective = _GeneratorObjective(
        generator=generator, train=train, val=val, config=config, expert=expert, expert_converged=expert_converged,
        optimizer=torch.optim.Adam(generator.parameters(), lr=config.learning_rate, betas=config.betas),
        discriminator=discriminator, disc_optimizer=disc_optimizer)
    state = _run(objective, config=config, train_size=len(train), resume=resume, hooks=hooks)
    val_l1, val_sync = evaluate_generator_loss(generator, val, expert=expert, config=config)
    return GeneratorReport(steps=state.step, epochs=state.epoch, history=state.history, val_l1=val_l1,
                           val_sync=val_sync, sync_on_step=state.sync_on_step, gan=discriminator is not None)
