"""InfiniteTalk's audio conditioning: wav2vec2 features of the speech, one row per video frame, cut into windows.

What the official code (github MeiGen-AI/InfiniteTalk) does, and this module does the same:

- **speech** (`generate_infinitetalk.py`: `audio_prepare_single`, `loudness_norm`): 16 kHz mono, loudness-normalised
  to −23 LUFS. Here `prepare_wave` reuses the repo's one speech path (`functions.speech.load_speech`: ffmpeg decode
  of any file it reads, then `core.audio.normalize_loudness`), so the encoder sees the same samples as the
  talking stage's `speech.wav`.
- **features** (`generate_infinitetalk.py`: `get_embedding`; `src/audio_analysis/wav2vec2.py`): the
  `Wav2Vec2FeatureExtractor` normalises the whole take (zero mean, unit variance); the CNN feature encoder runs at
  its own rate (one row per 320 samples, ~50 per second); those rows are **linearly interpolated**
  (`F.interpolate(mode="linear", align_corners=True)`, `src/audio_analysis/torch_utils.py`) to the video frame count
  *before* the feature projection and the transformer layers; the outputs of every transformer layer
  (`hidden_states[1:]`, i.e. without the input embedding) are stacked: [frames, 12, 768] for chinese-wav2vec2-base.
  Here the interpolation is a forward hook on `model.feature_extractor` for the length of one call, and the rest
  is the stock `Wav2Vec2Model.forward` (no subclass of transformers internals, which change between versions: in
  5.x the encoder no longer returns hidden states itself, the model's output recorder does).
- **windows** (`wan/multitalk.py`, `generate_infinitetalk`): video frame i is conditioned on feature rows
  i−2 … i+2 (`indices = arange(5) − 2`), indices clamped with `torch.clamp(min=0, max=len−1)`: no zero padding.
  Chunks of 81 frames start every 81 − 9 (motion frames) = 72 frames, with global frame indices, so an
  overlapping chunk's first windows are the previous chunk's last ones. For the last chunk, which runs past the
  speech, the official appends the flipped tail of the features (`torch.flip(emb[-m:])`) before cutting: row N+k
  is row N−1−k, a mirror of the end. `frame_windows(tail="reflect")` (the default) is exactly that rule
  (j ≥ N → 2N−1−j, then clamp to [0, N−1]); it agrees with a plain clamp everywhere except the windows that
  reach two or more rows past the end (the last real frame, and frames beyond the speech). `tail="clamp"`
  repeats the last row instead.

Deviation: the frame count. The official uses `int(duration · 25)` (floor); here it is
`max(1, floor(duration · fps + 0.5))`, `functions.talking.talking_plan`'s count, so there is one feature row per
planned frame (a renderer with a plan passes `frames=plan.num_frames`, which also sidesteps the plan's duration
being rounded to the millisecond).
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.audio import SPEECH_SAMPLE_RATE, read_wav

VIDEO_FPS = 25  # InfiniteTalk's frame rate ("Assume the video fps is 25" in get_embedding); it was trained at 25
WINDOW_RADIUS = 2  # frames either side of each video frame: windows of 5 feature rows
CHUNK_FRAMES = 81  # frames of one streaming clip (--frame_num, 4n+1 for Wan's VAE)
MOTION_FRAMES = 9  # frames a clip shares with the previous one (--motion_frame's default)
DEFAULT_MODEL_ID = "TencentGameMate/chinese-wav2vec2-base"

Tail = Literal["reflect", "clamp"]


def video_frame_count(num_samples: int, *, fps: int = VIDEO_FPS, sample_rate: int = SPEECH_SAMPLE_RATE) -> int:
    """Video frames for `num_samples` of speech: `talking_plan`'s `max(1, floor(duration_s · fps + 0.5))`."""
    return max(1, math.floor(num_samples / sample_rate * fps + 0.5))


def _receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Samples one CNN output row sees (400 for wav2vec2's stack): shorter input has no row at all."""
    field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return field


class SpeechEncoder:
    """A wav2vec2 `Wav2Vec2Model` and its feature extractor, giving InfiniteTalk's per-frame audio features."""

    def __init__(self, model, processor) -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        if not isinstance(model, Wav2Vec2Model):
            raise TypeError(f"expected a transformers Wav2Vec2Model, got {type(model).__name__}")
        if not isinstance(processor, Wav2Vec2FeatureExtractor):
            raise TypeError(f"expected a Wav2Vec2FeatureExtractor, got {type(processor).__name__}")
        if model.adapter is not None:  # an adapter shortens the sequence after the layers: no longer one row a frame
            raise ValueError("wav2vec2 models with an adapter (add_adapter=True) are not supported")
        self.model = model.eval()
        self.processor = processor
        self._lock = threading.Lock()  # the interpolation hook is installed on the shared model for one call
        cfg = model.config
        self._min_samples = _receptive_field(cfg.conv_kernel, cfg.conv_stride)

    @property
    def layers(self) -> int:
        """Stacked layers: every transformer layer (12 for wav2vec2-base)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path = DEFAULT_MODEL_ID, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", local_files_only: bool | None = None) -> SpeechEncoder:
        """A local checkpoint directory (config.json, preprocessor_config.json, weights), or a hub id where the
        network allows. The official loads `Wav2Vec2Model` (its subclass adds no weights) and the feature extractor
        from the same directory, and runs in float32."""
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        local = Path(path_or_id).is_dir()
        only_local = local if local_files_only is None else local_files_only
        source = str(path_or_id)
        model = Wav2Vec2Model.from_pretrained(source, dtype=dtype, local_files_only=only_local)
        processor = Wav2Vec2FeatureExtractor.from_pretrained(source, local_files_only=only_local)
        model.to(device)
        model.requires_grad_(False)  # inference only (the official freezes the CNN and runs under no_grad)
        return cls(model, processor)

    def features(self, wave_16k: np.ndarray, *, fps: int = VIDEO_FPS, frames: int | None = None) -> torch.Tensor:
        """[frames, layers, dim] float32 on the CPU: row i conditions video frame i.

        `frames` defaults to `video_frame_count(len(wave_16k), fps=fps)`; pass the plan's `num_frames` to match it
        exactly. `wave_16k`: mono 16 kHz float samples (as `prepare_wave` returns).
        """
        wave = np.asarray(wave_16k, dtype=np.float32).reshape(-1)
        if wave.size == 0:
            raise ValueError("no speech samples")
        if not np.all(np.isfinite(wave)):
            raise ValueError("the speech samples are not all finite")
        count = video_frame_count(wave.size, fps=fps) if frames is None else int(frames)
        if count < 1:
            raise ValueError(f"frames must be at least 1, got {count}")
        # The extractor's normalisation is per take (zero mean, unit variance), as the official calls it.
        values = self.processor(wave, sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="np").input_values
        inputs = torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(1, -1))
        if inputs.shape[1] < self._min_samples:  # under 25 ms: pad with silence so the CNN has one row to stretch
            inputs = F.pad(inputs, (0, self._min_samples - inputs.shape[1]))
        inputs = inputs.to(self.device, self.dtype)
        conv_dim = int(self.model.config.conv_dim[-1])

        def stretch(_module, _args, output: torch.Tensor) -> torch.Tensor:
            # the CNN's [batch, channels, rows] → [batch, channels, frames], as the official's linear_interpolation
            if output.ndim != 3 or output.shape[1] != conv_dim:
                raise RuntimeError(f"unexpected wav2vec2 CNN output shape {tuple(output.shape)}")
            return F.interpolate(output, size=count, mode="linear", align_corners=True)

        with self._lock:
            handle = self.model.feature_extractor.register_forward_hook(stretch)
            try:
                with torch.no_grad():  # not inference_mode: callers may still write into the features
                    out = self.model(inputs, output_hidden_states=True)
            finally:
                handle.remove()
        hidden = out.hidden_states
        if hidden is None or len(hidden) != self.layers + 1 or out.last_hidden_state.shape[1] != count:
            raise RuntimeError("wav2vec2 did not return one hidden state per layer at the video frame rate")
        layers = list(hidden[1:])  # drop [0], the input of the first layer, as the official's hidden_states[1:]
        if self.model.config.do_stable_layer_norm:
            # transformers ≥ 5 records the last layer before the encoder's final layer norm; 4.x (the official's)
            # returned it after, which is last_hidden_state (no adapter here)
            layers[-1] = out.last_hidden_state
        stacked = torch.stack([h[0] for h in layers], dim=1)  # [frames, layers, dim]
        return stacked.float().cpu()


def tiny_speech_encoder(seed: int = 0) -> SpeechEncoder:
    """A random wav2vec2 of the same class for CPU tests: 2 layers of width 32 over a 7-conv stack of 16 channels
    (the real strides and kernels, so the CNN rate is the real ~50 rows per second)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group",
        do_stable_layer_norm=False, vocab_size=8)
    torch.manual_seed(seed)
    model = Wav2Vec2Model(config)
    model.requires_grad_(False)
    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SPEECH_SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    return SpeechEncoder(model, processor)


def prepare_wave(path: str | Path) -> np.ndarray:
    """Any speech file the repo reads (wav/mp3/m4a/ogg/flac, a video's sound track) → 16 kHz mono float32,
    loudness-normalised to −23 LUFS: `functions.speech.load_speech`, the talking stage's own path (its limits and
    error codes: `audio_too_long`, `no_audio_stream`, `unreadable_audio`)."""
    from functions.speech import load_speech

    with tempfile.TemporaryDirectory() as scratch:
        speech = load_speech(Path(path), dest=Path(scratch) / "speech.wav")
        return read_wav(speech.path).samples


def _window_indices(start: int, count: int, length: int, *, radius: int, tail: Tail) -> torch.Tensor:
    """[count, 2·radius+1] feature rows of frames start … start+count−1."""
    if length < 1:
        raise ValueError("no feature rows")
    if count < 0 or radius < 0:
        raise ValueError("count and radius must not be negative")
    offsets = torch.arange(-radius, radius + 1)
    rows = torch.arange(start, start + count).unsqueeze(1) + offsets.unsqueeze(0)
    if tail == "reflect":  # the official's flipped tail: row N+k is row N−1−k
        rows = torch.where(rows >= length, 2 * length - 1 - rows, rows)
    elif tail != "clamp":
        raise ValueError(f"tail must be 'reflect' or 'clamp', got {tail!r}")
    return rows.clamp(0, length - 1)  # the official's torch.clamp: the first row repeats at the start


def frame_windows(features: torch.Tensor, start: int, count: int, *, radius: int = WINDOW_RADIUS,
                  tail: Tail = "reflect") -> torch.Tensor:
    """[count, 2·radius+1, layers, dim]: the windows of video frames start … start+count−1 (global indices) of
    `features` [frames, layers, dim]; row i−radius … i+radius for frame i, clamped at the start, mirrored
    (`tail="reflect"`, the official) or clamped past the end."""
    if features.ndim != 3:
        raise ValueError(f"features must be [frames, layers, dim], got {tuple(features.shape)}")
    rows = _window_indices(start, count, features.shape[0], radius=radius, tail=tail)
    return features[rows.to(features.device)]


def chunk_starts(total_frames: int, *, chunk_frames: int = CHUNK_FRAMES,
                 motion_frames: int = MOTION_FRAMES) -> list[int]:
    """First frames of the streaming clips covering `total_frames`: every chunk_frames − motion_frames, until a
    clip reaches the end (the official loop: the clip whose end ≥ the frame count is the last)."""
    if total_frames < 1:
        raise ValueError("total_frames must be at least 1")
    step = chunk_frames - motion_frames
    if step < 1:
        raise ValueError("chunk_frames must exceed motion_frames")
    starts = [0]
    while starts[-1] + chunk_frames < total_frames:
        starts.append(starts[-1] + step)
    return starts


def chunk_windows(features: torch.Tensor, starts: Sequence[int], chunk_frames: int = CHUNK_FRAMES, *,
                  radius: int = WINDOW_RADIUS, tail: Tail = "reflect") -> Iterator[torch.Tensor]:
    """One [chunk_frames, 2·radius+1, layers, dim] window tensor per chunk start, lazily (a 10-minute take has
    ~200 chunks of ~16 MB each at 12×768). Indices are global, so overlapping chunks share their windows."""
    for start in starts:
        yield frame_windows(features, start, chunk_frames, radius=radius, tail=tail)
