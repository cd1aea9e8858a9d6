"""The LoRA training loop for Mochi's transformer, with the flow-matching objective Mochi was trained with.

Flow matching (rectified flow): for a clean latent x0, noise ε and a noise level σ∈(0,1),
the model sees x_σ = (1−σ)·x0 + σ·ε at timestep 1000·σ and learns the velocity
v = ε − x0 — exactly what diffusers' FlowMatchEulerDiscreteScheduler integrates when
MochiPipeline samples. σ is drawn logit-normally (as SD3 and Mochi do), which puts
most training signal at middle noise levels.

Everything random is derived from (seed, position): the clip order of epoch e comes from
a generator seeded with (seed, e) and each micro-batch's σ and ε from (seed, micro-batch
index). A run resumed from a checkpoint therefore continues bit for bit where it stopped,
and its final adapter equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

TARGET_MODULES = r".*transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)"
EVAL_SEED_OFFSET = 7_919  # fixed validation/test noise never coincides with training noise


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    grad_accumulation: int
    mixed_precision: str  # bf16 | fp16 | no
    lora_rank: int
    lora_alpha: float
    seed: int
    checkpoint_every: int
    max_steps: int | None = None
    optimizer: str = "auto"  # auto | adamw | adamw8bit
    warmup_steps: int = 0


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` already done
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    history: dict[str, list] = field(default_factory=lambda: {"step_loss": [], "train_loss": [], "val_loss": []})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- model set-up
def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, *, seed: int,
             target_modules: str = TARGET_MODULES) -> None:
    """A rank-`rank` LoRA on the Linear layers `target_modules` (a regex over module names) matches; the rest frozen."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are drawn from the seed, not the process's RNG
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                           target_modules=target_modules))
    for parameter in transformer.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # LoRA weights train in fp32 even on a bf16 base


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in transformer.parameters() if p.requires_grad]


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    if config.optimizer in ("auto", "adamw8bit"):
        try:
            import bitsandbytes as bnb

            optimizer = bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=1e-4)
            return optimizer, "adamw8bit"
        except Exception:  # no usable bitsandbytes backend for this device
            if config.optimizer == "adamw8bit":
                raise
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-4), "adamw"


def autocast_for(device: str, mixed_precision: str):
    if mixed_precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if mixed_precision == "fp16" and device == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- data to latents
@torch.no_grad()
def encode_video(vae, video: torch.Tensor, device: str) -> torch.Tensor:
    """[C,T,H,W] in [-1,1] → normalised latents [C', T', H', W'] (what MochiPipeline denormalises)."""
    dist = vae.encode(video[None].to(device=device, dtype=vae.dtype)).latent_dist
    latents = dist.mode().float()
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        latents = (latents - mean) * config.scaling_factor / std
    else:
        latents = latents * config.scaling_factor
    return latents[0].cpu()


@torch.no_grad()
def encode_caption(pipe, caption: str, device: str, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, mask, _, _ = pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False,
                                            max_sequence_length=max_sequence_length, device=torch.device(device))
    return embeds.float().cpu(), mask.cpu()


# --------------------------------------------------------------------------- the objective
def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


def sample_noise(latents: torch.Tensor, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = _generator(seed, index)
    sigma = torch.sigmoid(torch.randn(latents.shape[0], generator=generator)).clamp(1e-3, 1 - 1e-3)
    noise = torch.randn(latents.shape, generator=generator)
    return sigma, noise


@dataclass(frozen=True)
class TextCondition:
    """The caption's text-encoder output, computed once: every clip of an avatar shares one caption (Mochi)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def predict(self, transformer, noisy: torch.Tensor, timestep: torch.Tensor, clips: torch.Tensor,
                device: str, dtype: torch.dtype) -> torch.Tensor:
        batch = noisy.shape[0]
        return transformer(
            hidden_states=noisy.to(dtype),
            encoder_hidden_states=self.embeds.expand(batch, -1, -1).to(device=device, dtype=dtype),
            encoder_attention_mask=self.mask.expand(batch, -1).to(device),
            timestep=timestep.to(dtype),
            return_dict=False,
        )[0]


class Conditioning(Protocol):
    """What the transformer sees besides the noisy latents: a caption (Mochi), or per clip a reference image,
    audio windows… (InfiniteTalk). `clips` are the batch's indices into the latents the loop was given."""

    def predict(self, transformer, noisy: torch.Tensor, timestep: torch.Tensor, clips: torch.Tensor,
                device: str, dtype: torch.dtype) -> torch.Tensor: ...


@dataclass(frozen=True)
class Precision:
    """Where and in which precision the transformer runs (`mixed_precision`: bf16 | fp16 | no)."""

    device: str
    dtype: torch.dtype
    mixed_precision: str


def flow_matching_loss(transformer, latents: torch.Tensor, *, noise: torch.Tensor, sigma: torch.Tensor,
                       text: Conditioning, precision: Precision, clips: torch.Tensor | None = None) -> torch.Tensor:
    device, dtype = precision.device, precision.dtype
    latents, noise, sigma = latents.to(device), noise.to(device), sigma.to(device)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    target = noise - latents
    if clips is None:
        clips = torch.arange(latents.shape[0])
    with autocast_for(device, precision.mixed_precision):
        prediction = text.predict(transformer, noisy, sigma * 1000.0, clips, device, dtype)
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def evaluate(transformer, latents: torch.Tensor, *, text: Conditioning, seed: int, batch_size: int,
             precision: Precision) -> float | None:
    """Mean loss with noise and σ fixed per clip (same every call), so epochs are comparable."""
    if latents.shape[0] == 0:
        return None
    was_training = transformer.training
    transformer.eval()
    total = 0.0
    for start in range(0, latents.shape[0], batch_size):
        chunk = latents[start:start + batch_size]
        sigma, noise = sample_noise(chunk, seed + EVAL_SEED_OFFSET, start)
        loss = flow_matching_loss(transformer, chunk, noise=noise, sigma=sigma, text=text, precision=precision,
                                  clips=torch.arange(start, start + chunk.shape[0]))
        total += loss.item() * chunk.shape[0]
    transformer.train(was_training)
    return total / latents.shape[0]


# --------------------------------------------------------------------------- checkpoints
def checkpoint_bytes(transformer, optimizer, scheduler, state: TrainState) -> bytes:
    from peft.utils import get_peft_model_state_dict

    buffer = io.BytesIO()
    torch.save({
        "lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(transformer).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "state": state.to_dict(),
    }, buffer)
    return buffer.getvalue()


def restore_checkpoint(data: bytes, transformer, optimizer, scheduler) -> TrainState:
    from peft.utils import set_peft_model_state_dict

    # weights_only: a checkpoint is data, never code, even if someone tampered with the bucket.
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    set_peft_model_state_dict(transformer, saved["lora"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return TrainState(**saved["state"])


# --------------------------------------------------------------------------- the loop
@dataclass
class LoopHooks:
    """How the loop talks to the stage: progress, interim metrics, checkpoints (all optional)."""

    on_step: Callable[[TrainState, int, float, float], None] = lambda state, total, loss, steps_per_s: None
    on_epoch: Callable[[TrainState], None] = lambda state: None
    save_checkpoint: Callable[[int, bytes], None] = lambda step, data: None


def steps_per_epoch(num_clips: int, config: TrainConfig) -> int:
    micro = math.ceil(num_clips / config.batch_size)
    return math.ceil(micro / config.grad_accumulation)


def run_training(transformer, train_latents: torch.Tensor, val_latents: torch.Tensor, *, text: Conditioning,
                 config: TrainConfig, precision: Precision, resume: bytes | None = None,
                 hooks: LoopHooks | None = None, val_text: Conditioning | None = None) -> tuple[TrainState, str]:
    """`text` conditions the training latents; `val_text` the validation ones when they differ per clip
    (InfiniteTalk's audio and reference; a shared caption serves both)."""
    params = lora_parameters(transformer)
    optimizer, optimizer_name = make_optimizer(params, config)
    total_steps = steps_per_epoch(train_latents.shape[0], config) * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    fp16 = config.mixed_precision == "fp16" and precision.device == "cuda"
    state = restore_checkpoint(resume, transformer, optimizer, scheduler) if resume else TrainState()
    loop = _TrainingLoop(transformer=transformer, train_latents=train_latents, val_latents=val_latents, text=text,
                         val_text=val_text or text,
                         config=config, precision=precision, optimizer=optimizer, scheduler=scheduler,
                         scaler=torch.amp.GradScaler("cuda") if fp16 else None, params=params,
                         total_steps=total_steps, hooks=hooks or LoopHooks())
    with torch.enable_grad():  # whatever mode the caller's thread was left in
        loop.run(state)
    return state, optimizer_name


@dataclass
class _TrainingLoop:
    """Epochs of optimizer steps, each of up to grad_accumulation micro-batches."""

    transformer: torch.nn.Module
    train_latents: torch.Tensor
    val_latents: torch.Tensor
    text: Conditioning
    val_text: Conditioning
    config: TrainConfig
    precision: Precision
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    params: list[torch.nn.Parameter]
    total_steps: int
    hooks: LoopHooks

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.train_latents.shape[0] / self.config.batch_size)

    def run(self, state: TrainState) -> None:
        self.transformer.train()
        clock, steps_at_start = time.perf_counter(), state.global_step
        while state.epoch < self.config.epochs and state.global_step < self.total_steps:
            order = torch.randperm(self.train_latents.shape[0], generator=_generator(self.config.seed, state.epoch))
            while state.micro_in_epoch < self.micro_per_epoch and state.global_step < self.total_steps:
                step_loss = self._step(state, order)
                done = state.global_step - steps_at_start
                self.hooks.on_step(state, self.total_steps, step_loss, done / max(time.perf_counter() - clock, 1e-9))
                epoch_over = state.micro_in_epoch >= self.micro_per_epoch
                if epoch_over:
                    self._end_epoch(state)
                if state.global_step % self.config.checkpoint_every == 0 or state.global_step >= self.total_steps:
                    self.hooks.save_checkpoint(state.global_step, checkpoint_bytes(
                        self.transformer, self.optimizer, self.scheduler, state))
                if epoch_over:
                    break  # the next epoch draws its own clip order
        self.transformer.eval()

    def _step(self, state: TrainState, order: torch.Tensor) -> float:
        """One optimizer step over the next micro-batches of the epoch; returns its mean loss."""
        config = self.config
        group = range(state.micro_in_epoch, min(self.micro_per_epoch, state.micro_in_epoch + config.grad_accumulation))
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in group:
            clips = order[micro * config.batch_size:(micro + 1) * config.batch_size]
            latents = self.train_latents[clips]
            sigma, noise = sample_noise(latents, config.seed, state.epoch * self.micro_per_epoch + micro)
            loss = flow_matching_loss(self.transformer, latents, noise=noise, sigma=sigma, text=self.text,
                                      precision=self.precision, clips=clips)
            scaled = loss / len(group)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            step_loss += loss.item() / len(group)
            state.epoch_loss_sum += loss.item()
            state.epoch_loss_count += 1
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        state.micro_in_epoch = group.stop
        state.global_step += 1
        state.history["step_loss"].append(round(step_loss, 6))
        return step_loss

    def _end_epoch(self, state: TrainState) -> None:
        state.history["train_loss"].append(round(state.epoch_loss_sum / max(1, state.epoch_loss_count), 6))
        val = evaluate(self.transformer, self.val_latents, text=self.val_text, seed=self.config.seed,
                       batch_size=self.config.batch_size, precision=self.precision)
        state.history["val_loss"].append(None if val is None else round(val, 6))
        state.epoch += 1
        state.micro_in_epoch = 0
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
        self.hooks.on_epoch(state)
