"""Paste-back benchmark: the feathered, colour-matched paste vs Wav2Lip's hard paste, frames per second.

One run, per output size (`--heights`, default 480, 720 and 1080):

1. ffmpeg scales a real talking clip (../shared/media/`--clip`, by default talking-5.mp4, 524 px
   square, so every size is an upscale) to that height and pads it to 16:9 (854×480, 1280×720,
   1920×1080, the face in the middle); its first `--frames` frames are decoded into memory.
2. Untimed: the align stage's detector and alignment (`TrackingDetector`, `estimate_alignment`) give
   each frame its box, landmarks and matrix. The "generated" face pasted onto frame i stands in for
   a generator's output: the upper half of frame i's own 96-px crop (Wav2Lip reproduces its input
   there) over the lower half of frame i + `--offset`'s (another mouth shape) — in the aligned crop
   (`paste_back.face_input`) for the feathered paste, in Wav2Lip's own box crop (`wav2lip_box`,
   resized to 96) for the hard one. What the face shows does not change either paste's cost.
3. Timed, side by side: in each of `--passes` passes over all the frames, in turn,
   (a) `paste_back` (landmark mask, feather, CIELAB colour matching, blend on the mask's box),
   (b) `paste_back(color_match=False)`, to show what the colour matching costs,
   (c) `hard_paste` (resize into the box, overwrite: what Wav2Lip's inference.py does).
   Each call returns a new frame, so every figure includes one full-frame copy. The median pass
   is reported, with this process's CPU seconds and the machine's load average (shared machines).

It also writes, for looking at, bench/out/paste_back_<height>p.png: the face region of one frame
pasted the hard way (left) and the feathered way (right). This is a benchmark, not a test: it
asserts nothing, and writes bench/out/paste_back.json.

    .venv/bin/python bench/paste_back.py
    .venv/bin/python bench/paste_back.py --heights 720 --frames 30 --passes 3 --cv2-threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from runinfo import cpu_model, git_commit  # bench/, on the path of a script run from it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
MEDIA = ROOT.parent / "shared" / "media"

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from functions.alignment import CROP_SIZE, estimate_alignment, face_template  # noqa: E402
from functions.faces import TrackingDetector  # noqa: E402
from functions.paste_back import face_input, hard_paste, paste_back, wav2lip_box  # noqa: E402


@dataclass(frozen=True)
class Prepared:
    """One output size: its frames and, per frame, what each paste needs."""

    frames: list[np.ndarray]
    landmarks: list[np.ndarray]
    matrices: list[np.ndarray]
    boxes: list[np.ndarray]
    aligned_faces: list[np.ndarray]  # 96-px aligned crops, in the order they are pasted
    box_faces: list[np.ndarray]  # 96-px Wav2Lip box crops, likewise
    decode_s: float
    detect_s: float


def decode(clip: Path, height: int, frames: int) -> tuple[list[np.ndarray], float]:
    """The clip scaled to `height`, pillarboxed to 16:9, first `frames` frames as RGB arrays."""
    width = round(height * 16 / 9 / 2) * 2
    clock = time.perf_counter()
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(clip), "-frames:v", str(frames),
                          "-vf", f"scale=-2:{height}:flags=lanczos,pad={width}:{height}:(ow-iw)/2:0",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"], check=True, capture_output=True).stdout
    video = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    return [f.copy() for f in video], time.perf_counter() - clock


def prepare(clip: Path, height: int, frames: int, offset: int) -> Prepared:
    images, decode_s = decode(clip, height, frames)
    template, detector = face_template(CROP_SIZE, 0.2), TrackingDetector()
    clock = time.perf_counter()
    faces = [max(detector.detect(image), key=lambda f: f.area) for image in images]
    alignments = [estimate_alignment(face, template) for face in faces]
    detect_s = time.perf_counter() - clock
    boxes = [f.box for f in faces]
    aligned = [face_input(image, a.matrix) for image, a in zip(images, alignments)]
    cut = [wav2lip_box(box, image.shape) for image, box in zip(images, boxes)]
    boxed = [cv2.resize(image[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA)
             for image, (x1, y1, x2, y2) in zip(images, cut)]
    return Prepared(images, [f.landmarks for f in faces], [a.matrix for a in alignments], boxes,
                    stand_ins(aligned, offset), stand_ins(boxed, offset), decode_s, detect_s)


def stand_ins(crops: list[np.ndarray], offset: int) -> list[np.ndarray]:
    """A generator's output for frame i, as Wav2Lip makes one: the upper half of frame i's own crop (its
    input, which the network reproduces) over the lower half of frame i + offset's (another mouth)."""
    out = []
    for i, crop in enumerate(crops):
        face = crop.copy()
        face[crop.shape[0] // 2:] = crops[(i + offset) % len(crops)][crop.shape[0] // 2:]
        out.append(face)
    return out


METHODS = {
    "feathered": lambda p, i: paste_back(p.frames[i], p.aligned_faces[i], matrix=p.matrices[i],
                                         landmarks=p.landmarks[i]),
    "feathered_no_color": lambda p, i: paste_back(p.frames[i], p.aligned_faces[i], matrix=p.matrices[i],
                                                  landmarks=p.landmarks[i], color_match=False),
    "hard": lambda p, i: hard_paste(p.frames[i], p.box_faces[i], box=p.boxes[i]),
}


def time_methods(prepared: Prepared, passes: int) -> dict[str, dict]:
    """Every method over every frame, the methods interleaved within each pass; the median pass of each."""
    n = len(prepared.frames)
    for method in METHODS.values():
        method(prepared, 0)  # warm-up: first-call allocations, OpenCV's thread pool
    walls: dict[str, list[float]] = {name: [] for name in METHODS}
    cpus: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(passes):
        for name, method in METHODS.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                method(prepared, i)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: {"frames_per_s": round(n / statistics.median(walls[name]), 1),
                   "ms_per_frame": round(1000 * statistics.median(walls[name]) / n, 3),
                   "ms_per_frame_min_max": [round(1000 * min(walls[name]) / n, 3),
                                            round(1000 * max(walls[name]) / n, 3)],
                   "cpu_s_per_pass": round(statistics.median(cpus[name]), 3)} for name in METHODS}


def write_picture(prepared: Prepared, height: int) -> Path:
    """The face region of frame 0, hard paste on the left, feathered on the right."""
    hard, soft = METHODS["hard"](prepared, 0), METHODS["feathered"](prepared, 0)
    x1, y1, x2, y2 = wav2lip_box(prepared.boxes[0], hard.shape)
    margin = (x2 - x1) // 4
    rows = slice(max(0, y1 - margin), min(hard.shape[0], y2 + margin))
    cols = slice(max(0, x1 - margin), min(hard.shape[1], x2 + margin))
    path = OUT / f"paste_back_{height}p.png"
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack([hard[rows, cols], soft[rows, cols]]), cv2.COLOR_RGB2BGR))
    return path


def bench_size(clip: Path, height: int, args: argparse.Namespace) -> dict:
    prepared = prepare(clip, height, args.frames, args.offset)
    frame = prepared.frames[0]
    eye = float(np.median([np.linalg.norm(lm[1] - lm[0]) for lm in prepared.landmarks]))
    timings = time_methods(prepared, args.passes)
    picture = write_picture(prepared, height)
    return {"height": height, "width": frame.shape[1], "frames": len(prepared.frames),
            "eye_distance_px_median": round(eye, 1), "decode_s_untimed": round(prepared.decode_s, 2),
            "detect_s_untimed": round(prepared.detect_s, 2), "methods": timings,
            "feathered_vs_hard": round(timings["feathered"]["ms_per_frame"] / timings["hard"]["ms_per_frame"], 2),
            "picture": str(picture.relative_to(ROOT))}


def report(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"paste-back, {record['clip']}, {record['args']['frames']} frames, "
                        f"median of {record['args']['passes']} passes, cv2 threads {record['cv2_threads']}")
    for header in ("output", "eye px", "feathered f/s", "ms", "no colour match f/s", "ms", "hard f/s", "ms",
                   "feathered / hard time"):
        table.add_column(header, justify="right")
    for size in record["sizes"]:
        m = size["methods"]
        table.add_row(f"{size['width']}×{size['height']}", f"{size['eye_distance_px_median']:.0f}",
                      *(v for name in METHODS
                        for v in (f"{m[name]['frames_per_s']:.0f}", f"{m[name]['ms_per_frame']:.2f}")),
                      f"{size['feathered_vs_hard']:.2f}×")
    console.print(table)
    console.print(f"load average {record['load_average_start'][0]:.2f} → {record['load_average_end'][0]:.2f} "
                  f"on {record['machine']['cpus']} CPUs; wall {record['wall_s']} s; pictures: "
                  + ", ".join(s["picture"] for s in record["sizes"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clip", default="talking-5.mp4", help="a clip in ../shared/media")
    parser.add_argument("--heights", type=int, nargs="+", default=[480, 720, 1080])
    parser.add_argument("--frames", type=int, default=50, help="frames per size (decoded into memory)")
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the frames (median reported)")
    parser.add_argument("--offset", type=int, default=12, help="frame i gets the face of frame i + offset")
    parser.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's own)")
    parser.add_argument("--json-out", type=Path, default=OUT / "paste_back.json")
    args = parser.parse_args(argv)
    clip = MEDIA / args.clip
    if not clip.exists():
        parser.error(f"{clip} does not exist")
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    OUT.mkdir(parents=True, exist_ok=True)
    started, load_start, clock = datetime.now(timezone.utc), os.getloadavg(), time.perf_counter()
    sizes = [bench_size(clip, height, args) for height in args.heights]
    record = {
        "benchmark": "paste_back", "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "command": " ".join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]) if argv is None else "main(...)",
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "numpy": np.__version__},
        "cv2_threads": cv2.getNumThreads(), "clip": args.clip,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": sizes, "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "wall_s": round(time.perf_counter() - clock, 1),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
