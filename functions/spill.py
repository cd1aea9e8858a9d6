"""Colour-spill suppression for green and blue screens: light bounced off the screen tints the person's edge
(hair, shoulders) with the screen's colour, and a new background makes that fringe obvious.

`screen_colour` tells whether the backdrop is a screen (its median is strongly green or blue); `suppress`
limits that channel to the larger of the other two in the edge band, the classic despill, fading out inside
the person so skin and clothes keep their colour.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Screen = Literal["green", "blue"]
SCREEN_MARGIN = 40  # the screen channel beats both others by this much (0..255) in the backdrop's median
SCREEN_MIN_SHARE = 0.2  # at least this share of the frame must be backdrop to judge it
EDGE_BAND = 0.02  # share of the frame's long side, inside the person's edge, that gets despilled
_CHANNEL = {"green": 1, "blue": 2}


def screen_colour(frame: np.ndarray, alpha: np.ndarray) -> Screen | None:
    """'green' or 'blue' when the pixels behind the person are a chroma screen, else None."""
    backdrop = alpha < 0.05
    if backdrop.mean() < SCREEN_MIN_SHARE:
        return None
    r, g, b = (float(np.median(frame[..., c][backdrop])) for c in range(3))
    if g > r + SCREEN_MARGIN and g > b + SCREEN_MARGIN:
        return "green"
    if b > r + SCREEN_MARGIN and b > g + SCREEN_MARGIN:
        return "blue"
    return None


def edge_weight(alpha: np.ndarray) -> np.ndarray:
    """1 at and outside the person's edge, falling to 0 a band's width inside the person."""
    height, width = alpha.shape
    band = max(2, round(EDGE_BAND * max(height, width)))
    inside = (alpha > 0.98).astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    return np.clip(1.0 - distance / band, 0.0, 1.0).astype(np.float32)


def suppress(frame: np.ndarray, alpha: np.ndarray, screen: Screen) -> np.ndarray:
    """The frame with the screen's channel limited to max(other two) near the person's edge."""
    channel = _CHANNEL[screen]
    others = [c for c in range(3) if c != channel]
    pixels = frame.astype(np.int16)
    limit = np.maximum(pixels[..., others[0]], pixels[..., others[1]])
    excess = np.maximum(pixels[..., channel] - limit, 0).astype(np.float32)
    out = pixels.copy()
    out[..., channel] = np.round(pixels[..., channel] - excess * edge_weight(alpha)).astype(np.int16)
    return out.astype(np.uint8)
