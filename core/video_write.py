"""Video I/O beyond core/video.py's H.264 writer: frames streamed into one of several codecs (H.264, VP9 with
alpha, ProRes 4444), a clip streamed out scaled to cover a frame (looped), segments joined without re-encoding,
and a source's audio carried over untouched where the container allows it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import ffmpeg
import numpy as np

from core.video import SampledFrame, _read_frames  # the one streamed raw-frame reader (prefetching, early close)
from schemas.errors import VideostudioError

Codec = Literal["h264", "vp9-alpha", "prores-4444"]
# Output options per codec. VP9 keeps alpha as a second stream inside WebM (yuva420p); ProRes 4444 carries it
# in the picture (yuva444p10le). `-threads 2` because the CPUs are shared; the presets favour speed, the quality
# settings keep edges clean.
_CODEC_ARGS: dict[Codec, dict] = {
    "h264": {"vcodec": "libx264", "pix_fmt": "yuv420p", "crf": 18, "preset": "veryfast", "threads": 2},
    "vp9-alpha": {"vcodec": "libvpx-vp9", "pix_fmt": "yuva420p", "crf": 30, "b:v": 0, "deadline": "realtime",
                  "cpu-used": 8, "row-mt": 1, "threads": 2},
    "prores-4444": {"vcodec": "prores_ks", "pix_fmt": "yuva444p10le", "profile:v": 4, "threads": 2},
}
_INPUT_FORMAT = {"h264": "rgb24", "vp9-alpha": "rgba", "prores-4444": "rgba"}
# Audio codecs each container takes as they are; anything else is encoded once to the fallback.
_KEEPS_AUDIO = {"mp4": {"aac", "mp3", "alac", "opus", "flac", "ac3"}, "mov": {"aac", "mp3", "alac", "pcm_s16le",
                "pcm_s24le", "ac3"}, "webm": {"opus", "vorbis"}}
_FALLBACK_AUDIO = {"mp4": ("aac", "160k"), "mov": ("aac", "160k"), "webm": ("libopus", "128k")}


def frame_rate(fps: float) -> Fraction:
    """A probed float rate as the exact rational players expect (29.97 → 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


class FrameWriter:
    """Frames in, one encoded file out: `write()` [H, W, 3] RGB (h264) or [H, W, 4] RGBA frames, then `close()`."""

    def __init__(self, path: Path, *, width: int, height: int, rate: Fraction, codec: Codec) -> None:
        self.path, self.codec, self.frames = path, codec, 0
        args = {k: v for k, v in _CODEC_ARGS[codec].items()}
        if codec == "h264":
            args["movflags"] = "+faststart"
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt=_INPUT_FORMAT[codec], s=f"{width}x{height}",
                              framerate=str(rate))
        if codec != "prores-4444" and (width % 2 or height % 2):
            stream = stream.filter("crop", width // 2 * 2, height // 2 * 2, 0, 0)  # 4:2:0 needs even sides
        self._process = (
            stream.output(str(path), r=str(rate), **args)
            .overwrite_output()
            .global_args("-loglevel", "error", "-nostdin")
            .run_async(pipe_stdin=True, pipe_stderr=True)
        )

    def write(self, frame: np.ndarray) -> None:
        try:
            self._process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            self.frames += 1
        except BrokenPipeError:
            self.close()  # raises encode_failed with ffmpeg's reason

    def close(self) -> Path:
        if self._process.stdin and not self._process.stdin.closed:
            self._process.stdin.close()
        stderr = self._process.stderr.read().decode(errors="replace")
        if self._process.wait() != 0:
            raise VideostudioError("encode_failed", f"ffmpeg could not encode the {self.codec} video: "
                                   f"{_no_paths(stderr)}")
        return self.path

    def abort(self) -> None:
        self._process.kill()
        self._process.wait()


def stream_covering(path: Path, *, rate: Fraction, size: tuple[int, int], start_frame: int = 0,
                    loop: bool = True) -> Iterator[SampledFrame]:
    """`path`'s frames at `rate`, scaled to cover `size` (width, height) and centre-cropped, from `start_frame`
    on; looped forever when `loop` (the caller stops reading). ffmpeg autorotates."""
    width, height = size
    stream = ffmpeg.input(str(path), **({"stream_loop": -1} if loop else {})).video
    stream = (stream.filter("fps", fps=str(rate))
              .filter("scale", width, height, force_original_aspect_ratio="increase")
              .filter("crop", width, height)
              .filter("setsar", 1))
    if start_frame:
        stream = stream.filter("trim", start_frame=start_frame).filter("setpts", "PTS-STARTPTS")
    output = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24")
    yield from _read_frames(output, fps=float(rate), shape=(height, width, 3), keep=None, prefetch=4)


def concat_segments(segments: list[Path], dest: Path) -> Path:
    """Join encoded segments of one codec end to end, copying their packets (no re-encode)."""
    listing = dest.with_suffix(dest.suffix + ".txt")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in segments))
    _ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v", "-c", "copy", str(dest)],
            "join the video's segments")
    listing.unlink()
    return dest


@dataclass(frozen=True)
class AudioCarried:
    how: Literal["copied", "reencoded", "none"]
    codec: str | None = None


def audio_codec(path: Path) -> str | None:
    """The first audio stream's codec name, or None when the file has no sound."""
    streams = ffmpeg.probe(str(path)).get("streams", [])
    return next((s.get("codec_name") for s in streams if s.get("codec_type") == "audio"), None)


def carry_audio(video: Path, source: Path, dest: Path) -> AudioCarried:
    """`video`'s picture (copied) with `source`'s first audio stream: its packets copied as they are when the
    container of `dest` takes that codec, else encoded once. Neither stream is cut."""
    container = dest.suffix.lstrip(".").lower()
    codec = audio_codec(source)
    base = ["-i", str(video), "-i", str(source), "-map", "0:v:0"]
    movflags = ["-movflags", "+faststart"] if container in ("mp4", "mov") else []
    if codec is None:
        _ffmpeg([*base, "-c:v", "copy", *movflags, str(dest)], "write the video")
        return AudioCarried("none")
    if codec in _KEEPS_AUDIO.get(container, set()):
        _ffmpeg([*base, "-map", "1:a:0", "-c", "copy", *movflags, str(dest)], "copy the audio track")
        return AudioCarried("copied", codec)
    encoder, bitrate = _FALLBACK_AUDIO[container]
    _ffmpeg([*base, "-map", "1:a:0", "-c:v", "copy", "-c:a", encoder, "-b:a", bitrate, *movflags, str(dest)],
            "encode the audio track")
    return AudioCarried("reencoded", codec)


def _ffmpeg(args: list[str], what: str) -> None:
    done = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], capture_output=True)
    if done.returncode != 0:
        raise VideostudioError("encode_failed", f"ffmpeg could not {what}: {_no_paths(done.stderr.decode(errors='replace'))}")


def _no_paths(stderr: str) -> str:
    """ffmpeg's last words without this machine's file paths (they go into manifests)."""
    return re.sub(r"/[^\s:'\"]+", "<file>", stderr.strip())[-400:]


def sample_small(path: Path, *, count: int, duration_s: float, side: int) -> list[np.ndarray]:
    """About `count` frames spread evenly over the video, each squashed to side×side RGB (a quick look at the
    whole video before the real pass)."""
    rate = max(count / max(duration_s, 1e-3), 0.01)
    output = (ffmpeg.input(str(path)).video.filter("fps", fps=rate).filter("scale", side, side)
              .output("pipe:", format="rawvideo", pix_fmt="rgb24"))
    return [f.pixels for f in _read_frames(output, fps=rate, shape=(side, side, 3), keep=None, prefetch=4)]
