"""Talking-render benchmark: the Wav2Lip render on this CPU, part by part, beside a plain hard-paste loop.

One run:

1. **Speech**: the first `--seconds` of ../shared/media/`--speech` (16 kHz), its mel (`melspectrogram`);
   the render makes round(seconds × 25) frames, as `talking_plan` would.
2. **Reference footage, per output size** (`--heights`, default 480, 720 and 1080; untimed set-up):
   ffmpeg decodes the real clip ../shared/media/`--clip` (talking-1.mp4, 700×700 at 30 fps, 6.1 s) at
   25 fps, scaled to the height and pillarboxed to 16:9 (854×480, 1280×720, 1920×1080; 1080 is an
   upscale). The align stage's detector and alignment (`TrackingDetector`, `estimate_alignment` with
   the default face padding) give every frame its box, landmarks and 512-crop matrix; those are
   smoothed over time as `reference_segment` does (Savitzky–Golay, `smooth_track` /
   `smooth_similarities`) into a `Wav2LipAvatarFiles` track; the frames are written as `reference.mp4`
   the way `write_reference` writes it (`write_mp4`, CRF 12). Timed: `read_reference` (what a render
   does first: decode the whole reference into memory).
3. **Renders, per output size × generator width** (`--widths`, default 1.0 = the public layout, 36 M
   parameters, and 0.25 / 0.125, the CPU-trained path; random weights, seed 0: speed does not depend
   on what the weights are; BatchNorm statistics randomised too, see 5.). Side by side, one after the
   other on the same frames and model, in an order that flips from one size to the next:
   - **feathered** — what `Wav2LipBackend.render` runs in fp32 (`VIDEOSTUDIO_TALKING_PRECISION=fp32`): `lip_synced_frames` (crop `face_input`, the
     generator in batches of `--batch-size`, `paste_back`) streamed into `write_mp4` (H.264, CRF 18,
     preset medium), then `mux_audio` (AAC), then the render's lip-sync metrics (`lip_sync_metrics`
     with an expert of the same width);
   - at `--compare-height` (720) also **feathered_plain**: the same, with the generator run as the loop ran
     it before `inference_copy` (the module itself, NCHW inputs) — the before/after of that change — and
     **feathered_bf16**: the same loop with `bf16=True` (the generator under bf16 autocast: what the render
     runs by default where `use_bf16` says so, on CUDA and on CPUs with AMX, such as this one);
   - **hard paste** — a plain loop as Wav2Lip's inference.py does it: the padded detection box
     (`wav2lip_box`) resized to 96 px, the same network (`inference_copy`) and batch size, the face
     resized back into the box and overwritten (`hard_paste`), into the same `write_mp4` and `mux_audio`.
   Parts: crop, generator and paste are timed inside the loop (`RenderTimings`; the same three
   clocks in the hard loop); "encode wait" is the rest of the `write_mp4` call (writing frames into
   ffmpeg's pipe, ffmpeg finishing); ffmpeg's own CPU seconds come from `RUSAGE_CHILDREN`. Frames/s
   and real-time factor (seconds of video per wall second; > 1 is faster than real time) are given
   for the render as the stage's `render_s` metric counts it (loop + encode) and for the whole thing
   (+ decode of the reference, mux, lip-sync metrics). ffmpeg's RSS is sampled every 50 ms.
   **Peak RSS** of a render: per size, for each of `--rss-widths`, a whole render alone in a fresh
   process (this script with a hidden `--child-render`): load both networks from files, `read_reference`,
   the loop into `write_mp4`, `mux_audio`, the lip-sync metrics; its VmHWM and sampled RSS per phase.
4. **Encode alone, per size**: `write_mp4` of the reference frames in ping-pong order (no render) and,
   for comparison only, the same ffmpeg command at preset veryfast (write_mp4 has no preset option).
5. **Generator alone** on the 720p crops, batches of `--generator-batch-sizes`: the plain module (NCHW, the
   render before), `inference_copy` (BatchNorm folded, channels_last: the render now; its uint8 outputs are
   compared with the plain module's), and that copy under bf16 autocast (the render's default on AMX CPUs and CUDA). The
   generators' BatchNorm statistics are randomised too, so the folding is checked on non-trivial values.
6. **Training steps** (`--train-widths`, `--train-batch-sizes`): `train_expert` and `train_generator`
   (with that expert, sync term on from step 0, as once the expert has converged) on a WindowSet of
   tests/av_corpus.py's talking astronaut over the minute of speech; `--train-steps` steps, the first
   is warm-up, median of the others (from `LoopHooks.on_step`).

torch runs `--threads` threads (2 on this machine: `torch.set_num_threads`). Every timing records the
CPU other processes used meanwhile (/proc/stat, in cores); `--wait-quiet S` waits up to S s before each
timing for them to use under 0.25 cores. This is a benchmark, not a test: it asserts nothing, and writes
bench/out/talking_render.json.

    .venv/bin/python bench/talking_render.py --wait-quiet 20
    .venv/bin/python bench/talking_render.py --quick   # 4 s of speech, 720p, widths 1.0 and 0.125
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from runinfo import cpu_model, git_commit, system_busy_s  # bench/, on the path of a script run from it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
MEDIA = ROOT.parent / "shared" / "media"
FPS = 25

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from core.video import mux_audio, write_mp4  # noqa: E402
from functions.alignment import CROP_SIZE, estimate_alignment, face_template  # noqa: E402
from functions.faces import TrackingDetector  # noqa: E402
from functions.lipsync_metrics import lip_sync_metrics  # noqa: E402
from functions.models.syncnet import LipSyncExpert  # noqa: E402
from functions.models.wav2lip import FACE_SIZE, Wav2LipGenerator, masked_input, parameter_count  # noqa: E402
from functions.models.wav2lip_audio import load_wav, mel_window, melspectrogram  # noqa: E402
from functions.paste_back import face_input, hard_paste, wav2lip_box  # noqa: E402
from functions.reference_footage import ping_pong, smooth_similarities, smooth_track  # noqa: E402
import functions.talking_render as talking_render  # noqa: E402
from functions.talking_render import (RenderTimings, TalkingFrames, _to_image, _to_network, inference_copy,  # noqa: E402
                                      lip_synced_frames)
from functions.wav2lip_avatar import REFERENCE_CRF, FaceTrack, Wav2LipAvatarFiles, read_reference  # noqa: E402

MiB = 1024 * 1024


# --------------------------------------------------------------------------- inputs
def cut_speech(source: Path, seconds: float, dest: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), "-t", str(seconds), "-ac", "1",
                    "-ar", "16000", "-c:a", "pcm_s16le", str(dest)], check=True)
    return dest


def decode_clip(clip: Path, height: int) -> np.ndarray:
    """The clip at 25 fps, scaled to `height`, pillarboxed to 16:9: [T, H, W, 3] uint8 RGB."""
    width = round(height * 16 / 9 / 2) * 2
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(clip),
                          "-vf", f"fps={FPS},scale=-2:{height}:flags=lanczos,pad={width}:{height}:(ow-iw)/2:0",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def face_track(frames: np.ndarray, width: float) -> tuple[Wav2LipAvatarFiles, float]:
    """The align stage's detector + alignment on every frame, smoothed as reference_segment smooths them."""
    template, detector = face_template(CROP_SIZE, 0.2), TrackingDetector()
    clock = time.perf_counter()
    faces = [max(detector.detect(frame), key=lambda f: f.area) for frame in frames]
    matrices = [estimate_alignment(face, template).matrix for face in faces]
    detect_s = time.perf_counter() - clock
    boxes = smooth_track(np.array([f.box for f in faces]))
    landmarks = smooth_track(np.array([f.landmarks for f in faces]))
    matrices = smooth_similarities(np.array(matrices))
    track = [FaceTrack(box=np.round(b, 3).tolist(), landmarks=np.round(lm, 3).tolist(), matrix=np.round(m, 8).tolist())
             for b, lm, m in zip(boxes, landmarks, matrices)]
    files = Wav2LipAvatarFiles(width=width, channel_order="rgb", fps=FPS, frame_width=frames.shape[2],
                               frame_height=frames.shape[1], source_first_frame=0, scale=1.0, track=track)
    return files, detect_s


def seeded_generator(width: float) -> Wav2LipGenerator:
    """Random weights (seed 0), and random BatchNorm statistics and affines too, so that folding BatchNorm into the
    convolutions (`inference_copy`) is checked on something other than the identity."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = Wav2LipGenerator(width).eval()
        with torch.no_grad():
            for layer in generator.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.running_mean.uniform_(-0.2, 0.2)
                    layer.running_var.uniform_(0.5, 2.0)
                    layer.weight.uniform_(0.5, 1.5)
                    layer.bias.uniform_(-0.2, 0.2)
        return generator


def seeded_expert(width: float) -> LipSyncExpert:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return LipSyncExpert(width).eval()


# --------------------------------------------------------------------------- measuring
class PeakRss:
    """Peak RSS of this process and of its children (ffmpeg), sampled every `interval` s in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.me = interval, psutil.Process()
        self.before = self.me.memory_info().rss
        self.peak = self.children_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.me.memory_info().rss)
                children = 0
                for child in self.me.children(recursive=True):
                    try:
                        children += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.children_peak = max(self.children_peak, children)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    """This process's CPU seconds (all threads) plus its finished children's (ffmpeg)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu_s()


class OtherLoad:
    """Other processes' CPU use over a block, in cores on average (this machine is shared)."""

    def __enter__(self) -> "OtherLoad":
        self._start = (time.perf_counter(), own_cpu_s(), system_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        wall0, own0, busy0 = self._start
        wall, busy = time.perf_counter() - wall0, system_busy_s()
        other = None if busy0 is None or busy is None else busy - busy0 - (own_cpu_s() - own0)
        self.cores = None if other is None or wall <= 0 else round(max(0.0, other / wall), 2)


QUIET: dict = {"max_wait_s": 0.0, "threshold_cores": 0.25, "waits": []}  # --wait-quiet; every wait is recorded


def settle(label: str) -> None:
    """Before a timing, with --wait-quiet S: wait up to S s until other processes use < 0.25 cores over 1 s."""
    if QUIET["max_wait_s"] <= 0:
        return
    start = time.perf_counter()
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        waited = time.perf_counter() - start
        quiet = load.cores is not None and load.cores < QUIET["threshold_cores"]
        if quiet or load.cores is None or waited >= QUIET["max_wait_s"]:
            QUIET["waits"].append({"before": label, "waited_s": round(waited, 1), "other_cores": load.cores,
                                   "quiet": quiet})
            return


def produced(frames: Iterator[np.ndarray], clock: list[float]) -> Iterator[np.ndarray]:
    """`frames`, adding to clock[0] the wall time spent making each one (the rest of the consumer's time is
    the encoder's)."""
    it = iter(frames)
    while True:
        start = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            clock[0] += time.perf_counter() - start
            return
        clock[0] += time.perf_counter() - start
        yield frame


def hard_paste_frames(generator: Wav2LipGenerator, reference: np.ndarray, files: Wav2LipAvatarFiles, mel: np.ndarray,
                      n_frames: int, *, batch_size: int, timings: RenderTimings) -> Iterator[np.ndarray]:
    """Wav2Lip inference.py's loop: box crop resized to 96, the generator, resize back and overwrite the box."""
    positions = ping_pong(n_frames, min(len(reference), len(files.track)))
    boxes = [np.asarray(t.box) for t in files.track]
    cuts = [wav2lip_box(box, reference.shape[1:]) for box in boxes]
    generator.eval()
    network = talking_render.inference_copy(generator)  # the network the feathered loop runs: only crop and paste differ
    with torch.no_grad():
        for start in range(0, n_frames, batch_size):
            span = range(start, min(n_frames, start + batch_size))
            clock = time.perf_counter()
            faces = []
            for t in span:
                x1, y1, x2, y2 = cuts[positions[t]]
                faces.append(cv2.resize(reference[positions[t]][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE)))
            inputs = _to_network(np.stack(faces), files.channel_order)
            mels = torch.from_numpy(np.stack([mel_window(mel, t, files.fps) for t in span])).unsqueeze(1)
            timings.crop_s += time.perf_counter() - clock
            clock = time.perf_counter()
            faces_in = masked_input(inputs, inputs).contiguous(memory_format=torch.channels_last)
            generated = network(mels, faces_in).float()
            timings.generate_s += time.perf_counter() - clock
            images = _to_image(generated, files.channel_order)
            for t, image in zip(span, images):
                p = positions[t]
                clock = time.perf_counter()
                frame = hard_paste(reference[p], image, box=boxes[p])
                timings.paste_s += time.perf_counter() - clock
                timings.frames += 1
                yield frame


def render(kind: str, generator: Wav2LipGenerator, expert: LipSyncExpert, reference: np.ndarray,
           files: Wav2LipAvatarFiles, mel: np.ndarray, speech: Path, n_frames: int, batch_size: int,
           scratch: Path) -> dict:
    """One whole render (loop → write_mp4 → mux_audio [→ lip-sync metrics]); wall seconds per part."""
    silent, talking = scratch / f"{kind}.mp4", scratch / f"{kind}-talking.mp4"
    result = TalkingFrames()
    produce = [0.0]
    if kind in ("feathered", "feathered_plain", "feathered_bf16"):
        frames = lip_synced_frames(generator, reference, files, mel, n_frames, batch_size=batch_size, result=result,
                                   bf16=kind == "feathered_bf16")
    else:
        frames = hard_paste_frames(generator, reference, files, mel, n_frames, batch_size=batch_size,
                                   timings=result.timings)
    settle(f"{kind} {files.frame_height}p width {generator.width}")
    children_before = children_cpu_s()
    cpu_before = time.process_time()
    other = OtherLoad().__enter__()
    shipped = talking_render.inference_copy
    if kind == "feathered_plain":  # the loop as it was before inference_copy: the module itself, NCHW
        talking_render.inference_copy = PlainModule
    try:
        with PeakRss() as rss:
            clock = time.perf_counter()
            write_mp4(produced(frames, produce), silent, fps=FPS)
            render_s = time.perf_counter() - clock
            clock = time.perf_counter()
            mux_audio(silent, speech, talking)
            mux_s = time.perf_counter() - clock
    finally:
        talking_render.inference_copy = shipped
    other.__exit__()
    ffmpeg_cpu = children_cpu_s() - children_before
    python_cpu = time.process_time() - cpu_before
    sync_s = None
    if kind != "hard":
        clock = time.perf_counter()
        lip_sync_metrics(expert, result.lower_half_tensor(), mel, fps=FPS)
        sync_s = time.perf_counter() - clock
    t = result.timings
    assert t.frames == n_frames, (t.frames, n_frames)
    duration = n_frames / FPS
    return {
        "kind": kind, "frames": n_frames, "render_s": round(render_s, 3),
        "frames_per_s": round(n_frames / render_s, 2), "realtime_factor": round(duration / render_s, 3),
        "crop_s": round(t.crop_s, 3), "generate_s": round(t.generate_s, 3), "paste_s": round(t.paste_s, 3),
        "other_loop_s": round(produce[0] - t.crop_s - t.generate_s - t.paste_s, 3),
        "encode_wait_s": round(render_s - produce[0], 3), "mux_s": round(mux_s, 3),
        "sync_metrics_s": None if sync_s is None else round(sync_s, 3),
        "python_cpu_s": round(python_cpu, 2), "ffmpeg_cpu_s": round(ffmpeg_cpu, 2),
        "paste_ms_per_frame": round(1000 * t.paste_s / n_frames, 3),
        "rss_before_mib": round(rss.before / MiB), "rss_peak_mib": round(rss.peak / MiB),
        "ffmpeg_rss_peak_mib": round(rss.children_peak / MiB),
        "output_bytes": talking.stat().st_size, "other_cores": other.cores,
    }


def encode_alone(reference: np.ndarray, n_frames: int, scratch: Path, preset: str) -> dict:
    """Encoding the reference frames in ping-pong order: write_mp4 itself (medium) or its command at `preset`."""
    positions = ping_pong(n_frames, len(reference))
    dest = scratch / f"encode-{preset}.mp4"
    settle(f"encode {preset} {reference.shape[1]}p")
    other = OtherLoad().__enter__()
    before = children_cpu_s()
    clock = time.perf_counter()
    if preset == "medium":
        write_mp4((reference[p] for p in positions), dest, fps=FPS)
    else:  # write_mp4's command with another preset
        height, width = reference.shape[1:3]
        process = subprocess.Popen(["ffmpeg", "-f", "rawvideo", "-framerate", str(FPS), "-pix_fmt", "rgb24",
                                    "-s", f"{width}x{height}", "-i", "pipe:", "-crf", "18", "-movflags", "+faststart",
                                    "-pix_fmt", "yuv420p", "-preset", preset, "-r", str(FPS), "-vcodec", "libx264",
                                    str(dest), "-y", "-loglevel", "error", "-nostdin"], stdin=subprocess.PIPE)
        for p in positions:
            process.stdin.write(reference[p].tobytes())
        process.stdin.close()
        process.wait()
    wall = time.perf_counter() - clock
    other.__exit__()
    return {"preset": preset, "s": round(wall, 3), "frames_per_s": round(n_frames / wall, 1),
            "ffmpeg_cpu_s": round(children_cpu_s() - before, 2), "bytes": dest.stat().st_size,
            "other_cores": other.cores}


class PlainModule(nn.Module):
    """The generator run as the render ran it before `inference_copy`: the module itself, NCHW inputs."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        return self.generator(mel, faces.contiguous())


def generator_alone(generators: dict[float, Wav2LipGenerator], reference: np.ndarray, files: Wav2LipAvatarFiles,
                    mel: np.ndarray, batch_sizes: list[int], frames: int) -> list[dict]:
    """Forward passes on real crops, the modes interleaved, best of 2 passes each: the plain module (the render
    before), `inference_copy` (the render now), and that copy under bf16 autocast (the render's default on AMX CPUs and CUDA)."""
    faces = np.stack([face_input(reference[i % len(reference)], np.asarray(files.track[i % len(reference)].matrix))
                      for i in range(frames)])
    inputs = masked_input(*(2 * [_to_network(faces, "rgb")]))
    mels = torch.from_numpy(np.stack([mel_window(mel, t, FPS) for t in range(frames)])).unsqueeze(1)
    rows = []
    for width, generator in generators.items():
        copy_clock = time.perf_counter()
        fused = inference_copy(generator)
        copy_s = time.perf_counter() - copy_clock
        modes = {"plain": (generator, False), "fused": (fused, False), "fused_bf16": (fused, True)}
        for batch_size in batch_sizes:
            walls: dict[str, list[float]] = {mode: [] for mode in modes}
            outputs = {}
            settle(f"generator alone width {width} batch {batch_size}")
            with torch.no_grad(), OtherLoad() as other:
                for network, bf16 in modes.values():  # warm-up
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        network(mels[:batch_size], inputs[:batch_size].contiguous(memory_format=torch.channels_last))
                for _ in range(2):
                    for mode, (network, bf16) in modes.items():
                        clock = time.perf_counter()
                        chunks = []
                        for start in range(0, frames, batch_size):
                            batch = inputs[start:start + batch_size]
                            if mode != "plain":
                                batch = batch.contiguous(memory_format=torch.channels_last)
                            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                                chunks.append(network(mels[start:start + batch_size], batch).float())
                        walls[mode].append(time.perf_counter() - clock)
                        outputs[mode] = np.asarray(_to_image(torch.cat(chunks), "rgb"), np.int16)
            fold_diff = np.abs(outputs["plain"] - outputs["fused"])
            bf16_diff = np.abs(outputs["fused"] - outputs["fused_bf16"])
            rows.append({"width": width, "batch_size": batch_size, "frames": frames,
                         "inference_copy_s": round(copy_s, 3),
                         **{f"{m}_frames_per_s": round(frames / min(w), 1) for m, w in walls.items()},
                         "fused_speedup": round(min(walls["plain"]) / min(walls["fused"]), 2),
                         "bf16_speedup": round(min(walls["plain"]) / min(walls["fused_bf16"]), 2),
                         "fused_uint8_values_differing": int((fold_diff > 0).sum()),
                         "fused_max_abs_diff_uint8": int(fold_diff.max()), "uint8_values": int(fold_diff.size),
                         "bf16_max_abs_diff_uint8": int(bf16_diff.max()),
                         "bf16_mean_abs_diff_uint8": round(float(bf16_diff.mean()), 3), "other_cores": other.cores})
            print(f"  generator alone width {width} batch {batch_size}: plain {rows[-1]['plain_frames_per_s']} f/s, "
                  f"fused {rows[-1]['fused_frames_per_s']}, fused+bf16 {rows[-1]['fused_bf16_frames_per_s']}", flush=True)
    return rows


# --------------------------------------------------------------------------- peak RSS of a render, alone in a process
def peak_rss_mib() -> int | None:
    """VmHWM: this process's peak RSS since its exec. (ru_maxrss would not do in a child: Linux carries the
    forking parent's peak over an exec, so a child of the 3 GB benchmark process would report 3 GB.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return None


def child_render(spec_path: Path) -> int:
    """A render as the stage runs it, alone in this process: load both networks from their files, read the
    reference, the mel, the loop into write_mp4, mux, lip-sync metrics. Prints its RSS figures as JSON."""
    from functions.models.syncnet import load_expert
    from functions.models.wav2lip import load_generator

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    me = psutil.Process()
    files = Wav2LipAvatarFiles.model_validate_json(Path(spec["track"]).read_text())
    generator = load_generator(spec["generator"], width=files.width)
    expert = load_expert(spec["expert"], width=files.width)
    models_rss = me.memory_info().rss
    clock = time.perf_counter()
    reference = read_reference(Path(spec["reference"]), files)
    reference_rss = me.memory_info().rss
    mel = melspectrogram(load_wav(spec["speech"]))
    reference_peak = peak_rss_mib()
    result = TalkingFrames()
    scratch = Path(spec["scratch"])
    with PeakRss() as rss:
        write_mp4(lip_synced_frames(generator, reference, files, mel, spec["frames"], batch_size=spec["batch_size"],
                                    result=result), scratch / "child.mp4", fps=FPS)
        mux_audio(scratch / "child.mp4", Path(spec["speech"]), scratch / "child-talking.mp4")
        lip_sync_metrics(expert, result.lower_half_tensor(), mel, fps=FPS)
    wall = time.perf_counter() - clock
    print(json.dumps({"rss_imports_and_models_mib": round(models_rss / MiB),
                      "rss_with_reference_mib": round(reference_rss / MiB),
                      "peak_during_read_reference_mib": reference_peak,
                      "peak_during_render_mib": round(rss.peak / MiB), "peak_mib": peak_rss_mib(),
                      "ffmpeg_peak_mib": round(rss.children_peak / MiB),
                      "reference_mib": round(reference.nbytes / MiB), "wall_s": round(wall, 2)}))
    return 0


def rss_render(width: float, files: Wav2LipAvatarFiles, reference_path: Path, speech: Path, n_frames: int,
               batch_size: int, threads: int, scratch: Path) -> dict:
    generator_path, expert_path = scratch / f"generator-{width}.pth", scratch / f"expert-{width}.pth"
    if not generator_path.exists():
        torch.save(seeded_generator(width).state_dict(), generator_path)
        torch.save(seeded_expert(width).state_dict(), expert_path)
    track = scratch / f"track-{files.frame_height}-{width}.json"
    track.write_text(files.model_copy(update={"width": width}).model_dump_json())
    spec = scratch / "child.json"
    spec.write_text(json.dumps({"threads": threads, "track": str(track), "generator": str(generator_path),
                                "expert": str(expert_path), "reference": str(reference_path), "speech": str(speech),
                                "frames": n_frames, "batch_size": batch_size, "scratch": str(scratch)}))
    settle(f"rss child {files.frame_height}p width {width}")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-render", str(spec)], check=True,
                          capture_output=True, text=True)
    return {"width": width, **json.loads(done.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------- training
def training_steps(widths: list[float], batch_sizes: list[int], steps: int, speech: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from av_corpus import frame_windows, speech_envelope, talking_faces

    from functions.lora_training import LoopHooks
    from functions.wav2lip_training import ExpertConfig, GeneratorConfig, train_expert, train_generator

    wav = load_wav(speech)
    envelope = speech_envelope(wav)
    mel = melspectrogram(wav)
    mels = torch.from_numpy(np.stack([mel_window(mel, t, FPS) for t in range(len(envelope))]))
    faces = talking_faces(envelope, drift_px=3)
    n = len(faces) - 4
    train = frame_windows(faces, mels, 0, int(0.9 * n))
    val = frame_windows(faces, mels, int(0.9 * n), int(0.9 * n) + 16)  # small: validation is not what is timed
    rows = []
    for width in widths:
        for batch_size in batch_sizes:
            for phase in ("expert", "generator"):
                stamps: list[float] = []
                hooks = LoopHooks(on_step=lambda state, total, loss, rate: stamps.append(time.perf_counter()))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    expert, generator = LipSyncExpert(width), Wav2LipGenerator(width)
                common = dict(batch_size=batch_size, max_steps=steps, epochs=1, mixed_precision="no",
                              checkpoint_every=10_000)
                settle(f"train {phase} width {width} batch {batch_size}")
                other = OtherLoad().__enter__()
                start = time.perf_counter()
                if phase == "expert":
                    train_expert(expert, train, val, config=ExpertConfig(**common), hooks=hooks)
                else:
                    train_generator(generator, train, val, expert=expert.eval(), expert_converged=True,
                                    config=GeneratorConfig(**common, sync_switch_loss=None), hooks=hooks)
                other.__exit__()
                intervals = np.diff(stamps)
                step_s = float(np.median(intervals)) if len(intervals) else stamps[0] - start
                frames = batch_size * 5
                rows.append({"phase": phase, "width": width, "batch_size": batch_size, "frames_per_step": frames,
                             "steps": len(stamps), "first_step_s": round(stamps[0] - start, 3),
                             "step_s_median": round(step_s, 3),
                             "step_s_min_max": [round(float(intervals.min()), 3), round(float(intervals.max()), 3)]
                             if len(intervals) else None,
                             "windows_per_s": round(batch_size / step_s, 2),
                             "parameters": parameter_count(expert if phase == "expert" else generator),
                             "other_cores": other.cores})
                print(f"  train {phase} width {width} batch {batch_size}: {step_s:.3f} s/step", flush=True)
    return rows


# --------------------------------------------------------------------------- report
def report(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 220)
    seconds = record["frames"] / FPS
    table = Table(title=f"talking render, {record['frames']} frames ({seconds:.1f} s at {FPS} fps), batch "
                        f"{record['args']['batch_size']}, torch threads {record['torch_threads']}")
    for header in ("output", "width", "loop", "render s", "frames/s", "RTF", "crop s", "generator s", "paste s",
                   "paste ms/f", "encode wait s", "ffmpeg CPU s", "mux s", "sync metrics s", "RTF with decode+mux+sync",
                   "ffmpeg RSS MiB", "other cores"):
        table.add_column(header, justify="right")
    for size in record["sizes"]:
        for run in size["renders"]:
            whole = run["render_s"] + run["mux_s"] + (run["sync_metrics_s"] or 0) + size["read_reference_s"]
            table.add_row(f"{size['width']}×{size['height']}", f"{run['width']}", run["kind"], f"{run['render_s']:.2f}",
                          f"{run['frames_per_s']:.1f}", f"{run['realtime_factor']:.2f}×", f"{run['crop_s']:.2f}",
                          f"{run['generate_s']:.2f}", f"{run['paste_s']:.2f}", f"{run['paste_ms_per_frame']:.2f}",
                          f"{run['encode_wait_s']:.2f}", f"{run['ffmpeg_cpu_s']:.1f}", f"{run['mux_s']:.2f}",
                          "" if run["sync_metrics_s"] is None else f"{run['sync_metrics_s']:.2f}",
                          f"{seconds / whole:.2f}×", f"{run['ffmpeg_rss_peak_mib']}", f"{run['other_cores']}")
    console.print(table)

    setup = Table(title="per output size: the reference footage and encoding alone")
    for header in ("output", "reference frames", "detect+align s (untimed set-up)", "read_reference s",
                   "encode medium (write_mp4) f/s", "ffmpeg CPU s", "MB", "encode veryfast f/s", "ffmpeg CPU s", "MB",
                   "other cores"):
        setup.add_column(header, justify="right")
    for size in record["sizes"]:
        medium, fast = size["encode_alone"]
        setup.add_row(f"{size['width']}×{size['height']}", str(size["reference_frames"]), f"{size['detect_s']:.1f}",
                      f"{size['read_reference_s']:.2f}", f"{medium['frames_per_s']:.1f}", f"{medium['ffmpeg_cpu_s']:.1f}",
                      f"{medium['bytes'] / 1e6:.1f}", f"{fast['frames_per_s']:.1f}", f"{fast['ffmpeg_cpu_s']:.1f}",
                      f"{fast['bytes'] / 1e6:.1f}", f"{max(medium['other_cores'] or 0, fast['other_cores'] or 0)}")
    console.print(setup)

    if any(size["rss_renders"] for size in record["sizes"]):
        memory = Table(title="RSS (MiB) of a whole render alone in a fresh process: load networks, read_reference, "
                             "render, mux, lip-sync metrics")
        for header in ("output", "width", "after imports + networks", "+ reference frames", "reference array",
                       "peak in read_reference", "peak in render + mux + metrics (50 ms samples)", "peak (VmHWM)",
                       "ffmpeg peak (samples)", "wall s"):
            memory.add_column(header, justify="right")
        for size in record["sizes"]:
            for row in size["rss_renders"]:
                memory.add_row(f"{size['width']}×{size['height']}", str(row["width"]),
                               str(row["rss_imports_and_models_mib"]), str(row["rss_with_reference_mib"]),
                               str(row["reference_mib"]), str(row["peak_during_read_reference_mib"]),
                               str(row["peak_during_render_mib"]), str(row["peak_mib"]), str(row["ffmpeg_peak_mib"]),
                               f"{row['wall_s']:.1f}")
        console.print(memory)

    if record["generator_alone"]:
        alone = Table(title=f"generator alone on {record['args']['generator_frames']} real 96-px crops (best of 2)")
        for header in ("width", "batch", "plain module f/s (before)", "inference_copy f/s (now)", "speed-up",
                       "uint8 values differing", "+ bf16 autocast f/s (default on AMX)", "speed-up vs plain",
                       "bf16 vs fp32 max / mean |Δ| (uint8)", "inference_copy s", "other cores"):
            alone.add_column(header, justify="right")
        for row in record["generator_alone"]:
            alone.add_row(str(row["width"]), str(row["batch_size"]), f"{row['plain_frames_per_s']:.1f}",
                          f"{row['fused_frames_per_s']:.1f}", f"{row['fused_speedup']:.2f}×",
                          f"{row['fused_uint8_values_differing']} of {row['uint8_values']}",
                          f"{row['fused_bf16_frames_per_s']:.1f}", f"{row['bf16_speedup']:.2f}×",
                          f"{row['bf16_max_abs_diff_uint8']} / {row['bf16_mean_abs_diff_uint8']:.2f}",
                          f"{row['inference_copy_s']:.2f}", f"{row['other_cores']}")
        console.print(alone)

    if record["training"]:
        train = Table(title=f"training steps, fp32, median of {record['args']['train_steps'] - 1} after one warm-up")
        for header in ("loop", "width", "params", "batch (windows)", "frames/step", "s/step", "min–max", "first step s",
                       "windows/s", "other cores"):
            train.add_column(header, justify="right")
        for row in record["training"]:
            spread = row["step_s_min_max"]
            train.add_row(row["phase"], str(row["width"]), f"{row['parameters'] / 1e6:.2f} M", str(row["batch_size"]),
                          str(row["frames_per_step"]), f"{row['step_s_median']:.3f}",
                          f"{spread[0]:.3f}–{spread[1]:.3f}" if spread else "", f"{row['first_step_s']:.2f}",
                          f"{row['windows_per_s']:.2f}", f"{row['other_cores']}")
        console.print(train)
    waits = record["quiet_waits"]
    if waits:
        loud = [w for w in waits if not w["quiet"]]
        console.print(f"--wait-quiet: {len(waits)} waits, {sum(w['waited_s'] for w in waits):.0f} s in all; "
                      f"{len(loud)} timed out (" + ", ".join(f"{w['before']}: {w['other_cores']}" for w in loud) + ")")
    console.print(f"load average {record['load_average_start'][0]:.2f} → {record['load_average_end'][0]:.2f} on "
                  f"{record['machine']['cpus']} CPUs; this process's peak RSS {record['peak_rss_mib']} MiB; "
                  f"wall {record['wall_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clip", default="talking-1.mp4", help="reference footage, in ../shared/media")
    parser.add_argument("--speech", default="speech-en.wav", help="speech, in ../shared/media")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of speech to render")
    parser.add_argument("--heights", type=int, nargs="+", default=[480, 720, 1080])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25, 0.125])
    parser.add_argument("--batch-size", type=int, default=16, help="lip_synced_frames' batch (its default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--generator-frames", type=int, default=64, help="frames for the generator-alone table (0: skip)")
    parser.add_argument("--generator-batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--compare-height", type=int, default=720,
                        help="at this output size, also render with the plain module (the loop before inference_copy)")
    parser.add_argument("--train-widths", type=float, nargs="*", default=[1.0, 0.125])
    parser.add_argument("--train-batch-sizes", type=int, nargs="*", default=[4, 8],
                        help="windows per step (the brief's default batch_size is 4)")
    parser.add_argument("--train-steps", type=int, default=3, help="steps per loop; the first is warm-up")
    parser.add_argument("--quick", action="store_true",
                        help="4 s of speech, 720p only, widths 1.0 and 0.125, training at width 0.125, batch 4")
    parser.add_argument("--rss-widths", type=float, nargs="*", default=[1.0],
                        help="per output size, a whole render at these widths alone in a fresh process, for its peak RSS")
    parser.add_argument("--child-render", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each timing, wait up to S s for other processes to use < 0.25 cores")
    parser.add_argument("--json-out", type=Path, default=OUT / "talking_render.json")
    args = parser.parse_args(argv)
    if args.child_render:
        return child_render(args.child_render)
    if args.quick:
        args.seconds, args.heights, args.widths = 4.0, [720], [1.0, 0.125]
        args.train_widths, args.train_batch_sizes, args.train_steps, args.rss_widths = [0.125], [4], 3, [0.125]
    clip, speech_source = MEDIA / args.clip, MEDIA / args.speech
    for path in (clip, speech_source):
        if not path.exists():
            parser.error(f"{path} does not exist")
    torch.set_num_threads(args.threads)
    QUIET["max_wait_s"] = args.wait_quiet
    OUT.mkdir(parents=True, exist_ok=True)
    started, load_start, wall = datetime.now(timezone.utc), os.getloadavg(), time.perf_counter()
    sizes, generator_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        speech = cut_speech(speech_source, args.seconds, scratch / "speech.wav")
        mel = melspectrogram(load_wav(speech))
        n_frames = max(1, math.floor(args.seconds * FPS + 0.5))
        generators = {w: seeded_generator(w) for w in args.widths}
        experts = {w: seeded_expert(w) for w in args.widths}
        for height in args.heights:
            frames = decode_clip(clip, height)
            files, detect_s = face_track(frames, width=1.0)
            ref_path = write_mp4(frames, scratch / f"reference-{height}.mp4", fps=FPS, crf=REFERENCE_CRF)
            del frames
            clock = time.perf_counter()
            reference = read_reference(ref_path, files)
            read_s = time.perf_counter() - clock
            print(f"{files.frame_width}×{height}: {len(reference)} reference frames, detect {detect_s:.1f} s, "
                  f"read_reference {read_s:.2f} s", flush=True)
            renders = []
            for width in args.widths:
                # feathered first at one size, hard first at the next: drift in the machine's load is shared
                kinds = ["feathered", "hard"] if len(sizes) % 2 == 0 else ["hard", "feathered"]
                if height == args.compare_height:
                    kinds[1:1] = ["feathered_plain", "feathered_bf16"]
                for kind in kinds:
                    run = render(kind, generators[width], experts[width], reference,
                                 files.model_copy(update={"width": width}), mel, speech, n_frames, args.batch_size,
                                 scratch)
                    renders.append({"width": width, **run})
                    print(f"  width {width} {kind}: {run['frames_per_s']:.1f} f/s ({run['realtime_factor']:.2f}× real "
                          f"time), generator {run['generate_s']:.2f} s, paste {run['paste_s']:.2f} s, encode wait "
                          f"{run['encode_wait_s']:.2f} s", flush=True)
            order = {"feathered": 0, "feathered_plain": 1, "feathered_bf16": 2, "hard": 3}
            renders.sort(key=lambda r: (-r["width"], order[r["kind"]]))
            encode = [encode_alone(reference, n_frames, scratch, preset) for preset in ("medium", "veryfast")]
            rss = [rss_render(width, files, ref_path, speech, n_frames, args.batch_size, args.threads, scratch)
                   for width in args.rss_widths]
            if height == (720 if 720 in args.heights else args.heights[0]) and args.generator_frames:
                generator_rows = generator_alone(generators, reference, files, mel, args.generator_batch_sizes,
                                                 args.generator_frames)
            sizes.append({"height": height, "width": files.frame_width, "reference_frames": len(reference),
                          "detect_s": round(detect_s, 2), "read_reference_s": round(read_s, 3),
                          "eye_distance_px_median": round(float(np.median(
                              [np.linalg.norm(np.subtract(*np.asarray(t.landmarks)[:2])) for t in files.track])), 1),
                          "renders": renders, "encode_alone": encode, "rss_renders": rss})
            del reference
        training = training_steps(args.train_widths, args.train_batch_sizes, args.train_steps, speech_source) \
            if args.train_widths and args.train_batch_sizes else []
    record = {
        "benchmark": "talking_render", "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "command": " ".join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]) if argv is None else "main(...)",
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
        "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(), "frames": n_frames,
        "parameters": {str(w): parameter_count(g) for w, g in generators.items()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": sizes, "generator_alone": generator_rows, "training": training, "quiet_waits": QUIET["waits"],
        "peak_rss_mib": peak_rss_mib(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
