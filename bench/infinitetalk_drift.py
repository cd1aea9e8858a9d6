"""InfiniteTalk colour / identity drift over a long render: the colour anchor off and on, side by side.

The issue asks for "mean colour shift per minute, tiny model on CPU". One run:

1. **Speech**: ../shared/media/`--speech` (speech-en.wav, 60 s of real English speech) through
   `prepare_wave` (16 kHz mono, −23 LUFS, the render's own path), its first `--seconds`; the tiny
   speech encoder's features (`load_models(InfiniteTalkOptions(base_model="tiny"))`, whose transformer
   takes its audio sizes) for round(seconds × 25) frames, as a plan counts them.
2. **Reference**: frame `--reference-frame` of the real clip ../shared/media/`--clip` (talking-1.mp4)
   read at 25 fps with `core.video.sample_frames`, scaled and centre-cropped to `--size` (what the
   sampler does to any reference, `resize_and_crop`).
3. **Renders**: `iter_talking` (image-to-video, the backend's `image` mode) with the tiny random model,
   `--steps` steps, the default guidance (text 5, audio 4: three transformer passes a step) and chunking
   (81-frame chunks, 9 motion frames: a minute is 21 chunks), the same seed, once per `--anchors`
   setting (`off` = `colour_anchor=False`, `on` = True, a number = that strength), one after the other.
4. **The same with a synthetic drift** (`--tint`, default 0.02; 0 skips it): the tiny random model keeps a
   constant colour offset from the reference and does not drift by itself, so every setting is rendered
   again with the VAE decoder's output of chunk n shifted by n × tint (red up, blue down, on the [-1, 1]
   scale; the next chunk's motion frames are encoded from the shifted frames). That is the kind of
   accumulating shift long renders show, and what the anchor must pull back chunk after chunk.

Per setting:
- **ΔE/min**: `colour_drift(frames, reference)`: the least-squares slope, in CIE76 ΔE per minute, of each
  frame's mean-Lab distance to the reference's mean Lab (a constant offset is no drift);
- **ΔE to the reference**, the mean of that per-frame distance over the first and over the last
  `--window` seconds (and per window of that length, in the JSON and the second table);
- **identity proxies**, per frame against the reference, averaged over the same first/last windows:
  SSIM of the luma (11-px Gaussian window, σ 1.5, the standard constants) and the mean over R, G, B of
  the Pearson correlation of the pixels; and the mean SSIM of each chunk's first new frame;
- **render s**: wall time of the whole render (every chunk, the colour matching included), and per chunk.

The tiny model's weights are random: its frames are noise shaped by the reference and the motion
frames, not a face. So this checks the anchor's *mechanics* over a long chunked render (does it hold
the colour of chunk 21 to the reference, what does it cost); it does not measure the drift a real
InfiniteTalk render has, which needs the real weights, on a GPU.

torch runs `--threads` threads. The CPU other processes used during each render is recorded
(/proc/stat minus this process's own CPU time, in cores). This is a benchmark, not a test: it asserts
nothing, prints markdown tables and writes bench/out/infinitetalk_drift.json.

    .venv/bin/python bench/infinitetalk_drift.py                  # 60 s, 48×48, 4 steps, off / 0.5 / on
    .venv/bin/python bench/infinitetalk_drift.py --seconds 10     # a quick look (4 chunks)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
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
import torch  # noqa: E402

from core.audio import SPEECH_SAMPLE_RATE  # noqa: E402
from core.video import probe_video, sample_frames  # noqa: E402
from functions.infinitetalk_audio import frame_windows, prepare_wave, video_frame_count  # noqa: E402
from functions.infinitetalk_chunks import plan_chunks  # noqa: E402
from functions.infinitetalk_pipeline import colour_drift, iter_talking, resize_and_crop, rgb_to_lab  # noqa: E402
from functions.models.infinitetalk_loading import load_models  # noqa: E402
from schemas.brief import InfiniteTalkOptions  # noqa: E402


# --------------------------------------------------------------------------- measures
def mean_lab(frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """Mean CIE Lab colour of each uint8 frame [T, H, W, 3] → [T, 3] (the measure `colour_drift` uses)."""
    out = []
    for f0 in range(0, len(frames), batch):
        rgb = torch.from_numpy(np.array(frames[f0:f0 + batch])).double() / 255  # a copy: PIL arrays are read-only
        out.append(rgb_to_lab(rgb).mean(dim=(1, 2)).numpy())
    return np.concatenate(out)


def luma(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey images (float, 0..255): Gaussian 11×11 window, σ 1.5, K1 0.01, K2 0.03."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def channel_correlation(frame: np.ndarray, reference: np.ndarray) -> float:
    """Pearson correlation of the pixels of each of R, G, B with the reference's, averaged (0 for a flat channel)."""
    rs = []
    for c in range(3):
        x, y = frame[..., c].ravel().astype(np.float64), reference[..., c].ravel().astype(np.float64)
        x, y = x - x.mean(), y - y.mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        rs.append(float((x * y).sum() / den) if den > 0 else 0.0)
    return float(np.mean(rs))


def measure(frames: np.ndarray, reference: np.ndarray, chunk_starts: list[int], window_s: float) -> dict:
    ref_lab = mean_lab(reference[None])[0]
    distance = np.linalg.norm(mean_lab(frames) - ref_lab, axis=1)  # ΔE (CIE76) of each frame's mean colour
    ref_luma = luma(reference)
    ssims = np.array([ssim(luma(f), ref_luma) for f in frames])
    corrs = np.array([channel_correlation(f, reference) for f in frames])
    w = max(1, min(round(window_s * FPS), len(frames)))
    first, last = slice(0, w), slice(len(frames) - w, len(frames))
    windows = [(i / FPS, float(distance[i:i + w].mean())) for i in range(0, len(frames), w)]
    return {
        "delta_e_per_min": colour_drift(frames, reference, FPS),
        "delta_e_first": float(distance[first].mean()), "delta_e_last": float(distance[last].mean()),
        "delta_e_max": float(distance.max()),
        "ssim_first": float(ssims[first].mean()), "ssim_last": float(ssims[last].mean()),
        "corr_first": float(corrs[first].mean()), "corr_last": float(corrs[last].mean()),
        "ssim_chunk_starts": [float(ssims[i]) for i in chunk_starts],
        "delta_e_chunk_starts": [float(distance[i]) for i in chunk_starts],
        "delta_e_windows": windows,
        "mean_lab_first": mean_lab(frames[:1])[0].tolist(), "mean_lab_last": mean_lab(frames[-1:])[0].tolist(),
    }


# --------------------------------------------------------------------------- run
def anchor_value(text: str) -> bool | float:
    if text in ("off", "false", "0"):
        return False
    if text in ("on", "true", "1"):
        return True
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"an anchor strength is within [0, 1], got {text}")
    return value


def anchor_label(value: bool | float) -> str:
    if value is False:
        return "off"
    if value is True:
        return "on (1.0)"
    return f"strength {value:g}"


@contextlib.contextmanager
def tinted(vae, per_chunk: float):
    """A drift the tiny model does not make by itself: each `vae.decode` call (one per chunk) shifts its output
    further, red up and blue down, by `per_chunk` × the calls before it (the shift tests/test_infinitetalk_pipeline.py
    injects, smaller). The next chunk's motion frames are encoded from the shifted frames, as a real drift would be."""
    if not per_chunk:
        yield
        return
    inner, calls = vae.decode, [0]

    def decode(z, *args, **kwargs):
        out = inner(z, *args, **kwargs)
        video = out[0].clone()
        video[:, 0] += per_chunk * calls[0]
        video[:, 2] -= per_chunk * calls[0]
        calls[0] += 1
        return (video.clamp(-1, 1),)

    vae.decode = decode
    try:
        yield
    finally:
        del vae.decode  # the instance attribute: the class's method again


def reference_frame(clip: Path, index: int) -> np.ndarray:
    info = probe_video(clip)
    for frame in sample_frames(clip, fps=FPS, size=(info.width, info.height), keep=lambda i: i == index):
        return frame.pixels
    raise SystemExit(f"{clip} has no frame {index} at {FPS} fps")


def render(models, features: torch.Tensor, reference: np.ndarray, frames_total: int, args: argparse.Namespace, *,
           anchor: bool | float, tint: float) -> np.ndarray:
    """One whole render, `iter_talking`'s chunks collected: uint8 [frames_total, size, size, 3]."""
    out = np.empty((frames_total, args.size, args.size, 3), np.uint8)
    defaults = InfiniteTalkOptions()
    with tinted(models.components.vae, tint):
        for chunk, block in iter_talking(
                models.components, reference=reference, total_frames=frames_total,
                audio_windows=lambda start, count: frame_windows(features, start, count),
                prompt=defaults.prompt, negative_prompt=defaults.negative_prompt, height=args.size, width=args.size,
                steps=args.steps, text_guidance=args.text_guidance, audio_guidance=args.audio_guidance,
                seed=args.seed, chunk_frames=args.chunk_frames, motion_frames=args.motion_frames,
                colour_anchor=anchor):
            out[chunk.new_start:chunk.new_start + chunk.new_frames] = block
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of speech to render (≤ the file's)")
    parser.add_argument("--speech", default="speech-en.wav")
    parser.add_argument("--clip", default="talking-1.mp4")
    parser.add_argument("--reference-frame", type=int, default=25, help="frame of the clip at 25 fps (1 s in)")
    parser.add_argument("--size", type=int, default=48, help="square frame side (a multiple of 16)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--chunk-frames", type=int, default=81)
    parser.add_argument("--motion-frames", type=int, default=9)
    parser.add_argument("--text-guidance", type=float, default=5.0)
    parser.add_argument("--audio-guidance", type=float, default=4.0)
    parser.add_argument("--anchors", nargs="+", type=anchor_value, default=[False, 0.5, True],
                        help="colour_anchor settings: off, on, or a strength in [0, 1]")
    parser.add_argument("--tint", type=float, default=0.02, help=(
        "also render every setting with a synthetic drift: the VAE decoder's output of chunk n shifted by "
        "n × TINT (red up, blue down, on the [-1, 1] scale); 0: skip"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of the first/last windows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT / "infinitetalk_drift.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, wall0 = datetime.now(timezone.utc), time.perf_counter()

    wave = prepare_wave(MEDIA / args.speech)
    wave = wave[:round(args.seconds * SPEECH_SAMPLE_RATE)]
    frames_total = video_frame_count(len(wave))
    models = load_models(InfiniteTalkOptions(base_model="tiny"), device="cpu")
    clock = time.perf_counter()
    features = models.speech.features(wave, frames=frames_total)
    features_s = time.perf_counter() - clock
    reference = np.array(resize_and_crop(reference_frame(MEDIA / args.clip, args.reference_frame), args.size,
                                         args.size))  # a writable copy
    chunks = plan_chunks(frames_total, chunk_frames=args.chunk_frames, motion_frames=args.motion_frames)
    chunk_starts = [c.new_start for c in chunks]

    results = []
    tints = [0.0] + ([args.tint] if args.tint else [])
    for tint, anchor in [(t, a) for t in tints for a in args.anchors]:
        busy0, own0, clock = system_busy_s(), time.process_time(), time.perf_counter()
        out = render(models, features, reference, frames_total, args, anchor=anchor, tint=tint)
        render_s = time.perf_counter() - clock
        own, busy1 = time.process_time() - own0, system_busy_s()
        other = (busy1 - busy0 - own) / render_s if busy0 is not None and busy1 is not None else None
        label = anchor_label(anchor) + (f", tint {tint:+g}/chunk" if tint else "")
        row = {"anchor": anchor, "tint": tint, "label": label, "render_s": render_s,
               "s_per_chunk": render_s / len(chunks), "other_cores": other,
               **measure(out, reference, chunk_starts, args.window)}
        results.append(row)
        print(f"{row['label']}: {render_s:.1f} s, ΔE/min {row['delta_e_per_min']:+.3f}", file=sys.stderr, flush=True)

    info = {
        "started_utc": started.isoformat(timespec="seconds"), "wall_s": time.perf_counter() - wall0,
        "cpu": cpu_model(), "commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": args.threads, "seconds": len(wave) / SPEECH_SAMPLE_RATE, "frames": frames_total,
        "chunks": len(chunks), "size": args.size, "steps": args.steps, "chunk_frames": args.chunk_frames,
        "motion_frames": args.motion_frames, "text_guidance": args.text_guidance,
        "audio_guidance": args.audio_guidance, "tint": args.tint, "seed": args.seed, "speech": args.speech,
        "clip": args.clip,
        "reference_frame": args.reference_frame, "features_s": features_s, "window_s": args.window,
        "reference_mean_lab": mean_lab(reference[None])[0].tolist(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": info, "results": results}, indent=2))

    w = args.window
    print(f"{info['seconds']:g} s of {args.speech} = {frames_total} frames in {len(chunks)} chunks "
          f"({args.chunk_frames}/{args.motion_frames}), {args.size}×{args.size}, {args.steps} steps, tiny random "
          f"model, seed {args.seed}; reference: frame {args.reference_frame} of {args.clip}; {info['cpu']}, "
          f"{args.threads} threads, commit {info['commit']}, {info['started_utc']}; whole run {info['wall_s']:.0f} s\n")
    print(f"| colour anchor | ΔE/min | ΔE to ref, first {w:g} s | last {w:g} s | max | SSIM first {w:g} s | "
          f"last {w:g} s | SSIM chunk starts (mean) | RGB corr first {w:g} s | last {w:g} s | render s | s/chunk "
          f"| other load (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        other = "" if r["other_cores"] is None else f"{r['other_cores']:.2f}"
        print(f"| {r['label']} | {r['delta_e_per_min']:+.3f} | {r['delta_e_first']:.2f} | {r['delta_e_last']:.2f} | "
              f"{r['delta_e_max']:.2f} | {r['ssim_first']:.3f} | {r['ssim_last']:.3f} | "
              f"{np.mean(r['ssim_chunk_starts']):.3f} | {r['corr_first']:.3f} | {r['corr_last']:.3f} | "
              f"{r['render_s']:.1f} | {r['s_per_chunk']:.2f} | {other} |")
    starts = [t for t, _ in results[0]["delta_e_windows"]]
    print(f"\nMean ΔE to the reference per {w:g} s window:\n")
    print("| colour anchor | " + " | ".join(f"{t:g}–{min(t + w, info['seconds']):g} s" for t in starts) + " |")
    print("|---|" + "---:|" * len(starts))
    for r in results:
        print(f"| {r['label']} | " + " | ".join(f"{d:.2f}" for _, d in r["delta_e_windows"]) + " |")


if __name__ == "__main__":
    main()
