"""What goes behind the person, frame by frame: one small class per `background:` shape.

`open_background` fetches what the brief names from the bucket and checks it (`background_not_found`,
`unreadable_background`); `frame_at(index, frame, alpha)` gives the background of frame `index` at the
video's size. A matte has no background (None): the compose stage writes alpha instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.storage import Storage
from core.video import probe_video
from core.video_write import stream_covering
from schemas.background import (
    BlurBackground,
    ColorBackground,
    ImageBackground,
    MatteBackground,
    VideoBackground,
)
from schemas.errors import VideostudioError

MAX_IMAGE_PIXELS = 8192 * 8192  # decompression-bomb guard for background stills


class BackgroundSource(Protocol):
    def frame_at(self, index: int, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class Flat:
    """A colour or a fitted still: the same picture behind every frame."""

    def __init__(self, picture: np.ndarray) -> None:
        self.picture = picture

    def frame_at(self, index: int, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return self.picture

    def close(self) -> None:
        pass


class Clip:
    """A background clip streamed in step with the video: looped when shorter, cut when longer."""

    def __init__(self, path: Path, *, rate: Fraction, size: tuple[int, int], start_frame: int) -> None:
        self._frames: Iterator = stream_covering(path, rate=rate, size=size, start_frame=start_frame)
        self._next = start_frame

    def frame_at(self, index: int, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        if index != self._next:
            raise ValueError(f"background clip read out of order: frame {index}, expected {self._next}")
        self._next += 1
        item = next(self._frames, None)
        if item is None:
            raise VideostudioError("unreadable_background", "the background video ended while it was being read")
        return item.pixels

    def close(self) -> None:
        self._frames.close()


class Blurred:
    """The video's own background, blurred; the person's colours are kept out of the blur (a mask-weighted
    average), so no halo of them spreads into it. Blurred at a quarter size: a large blur loses nothing."""

    def __init__(self, radius: float) -> None:
        self.radius = radius

    def frame_at(self, index: int, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        sigma = max(0.5, self.radius * max(height, width) / 1920.0)
        factor = max(1, min(4, int(sigma // 2)))
        small = (max(1, width // factor), max(1, height // factor))
        weight = cv2.resize(1.0 - alpha, small, interpolation=cv2.INTER_AREA)[..., None]
        pixels = cv2.resize(frame, small, interpolation=cv2.INTER_AREA).astype(np.float32)
        blurred = cv2.GaussianBlur(pixels * weight, (0, 0), sigma / factor)
        norm = cv2.GaussianBlur(weight, (0, 0), sigma / factor)
        norm = norm[..., None] if norm.ndim == 2 else norm
        # Where the person covers everything around a pixel, fall back to the plain blur.
        plain = cv2.GaussianBlur(pixels, (0, 0), sigma / factor)
        mixed = np.where(norm > 1e-3, blurred / np.maximum(norm, 1e-3), plain)
        return cv2.resize(np.clip(mixed, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)

    def close(self) -> None:
        pass


def fit_image(image: np.ndarray, size: tuple[int, int], *, fit: str, fill: tuple[int, int, int]) -> np.ndarray:
    """`image` scaled to cover `size` (cropped at the centre) or to fit inside it (centred on `fill`)."""
    width, height = size
    ih, iw = image.shape[:2]
    scale = (max if fit == "cover" else min)(width / iw, height / ih)
    sw, sh = max(1, round(iw * scale)), max(1, round(ih * scale))
    scaled = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = fill
    # Centre the scaled picture: crop what overhangs, pad what falls short.
    sx, sy = (sw - width) // 2, (sh - height) // 2
    src = scaled[max(0, sy):max(0, sy) + min(height, sh), max(0, sx):max(0, sx) + min(width, sw)]
    dy, dx = max(0, -sy), max(0, -sx)
    canvas[dy:dy + src.shape[0], dx:dx + src.shape[1]] = src
    return canvas


def _fetch(storage: Storage, key: str, dest: Path, what: str) -> Path:
    if not storage.exists(key):
        raise VideostudioError("background_not_found", f"the background {what} {key!r} is not in the bucket")
    return storage.download(key, dest)


def load_image(path: Path, key: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise VideostudioError("unreadable_background", f"the background image {key!r} is "
                                       f"{image.width}×{image.height}; the limit is {MAX_IMAGE_PIXELS:,} pixels")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VideostudioError("unreadable_background", f"the background image {key!r} cannot be decoded "
                               f"({type(exc).__name__})") from None


def check_clip(path: Path, key: str) -> None:
    try:
        info = probe_video(path)
    except VideostudioError as exc:
        raise VideostudioError("unreadable_background", f"the background video {key!r} cannot be read: "
                               f"{exc.message}") from None
    if info.width <= 0 or info.height <= 0:
        raise VideostudioError("unreadable_background", f"the background video {key!r} has no picture")


def open_background(background, storage: Storage, scratch: Path, *, size: tuple[int, int], rate: Fraction,
                    start_frame: int = 0) -> BackgroundSource | None:
    """The background for a video of `size` (width, height) at `rate`, from frame `start_frame` on."""
    width, height = size
    if isinstance(background, MatteBackground):
        return None
    if isinstance(background, ColorBackground):
        picture = np.empty((height, width, 3), np.uint8)
        picture[:] = background.rgb
        return Flat(picture)
    if isinstance(background, ImageBackground):
        path = _fetch(storage, background.image, scratch / "background-image", "image")
        fill = ColorBackground(color=background.fill).rgb
        return Flat(fit_image(load_image(path, background.image), size, fit=background.fit, fill=fill))
    if isinstance(background, VideoBackground):
        path = _fetch(storage, background.video, scratch / "background-video", "video")
        check_clip(path, background.video)
        return Clip(path, rate=rate, size=size, start_frame=start_frame)
    if isinstance(background, BlurBackground):
        return Blurred(background.blur)
    raise TypeError(f"unknown background {type(background).__name__}")


def check_background(background, storage: Storage, scratch: Path) -> None:
    """What prepare checks before any work: the image or clip is there and decodes."""
    if isinstance(background, ImageBackground):
        load_image(_fetch(storage, background.image, scratch / "background-image", "image"), background.image)
    elif isinstance(background, VideoBackground):
        check_clip(_fetch(storage, background.video, scratch / "background-video", "video"), background.video)
