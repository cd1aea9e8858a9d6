"""The talking render loop: reference footage + speech → lip-synced full-resolution frames.

For output frame t (at the avatar's fps, 25): the reference frame p = ping_pong(t) is cropped with
its smoothed alignment matrix to the generator's 96-px face (`face_input`); the generator sees
that face with its lower half zeroed, an identity reference, and the mel window of frame t. The
identity reference is the avatar's neutral frame (the quietest moment of its training audio: a
closed mouth), not the frame itself as in Wav2Lip's inference.py: training shows the generator
references from other moments, and a reference whose mouth moves with the footage's own speech
leaks that movement into the new one (measured on tests/av_video.py's corpus: with the frame itself
as reference the rendered mouth followed the footage's old mouth at r ≈ 0.4–0.6 in some trainings).
The generated mouth is pasted back through the feathered, colour-matched mask (`paste_back`).
Frames are generated in batches; everything outside each mask is the reference frame's pixels
unchanged.

The generator runs as `inference_copy` makes it: BatchNorm folded into the convolutions, weights and
inputs in channels_last. Same outputs up to float rounding (in bench/talking_render.py's check, at most
4 uint8 values in 1.77 million differed, by 1) and about 1.35× the generator's speed on a 2-core CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from functions.models.wav2lip import FACE_SIZE, Wav2LipGenerator, masked_input
from functions.models.wav2lip_audio import mel_window
from functions.paste_back import face_input, paste_back
from functions.reference_footage import ping_pong
from functions.wav2lip_avatar import Wav2LipAvatarFiles

DEFAULT_BATCH = 16


@dataclass
class RenderTimings:
    """Wall seconds per part of the loop (the benchmark reads them)."""

    crop_s: float = 0.0
    generate_s: float = 0.0
    paste_s: float = 0.0
    frames: int = 0


@dataclass
class TalkingFrames:
    """What `lip_synced_frames` leaves behind once iterated: the generated faces' lower halves (the expert's
    view, in the networks' channel order) for the lip-sync metrics, and the timings."""

    lower_halves: list[torch.Tensor] = field(default_factory=list)
    timings: RenderTimings = field(default_factory=RenderTimings)

    def lower_half_tensor(self) -> torch.Tensor:
        return torch.cat(self.lower_halves).float() if self.lower_halves else torch.zeros(0, 3, FACE_SIZE // 2, FACE_SIZE)


def _to_network(faces: np.ndarray, channel_order: str) -> torch.Tensor:
    """[B, 96, 96, 3] uint8 RGB → (B, 3, 96, 96) float in [0, 1] in the networks' channel order."""
    if channel_order == "bgr":
        faces = faces[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2))).float() / 255.0


def _to_image(faces: torch.Tensor, channel_order: str) -> np.ndarray:
    """(B, 3, 96, 96) in [0, 1] → [B, 96, 96, 3] uint8 RGB."""
    images = (faces.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images[..., ::-1]) if channel_order == "bgr" else images


def inference_copy(generator: nn.Module) -> nn.Module:
    """A copy of `generator` in eval mode for rendering, with each `conv_block`'s BatchNorm folded into its
    convolution and the weights in channels_last; the caller's module is left untouched.

    In eval mode a BatchNorm is a fixed per-channel affine map, so folding it into the preceding conv's weight
    and bias is exact up to float rounding and saves one pass over every feature map; channels_last (NHWC) is
    the layout oneDNN's CPU convolutions prefer. Costs one more copy of the weights (145 MB at width 1.0).
    """
    model = copy.deepcopy(generator).eval()
    for module in list(model.modules()):
        block = getattr(module, "conv_block", None)
        if (isinstance(block, nn.Sequential) and len(block) == 2 and isinstance(block[1], nn.BatchNorm2d)
                and isinstance(block[0], (nn.Conv2d, nn.ConvTranspose2d))):
            conv, norm = block
            module.conv_block = nn.Sequential(fuse_conv_bn_eval(conv, norm,
                                                                transpose=isinstance(conv, nn.ConvTranspose2d)))
    return model.to(memory_format=torch.channels_last)


def use_bf16(setting: str, device: str) -> bool:
    """Whether the generator runs under bf16 autocast: `setting` is Settings.talking_precision."""
    if setting != "auto":
        return setting == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # bf16 matrix tiles: where bf16 beats fp32 on a CPU
    return bool(amx and amx())


@torch.no_grad()
def lip_synced_frames(generator: Wav2LipGenerator, reference: np.ndarray, files: Wav2LipAvatarFiles, mel: np.ndarray,
                      n_frames: int, *, batch_size: int = DEFAULT_BATCH, result: TalkingFrames | None = None,
                      paste: Callable[..., np.ndarray] | None = None,
                      on_batch: Callable[[int, int], None] | None = None, bf16: bool = False) -> Iterator[np.ndarray]:
    """Yield the n_frames output frames (H×W×3 uint8 RGB) in order. `paste(frame, face, matrix=, landmarks=)`
    replaces the feathered paste-back (the benchmark's hard-paste loop); `on_batch(done, total)` after each batch;
    `bf16`: the generator under bf16 autocast (`use_bf16`)."""
    result = result if result is not None else TalkingFrames()
    paste = paste or paste_back
    length = min(len(reference), len(files.track))
    positions = ping_pong(n_frames, length)
    matrices = [np.asarray(t.matrix) for t in files.track]
    landmarks = [np.asarray(t.landmarks) for t in files.track]
    generator.eval()
    network = inference_copy(generator)
    device = next(generator.parameters()).device
    neutral = None  # the identity reference: the avatar's closed-mouth frame, or each frame itself
    if files.neutral_frame is not None and files.neutral_frame < length:
        q = files.neutral_frame
        neutral = _to_network(face_input(reference[q], matrices[q])[None], files.channel_order)
    for start in range(0, n_frames, batch_size):
        span = range(start, min(n_frames, start + batch_size))
        clock = time.perf_counter()
        faces = np.stack([face_input(reference[positions[t]], matrices[positions[t]]) for t in span])
        inputs = _to_network(faces, files.channel_order)
        mels = torch.from_numpy(np.stack([mel_window(mel, t, files.fps) for t in span])).unsqueeze(1)
        result.timings.crop_s += time.perf_counter() - clock

        clock = time.perf_counter()
        identity = inputs if neutral is None else neutral.expand_as(inputs)
        faces_in = masked_input(inputs, identity).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            generated = network(mels.to(device), faces_in).float().cpu()
        result.timings.generate_s += time.perf_counter() - clock
        result.lower_halves.append(generated[:, :, FACE_SIZE // 2:].half())
        images = _to_image(generated, files.channel_order)

        for t, image in zip(span, images):
            p = positions[t]
            clock = time.perf_counter()
            frame = paste(reference[p], image, matrix=matrices[p], landmarks=landmarks[p])
            result.timings.paste_s += time.perf_counter() - clock
            result.timings.frames += 1
            yield frame
        if on_batch is not None:
            on_batch(span.stop, n_frames)
