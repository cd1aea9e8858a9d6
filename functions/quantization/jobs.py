"""The jobs the planner sizes: a render and a LoRA training step (plain values, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.brief import TrainBrief
from schemas.defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_HEIGHT, DEFAULT_NUM_FRAMES, DEFAULT_WIDTH

_TRAIN_BRIEF = TrainBrief.model_fields  # a train job's defaults are the train brief's


@dataclass(frozen=True)
class RenderJob:
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    num_frames: int = DEFAULT_NUM_FRAMES
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    videos: int = 1

    @property
    def batch(self) -> int:  # classifier-free guidance runs cond and uncond in one batch
        return self.videos * (2 if self.guidance_scale > 1.0 else 1)


@dataclass(frozen=True)
class TrainJob:
    resolution: int = _TRAIN_BRIEF["resolution"].default
    clip_frames: int = _TRAIN_BRIEF["clip_frames"].default
    batch_size: int = _TRAIN_BRIEF["batch_size"].default
    lora_rank: int = _TRAIN_BRIEF["lora_rank"].default
    optimizer_bytes_per_param: int = 8   # AdamW: two fp32 moments (AdamW8bit: 2)
    gradient_checkpointing: bool = False  # functions/lora_training.py does not enable it
