"""A contact sheet PNG of sampled aligned faces, bordered by split, so a person can eyeball the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLIT_COLOURS = {"train": (46, 160, 67), "val": (31, 119, 180), "test": (255, 127, 14)}
THUMB = 128
BORDER = 4
CAPTION = 14


def sample_evenly(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def write_contact_sheet(faces: list[tuple[np.ndarray, str, float]], path: Path, *, columns: int = 8,
                        limit: int = 48) -> Path:
    """`faces`: (RGB crop, split, time_s) in time order."""
    picks = [faces[i] for i in sample_evenly(len(faces), limit)]
    rows = max(1, -(-len(picks) // columns))
    cell_w, cell_h = THUMB + 2 * BORDER, THUMB + 2 * BORDER + CAPTION
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, (crop, split, time_s) in enumerate(picks):
        x, y = (n % columns) * cell_w, (n // columns) * cell_h
        draw.rectangle([x, y, x + cell_w - 1, y + THUMB + 2 * BORDER - 1], fill=SPLIT_COLOURS.get(split, (128, 128, 128)))
        sheet.paste(Image.fromarray(crop).resize((THUMB, THUMB), Image.Resampling.LANCZOS), (x + BORDER, y + BORDER))
        draw.text((x + BORDER, y + THUMB + 2 * BORDER), f"{split} {time_s:.1f}s", fill=(230, 230, 230))
    sheet.save(path, format="PNG")
    return path
