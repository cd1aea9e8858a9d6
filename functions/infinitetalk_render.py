"""Rendering an InfiniteTalk avatar's speech to a silent MP4, on one device or across several.

One device: `render_speech(job, on_step=...)` in this process. Several (`gpus:` in the brief, or long speech
on a machine with more than one GPU): `render_speech_distributed(job, world_size, on_progress=...)` runs the
same function in `world_size` processes that form a process group (NCCL on GPUs; gloo on a CPU, which is
how the tests run it). Every rank loads the models, shards the transformer's tokens with diffusers' context
parallelism (Ulysses, `functions/infinitetalk_parallel.py`) and samples the same chunks with the same seed,
so all ranks hold the same frames; rank 0 writes them.

The processes talk to the stage through two small files in the job's scratch folder: rank 0 appends its
progress, and the stage writes a cancel marker that every rank checks at every step (they are in lockstep,
so they all stop at the same step and none is left waiting in a collective).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.video import write_mp4
from functions.infinitetalk_audio import frame_windows, prepare_wave
from functions.infinitetalk_chunks import Chunk, plan_chunks
from functions.infinitetalk_pipeline import DEFAULT_SHIFT_480P, DEFAULT_SHIFT_720P, iter_talking
from schemas.brief import InfiniteTalkOptions

if TYPE_CHECKING:
    from functions.encoder_cache import EncoderCache

FPS = 25
ADAPTER = "avatar"

OnStep = Callable[[Chunk, int, int], None]
OnFrame = Callable[[int, np.ndarray], None]


class RenderCancelled(Exception):
    """The stage asked the ranks to stop (its job was cancelled)."""


@dataclass(frozen=True)
class SpeechRender:
    """Everything a render needs, as plain values and files (it crosses process boundaries)."""

    options_json: str  # InfiniteTalkOptions
    lora: str  # the avatar's lora.safetensors
    reference_image: str
    reference_footage: str
    speech: str  # the speech, any format prepare_wave reads
    num_frames: int
    seed: int
    device: str  # "cuda" or "cpu"; rank r of several uses cuda:r
    method: str  # quantization method for load_models ("none": the models' dtype)
    output: str  # the silent MP4 rank 0 writes
    progress_file: str | None = None
    cancel_file: str | None = None

    @property
    def options(self) -> InfiniteTalkOptions:
        return InfiniteTalkOptions.model_validate_json(self.options_json)

    def chunks(self) -> list[Chunk]:
        o = self.options
        return plan_chunks(self.num_frames, chunk_frames=o.chunk_frames, motion_frames=o.motion_frames)


@dataclass
class RenderResult:
    chunks: int
    poster: np.ndarray
    random_weights: bool
    quantization: dict | None
    render_s: float


def shift_for(options: InfiniteTalkOptions, height: int, width: int) -> float:
    if options.shift is not None:
        return options.shift
    return DEFAULT_SHIFT_720P if min(height, width) >= 720 else DEFAULT_SHIFT_480P


def footage_source(path: Path) -> Callable[[int], np.ndarray]:
    """Video-to-video's frame source: the reference footage played forward, backward, forward… (no jump)."""
    from core.video import probe_video, sample_frames
    from functions.reference_footage import ping_pong

    info = probe_video(path)
    clip = np.stack([f.pixels for f in sample_frames(path, fps=FPS, size=(info.width, info.height))])
    return lambda index: clip[ping_pong(index + 1, len(clip))[index]]


@contextlib.contextmanager
def avatar_lora(transformer, weights: Path) -> Iterator[None]:
    """The avatar's LoRA on the (cached, shared) transformer for one render only."""
    transformer.load_lora_adapter(str(weights.parent), weight_name=weights.name, adapter_name=ADAPTER, prefix=None)
    try:
        yield
    finally:
        transformer.delete_adapters(ADAPTER)


def render_speech(job: SpeechRender, *, on_step: OnStep | None = None, on_frame: OnFrame | None = None,
                  rank: int = 0, world_size: int = 1, encoders: EncoderCache | None = None) -> RenderResult:
    """Sample the speech in chunks with the avatar's LoRA and write the frames (rank 0) to `job.output`.
    `encoders`: the encoder cache (in the stage's process; spawned ranks encode for themselves)."""
    from functions.infinitetalk_encoders import speech_features, text_cache
    from functions.models.infinitetalk_loading import load_models

    options = job.options
    device = f"cuda:{rank}" if job.device == "cuda" and world_size > 1 else job.device
    reference = np.asarray(Image.open(job.reference_image).convert("RGB"))
    height, width = reference.shape[:2]
    models = load_models(options, device=device, method=job.method)
    transformer = models.components.transformer
    if world_size > 1:
        from functions.infinitetalk_parallel import enable_context_parallel

        enable_context_parallel(transformer, world_size=world_size)
    wave = prepare_wave(job.speech)
    if encoders is not None:
        features = speech_features(encoders, models, options, wave, frames=job.num_frames)
    else:
        features = models.speech.features(wave, frames=job.num_frames)
    source = reference if options.mode == "image" else footage_source(Path(job.reference_footage))
    poster: list[np.ndarray] = []
    clock = time.perf_counter()
    with avatar_lora(transformer, Path(job.lora)):
        stream = iter_talking(
            models.components, reference=source, total_frames=job.num_frames,
            audio_windows=lambda start, count: frame_windows(features, start, count),
            prompt=options.prompt, negative_prompt=options.negative_prompt, height=height, width=width,
            steps=options.steps, text_guidance=options.text_guidance, audio_guidance=options.audio_guidance,
            shift=shift_for(options, height, width), seed=job.seed, chunk_frames=options.chunk_frames,
            motion_frames=options.motion_frames, on_step=on_step or _file_hooks(job, rank),
            colour_anchor=options.colour_anchor,
            text_cache=text_cache(encoders, options, method=job.method) if encoders is not None else None)

        def frames():
            for chunk, block in stream:
                for n, frame in enumerate(block):
                    index = chunk.new_start + n
                    if index == job.num_frames // 3:
                        poster.append(frame)
                    if on_frame is not None:
                        on_frame(index, frame)
                    yield frame

        if rank == 0:
            write_mp4(frames(), Path(job.output), fps=FPS)
        else:
            for _ in frames():  # the other ranks compute the same frames (their shards are needed), write nothing
                pass
    return RenderResult(chunks=len(job.chunks()), poster=poster[0] if poster else reference, quantization=models.quantization,
                        random_weights=models.random_weights, render_s=time.perf_counter() - clock)


def _file_hooks(job: SpeechRender, rank: int) -> OnStep:
    """A spawned rank's progress (rank 0 appends it) and cancel check (every rank, every step)."""
    total_chunks = len(job.chunks())

    def on_step(chunk: Chunk, step: int, steps: int) -> None:
        if job.cancel_file and Path(job.cancel_file).exists():
            raise RenderCancelled("the job was cancelled")
        if rank == 0 and job.progress_file:
            with open(job.progress_file, "a") as handle:
                handle.write(json.dumps({"done": chunk.index * steps + step, "total": total_chunks * steps,
                                         "chunk": chunk.index}) + "\n")

    return on_step


def _rank(rank: int, world_size: int, job: SpeechRender) -> dict:
    result = render_speech(job, rank=rank, world_size=world_size)
    return {"chunks": result.chunks, "poster": result.poster, "random_weights": result.random_weights,
            "quantization": result.quantization, "render_s": result.render_s}


def render_speech_distributed(job: SpeechRender, world_size: int, *,
                              on_progress: Callable[[int, int, int], None]) -> RenderResult:
    """`render_speech` in `world_size` processes. `on_progress(done, total, chunk)` runs here as rank 0 reports;
    if it raises (a cancel), the ranks are told to stop at their next step and the error is raised again."""
    from functions.infinitetalk_parallel import distributed_backend, launch

    backend = "nccl" if job.device == "cuda" else "gloo"
    if backend != distributed_backend() and backend == "nccl":
        raise RuntimeError("a CUDA render across GPUs needs CUDA")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = launch(_rank, world_size, job, backend=backend)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="infinitetalk-ranks", daemon=True)
    worker.start()
    seen = 0
    try:
        while worker.is_alive() or seen < _lines(job.progress_file):
            for line in _read_from(job.progress_file, seen):
                seen += 1
                report = json.loads(line)
                on_progress(report["done"], report["total"], report["chunk"])
            worker.join(timeout=0.25)
    except BaseException:
        if job.cancel_file:
            Path(job.cancel_file).touch()
        worker.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    r = outcome["result"]
    return RenderResult(chunks=r["chunks"], poster=r["poster"], random_weights=r["random_weights"],
                        quantization=r["quantization"], render_s=r["render_s"])


def _lines(path: str | None) -> int:
    if not path or not Path(path).exists():
        return 0
    return len(Path(path).read_text().splitlines())


def _read_from(path: str | None, start: int) -> list[str]:
    if not path or not Path(path).exists():
        return []
    return Path(path).read_text().splitlines()[start:]


def read_video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a silent MP4 this module wrote (25 fps), one at a time."""
    from core.video import probe_video, sample_frames

    info = probe_video(path)
    for frame in sample_frames(path, fps=FPS, size=(info.width, info.height)):
        yield frame.pixels
