"""Align and prepare benchmark: our face detector vs naive MTCNN, and prepare's thumbnail pass vs the decode floor.

One run measures, side by side, on a synthetic 1080p clip with a real face (the astronaut photo from
scikit-image, moved, zoomed and rolled by a known transform, see tests/synthetic_video.py):

1. **Align-stage detection.** N frames are sampled from the clip at `--sample-fps` and decoded to RGB
   arrays in memory first (`core.video.sample_frames`, what align decodes), so decoding is in neither
   timing. Then:
   (a) `functions.faces.TrackingDetector` (what the align stage uses), fed the frames in order;
   (b) `functions.faces.NaiveDetector`: facenet-pytorch MTCNN with its default settings on every
       full-resolution frame (on every `--naive-every`-th frame when that is > 1).
   Reported: frames per second and the detection rate (frames with at least one face whose box
   contains the true face centre, the midpoint of the true eye positions from
   `synthetic_video.eyes_in_frame`), plus the eye-landmark error of the matching face as a share of
   the true inter-ocular distance. The tracking detector runs `--tracking-passes` times (one pass
   before the naive run, the rest after) and the median pass is reported. Unless `--no-stage`, the
   real stage functions then run once each, in sequence, on the clip put into a local bucket:
   `functions.prepare_video.prepare_training_video` (at each `--stage-fps`, by default 25 — the default
   extract_fps — and `--sample-fps`: download, sha256,
   probe, one ffmpeg pass of small gray thumbnails, the frame checks, frames.jsonl) and
   `functions.align.align` (download and sha256 check of the video again, then it decodes the kept
   frames again at full resolution with `sample_frames` and detects, aligns and crops them, splits,
   writes the outputs). Align's stage time therefore includes that re-decode, which ffmpeg does in a
   separate process alongside the detection (its CPU shows as "ffmpeg CPU"); the decode costs the same
   per second of video at any extract_fps, so per sampled frame it weighs more at lower rates. prepare refuses clips
   under its 30 s minimum; for a shorter bench clip that limit is lowered for the run (noted in the JSON).
2. **Prepare vs the decode floor.** `ffmpeg -v error -nostdin -i CLIP -f null -` against prepare's
   sampling loop (`core.video.sample_thumbnails` + `FrameFilter.add` + `finish`, the loop inside
   `prepare_training_video`; nothing is written to disk), at extract_fps = the source fps and at 25.
   Each timing runs `--repeats` times; the median is reported. A breakdown then times ffmpeg commands
   on their own (wall and CPU seconds): the decode floor, + the fps filter, prepare's whole command
   (fps + 256-px gray thumbnails → rawvideo pipe) and, for comparison, align's full-resolution re-decode
   (fps + rgb24 → rawvideo pipe), because on a small machine the CPU work, not the wall clock of one
   piece, decides the ratio.

Every timing also reports the CPU time other processes used meanwhile ("other CPU", in cores), read
from /proc/stat: on a shared 2-core machine that decides how far a wall-clock figure can be trusted.
`--wait-quiet S` waits up to S seconds before each timing for the machine to go quiet.

This is a benchmark, not a test: it asserts nothing about timings.

    .venv/bin/python bench/align.py                       # defaults: 32 s 1080p30 clip, 5 fps → 160 frames
    .venv/bin/python bench/align.py --wait-quiet 20       # on a shared machine
    .venv/bin/python bench/align.py --seconds 8 --naive-every 4 --repeats 1 --no-stage
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # synthetic_video
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import ffmpeg  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

import synthetic_video  # noqa: E402
from runinfo import cpu_model, git_commit, system_busy_s  # noqa: E402  (bench/, on the path of a script run from it)
from core.video import probe_video, sample_frames, sample_thumbnails, thumbnail_size, write_mp4  # noqa: E402
import functions.faces as faces_module  # noqa: E402
from functions.faces import Face, NaiveDetector, TrackingDetector  # noqa: E402
from functions.frame_quality import FrameFilter  # noqa: E402

OUT = REPO / "bench" / "out"
DEFAULT_JSON = OUT / "align.json"
CLIP_CRF = 20  # what synthetic_video.write_face_video uses
DETECT_GOAL = 10.0  # the issue: align detection ≥ 10× the naive rate at an equal or better detection rate
PREPARE_GOAL = 1.5  # the issue: prepare within 1.5× of the decode floor

console = Console(stderr=True)


# ------------------------------------------------------------------------------------------ the clip
def clip_path(args: argparse.Namespace) -> Path:
    """Cache key: the clip's parameters plus a hash of the generator's source, so an edit regenerates it."""
    source = (REPO / "tests" / "synthetic_video.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:10]
    return OUT / "clips" / (f"astronaut_{args.width}x{args.height}_{args.fps}fps_{args.seconds:g}s_"
                            f"face{face_px(args):g}_crf{CLIP_CRF}_{digest}.mp4")


def face_px(args: argparse.Namespace) -> float:
    return 0.45 * args.height  # synthetic_video.render_face_frames' default


def ensure_clip(args: argparse.Namespace, progress: Progress) -> tuple[Path, dict[str, Any]]:
    path = clip_path(args)
    if path.exists():
        return path, {"cached": True, "generate_s": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(round(args.seconds * args.fps))
    task = progress.add_task(f"rendering {args.width}×{args.height} clip", total=total)

    def frames():
        for frame in synthetic_video.render_face_frames(args.seconds, args.fps, args.width, args.height,
                                                        face_px=face_px(args)):
            yield frame
            progress.advance(task)

    clock = time.perf_counter()
    partial = path.with_name(path.stem + ".partial.mp4")
    write_mp4(frames(), partial, fps=args.fps, crf=CLIP_CRF)  # frames are streamed: memory stays flat
    os.replace(partial, path)
    return path, {"cached": False, "generate_s": round(time.perf_counter() - clock, 2)}


# ------------------------------------------------------------------------------------ detection
def decode_sampled(clip: Path, width: int, height: int, sample_fps: float) -> list[np.ndarray]:
    """The frames prepare samples at `sample_fps` and align decodes again (`sample_frames`), as RGB arrays."""
    # writable copies: the pipe's bytes are read-only
    return [frame.pixels.copy() for frame in sample_frames(clip, fps=sample_fps, size=(width, height))]


def truth(n: int, sample_fps: float, width: int, height: int, fpx: float) -> list[np.ndarray]:
    """True eye positions [2, 2] (image-left first) of the n-th sampled frame, at t = n / sample_fps."""
    return [synthetic_video.eyes_in_frame(i / sample_fps, width, height, fpx) for i in range(n)]


def judge(faces: list[Face], eyes: np.ndarray) -> tuple[bool, float | None]:
    """Found: some box contains the true face centre. Error: mean eye-landmark error / inter-ocular distance."""
    centre = eyes.mean(axis=0)
    hits = [f for f in faces if f.box[0] <= centre[0] <= f.box[2] and f.box[1] <= centre[1] <= f.box[3]]
    if not hits:
        return False, None
    face = max(hits, key=lambda f: f.score)
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    error = float(np.linalg.norm(face.landmarks[:2] - eyes, axis=1).mean()) / iod
    return True, error


def score(found: list[tuple[bool, float | None]]) -> dict[str, Any]:
    errors = [e for ok, e in found if ok and e is not None]
    return {
        "frames": len(found),
        "detected": sum(ok for ok, _ in found),
        "detection_rate": round(sum(ok for ok, _ in found) / len(found), 4) if found else None,
        "eye_error_iod_median": round(statistics.median(errors), 4) if errors else None,
        "eye_error_iod_p95": round(float(np.percentile(errors, 95)), 4) if errors else None,
    }


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_wait_s: float, threshold_cores: float = 0.25, window_s: float = 1.0) -> dict[str, Any] | None:
    """Wait (at most `max_wait_s`) until other processes use under `threshold_cores` over a `window_s` window."""
    if max_wait_s <= 0:
        return None
    start = time.perf_counter()
    cores = None
    while True:
        with Meter() as m:
            time.sleep(window_s)
        cores = m.other_cores
        waited = time.perf_counter() - start
        if cores is None or cores < threshold_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores": None if cores is None else round(cores, 2),
                    "quiet": cores is not None and cores < threshold_cores}


QUIET = {"max_wait_s": 0.0, "waits": []}  # set from --wait-quiet; every wait is recorded in the JSON


def settle(label: str) -> None:
    """Before a timing: wait for the machine to go quiet, if --wait-quiet asks for it."""
    waited = wait_quiet(QUIET["max_wait_s"])
    if waited is not None:
        QUIET["waits"].append({"before": label, **waited})


class Meter:
    """Wall, this process's CPU, its finished children's CPU (ffmpeg), and other processes' CPU over a block."""

    def __enter__(self) -> "Meter":
        self._start = (time.perf_counter(), cpu_self(), cpu_children(), system_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        wall0, self0, child0, busy0 = self._start
        self.wall_s = time.perf_counter() - wall0
        self.python_cpu_s = cpu_self() - self0
        self.ffmpeg_cpu_s = cpu_children() - child0
        busy1 = system_busy_s()
        other = None if busy0 is None or busy1 is None else busy1 - busy0 - self.python_cpu_s - self.ffmpeg_cpu_s
        # other processes' CPU, in cores on average (jiffy rounding makes small negatives possible)
        self.other_cores = None if other is None or self.wall_s <= 0 else max(0.0, other / self.wall_s)


THREAD_MODES = {
    "shipped": "as functions/faces.py runs MTCNN (on CPU: one thread, via faces.single_threaded)",
    "default": "torch's default thread count (faces.single_threaded bypassed for the pass)",
}


def thread_modes_available() -> list[str]:
    """'default' differs from 'shipped' only if faces.py pins MTCNN to one thread."""
    return ["shipped", "default"] if hasattr(faces_module, "single_threaded") else ["shipped"]


@contextmanager
def mtcnn_threads(mode: str):
    """'shipped': leave faces.py alone. 'default': make its single_threaded() a no-op, so MTCNN runs on
    torch's default threads (what facenet-pytorch does out of the box)."""
    if mode != "default" or not hasattr(faces_module, "single_threaded"):
        yield
        return
    original = faces_module.single_threaded
    faces_module.single_threaded = nullcontext  # _run looks it up at call time
    try:
        yield
    finally:
        faces_module.single_threaded = original


def _timed(method, seconds: list[float]):
    """`method`, appending each call's duration to `seconds` (a perf_counter pair costs well under a µs)."""
    def wrapper(*args):
        t = time.perf_counter()
        try:
            return method(*args)
        finally:
            seconds.append(time.perf_counter() - t)
    return wrapper


def detect_all(detector, frames: list[np.ndarray], progress: Progress, task_label: str,
               settle_label: str) -> tuple[list[list[Face]], dict[str, Any]]:
    """Run `detector` over `frames` in order, timed as a block (Meter) and per frame."""
    task = progress.add_task(task_label, total=len(frames))
    results, per_frame = [], []
    settle(settle_label)
    with Meter() as m:
        for frame in frames:
            t = time.perf_counter()
            results.append(detector.detect(frame))
            per_frame.append(time.perf_counter() - t)
            progress.advance(task)
    return results, {
        "seconds": round(m.wall_s, 3),
        "cpu_s": round(m.python_cpu_s, 2),
        "other_cores": None if m.other_cores is None else round(m.other_cores, 2),
        "frames_per_s": round(len(frames) / m.wall_s, 3),
        "ms_per_frame_median": round(1000 * statistics.median(per_frame), 2),
    }


def tracking_pass(frames: list[np.ndarray], eyes: list[np.ndarray], progress: Progress, label: str) -> dict[str, Any]:
    """One in-order pass of a fresh TrackingDetector, with per-call timings of its three kinds of MTCNN call."""
    detector = TrackingDetector()
    keyframe_s: list[float] = []
    roi_s: list[float] = []
    refine_s: list[float] = []
    detector._keyframe = _timed(detector._keyframe, keyframe_s)
    detector._search_near = _timed(detector._search_near, roi_s)
    detector._refine = _timed(detector._refine, refine_s)
    results, timing = detect_all(detector, frames, progress, label, label)
    return {
        **timing,
        "found": [judge(faces, truth_eyes) for faces, truth_eyes in zip(results, eyes)],
        "keyframes": detector.keyframes,
        "roi_searches": detector.roi_searches,
        "refit_attempts": len(refine_s),
        "refinements": detector.refinements,
        "refit_ms_median": round(1000 * statistics.median(refine_s), 2) if refine_s else None,
        "refit_s_total": round(sum(refine_s), 3),
        "keyframe_ms_median": round(1000 * statistics.median(keyframe_s), 2) if keyframe_s else None,
        "roi_search_ms_median": round(1000 * statistics.median(roi_s), 2) if roi_s else None,
        "keyframe_s_total": round(sum(keyframe_s), 3),
        "roi_search_s_total": round(sum(roi_s), 3),
    }


def summarise_tracking(passes: list[dict[str, Any]], naive_every: int) -> dict[str, Any]:
    """The pass with the median speed is reported in full; all passes' speeds are listed."""
    ranked = sorted(passes, key=lambda p: p["frames_per_s"])
    median = dict(ranked[len(ranked) // 2])
    found = median.pop("found")
    if any(p["found"] != passes[0]["found"] for p in passes):
        median["note"] = "passes disagreed on detections"
    return {**median, **score(found), "on_naive_subset": score(found[::naive_every]),
            "passes": len(passes), "passes_frames_per_s": [p["frames_per_s"] for p in passes],
            "passes_other_cores": [p["other_cores"] for p in passes]}


def bench_naive(frames: list[np.ndarray], eyes: list[np.ndarray], naive_every: int,
                progress: Progress, tag: str = "") -> dict[str, Any]:
    detector = NaiveDetector()
    detector.detect(frames[0])  # warm-up
    subset = list(range(0, len(frames), naive_every))
    results, timing = detect_all(detector, [frames[i] for i in subset], progress,
                                 f"NaiveDetector{tag} ({len(subset)} frames)", f"naive{tag}")
    return {
        **timing,
        "every": naive_every,
        **score([judge(faces, eyes[i]) for faces, i in zip(results, subset)]),
    }


def bench_stage(clip: Path, sample_fps: float, workdir: Path, progress: Progress) -> dict[str, Any]:
    """The real prepare and align stage functions once each, in sequence, on the clip at extract_fps = `sample_fps`."""
    import functions.prepare_video as prepare_module
    from core.settings import Settings
    from core.stage import StageContext
    from core.storage import LocalStorage
    from functions.align import align
    from schemas.brief import TrainBrief
    from schemas.manifest import InputRecord, JobManifest, StageRecord, StageStatus, Versions

    video_key = "uploads/clip.mp4"
    bucket = LocalStorage(workdir / "bucket")
    bucket.put_file(video_key, clip, content_type="video/mp4")
    brief = TrainBrief(kind="train", avatar="bench", video=video_key, extract_fps=sample_fps, seed=0)
    manifest = JobManifest(job_id="bench", kind="train", input=InputRecord(key=video_key),
                           request=brief,
                           versions=Versions(videostudio="bench", python=platform.python_version()),
                           stages={"prepare": StageRecord(), "align": StageRecord()})
    settings = Settings(bucket=str(bucket.root), device="cpu", progress_interval_s=0.0)

    def context(stage: str, task) -> StageContext:
        scratch = workdir / f"scratch-{stage}"  # a fresh one per stage, as the runner gives
        scratch.mkdir()
        return StageContext(job_id="bench", stage=stage, attempt=1, manifest=manifest, storage=bucket,
                            settings=settings, scratch=scratch,
                            _progress=lambda f, *_: progress.update(task, completed=f),
                            _cancel_requested=lambda: False)

    # prepare refuses videos under MIN_DURATION_S; a short bench clip gets the limit lowered for this run
    min_duration = prepare_module.MIN_DURATION_S
    duration = probe_video(clip).duration_s
    lowered = duration < min_duration
    task = progress.add_task(f"prepare stage (extract_fps {sample_fps:g})", total=1.0)
    settle("prepare stage")
    try:
        if lowered:
            prepare_module.MIN_DURATION_S = 0.0
        with Meter() as prepare_meter:
            prepared = prepare_module.prepare_training_video(context("prepare", task), brief)
    finally:
        prepare_module.MIN_DURATION_S = min_duration
    progress.update(task, completed=1.0)
    manifest.stages["prepare"] = StageRecord(status=StageStatus.succeeded, attempts=1,
                                             outputs=dict(prepared.outputs), metrics=prepared.metrics,
                                             handoff=prepared.handoff.model_dump(mode="json"))
    manifest.request = prepared.request

    pm = prepared.metrics
    task = progress.add_task(f"align stage ({pm['kept']} frames)", total=1.0)
    settle("align stage")
    with Meter() as align_meter:
        aligned = align(context("align", task))
    progress.update(task, completed=1.0)
    m = aligned.metrics

    def cores(meter: Meter) -> float | None:
        return None if meter.other_cores is None else round(meter.other_cores, 2)

    return {
        "prepare": {"seconds": round(prepare_meter.wall_s, 3), "other_cores": cores(prepare_meter),
                    "ffmpeg_cpu_s": round(prepare_meter.ffmpeg_cpu_s, 2),
                    "python_cpu_s": round(prepare_meter.python_cpu_s, 2),
                    "sampled": pm["total"], "kept": pm["kept"],
                    "frames_per_s": round(pm["total"] / prepare_meter.wall_s, 3),
                    "extract_s": pm["extract_s"], "extract_fps": sample_fps},
        "align": {"seconds": round(align_meter.wall_s, 3), "other_cores": cores(align_meter),
                  "ffmpeg_cpu_s": round(align_meter.ffmpeg_cpu_s, 2),
                  "python_cpu_s": round(align_meter.python_cpu_s, 2),
                  "frames": m["frames"], "frames_per_s": round(m["frames"] / align_meter.wall_s, 3),
                  "detect_s": m["detect_s"], "detect_frames_per_s": m["faces_per_s"]},
        "sampled": pm["total"], "frames": m["frames"],  # frames: the kept ones align decodes and detects in
        "detection_rate": m["detection_rate"], "aligned": m["aligned"],
        "alignment_success_rate": m["alignment_success_rate"], "keyframes": m["keyframes"],
        "roi_searches": m["roi_searches"], "refinements": m["refinements"],
        "min_duration_s_lowered": {"from": min_duration, "to": 0.0, "clip_s": round(duration, 3)} if lowered else None,
    }


# -------------------------------------------------------------------------------------- prepare
def run_timed(fn) -> dict[str, Any]:
    """Wall, own CPU, children's CPU (ffmpeg) and other processes' CPU of one call."""
    with Meter() as m:
        value = fn()
    return {"wall_s": m.wall_s, "python_cpu_s": m.python_cpu_s, "ffmpeg_cpu_s": m.ffmpeg_cpu_s,
            "other_cores": m.other_cores, "value": value}


FLOOR_COMMAND = ["ffmpeg", "-v", "error", "-nostdin", "-i", "CLIP", "-f", "null", "-"]


def floor_command(clip: Path) -> list[str]:
    return [str(clip) if arg == "CLIP" else arg for arg in FLOOR_COMMAND]


def floor(clip: Path) -> None:
    subprocess.run(floor_command(clip), check=True, stdin=subprocess.DEVNULL)


def prepare_loop(clip: Path, size: tuple[int, int], fps: float) -> dict[str, Any]:
    """What prepare_training_video's step 2 does (minus progress reporting): thumbnails only, nothing written."""
    quality = FrameFilter()
    add_s = 0.0
    for frame in sample_thumbnails(clip, fps=fps, size=size):
        t = time.perf_counter()
        quality.add(frame.index, frame.time_s, frame.pixels)
        add_s += time.perf_counter() - t
    t = time.perf_counter()
    quality.finish()
    add_s += time.perf_counter() - t
    return {**quality.counts(), "python_checks_s": add_s}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "max_s": round(max(walls), 3), "runs_s": [round(w, 3) for w in walls],
            "ffmpeg_cpu_s_median": round(statistics.median(r["ffmpeg_cpu_s"] for r in runs), 2),
            "python_cpu_s_median": round(statistics.median(r["python_cpu_s"] for r in runs), 2),
            "other_cores_median": other_median(runs)}


def other_median(runs: list[dict[str, Any]]) -> float | None:
    values = [r["other_cores"] for r in runs if r.get("other_cores") is not None]
    return round(statistics.median(values), 2) if values else None


def bench_prepare(clip: Path, info, fps_values: list[float], repeats: int, progress: Progress) -> dict[str, Any]:
    size = (info.width, info.height)
    task = progress.add_task("prepare vs decode floor", total=repeats * (1 + len(fps_values)))
    floor_runs: list[dict[str, Any]] = []
    prep_runs: dict[float, list[dict[str, Any]]] = {f: [] for f in fps_values}
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hits every variant alike
        settle("floor")
        floor_runs.append(run_timed(lambda: floor(clip)))
        progress.advance(task)
        for fps in fps_values:
            settle(f"prepare {fps:g}")
            prep_runs[fps].append(run_timed(lambda fps=fps: prepare_loop(clip, size, fps)))
            progress.advance(task)
    result: dict[str, Any] = {"floor": summarise(floor_runs), "floor_command": " ".join(FLOOR_COMMAND), "prepare": []}
    for fps in fps_values:
        runs = prep_runs[fps]
        last = runs[-1]["value"]
        entry = {"extract_fps": fps, **summarise(runs),
                 "python_checks_s_median": round(statistics.median(r["value"]["python_checks_s"] for r in runs), 3),
                 "frames": last["total"], "kept": last["kept"]}
        entry["ratio_to_floor"] = round(entry["median_s"] / result["floor"]["median_s"], 2)
        result["prepare"].append(entry)
    return result


def extract_pieces(clip: Path, info, fps: float) -> list[tuple[str, list[str]]]:
    """The decode floor, + the fps filter, prepare's ffmpeg command and align's (built as core.video builds them)."""
    thumb_w, thumb_h = thumbnail_size((info.width, info.height), 256)  # sample_thumbnails' default thumb_width

    def args(stream) -> list[str]:  # global options first: after a "-" output ffmpeg would treat them as trailing
        return ["ffmpeg", "-loglevel", "error", "-nostdin", *stream.get_args()]

    def sampled():  # core.video._sampled: the fps filter every pass over the video shares
        return ffmpeg.input(str(clip)).video.filter("fps", fps=fps)

    def as_run(output) -> list[str]:  # the command core.video._read_frames runs
        return output.global_args("-loglevel", "error", "-nostdin").compile()

    return [
        ("decode only (the floor)", floor_command(clip)),
        ("+ fps filter (→ null)", args(sampled().output("-", format="null"))),
        ("prepare's whole command: fps + 256-px gray thumbnails → rawvideo pipe",
         as_run(sampled().filter("scale", thumb_w, thumb_h).output("pipe:", format="rawvideo", pix_fmt="gray"))),
        ("align's re-decode: fps + rgb24 full resolution → rawvideo pipe",
         as_run(sampled().output("pipe:", format="rawvideo", pix_fmt="rgb24"))),
    ]


def bench_breakdown(clip: Path, info, fps: float, repeats: int, progress: Progress) -> list[dict]:
    pieces = extract_pieces(clip, info, fps)
    task = progress.add_task(f"breakdown at {fps:g} fps", total=len(pieces) * repeats)
    results = []
    for label, cmd in pieces:
        runs = []
        for _ in range(repeats):
            settle(label)
            runs.append(run_timed(lambda cmd=cmd: subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL,
                                                                 stdout=subprocess.DEVNULL)))
            progress.advance(task)
        s = summarise(runs)
        results.append({"piece": label, "wall_s_median": s["median_s"], "ffmpeg_cpu_s_median": s["ffmpeg_cpu_s_median"],
                        "other_cores_median": s["other_cores_median"],
                        "command": " ".join(cmd).replace(str(clip), "CLIP")})
    return results


# ------------------------------------------------------------------------------------------ report
def machine_info() -> dict[str, Any]:
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    import cv2
    import facenet_pytorch  # noqa: F401
    from importlib.metadata import version
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(), "opencv": cv2.__version__,
            "facenet_pytorch": version("facenet-pytorch"), "ffmpeg": ffmpeg_version,
            "loadavg_start": os.getloadavg()}


def _other(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render(results: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 150)
    d = results.get("detection")
    if d:
        t, n = d["tracking"], d["naive"]
        title = (f"Face detection on {d['frames']} frames ({d['width']}×{d['height']}, sampled at "
                 f"{d['sample_fps']:g} fps from a {d['seconds']:g} s clip), "
                 f"torch threads {results['machine']['torch_threads']}")
        table = Table(title=title)
        for col in ("detector", "frames timed", "frames/s", "ms/frame (median)", "detection rate",
                    "eye error / IOD (median, p95)", "other CPU (cores)"):
            table.add_column(col, justify="left" if col == "detector" else "right")

        def err(s):
            if s["eye_error_iod_median"] is None:
                return "–"
            return f"{s['eye_error_iod_median']:.3f}, {s['eye_error_iod_p95']:.3f}"

        modes = d.get("modes") or {"shipped": {"tracking": t, "naive": n, "speedup": d["speedup"]}}
        for mode, r in modes.items():
            tag = f" ({mode} threads)" if len(modes) > 1 else ""
            mt, mn = r["tracking"], r["naive"]
            table.add_row(f"TrackingDetector (ours){tag}, median of {mt['passes']} passes", str(mt["frames"]),
                          f"{mt['frames_per_s']:.2f}", f"{mt['ms_per_frame_median']:.0f}",
                          f"{mt['detection_rate']:.1%}", err(mt), _other(mt["other_cores"]))
            if mn["every"] > 1:
                sub = mt["on_naive_subset"]
                table.add_row(f"  ↳ same, scored on naive's every-{mn['every']} subset", str(sub["frames"]), "", "",
                              f"{sub['detection_rate']:.1%}", err(sub), "")
            table.add_row(f"NaiveDetector (MTCNN, full res){tag}"
                          + (f", every {mn['every']}th frame" if mn["every"] > 1 else ""),
                          str(mn["frames"]), f"{mn['frames_per_s']:.3f}", f"{mn['ms_per_frame_median']:.0f}",
                          f"{mn['detection_rate']:.1%}", err(mn), _other(mn["other_cores"]))
        out.print(table)
        for mode, r in modes.items():
            mt, mn = r["tracking"], r["naive"]
            label = f"{mode} threads: " if len(modes) > 1 else ""
            out.print(f"  {label}speed-up (tracking / naive frames/s): {r['speedup']:.1f}× (goal ≥ {DETECT_GOAL:g}×); "
                      f"detection rate {mt['detection_rate']:.1%} vs {mn['detection_rate']:.1%}; tracking passes "
                      f"{', '.join(f'{x:.2f}' for x in mt['passes_frames_per_s'])} frames/s (other CPU "
                      f"{', '.join(_other(x) for x in mt['passes_other_cores'])} cores); {mt['keyframes']} keyframes "
                      f"({mt['keyframe_ms_median']} ms median), {mt.get('refinements')} of {mt.get('refit_attempts')} R/O-Net "
                      f"refits succeeded ({mt.get('refit_ms_median')} ms median), {mt['roi_searches']} ROI searches "
                      f"({mt['roi_search_ms_median']} ms median)")
        if "speedup_shipped_vs_naive_default_threads" in d:
            out.print(f"  align stage's detector as shipped vs naive on torch's default threads: "
                      f"{d['speedup_shipped_vs_naive_default_threads']:.1f}×")
        for st in d.get("stages", []):
            sp, sa = st["prepare"], st["align"]
            table = Table(title=f"Stage functions on the clip in a local bucket (extract_fps {sp['extract_fps']:g}: "
                                f"{st['sampled']} frames sampled, {st['frames']} kept)")
            for col in ("stage", "frames", "wall s", "frames/s", "ffmpeg CPU s", "python CPU s", "other CPU (cores)"):
                table.add_column(col, justify="left" if col == "stage" else "right")
            table.add_row("prepare (download, sha256, thumbnail pass + checks, frames.jsonl)", str(sp["sampled"]),
                          f"{sp['seconds']:.2f}", f"{sp['frames_per_s']:.2f}", f"{sp['ffmpeg_cpu_s']:.1f}",
                          f"{sp['python_cpu_s']:.1f}", _other(sp["other_cores"]))
            table.add_row("  ↳ its sampling loop (extract_s)", str(sp["sampled"]), f"{sp['extract_s']:.2f}",
                          f"{sp['sampled'] / sp['extract_s']:.2f}" if sp["extract_s"] else "–", "", "", "")
            table.add_row("align (whole stage: re-decode, detect, crops, split, outputs)", str(sa["frames"]),
                          f"{sa['seconds']:.2f}", f"{sa['frames_per_s']:.2f}", f"{sa['ffmpeg_cpu_s']:.1f}",
                          f"{sa['python_cpu_s']:.1f}", _other(sa["other_cores"]))
            table.add_row("  ↳ its detect loop (full-res re-decode in ffmpeg + tracking)", str(sa["frames"]),
                          f"{sa['detect_s']:.2f}", f"{sa['detect_frames_per_s']:.2f}", "", "", "")
            out.print(table)
            out.print(f"  align: detection rate {st['detection_rate']:.1%} (main track), {st['aligned']} aligned "
                      f"(alignment success {st['alignment_success_rate']:.1%}), {st['keyframes']} keyframes, "
                      f"{st.get('refinements')} refits, {st['roi_searches']} ROI searches; ffmpeg CPU = the decode, in its own process")
            for mode, r in modes.items():
                out.print(f"  align stage frames/s vs naive MTCNN ({mode} threads): "
                          f"{sa['frames_per_s'] / r['naive']['frames_per_s']:.1f}× (goal ≥ {DETECT_GOAL:g}×)")
            if st.get("min_duration_s_lowered"):
                low = st["min_duration_s_lowered"]
                out.print(f"  the {low['clip_s']:g} s clip is under prepare's {low['from']:g} s minimum: "
                          "the limit was lowered for this run")
    p = results.get("prepare")
    if p:
        table = Table(title=f"Prepare vs decode floor, {results['clip']['width']}×{results['clip']['height']} "
                            f"{results['clip']['fps']:g} fps, {results['clip']['seconds']:g} s "
                            f"(median of {results['args']['repeats']})")
        for col in ("path", "median s", "min–max s", "ffmpeg CPU s", "python CPU s", "frames (kept)", "× floor",
                    "other CPU (cores)"):
            table.add_column(col, justify="left" if col == "path" else "right")
        f = p["floor"]
        table.add_row(p.get("floor_command", "decode floor"), f"{f['median_s']:.2f}",
                      f"{f['min_s']:.2f}–{f['max_s']:.2f}", f"{f['ffmpeg_cpu_s_median']:.1f}", "", "", "1.00",
                      _other(f["other_cores_median"]))
        for e in p["prepare"]:
            table.add_row(f"prepare loop (thumbnails + checks), extract_fps {e['extract_fps']:g}",
                          f"{e['median_s']:.2f}",
                          f"{e['min_s']:.2f}–{e['max_s']:.2f}", f"{e['ffmpeg_cpu_s_median']:.1f}",
                          f"{e['python_cpu_s_median']:.1f}", f"{e['frames']} ({e['kept']})",
                          f"{e['ratio_to_floor']:.2f}", _other(e["other_cores_median"]))
        out.print(table)
        out.print(f"  goal: prepare ≤ {PREPARE_GOAL:g}× the floor; Python-side checks (FrameFilter.add + finish): "
                  + ", ".join(f"{e['python_checks_s_median']:.2f} s at {e['extract_fps']:g} fps" for e in p["prepare"]))
    b = results.get("breakdown")
    if b:
        table = Table(title=f"Where prepare's time goes (ffmpeg alone, extract_fps {results['breakdown_fps']:g}, "
                            f"median of {results['args']['breakdown_repeats']})")
        for col in ("piece", "wall s", "ffmpeg CPU s", "other CPU (cores)"):
            table.add_column(col, justify="left" if col == "piece" else "right")
        for r in b:
            table.add_row(r["piece"], f"{r['wall_s_median']:.2f}", f"{r['ffmpeg_cpu_s_median']:.1f}",
                          _other(r["other_cores_median"]))
        out.print(table)
    m = results["machine"]
    out.print(f"  load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
              f"at end {'/'.join(f'{x:.2f}' for x in m['loadavg_end'])}; {m['cpus']} CPUs; "
              f"torch {m['torch']} with {m['torch_threads']} threads; cuda available: {m['cuda_available']}")
    out.print("  'other CPU' = CPU time used by other processes on the machine during that timing, in cores on average")
    waits = results.get("quiet_waits")
    if waits:
        loud = [w for w in waits if not w["quiet"]]
        out.print(f"  --wait-quiet: {len(waits)} waits, {sum(w['waited_s'] for w in waits):.0f} s in all; "
                  f"{len(loud)} timed out with other processes still busy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=32.0, help="clip length (prepare needs ≥ 30 s; shorter clips lower its minimum for the run)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30, help="the clip's frame rate")
    parser.add_argument("--sample-fps", type=float, default=5.0,
                        help="frames sampled for the detection comparison; the stage run's extract_fps")
    parser.add_argument("--naive-every", type=int, default=1,
                        help="time the naive detector on every n-th sampled frame only (it is slow)")
    parser.add_argument("--prepare-fps", type=float, nargs="+", default=None,
                        help="extract_fps values for the prepare timing (default: the clip's fps and 25)")
    parser.add_argument("--thread-modes", nargs="+", choices=list(THREAD_MODES), default=list(THREAD_MODES),
                        help="time both detectors with MTCNN as faces.py runs it ('shipped') and/or on torch's "
                             "default threads ('default')")
    parser.add_argument("--tracking-passes", type=int, default=3,
                        help="in-order passes of the tracking detector (the median one is reported)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each prepare/floor timing (median reported)")
    parser.add_argument("--breakdown-repeats", type=int, default=1, help="runs of each breakdown piece; 0 skips it")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each timing, wait up to S seconds for other processes to use < 0.25 cores "
                             "(for shared machines; 0 = don't wait)")
    parser.add_argument("--stage-fps", type=float, nargs="+", default=None,
                        help="extract_fps values to run the stage functions at (default: 25, the default extract_fps, "
                             "and --sample-fps); the align stage's frames/s includes its decode, which is per source "
                             "frame, so it depends on this")
    parser.add_argument("--no-stage", action="store_true", help="skip the run of the prepare and align stage functions")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if min(args.naive_every, args.repeats, args.tracking_passes) < 1 or args.seconds <= 0 or args.sample_fps <= 0:
        parser.error("--naive-every, --tracking-passes and --repeats must be ≥ 1; --seconds and --sample-fps > 0")
    if args.prepare_fps is None:
        args.prepare_fps = [float(args.fps)] + ([25.0] if args.fps != 25 else [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "benchmark": "align",
        "command": " ".join([sys.executable.replace(str(REPO) + "/", ""), *sys.argv]) if argv is None else "main(...)",
        "date": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    console.print(f"torch.get_num_threads() = {torch.get_num_threads()}; functions/faces.py pins MTCNN to one CPU "
                  f"thread: {hasattr(faces_module, 'single_threaded')}")
    QUIET["max_wait_s"] = args.wait_quiet
    workdir = Path(tempfile.mkdtemp(prefix="vs-bench-align-"))
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            clip, made = ensure_clip(args, progress)
            info = probe_video(clip)
            results["clip"] = {"path": str(clip.relative_to(REPO)), "width": info.width, "height": info.height,
                               "fps": info.fps, "seconds": info.duration_s, "codec": info.codec,
                               "bytes": clip.stat().st_size, "face_px": face_px(args), **made}
            if not args.skip_detection:
                clock = time.perf_counter()
                frames = decode_sampled(clip, info.width, info.height, args.sample_fps)
                decode_s = time.perf_counter() - clock
                eyes = truth(len(frames), args.sample_fps, info.width, info.height, face_px(args))
                modes = [m for m in args.thread_modes if m in thread_modes_available()]
                per_mode: dict[str, dict[str, Any]] = {}
                for mode in modes:
                    with mtcnn_threads(mode):
                        TrackingDetector().detect(frames[0])  # warm-up (torch's first calls), thrown away
                        # tracking passes before and after the naive one: a burst of load elsewhere shows as spread
                        tag = f" ({mode} threads)" if len(modes) > 1 else ""
                        passes = [tracking_pass(frames, eyes, progress, f"TrackingDetector{tag}, pass 1")]
                        naive = bench_naive(frames, eyes, args.naive_every, progress, tag)
                        passes += [tracking_pass(frames, eyes, progress, f"TrackingDetector{tag}, pass {i + 2}")
                                   for i in range(args.tracking_passes - 1)]
                    tracking = summarise_tracking(passes, args.naive_every)
                    per_mode[mode] = {"threads": THREAD_MODES[mode], "tracking": tracking, "naive": naive,
                                      "speedup": round(tracking["frames_per_s"] / naive["frames_per_s"], 2)}
                first = per_mode[modes[0]]
                results["detection"] = {
                    "frames": len(frames), "width": info.width, "height": info.height, "sample_fps": args.sample_fps,
                    "seconds": info.duration_s, "decode_s_untimed": round(decode_s, 2),
                    "tracking": first["tracking"], "naive": first["naive"], "speedup": first["speedup"],
                    "thread_mode": modes[0], "modes": per_mode, "goal_speedup": DETECT_GOAL,
                }
                if "shipped" in per_mode and "default" in per_mode:
                    # the align stage as shipped against the naive baseline left on torch's default threads
                    results["detection"]["speedup_shipped_vs_naive_default_threads"] = round(
                        per_mode["shipped"]["tracking"]["frames_per_s"] / per_mode["default"]["naive"]["frames_per_s"], 2)
                del frames
                if not args.no_stage:
                    results["detection"]["stages"] = []
                    for stage_fps in args.stage_fps or [25.0, args.sample_fps]:
                        stage_dir = workdir / f"stage_{stage_fps:g}"
                        stage_dir.mkdir()
                        results["detection"]["stages"].append(bench_stage(clip, stage_fps, stage_dir, progress))
                        shutil.rmtree(stage_dir, ignore_errors=True)
            if not args.skip_prepare:
                results["prepare"] = bench_prepare(clip, info, args.prepare_fps, args.repeats, progress)
                results["prepare"]["goal_ratio"] = PREPARE_GOAL
                if args.breakdown_repeats > 0:
                    results["breakdown_fps"] = args.prepare_fps[0]
                    results["breakdown"] = bench_breakdown(clip, info, args.prepare_fps[0], args.breakdown_repeats,
                                                           progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    if QUIET["waits"]:
        results["quiet_waits"] = QUIET["waits"]
    results["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)

    render(results)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.json_out} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
