"""The Wav2Lip generator, laid out so that the public `wav2lip.pth` / `wav2lip_gan.pth` load strictly.

A U-Net: a face encoder over 6×96×96 (the target crop with rows 48+ zeroed, concatenated with a
reference crop, both in [0, 1]), an audio encoder over a 1×80×16 mel window, and a decoder that
starts from the 512-d audio embedding and concatenates the matching encoder feature after each
block. Output: 3×96×96 through a sigmoid.

The parameter and buffer names (`face_encoder_blocks.0.0.conv_block.0.weight`, `audio_encoder.N…`,
`face_decoder_blocks…`, `output_block…`) and their shapes are those of the public checkpoints at
`width=1.0` (36,298,035 parameters). `width` scales every inner channel count so that tests and the CPU
path can build a small network with the same topology; a checkpoint only fits the width it was
trained at.

Channel order is the caller's: the public checkpoints were trained on OpenCV (BGR) crops, so feed
them BGR; a network trained here learns whatever order it is given.

Checkpoint plumbing shared with the lip-sync expert (reading a `.pth`, strict loading, hub ids)
lives here too, so both models fail the same way on a bad file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence, TypeVar

import torch
from torch import nn

from functions.models.strict_loading import named, raise_if_incompatible
from schemas.errors import VideostudioError

FACE_SIZE = 96
FACE_CHANNELS = 6  # masked target + reference, RGB each
MEL_BANDS = 80
MEL_STEP = 16  # mel columns per window (0.2 s at 80 columns/s)

M = TypeVar("M", bound=nn.Module)


class ConvSpec(NamedTuple):
    """One conv layer of a stack: `cout` is given at width 1.0 and scaled; `residual` adds the input."""

    cout: int
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int]
    padding: int
    residual: bool = False


def scaled(channels: int, width: float) -> int:
    """Inner channel count at `width` (never below 1)."""
    return max(1, int(round(channels * width)))


class ConvBnRelu(nn.Module):
    """Conv → BatchNorm → (+ input when residual) → ReLU. The BatchNorm sits inside `conv_block` because
    that is where the public checkpoints keep it (`…conv_block.0` conv, `…conv_block.1` norm)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int],
                 padding: int, residual: bool = False) -> None:
        super().__init__()
        if residual and (cin != cout or stride not in (1, (1, 1))):
            raise ValueError("a residual conv must keep its channel count and resolution")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x  # not in place: autograd needs `out` as it was
        return self.act(out)


class UpConvBnRelu(nn.Module):
    """Transposed conv → BatchNorm → ReLU (same `conv_block` naming as ConvBnRelu)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def conv_stack(cin: int, specs: Sequence[ConvSpec], width: float) -> tuple[list[ConvBnRelu], int]:
    """ConvBnRelu layers for `specs` starting from `cin` real input channels; returns them and the
    output channel count."""
    layers = []
    for spec in specs:
        cout = scaled(spec.cout, width)
        layers.append(ConvBnRelu(cin, cout, spec.kernel, spec.stride, spec.padding, spec.residual))
        cin = cout
    return layers, cin


def residual(c: int) -> ConvSpec:
    """A 3×3 residual layer at `c` channels (width 1.0)."""
    return ConvSpec(c, 3, 1, 1, residual=True)


# Face encoder: one group per resolution (96, 48, 24, 12, 6, 3, 1); each group's output is a skip.
FACE_ENCODER: tuple[tuple[ConvSpec, ...], ...] = (
    (ConvSpec(16, 7, 1, 3),),
    (ConvSpec(32, 3, 2, 1), residual(32), residual(32)),
    (ConvSpec(64, 3, 2, 1), residual(64), residual(64), residual(64)),
    (ConvSpec(128, 3, 2, 1), residual(128), residual(128)),
    (ConvSpec(256, 3, 2, 1), residual(256), residual(256)),
    (ConvSpec(512, 3, 2, 1), residual(512)),
    (ConvSpec(512, 3, 1, 0), ConvSpec(512, 1, 1, 0)),
)

# Audio encoder over 1×80×16: 80×16 → 27×16 → 9×6 → 3×3 → 1×1.
GENERATOR_AUDIO_ENCODER: tuple[ConvSpec, ...] = (
    ConvSpec(32, 3, 1, 1), residual(32), residual(32),
    ConvSpec(64, 3, (3, 1), 1), residual(64), residual(64),
    ConvSpec(128, 3, 3, 1), residual(128), residual(128),
    ConvSpec(256, 3, (3, 2), 1), residual(256),
    ConvSpec(512, 3, 1, 0), ConvSpec(512, 1, 1, 0),
)

# Decoder: (out channels, residual layers after the upsampling conv). Block 0 is a 1×1 conv on the
# audio embedding; block 1 grows 1→3 (kernel 3, no padding); blocks 2-6 double the resolution.
FACE_DECODER: tuple[tuple[int, int], ...] = ((512, 0), (512, 1), (512, 2), (384, 2), (256, 2), (128, 2), (64, 2))
OUTPUT_HIDDEN = 32


class Wav2LipGenerator(nn.Module):
    """Wav2Lip's generator. `forward(mel, faces)`: mel (N, 1, 80, 16) and faces (N, 6, 96, 96) → (N, 3, 96, 96);
    or batched over time as the original: mel (B, T, 1, 80, 16) and faces (B, 6, T, 96, 96) → (B, 3, T, 96, 96)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)

        blocks, cin, skips = [], FACE_CHANNELS, []
        for group in FACE_ENCODER:
            layers, cin = conv_stack(cin, group, width)
            blocks.append(nn.Sequential(*layers))
            skips.append(cin)
        self.face_encoder_blocks = nn.ModuleList(blocks)

        audio_layers, audio_dim = conv_stack(1, GENERATOR_AUDIO_ENCODER, width)
        self.audio_encoder = nn.Sequential(*audio_layers)

        decoder, cin = [], audio_dim
        for index, ((cout_full, n_res), skip) in enumerate(zip(FACE_DECODER, reversed(skips))):
            cout = scaled(cout_full, width)
            if index == 0:
                first: nn.Module = ConvBnRelu(cin, cout, 1, 1, 0)
            elif index == 1:
                first = UpConvBnRelu(cin, cout, 3, 1, 0)
            else:
                first = UpConvBnRelu(cin, cout, 3, 2, 1, output_padding=1)
            decoder.append(nn.Sequential(first, *[ConvBnRelu(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]))
            cin = cout + skip  # the next block sees this block's output concatenated with the skip
        self.face_decoder_blocks = nn.ModuleList(decoder)

        hidden = scaled(OUTPUT_HIDDEN, width)
        self.output_block = nn.Sequential(ConvBnRelu(cin, hidden, 3, 1, 1), nn.Conv2d(hidden, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        over_time = faces.dim() == 5
        if over_time:
            batch, steps = faces.shape[0], faces.shape[2]
            if mel.dim() != 5 or mel.shape[:2] != (batch, steps):
                raise ValueError(f"mel {tuple(mel.shape)} does not match faces {tuple(faces.shape)} (B, T)")
            # time-major flattening, as the original: frame t of every clip, then t+1 …
            mel = mel.transpose(0, 1).reshape(batch * steps, *mel.shape[2:])
            faces = faces.permute(2, 0, 1, 3, 4).reshape(batch * steps, faces.shape[1], *faces.shape[3:])
        if faces.shape[1:] != (FACE_CHANNELS, FACE_SIZE, FACE_SIZE) or mel.shape[1:] != (1, MEL_BANDS, MEL_STEP):
            raise ValueError(f"expected faces (N, 6, 96, 96) and mel (N, 1, 80, 16), got {tuple(faces.shape)}, "
                             f"{tuple(mel.shape)}")

        feats = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = self.audio_encoder(mel)
        for block, skip in zip(self.face_decoder_blocks, reversed(feats)):
            x = torch.cat((block(x), skip), dim=1)
        out = self.output_block(x)

        if over_time:
            out = out.reshape(steps, batch, *out.shape[1:]).permute(1, 2, 0, 3, 4)
        return out


def masked_input(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The generator's face input: `target` (N, 3, 96, 96) with its lower half zeroed, then `reference`."""
    hidden = target.clone()
    hidden[:, :, FACE_SIZE // 2:] = 0
    return torch.cat((hidden, reference), dim=1)


# --- checkpoints -------------------------------------------------------------------------------

WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]
_MAX_NAMED = 3  # mismatches named in an error message


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A local checkpoint path, or a hub file written `owner/repo:path/in/repo.pth` (downloaded through
    the hub cache). Offline (HF_HUB_OFFLINE set) only the cache is looked at, so nothing waits on a network."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    repo_id, sep, filename = text.partition(":")
    if not sep or not filename or repo_id.count("/") != 1:
        raise VideostudioError("model_unavailable", f"no checkpoint file at {text!r} (a hub file is written "
                                                    f"'owner/repo:file.pth')")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import hf_hub_download

        # huggingface_hub reads HF_HUB_OFFLINE once at import; passing it here honours a later change too.
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as exc:  # offline and not cached, no such repo/file, network down
        where = " (HF_HUB_OFFLINE is set: only the local hub cache was searched)" if offline else ""
        raise VideostudioError("model_unavailable", f"cannot get {filename!r} from hub repo {repo_id!r}{where}: "
                                                    f"{type(exc).__name__}: {str(exc)[:200]}") from None


def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a file holding `{"state_dict": …}` or a bare state dict, or such a dict
    in memory. A `module.` prefix (nn.DataParallel) is dropped. Files are read with weights_only=True:
    a checkpoint can never run code."""
    if isinstance(source, Mapping):
        loaded: object = source
        label = "the given state dict"
    else:
        path = resolve_weights(source)
        label = str(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
            raise VideostudioError("avatar_weights_incompatible", f"{label} is not a readable torch checkpoint "
                                   f"(weights only): {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) for k in loaded):
        raise VideostudioError("avatar_weights_incompatible", f"{label} holds no state dict "
                                                              f"(got {type(loaded).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise VideostudioError("avatar_weights_incompatible",
                                   f"{label}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def _named(items: Sequence[str]) -> str:
    return named(items, _MAX_NAMED)


def load_strict(model: M, source: WeightsSource, what: str) -> M:
    """Load `source` into `model` with every key and shape matching, or raise avatar_weights_incompatible
    naming the first mismatches. Only BatchNorm's `num_batches_tracked` counters may be absent (files
    written before torch 0.4.1 lack them; torch's own strict loading accepts that too)."""
    state = read_state_dict(source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    raise_if_incompatible(what, missing=missing, unexpected=unexpected, wrong=wrong, limit=_MAX_NAMED)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_generator(source: WeightsSource, *, width: float = 1.0) -> Wav2LipGenerator:
    """A generator (eval mode, CPU) with the weights of `source` (see read_state_dict, resolve_weights)."""
    return load_strict(Wav2LipGenerator(width), source, f"Wav2Lip generator (width {width})")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
