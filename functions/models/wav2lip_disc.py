"""Wav2Lip's visual-quality discriminator (`Wav2Lip_disc_qual`), laid out so that the public
`visual_quality_disc.pth` loads strictly.

It looks at the lower half (3×48×96) of single 96-px face crops, in [0, 1], and says whether they are
real frames or generated ones: convolutions without normalisation, each followed by LeakyReLU(0.01),
down to 1×1, then `binary_pred` (a 1×1 conv and a sigmoid). No BatchNorm: its output for a frame never
depends on the other frames of the batch. Keys `face_encoder_blocks.N.M.conv_block.0.…` and
`binary_pred.0.…`; `width` scales inner channels as in the generator.
"""

from __future__ import annotations

import torch
from torch import nn

from functions.models.wav2lip import FACE_SIZE, ConvSpec, WeightsSource, load_strict, scaled

# One group per resolution: 48×96 → 48×48 → 24 → 12 → 6 → 3 → 1.
DISC_ENCODER: tuple[tuple[ConvSpec, ...], ...] = (
    (ConvSpec(32, 7, 1, 3),),
    (ConvSpec(64, 5, (1, 2), 2), ConvSpec(64, 5, 1, 2)),
    (ConvSpec(128, 5, 2, 2), ConvSpec(128, 5, 1, 2)),
    (ConvSpec(256, 5, 2, 2), ConvSpec(256, 5, 1, 2)),
    (ConvSpec(512, 3, 2, 1), ConvSpec(512, 3, 1, 1)),
    (ConvSpec(512, 3, 2, 1), ConvSpec(512, 3, 1, 1)),
    (ConvSpec(512, 3, 1, 0), ConvSpec(512, 1, 1, 0)),
)
LEAK = 0.01


class ConvLeaky(nn.Module):
    """Conv → LeakyReLU, the conv inside `conv_block` as in the public checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding))
        self.act = nn.LeakyReLU(LEAK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class VisualQualityDiscriminator(nn.Module):
    """`logits(faces)`: (N, 3, 96, 96) whole crops (only the lower half is looked at) → (N,) logits of
    "real"; `forward` gives the probabilities, as the original's."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)
        blocks, cin = [], 3
        for group in DISC_ENCODER:
            layers = []
            for spec in group:
                cout = scaled(spec.cout, width)
                layers.append(ConvLeaky(cin, cout, spec.kernel, spec.stride, spec.padding))
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.face_encoder_blocks = nn.ModuleList(blocks)
        self.binary_pred = nn.Sequential(nn.Conv2d(cin, 1, 1, 1, 0), nn.Sigmoid())

    def logits(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() != 4 or faces.shape[1:] != (3, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"expected face crops (N, 3, 96, 96), got {tuple(faces.shape)}")
        x = faces[:, :, FACE_SIZE // 2:]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred[0](x).flatten()  # logits: BCE-with-logits is stable and autocast-safe

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(faces))


def load_discriminator(source: WeightsSource, *, width: float = 1.0) -> VisualQualityDiscriminator:
    """A discriminator (eval mode, CPU) with the weights of `source`; a mismatch raises
    avatar_weights_incompatible."""
    return load_strict(VisualQualityDiscriminator(width), source, f"visual-quality discriminator (width {width})")
