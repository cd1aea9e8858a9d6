"""Video I/O with real ffmpeg (through ffmpeg-python): encode frames, write posters, probe files."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from schemas.errors import VideostudioError


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as displayed: rotation metadata already applied
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    rotation: int = 0  # degrees clockwise the player rotates the stored picture
    variable_frame_rate: bool = False
    bit_depth: int = 8
    has_audio: bool = False


# Formats ffprobe reports for still images: a picture renamed .mp4 is not a video.
IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe", "apng")


def _rotation(stream: dict) -> int:
    """Rotation from the display matrix side data (new ffmpeg) or the legacy `rotate` tag."""
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(-float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag else 0


def _fraction(value: str | None) -> float:
    if not value or value in ("0/0", "N/A"):
        return 0.0
    return float(Fraction(value))


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """[T,H,W,3] floats in 0..1 (diffusers' `np` output) → uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray | Iterable[np.ndarray], path: Path, *, fps: int, crf: int = 18) -> Path:
    """Encode RGB frames ([T,H,W,3] array or an iterable of [H,W,3]) as H.264 (yuv420p, faststart) at exactly `fps`.

    Frames are streamed to ffmpeg's stdin one at a time, so an iterable keeps memory flat.
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None or first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"expected [H,W,3] frames, got {None if first is None else first.shape}")
    height, width, _ = first.shape
    process = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="medium", r=fps,
                movflags="+faststart")
        .overwrite_output()
        .global_args("-loglevel", "error", "-nostdin")
        .run_async(pipe_stdin=True, pipe_stderr=True)
    )
    try:
        for frame in itertools.chain([first], iterator):
            process.stdin.write(np.ascontiguousarray(frames_to_uint8(frame)).tobytes())
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


def probe_video(path: Path, *, count_frames: bool = False) -> VideoInfo:
    """ffprobe the first video stream.

    Raises `unreadable_video` (ffprobe cannot parse it), `not_a_video` (a still image) or
    `no_video_stream` (audio only).
    """
    try:
        info = ffmpeg.probe(str(path), **({"count_frames": None} if count_frames else {}))
    except ffmpeg.Error as exc:
        lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = lines[-1].replace(str(path), "<input>") if lines else "unknown error"
        raise VideostudioError("unreadable_video", f"ffprobe cannot read the file: {detail}") from None
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")]
    fmt = info.get("format", {})
    if not video:
        raise VideostudioError("no_video_stream", "the file has no video stream")
    if any(name in fmt.get("format_name", "").split(",") for name in IMAGE_FORMATS):
        raise VideostudioError("not_a_video", f"the file is a still image ({fmt.get('format_name')}), not a video")
    stream = video[0]
    rotation = _rotation(stream)
    width, height = int(stream["width"]), int(stream["height"])
    if rotation in (90, 270):
        width, height = height, width
    avg, real = _fraction(stream.get("avg_frame_rate")), _fraction(stream.get("r_frame_rate"))
    frames = stream.get("nb_read_frames") or stream.get("nb_frames") or 0
    duration = float(stream.get("duration") or fmt.get("duration") or 0.0)
    bits = stream.get("bits_per_raw_sample")
    return VideoInfo(
        width=width,
        height=height,
        fps=avg or real,
        num_frames=int(frames),
        duration_s=duration,
        codec=stream.get("codec_name", ""),
        pix_fmt=stream.get("pix_fmt", ""),
        rotation=rotation,
        # A container whose average rate differs from its base rate has frames of uneven length.
        variable_frame_rate=bool(avg and real and abs(avg - real) / real > 0.01),
        bit_depth=int(bits) if bits and str(bits).isdigit() else (10 if "10" in stream.get("pix_fmt", "") else 8),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )


@dataclass(frozen=True)
class SampledFrame:
    index: int  # position in the sampled sequence: the same in every pass over the same file and fps
    time_s: float
    pixels: np.ndarray  # [h, w] uint8 gray thumbnail (sample_thumbnails) or [H, W, 3] uint8 RGB (sample_frames)


def _sampled(path: Path, fps: float):
    """The one definition of "the frames of this video at `fps`", shared by every pass over it.

    ffmpeg autorotates (rotation metadata) and the `fps` filter turns variable frame rate into
    evenly spaced samples, deterministically: two passes yield the same frames in the same order.
    """
    return ffmpeg.input(str(path)).video.filter("fps", fps=fps)


_END = object()


def _read_frames(output, *, fps: float, shape: tuple[int, ...], keep: Callable[[int], bool] | None,
                 prefetch: int) -> Iterator[SampledFrame]:
    """Stream fixed-size raw frames from ffmpeg's stdout.

    A reader thread keeps up to `prefetch` frames ready, so ffmpeg decodes the next frames while the
    caller works on this one (with a bare pipe, whose buffer holds a fraction of a frame, the two
    would take turns). Memory: about `prefetch` + 2 frames.
    """
    process = output.global_args("-loglevel", "error", "-nostdin").run_async(pipe_stdout=True, pipe_stderr=True)
    frame_bytes = int(np.prod(shape))
    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        index = 0
        try:
            while not stop.is_set():
                chunk = process.stdout.read(frame_bytes)
                if len(chunk) < frame_bytes:
                    break
                if keep is None or keep(index):
                    frame = np.frombuffer(chunk, dtype=np.uint8).reshape(shape)
                    if not hand_over(SampledFrame(index, index / fps, frame)):
                        break
                index += 1
        finally:
            hand_over(_END)

    reader = threading.Thread(target=pump, name="ffmpeg-frames", daemon=True)
    reader.start()
    finished = False
    try:
        while (item := ready.get()) is not _END:
            yield item
        finished = True
    finally:
        stop.set()
        if not finished:  # the caller stopped early: ffmpeg's remaining output is not wanted
            process.kill()
        reader.join()
        process.stdout.close()
        stderr = process.stderr.read().decode(errors="replace")
        code = process.wait()
    if code != 0:
        raise VideostudioError("unreadable_video", f"ffmpeg could not decode the video: {stderr.strip()[-300:]}")


def thumbnail_size(size: tuple[int, int], thumb_width: int) -> tuple[int, int]:
    width, height = size
    thumb_w = min(thumb_width, width) // 2 * 2
    return thumb_w, max(2, round(height * thumb_w / width) // 2 * 2)


def sample_thumbnails(path: Path, *, fps: float, size: tuple[int, int], thumb_width: int = 256) -> Iterator[SampledFrame]:
    """Decode once, sample at `fps`, and stream small gray thumbnails (for the quality checks).

    Nothing is written at full resolution: on a CPU, encoding a full-size image per sampled frame
    costs several times the decode itself. The align stage decodes the frames it keeps again with
    `sample_frames`. `size` is the displayed (width, height) from `probe_video`.
    """
    thumb_w, thumb_h = thumbnail_size(size, thumb_width)
    output = _sampled(path, fps).filter("scale", thumb_w, thumb_h).output("pipe:", format="rawvideo", pix_fmt="gray")
    yield from _read_frames(output, fps=fps, shape=(thumb_h, thumb_w), keep=None, prefetch=64)


def sample_frames(path: Path, *, fps: float, size: tuple[int, int],
                  keep: Callable[[int], bool] | None = None) -> Iterator[SampledFrame]:
    """The same samples as `sample_thumbnails`, at full resolution in RGB; `keep(index)` picks which to yield."""
    width, height = size
    output = _sampled(path, fps).output("pipe:", format="rawvideo", pix_fmt="rgb24")
    yield from _read_frames(output, fps=fps, shape=(height, width, 3), keep=keep, prefetch=2)


def mux_audio(video: Path, audio: Path, dest: Path, *, bitrate: str = "160k") -> Path:
    """`video`'s H.264 stream (copied, not re-encoded) with `audio` encoded once to AAC, both from t = 0.

    Neither stream is cut (no -shortest): the caller makes the video as long as the speech, to the frame.
    ffmpeg writes AAC's encoder delay as an edit list, so the audio's first sample still plays at 0.
    """
    try:
        (
            ffmpeg.output(ffmpeg.input(str(video)).video, ffmpeg.input(str(audio)).audio, str(dest),
                          vcodec="copy", acodec="aac", audio_bitrate=bitrate, movflags="+faststart")
            .overwrite_output()
            .global_args("-loglevel", "error", "-nostdin")
            .run(capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()[-500:]
        raise VideostudioError("encode_failed", f"ffmpeg could not mux the speech into the video: {detail}") from None
    return dest
