"""Compose benchmark: frames per second of the background replacement's parts at 720p and 1080p on this CPU.

Per output height (`--heights`, default 720 and 1080):

1. ffmpeg scales a real talking clip (../shared/media/`--clip`, talking-1.mp4 by default, 700 px square) to
   that height and pads it to 16:9 with its own edge pixels; its first `--frames` frames are decoded into memory.
2. Timed, one part at a time over all the frames (the median of `--passes` passes):
   - segment: mediapipe's selfie segmentation (`PersonSegmenter.probability`: shrink to 256², run the model);
   - refine: temporal smoothing + guided-filter edge refinement + feathering at full size (functions/matte.py);
   - composite: the blend over a flat colour (`blend`), and over the video's own blurred background (`Blurred`);
   - encode: the H.264 picture and the matte through `FrameWriter` (what the stage writes per frame).
3. The share of a talking render's total time: compose's seconds per frame (segment + refine + colour
   composite + encode) against Wav2Lip's own seconds per frame at the same height from
   bench/out/talking_render.json (`bench/talking_render.py`), where it has that height.

This is a benchmark, not a test: it asserts nothing, and writes bench/out/compose.json.

    .venv/bin/python bench/compose.py
    .venv/bin/python bench/compose.py --heights 720 --frames 30 --passes 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runinfo import cpu_model  # noqa: E402  (bench/ is on the path of `python bench/compose.py`)
from core.video_write import FrameWriter  # noqa: E402
from functions.backgrounds import Blurred  # noqa: E402
from functions.compose import blend  # noqa: E402
from functions.matte import MatteState, refine, smooth  # noqa: E402
from functions.segmentation import PersonSegmenter  # noqa: E402

MEDIA = Path(os.environ.get("VIDEOSTUDIO_TEST_MEDIA") or REPO.parent / "shared" / "media")
OUT = REPO / "bench" / "out"


def load(clip: Path, height: int, frames: int) -> np.ndarray:
    width = height * 16 // 9
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-vf",
                          f"scale=-2:{height},pad={width}:{height}:(ow-iw)/2:0:black,fillborders=left={(width - height) // 2}"
                          f":right={(width - height) // 2}:mode=smear", "-frames:v", str(frames), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def timed(passes: int, run) -> float:
    """Median seconds of `passes` calls of `run()`."""
    seconds = []
    for _ in range(passes):
        clock = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - clock)
    return statistics.median(seconds)


def talking_render_s_per_frame(height: int) -> tuple[float | None, str | None]:
    path = OUT / "talking_render.json"
    if not path.exists():
        return None, None
    data = json.loads(path.read_text())
    for size in data.get("sizes", []):
        if size.get("height") != height:
            continue
        for render in size.get("renders", []):
            if render.get("kind") == "feathered" and render.get("width") == 1.0:
                return render["render_s"] / render["frames"], data.get("command")
    return None, data.get("command")


def bench_height(clip: Path, height: int, frames: int, passes: int) -> dict:
    video = load(clip, height, frames)
    n, h, w = video.shape[:3]
    with PersonSegmenter() as segmenter:
        probabilities: list[np.ndarray] = []
        segment_s = timed(passes, lambda: probabilities.__setitem__(slice(None), [segmenter.probability(f) for f in video]))
    alphas: list[np.ndarray] = []

    def refine_all() -> None:
        state = MatteState()
        alphas[:] = [refine(smooth(state, p, f, weight=0.6), f, feather=2.0) for p, f in zip(probabilities, video)]

    refine_s = timed(passes, refine_all)
    colour = np.empty((h, w, 3), np.uint8)
    colour[:] = (11, 95, 255)
    composite_s = timed(passes, lambda: [blend(f, colour, a) for f, a in zip(video, alphas)])
    blurred = Blurred(12.0)
    blur_s = timed(passes, lambda: [blend(f, blurred.frame_at(i, f, a), a) for i, (f, a) in enumerate(zip(video, alphas))])

    def encode() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            rate = Fraction(25)
            picture = FrameWriter(Path(tmp) / "p.mp4", width=w, height=h, rate=rate, codec="h264")
            matte = FrameWriter(Path(tmp) / "m.mp4", width=w, height=h, rate=rate, codec="h264")
            for f, a in zip(video, alphas):
                picture.write(blend(f, colour, a))
                matte.write(np.repeat(np.round(a * 255).astype(np.uint8)[..., None], 3, axis=2))
            picture.close()
            matte.close()

    encode_s = timed(passes, encode) - composite_s  # the blend inside it is counted under composite
    compose_per_frame = (segment_s + refine_s + composite_s + encode_s) / n
    render_per_frame, render_command = talking_render_s_per_frame(height)
    fps = lambda s: round(n / s, 1)  # noqa: E731
    return {
        "height": h, "width": w, "frames": n,
        "segment_fps": fps(segment_s), "refine_fps": fps(refine_s), "composite_colour_fps": fps(composite_s),
        "composite_blur_fps": fps(blur_s), "encode_fps": fps(encode_s),
        "segment_and_composite_fps": fps(segment_s + refine_s + composite_s),
        "compose_stage_fps": round(1 / compose_per_frame, 1),
        "talking_render_fps": round(1 / render_per_frame, 1) if render_per_frame else None,
        "talking_render_source": render_command if render_per_frame else None,
        "share_of_talking_render": (round(compose_per_frame / (compose_per_frame + render_per_frame), 3)
                                    if render_per_frame else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="talking-1.mp4")
    parser.add_argument("--heights", type=int, nargs="+", default=[720, 1080])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--cv2-threads", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(args.cv2_threads)
    sizes = []
    for height in args.heights:
        result = bench_height(MEDIA / args.clip, height, args.frames, args.passes)
        print(json.dumps(result))
        sizes.append(result)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "compose", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python bench/compose.py " + " ".join(sys.argv[1:]),
              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "opencv": cv2.__version__,
                          "numpy": np.__version__, "load_average": os.getloadavg()},
              "args": vars(args), "sizes": sizes}
    (OUT / "compose.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
