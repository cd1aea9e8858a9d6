"""Video I/O with real ffmpeg/ffprobe: encode synthetic frames, probe them, refuse bad files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.video import frames_to_uint8, probe_video, write_mp4, write_poster
from schemas.errors import VideostudioError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="needs ffmpeg and ffprobe")


def _frames(count: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(count)])


@pytest.mark.parametrize("count,height,width,fps", [(25, 64, 96, 24), (13, 48, 80, 30)])
def test_write_then_probe(tmp_path: Path, count: int, height: int, width: int, fps: int) -> None:
    path = write_mp4(_frames(count, height, width), tmp_path / "out.mp4", fps=fps)
    assert path.stat().st_size > 0
    info = probe_video(path)
    assert (info.width, info.height) == (width, height)
    assert info.fps == pytest.approx(fps)
    assert info.num_frames == count
    assert info.codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert info.duration_s == pytest.approx(count / fps, abs=0.05)


def test_write_float_frames(tmp_path: Path) -> None:
    frames = np.linspace(0.0, 1.0, 5 * 32 * 32 * 3, dtype=np.float32).reshape(5, 32, 32, 3)
    info = probe_video(write_mp4(frames, tmp_path / "f.mp4", fps=8))
    assert (info.num_frames, info.width, info.height) == (5, 32, 32)


def test_frames_to_uint8() -> None:
    out = frames_to_uint8(np.array([[[[-0.5, 0.0, 0.5]], [[1.0, 1.5, 0.999]]]], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [[[[0, 0, 128]], [[255, 255, 255]]]]
    same = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    assert frames_to_uint8(same) is same


def test_write_mp4_rejects_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_mp4(np.zeros((4, 32, 32), dtype=np.uint8), tmp_path / "x.mp4", fps=8)
    with pytest.raises(ValueError):
        write_mp4(np.zeros((4, 32, 32, 4), dtype=np.uint8), tmp_path / "x.mp4", fps=8)


def test_write_mp4_odd_size_fails_with_code(tmp_path: Path) -> None:
    # yuv420p needs even dimensions; the failure must surface as a coded error, not a hang.
    with pytest.raises(VideostudioError) as exc:
        write_mp4(_frames(3, 33, 33), tmp_path / "odd.mp4", fps=8)
    assert exc.value.code == "encode_failed"


def test_write_poster(tmp_path: Path) -> None:
    from PIL import Image

    path = write_poster(_frames(1, 48, 64)[0], tmp_path / "poster.jpg")
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.size == (64, 48)


def test_probe_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideostudioError) as exc:
        probe_video(empty)
    assert exc.value.code == "unreadable_video"


def test_probe_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideostudioError) as exc:
        probe_video(text)
    assert exc.value.code == "unreadable_video"


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideostudioError) as exc:
        probe_video(tmp_path / "missing.mp4")
    assert exc.value.code == "unreadable_video"


def test_probe_audio_only(tmp_path: Path) -> None:
    audio = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=1", str(audio)],
                   check=True)
    with pytest.raises(VideostudioError) as exc:
        probe_video(audio)
    assert exc.value.code == "no_video_stream"
