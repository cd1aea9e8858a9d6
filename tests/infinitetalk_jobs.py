"""The tiny InfiniteTalk train brief the end-to-end tests share: random tiny weights, 32×32 frames, 9-frame clips,
17-frame chunks with 5 motion frames, so a 32 s video trains in seconds on a CPU and a sentence renders in
several chunks."""

from __future__ import annotations

from typing import Any

import yaml

TINY_INFINITETALK: dict[str, Any] = {
    "base_model": "tiny", "clip_frames": 9, "height": 32, "width": 32, "steps": 2, "chunk_frames": 17,
    "motion_frames": 5, "lora_rank": 4,
}
LONG_LINE = "Hello there. This is a longer line, so that the render needs three chunks or more."


def tiny_train_brief(*, avatar: str = "ann", video: str = "uploads/ann.mp4", epochs: int = 2, batch_size: int = 8,
                     checkpoint_every: int = 4, max_steps: int | None = None, seed: int | None = None,
                     **infinitetalk: Any) -> str:
    """A `backend: infinitetalk` train brief (YAML) on the tiny model; `infinitetalk` overrides its options."""
    brief: dict[str, Any] = {"kind": "train", "avatar": avatar, "video": video, "backend": "infinitetalk",
                             "epochs": epochs, "batch_size": batch_size, "checkpoint_every": checkpoint_every,
                             "mixed_precision": "no"}
    if max_steps is not None:
        brief["max_steps"] = max_steps
    if seed is not None:
        brief["seed"] = seed
    brief["infinitetalk"] = {**TINY_INFINITETALK, **infinitetalk}
    return yaml.safe_dump(brief, sort_keys=False)
