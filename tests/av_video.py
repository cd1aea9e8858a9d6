"""A synthetic talking-head MP4 for end-to-end tests of audio-driven backends (Wav2Lip): a real face whose
mouth opens with real speech, in a file that goes through prepare (ffmpeg, 25 fps) and align (MTCNN).

- Speech: sentences spoken by the bundled piper voice (functions/speech.py), joined with pauses of
  silence, so the loudness envelope has closed-mouth moments between sentences as well as within them.
- Picture: skimage's astronaut, upscaled 2× (eye distance ≈ 87 px) on a plain background. Her teeth are
  inpainted once (a closed mouth); in frame i a dark ellipse between her mouth corners (found by MTCNN on the
  still) is as tall as the speech's loudness in audio [i/25, (i+1)/25) (`av_corpus.speech_envelope`):
  closed, it is a thin line. Gaussian sensor noise and a 1–2 px head sway keep frames distinct.
- Measurement: `mouth_opening` is the soft count of dark pixels in a fixed box around the mouth. A dark
  pixel is much darker than lips and skin, so codec noise hardly moves it, and a blurred mouth (a
  generator's) keeps its darkness sum roughly, as long as the blur stays inside the box.

`AVCorpus.build(root)` makes the training take (≥ 30 s: prepare's minimum), its video, and a held-out
take; files land under `root` keyed by the sentences' hash, so modules of one pytest session that pass
the same root (e.g. `tmp_path_factory.getbasetemp() / "av-corpus"`) build it once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from av_corpus import FPS, head_drift, speech_envelope
from core.audio import SPEECH_SAMPLE_RATE, Audio, normalize_loudness, read_wav, write_wav
from core.video import probe_video, sample_frames, write_mp4

SIZE = (640, 480)  # (width, height) of the talking-face video
FACE_SCALE = 2.0  # the astronaut upscaled this much: her eye distance goes from 42 to ~87 px
SWAY_PX = 1.5  # head sway amplitude: integer offsets of up to 2 px
NOISE_STD = 2.0  # per-pixel sensor noise, in 0..255 units
BACKGROUND = (118, 128, 138)  # plain blue-grey RGB
TEETH_LUMA = 170  # brighter pixels inside her smile are teeth, inpainted away to close the mouth
# The open mouth: dark red (luma ≈ 44). Black reads less like a mouth to MTCNN: with (34, 10, 14) ~9 % of the
# video's frames scored under align's 0.95 (tracked refits), with this colour ~1.6 %, mostly the widest mouths.
MOUTH_RGB = (80, 28, 34)
MOUTH_HALF_WIDTH = 0.45  # of the mouth-corner distance
MOUTH_MAX_HALF_HEIGHT = 0.22  # of the mouth-corner distance, when the envelope is 1
DARK_FULL, DARK_NONE = 50.0, 110.0  # luma: at or below DARK_FULL a pixel counts fully dark; above DARK_NONE not

# Lead-in silence, the pause after each sentence (cycled: natural variety), and the tail, in seconds.
LEAD_S, PAUSES_S, TAIL_S = 0.4, (0.55, 0.8, 0.45, 1.0, 0.65, 0.9), 0.6

TRAINING_SENTENCES: tuple[str, ...] = (
    "Good morning, and welcome to the weekly update.",
    "Today we look at three new features.",
    "First, you can upload a short video of yourself.",
    "Please speak clearly and face the camera.",
    "Bright light from the front works best.",
    "A few minutes later, your avatar is ready.",
    "Numbers are fine too: four hundred and twelve.",
    "Why thirty seconds? Every mouth moves differently.",
    "Quiet rooms help, so switch off the fan.",
    "Second, there is a choice of offline voices.",
    "Finally, long pauses no longer freeze the picture.",
    "That is all. Thank you, and see you soon!",
)
HELDOUT_SENTENCES: tuple[str, ...] = (
    "Yesterday a purple kite got stuck in the old oak tree.",
    "My neighbour climbed up a ladder, laughing all the way.",
    "Now it hangs above the gate like a flag.",
)


def _sentences_key(sentences: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:12]


def speak(sentences: Sequence[str], dest: Path) -> Path:
    """`sentences` spoken by the bundled piper voice, one after another with pauses of silence, as a 16 kHz
    mono WAV at `dest` (loudness-normalised once, as functions/speech.py does a script). Speech is seeded
    (functions/speech.py), so the corpus is the same in every run and the tests built on it do not vary."""
    from functions.speech import synthesize

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SPEECH_SAMPLE_RATE), np.float32)

    parts = [silence(LEAD_S)]
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        for n, sentence in enumerate(sentences):
            spoken = synthesize(sentence, dest=Path(scratch) / f"{n}.wav").path
            parts += [read_wav(spoken).samples, silence(PAUSES_S[n % len(PAUSES_S)])]
    parts[-1] = silence(TAIL_S)
    take, _ = normalize_loudness(Audio(np.concatenate(parts), SPEECH_SAMPLE_RATE))
    return _atomic(dest, lambda tmp: write_wav(tmp, take))


def envelope_per_frame(wav: Path | np.ndarray, fps: int = FPS) -> np.ndarray:
    """Loudness in [0, 1] of each video frame's slice of the speech (frame i ↔ audio [i/fps, (i+1)/fps));
    `av_corpus.speech_envelope`, which this corpus's mouths follow."""
    samples = read_wav(Path(wav)).samples if isinstance(wav, (str, Path)) else np.asarray(wav, np.float32)
    if fps == FPS:
        return speech_envelope(samples)
    per_frame = SPEECH_SAMPLE_RATE // fps
    frames = len(samples) // per_frame
    rms = np.sqrt((samples[: frames * per_frame].reshape(frames, per_frame) ** 2).mean(axis=1))
    db = 20 * np.log10(rms + 1e-5)
    return np.clip((db - db.max() + 40) / 40, 0, 1)


@dataclass(frozen=True)
class FaceStill:
    """The still the video is made of, and where MTCNN found the face in it (frame pixels)."""

    image: np.ndarray  # [H, W, 3] uint8 RGB, closed lips, no mouth drawn
    box: np.ndarray  # [x1, y1, x2, y2]
    landmarks: np.ndarray  # [5, 2]: eyes, nose, mouth corners (image-left first)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    @property
    def mouth_box(self) -> tuple[int, int, int, int]:
        return mouth_box(self.landmarks)


def _mouth_geometry(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Centre between the mouth corners, their distance, and the mouth's roll (radians)."""
    left, right = np.asarray(landmarks, np.float64)[3], np.asarray(landmarks, np.float64)[4]
    dx, dy = right - left
    return (left + right) / 2, float(np.hypot(dx, dy)), float(np.arctan2(dy, dx))


def _ellipse_alpha(shape: tuple[int, int], centre: np.ndarray, half_w: float, half_h: float,
                   angle: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a filled ellipse on a [h, w] grid: edges ~1 px soft, so its area (the
    sum) grows smoothly with `half_h` rather than in whole rows."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    x, y = cols - centre[0], rows - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    radius = np.sqrt((u / half_w) ** 2 + (v / half_h) ** 2)
    return np.clip((1 - radius) * min(half_w, half_h) + 0.5, 0, 1)


def _blend(image: np.ndarray, alpha: np.ndarray, rgb: tuple[int, int, int]) -> None:
    image[:] = alpha[..., None] * np.asarray(rgb, np.float32) + (1 - alpha[..., None]) * image


def _close_smile(astronaut: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The astronaut with her teeth inpainted from the lips and skin around them (OpenCV's Telea): a closed
    mouth. Her bright teeth would otherwise read as a mouth that never closes."""
    centre, mouth_w, angle = _mouth_geometry(landmarks)
    x1, y1 = int(centre[0] - 0.6 * mouth_w), int(centre[1] - 0.2 * mouth_w)
    x2, y2 = int(centre[0] + 0.6 * mouth_w), int(centre[1] + 0.35 * mouth_w)
    region = np.ascontiguousarray(astronaut[y1:y2, x1:x2])
    inside = _ellipse_alpha(region.shape[:2], centre + [0, 0.08 * mouth_w] - [x1, y1], 0.5 * mouth_w,
                            0.14 * mouth_w, angle) > 0.3
    teeth = ((cv2.cvtColor(region, cv2.COLOR_RGB2GRAY) > TEETH_LUMA) & inside).astype(np.uint8) * 255
    closed = astronaut.copy()
    closed[y1:y2, x1:x2] = cv2.inpaint(region, cv2.dilate(teeth, np.ones((3, 3), np.uint8)), 3, cv2.INPAINT_TELEA)
    return closed


@lru_cache(maxsize=4)
def face_still(size: tuple[int, int] = SIZE) -> FaceStill:
    """The astronaut's head, mouth closed, 2× on a plain background (feathered mask, as tests/synthetic_video.py
    cuts it), and MTCNN's face on the result: where the mouth will be drawn and measured."""
    from functions.faces import NaiveDetector
    from synthetic_video import _FACE_CENTRE, _MASK_AXES

    width, height = size
    detector = NaiveDetector()
    astronaut = skimage.data.astronaut()
    astronaut = _close_smile(astronaut, max(detector.detect(astronaut), key=lambda f: f.area).landmarks)
    mask = np.zeros(astronaut.shape[:2], np.float32)
    cv2.ellipse(mask, (int(_FACE_CENTRE[0]), int(_FACE_CENTRE[1]) - 10), _MASK_AXES, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    matrix = np.array([[FACE_SCALE, 0, width / 2 - FACE_SCALE * _FACE_CENTRE[0]],
                       [0, FACE_SCALE, height * 0.48 - FACE_SCALE * _FACE_CENTRE[1]]])
    face = cv2.warpAffine(astronaut, matrix, size, flags=cv2.INTER_CUBIC).astype(np.float32)
    alpha = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_LINEAR)[..., None]
    image = np.clip(alpha * face + (1 - alpha) * np.asarray(BACKGROUND, np.float32) + 0.5, 0, 255).astype(np.uint8)
    found = detector.detect(image)
    if not found:
        raise RuntimeError("MTCNN finds no face in the talking-face still")
    best = max(found, key=lambda f: f.area)
    return FaceStill(image, best.box, best.landmarks)


def draw_mouth(image: np.ndarray, landmarks: np.ndarray, opening: float) -> None:
    """Draw (in place) the dark open mouth between `landmarks`' mouth corners: `opening` 0 is a thin line,
    1 a mouth open 0.44 × its width. The jaw drops: the ellipse grows mostly downwards."""
    centre, mouth_w, angle = _mouth_geometry(landmarks)
    half_h = 1.0 + float(np.clip(opening, 0, 1)) * (MOUTH_MAX_HALF_HEIGHT * mouth_w - 1.0)
    x1, y1, x2, y2 = mouth_box(landmarks, margin_px=2)
    x1, y1 = max(x1, 0), max(y1, 0)
    patch = image[y1:y2, x1:x2].astype(np.float32)
    down = np.array([-np.sin(angle), np.cos(angle)]) * 0.4 * (half_h - 1.0)
    alpha = _ellipse_alpha(patch.shape[:2], centre + down - [x1, y1], MOUTH_HALF_WIDTH * mouth_w, half_h, angle)
    _blend(patch, alpha, MOUTH_RGB)
    image[y1:y2, x1:x2] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)


def talking_frames(envelope: np.ndarray, *, size: tuple[int, int] = SIZE, seed: int = 0,
                   sway_px: float = SWAY_PX, noise_std: float = NOISE_STD) -> Iterator[np.ndarray]:
    """Frame i: the still with its mouth opened by `envelope[i]`, swayed by `head_drift`, plus sensor noise."""
    still = face_still(size)
    width, height = size
    pad = int(np.ceil(sway_px)) + 1
    canvas = cv2.copyMakeBorder(still.image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    landmarks = still.landmarks + pad
    x1, y1, x2, y2 = mouth_box(landmarks, margin_px=2)
    clean = canvas[y1:y2, x1:x2].copy()
    rng = np.random.default_rng(seed)
    for opening, (dy, dx) in zip(envelope, head_drift(len(envelope), sway_px)):
        canvas[y1:y2, x1:x2] = clean
        draw_mouth(canvas, landmarks, float(opening))
        frame = canvas[pad - dy:pad - dy + height, pad - dx:pad - dx + width].astype(np.float32)
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(noise_std)
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def _atomic(dest: Path, write) -> Path:
    """Write through a temporary sibling, renamed into place: a half-written file never looks finished."""
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp{dest.suffix}")
    try:
        write(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def talking_face_video(wav_path: Path, dest: Path, *, size: tuple[int, int] = SIZE, fps: int = FPS,
                       seed: int = 0) -> Path:
    """An H.264 + AAC MP4 of the astronaut saying `wav_path`: one frame per 1/fps s of the audio (the last
    partial frame's audio cut), the mouth of frame i following the audio in [i/fps, (i+1)/fps); the AAC
    starts at t = 0 with the first frame."""
    if SPEECH_SAMPLE_RATE % fps:
        raise ValueError(f"fps must divide {SPEECH_SAMPLE_RATE}: each frame pairs with a whole number of samples")
    envelope = envelope_per_frame(wav_path, fps)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
            silent = write_mp4(talking_frames(envelope, size=size, seed=seed), Path(scratch) / "video.mp4",
                               fps=fps, crf=18)
            subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(silent), "-i", str(wav_path),
                            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k",
                            "-t", f"{len(envelope) / fps:.4f}", "-movflags", "+faststart", str(tmp)], check=True)

    return _atomic(dest, write)


def mouth_box(landmarks_or_box: np.ndarray | Sequence[float], *, margin_px: int = 4) -> tuple[int, int, int, int]:
    """The region `mouth_opening` looks at: landmarks [5, 2] → a box around the widest, most open mouth
    `draw_mouth` can draw, plus `margin_px` (room for the head sway); a box [x1, y1, x2, y2] is taken as it is."""
    points = np.asarray(landmarks_or_box, np.float64)
    if points.shape == (4,):
        return tuple(int(round(v)) for v in points)  # type: ignore[return-value]
    centre, mouth_w, _ = _mouth_geometry(points)
    half_w = MOUTH_HALF_WIDTH * mouth_w + margin_px
    top = 0.6 * MOUTH_MAX_HALF_HEIGHT * mouth_w + 2 + margin_px
    bottom = 1.4 * MOUTH_MAX_HALF_HEIGHT * mouth_w + 2 + margin_px
    return (int(np.floor(centre[0] - half_w)), int(np.floor(centre[1] - top)),
            int(np.ceil(centre[0] + half_w)) + 1, int(np.ceil(centre[1] + bottom)) + 1)


def mouth_opening(frames: Iterable[np.ndarray], landmarks_or_box: np.ndarray | Sequence[float]) -> np.ndarray:
    """How open the mouth is in each RGB frame: the soft count of dark pixels (luma ≤ DARK_FULL counts 1, ≥
    DARK_NONE counts 0, linear between) in `mouth_box(landmarks_or_box)`, as a share of the box. Lips and skin
    are far brighter than the open mouth, so codec noise barely moves it; it grows with the mouth's area."""
    x1, y1, x2, y2 = mouth_box(landmarks_or_box)
    x1, y1 = max(x1, 0), max(y1, 0)
    out = []
    for frame in frames:
        luma = cv2.cvtColor(np.ascontiguousarray(frame[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY).astype(np.float32)
        out.append(float(np.clip((DARK_NONE - luma) / (DARK_NONE - DARK_FULL), 0, 1).mean()))
    return np.array(out)


def detect_landmarks(frame: np.ndarray) -> np.ndarray:
    """MTCNN's 5 landmarks [5, 2] of the largest face in an RGB frame: where to measure the mouth in a video
    whose geometry is not the still's (e.g. a backend's render at another size). Prefer a closed-mouth frame:
    MTCNN's mouth corners drift a little on a wide-open mouth."""
    from functions.faces import NaiveDetector

    faces = NaiveDetector().detect(np.ascontiguousarray(frame))
    if not faces:
        raise ValueError("no face in the frame")
    return max(faces, key=lambda f: f.area).landmarks


def video_frames(path: Path, fps: float = FPS) -> Iterator[np.ndarray]:
    """A video's RGB frames at `fps`, streamed (a 40 s 640×480 video is ~740 MB as one array)."""
    info = probe_video(Path(path))
    for frame in sample_frames(Path(path), fps=fps, size=(info.width, info.height)):
        yield frame.pixels


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two per-frame series over their common length (the shorter one's)."""
    n = min(len(a), len(b))
    return float(np.corrcoef(np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64))[0, 1])


@dataclass(frozen=True)
class AVCorpus:
    """The training take and its talking-face video, and a held-out take (other sentences) to render with."""

    training_wav: Path
    training_video: Path
    heldout_wav: Path
    still: FaceStill

    @classmethod
    def build(cls, root: Path, *, size: tuple[int, int] = SIZE) -> AVCorpus:
        """Build what is not under `root` yet (names carry the sentences' hash and the size: reusable)."""
        root = Path(root)
        key = f"{_sentences_key(TRAINING_SENTENCES)}-{size[0]}x{size[1]}"
        training_wav = root / f"training-{_sentences_key(TRAINING_SENTENCES)}.wav"
        heldout_wav = root / f"heldout-{_sentences_key(HELDOUT_SENTENCES)}.wav"
        video = root / f"training-{key}.mp4"
        if not training_wav.exists():
            speak(TRAINING_SENTENCES, training_wav)
        if not heldout_wav.exists():
            speak(HELDOUT_SENTENCES, heldout_wav)
        if not video.exists():
            talking_face_video(training_wav, video, size=size)
        return cls(training_wav, video, heldout_wav, face_still(size))
