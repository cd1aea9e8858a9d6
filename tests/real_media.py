"""Real footage for tests: the talking-head clips in ../shared/media (people talking, with sound).

The clips last 5–7 s; training needs 30 s, so tests loop one into a longer video (the same real
person, motion and audio, played again), scaled down to keep CPU tests quick.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# ../shared/media beside the checkout; VIDEOSTUDIO_TEST_MEDIA points elsewhere (a checkout in another place).
MEDIA = Path(os.environ.get("VIDEOSTUDIO_TEST_MEDIA") or Path(__file__).resolve().parents[2] / "shared" / "media")


def media_file(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"real footage {name} is not in ../shared/media beside the checkout "
                    "(or set VIDEOSTUDIO_TEST_MEDIA)")
    return path


def looped_talking_video(dest: Path, *, clip: str = "talking-1.mp4", seconds: float = 36.0, side: int = 360) -> Path:
    """`clip` looped to `seconds`, scaled to side×side, H.264 + AAC (its own audio, looped with it)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(media_file(clip)), "-t", str(seconds),
                    "-vf", f"scale={side}:{side}", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(dest)],
                   check=True)
    return dest
