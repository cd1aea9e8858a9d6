"""Split a video's frames into train/val/test by contiguous time blocks.

Neighbouring frames of a video are near-identical, so a random per-frame split leaks:
the test set would contain frames the model trained on a few milliseconds apart. Here
the timeline is cut into blocks, whole blocks are dealt to splits (deterministically
for a seed), and frames within `guard_s` of a boundary between different splits are
dropped, so any two frames in different splits are at least 2·guard_s apart (guard_s: a quarter second
at most, well past the time over which neighbouring frames look alike).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.85, 0.10, 0.05)
MIN_BLOCKS = 40
MAX_BLOCKS = 200
TARGET_BLOCK_S = 2.0


@dataclass(frozen=True)
class SplitPlan:
    labels: list[str | None]  # per frame: a split, or None for a guard-band frame
    block_s: float
    guard_s: float
    block_splits: list[str]


def split_by_time_blocks(times: list[float], *, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                         block_s: float | None = None, guard_s: float | None = None) -> SplitPlan:
    if not times:
        return SplitPlan([], 0.0, 0.0, [])
    start, end = min(times), max(times)
    span = max(end - start, 1e-6)
    if block_s is None:
        blocks = int(min(MAX_BLOCKS, max(MIN_BLOCKS, span / TARGET_BLOCK_S)))
        block_s = span / blocks
    blocks = max(1, int(span // block_s) + 1)
    if guard_s is None:
        guard_s = min(0.25, block_s / 8)
    block_of = [min(blocks - 1, int((t - start) // block_s)) for t in times]
    # Frames a block keeps even if both neighbours go to other splits: what val and test are filled with,
    # so their share after the guard bands is close to the target.
    frames_in = [0] * blocks
    for t, b in zip(times, block_of):
        offset = t - (start + b * block_s)
        if offset >= guard_s and block_s - offset >= guard_s:
            frames_in[b] += 1

    # Deal shuffled blocks: test first, then val, then the rest to train, by frame counts.
    order = list(range(blocks))
    random.Random(seed).shuffle(order)
    total = len(times)
    targets = {"test": fractions[2] * total, "val": fractions[1] * total}
    assigned = ["train"] * blocks
    filled = {"test": 0, "val": 0}
    cursor = 0
    for split in ("test", "val"):
        # Take blocks while that brings the split closer to its target (at least one block each).
        while cursor < len(order) - 1:
            block = order[cursor]
            after = filled[split] + frames_in[block]
            if filled[split] and abs(after - targets[split]) >= abs(filled[split] - targets[split]):
                break
            cursor += 1
            if frames_in[block] == 0:
                continue
            assigned[block] = split
            filled[split] = after

    labels: list[str | None] = []
    for t, b in zip(times, block_of):
        block_start = start + b * block_s
        block_end = block_start + block_s
        near_previous = b > 0 and assigned[b - 1] != assigned[b] and t - block_start < guard_s
        near_next = b < blocks - 1 and assigned[b + 1] != assigned[b] and block_end - t < guard_s
        labels.append(None if near_previous or near_next else assigned[b])
    return SplitPlan(labels, block_s, guard_s, assigned)
