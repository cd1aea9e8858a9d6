"""Defaults that more than one layer uses, defined once (briefs, the planner, previews, the CLI)."""

from __future__ import annotations

# Mochi 1's native output: 848×480 at 30 fps, classifier-free guidance 4.5 (the model card's values).
DEFAULT_WIDTH = 848
DEFAULT_HEIGHT = 480
DEFAULT_FPS = 30
DEFAULT_GUIDANCE_SCALE = 4.5
DEFAULT_NUM_FRAMES = 163  # Mochi's native length (6k+1)
