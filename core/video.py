"""Video I/O with real ffmpeg (through ffmpeg-python): encode frames, write posters, probe files."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from schemas.errors import VideostudioError


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    pix_fmt: str


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """[T,H,W,3] floats in 0..1 (diffusers' `np` output) → uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, *, fps: int, crf: int = 18) -> Path:
    """Encode [T,H,W,3] uint8 RGB frames as H.264 (yuv420p, faststart) at exactly `fps`.

    Frames are streamed to ffmpeg's stdin one at a time, so memory stays flat.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected [T,H,W,3] frames, got {frames.shape}")
    count, height, width, _ = frames.shape
    process = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="medium", r=fps,
                movflags="+faststart", **{"frames:v": count})
        .overwrite_output()
        .global_args("-loglevel", "error", "-nostdin")
        .run_async(pipe_stdin=True, pipe_stderr=True)
    )
    try:
        for frame in frames_to_uint8(frames):
            process.stdin.write(np.ascontiguousarray(frame).tobytes())
    except BrokenPipeError:
        pass  # ffmpeg exited early; its stderr says why below
    finally:
        process.stdin.close()
    stderr = process.stderr.read().decode(errors="replace")
    if process.wait() != 0:
        raise VideostudioError("encode_failed", f"ffmpeg could not encode the video: {stderr.strip()[-500:]}")
    return path


def write_poster(frame: np.ndarray, path: Path, *, quality: int = 90) -> Path:
    Image.fromarray(frames_to_uint8(frame[None])[0]).save(path, format="JPEG", quality=quality)
    return path


def probe_video(path: Path) -> VideoInfo:
    """ffprobe the first video stream; raise `unreadable_video` / `no_video_stream` on bad files."""
    try:
        info = ffmpeg.probe(str(path), count_frames=None)
    except ffmpeg.Error as exc:
        message = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise VideostudioError("unreadable_video", f"ffprobe cannot read the file: {message[-1] if message else exc}") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise VideostudioError("no_video_stream", "the file has no video stream")
    stream = streams[0]
    fps = float(Fraction(stream.get("avg_frame_rate") or stream.get("r_frame_rate") or "0/1")) if stream.get(
        "avg_frame_rate", "0/0") != "0/0" else 0.0
    frames = stream.get("nb_read_frames") or stream.get("nb_frames") or 0
    duration = float(stream.get("duration") or info.get("format", {}).get("duration") or 0.0)
    return VideoInfo(
        width=int(stream["width"]),
        height=int(stream["height"]),
        fps=fps,
        num_frames=int(frames),
        duration_s=duration,
        codec=stream.get("codec_name", ""),
        pix_fmt=stream.get("pix_fmt", ""),
    )
