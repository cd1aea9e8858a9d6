"""The lip-sync expert (Wav2Lip's colour SyncNet), laid out so that the public `lipsync_expert.pth` loads.

Face input: the lower halves of 5 consecutive 96-px crops, 3 colour channels each, stacked frame
by frame on channels (15×48×96, in [0, 1]; the public weights were trained on OpenCV's BGR order).
Audio input: the 1×80×16 mel window that starts at the first of those frames. Both encoders end
in a ReLU and are L2-normalised, so their cosine similarity lies in [0, 1] and is read as the
probability that face and audio are in sync (trained with binary cross-entropy on it).
Keys `face_encoder.N…` and `audio_encoder.N…`; `width` scales inner channels as in the generator.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from functions.models.wav2lip import (
    MEL_BANDS,
    MEL_STEP,
    ConvSpec,
    WeightsSource,
    conv_stack,
    load_strict,
    residual,
)

SYNC_FRAMES = 5
FACE_HEIGHT, FACE_WIDTH = 48, 96  # lower half of a 96-px crop


# 48×96 → 46×47 → 23×24 → 12×12 → 6×6 → 3×3 → 1×1
EXPERT_FACE_ENCODER: tuple[ConvSpec, ...] = (
    ConvSpec(32, 7, 1, 3),
    ConvSpec(64, 5, (1, 2), 1), residual(64), residual(64),
    ConvSpec(128, 3, 2, 1), residual(128), residual(128), residual(128),
    ConvSpec(256, 3, 2, 1), residual(256), residual(256),
    ConvSpec(512, 3, 2, 1), residual(512), residual(512),
    ConvSpec(512, 3, 2, 1), ConvSpec(512, 3, 1, 0), ConvSpec(512, 1, 1, 0),
)

# Like the generator's audio encoder with one more residual layer at 256 channels.
EXPERT_AUDIO_ENCODER: tuple[ConvSpec, ...] = (
    ConvSpec(32, 3, 1, 1), residual(32), residual(32),
    ConvSpec(64, 3, (3, 1), 1), residual(64), residual(64),
    ConvSpec(128, 3, 3, 1), residual(128), residual(128),
    ConvSpec(256, 3, (3, 2), 1), residual(256), residual(256),
    ConvSpec(512, 3, 1, 0), ConvSpec(512, 1, 1, 0),
)


class LipSyncExpert(nn.Module):
    """`forward(mel, faces)`: mel (N, 1, 80, 16), faces (N, 15, 48, 96) → (audio, face) embeddings, each
    (N, D) with unit L2 norm (D = 512 at width 1.0)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)
        face_layers, face_dim = conv_stack(3 * SYNC_FRAMES, EXPERT_FACE_ENCODER, width)
        audio_layers, audio_dim = conv_stack(1, EXPERT_AUDIO_ENCODER, width)
        if face_dim != audio_dim:
            raise AssertionError("the two encoders must meet in one embedding space")
        self.face_encoder = nn.Sequential(*face_layers)
        self.audio_encoder = nn.Sequential(*audio_layers)
        self.embedding_dim = face_dim

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[1:] != (1, MEL_BANDS, MEL_STEP):
            raise ValueError(f"expected mel windows (N, 1, 80, 16), got {tuple(mel.shape)}")
        return F.normalize(self.audio_encoder(mel).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.shape[1:] != (3 * SYNC_FRAMES, FACE_HEIGHT, FACE_WIDTH):
            raise ValueError(f"expected face windows (N, 15, 48, 96), got {tuple(faces.shape)}")
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(mel), self.embed_faces(faces)


def sync_probability(audio_embedding: torch.Tensor, face_embedding: torch.Tensor) -> torch.Tensor:
    """P(in sync) per row: the cosine similarity of the (non-negative, unit) embeddings, in [0, 1]."""
    return F.cosine_similarity(audio_embedding, face_embedding, dim=1).clamp(0.0, 1.0)


def sync_loss(audio_embedding: torch.Tensor, face_embedding: torch.Tensor, in_sync: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of sync_probability against 1 (in sync) / 0 (off sync) labels: the expert's
    training loss, and (against all ones) the sync term of the generator's loss."""
    return F.binary_cross_entropy(sync_probability(audio_embedding, face_embedding), in_sync.float())


def stack_window(lower_halves: torch.Tensor) -> torch.Tensor:
    """(N, 5, 3, 48, 96) or (5, 3, 48, 96) consecutive lower halves → (N, 15, 48, 96) expert input."""
    if lower_halves.dim() == 4:
        lower_halves = lower_halves.unsqueeze(0)
    if lower_halves.shape[1:3] != (SYNC_FRAMES, 3):
        raise ValueError(f"expected (N, 5, 3, H, W) frames, got {tuple(lower_halves.shape)}")
    return lower_halves.flatten(1, 2)


def load_expert(source: WeightsSource, *, width: float = 1.0) -> LipSyncExpert:
    """An expert (eval mode, CPU) with the weights of `source` (a `.pth`, a hub file `owner/repo:file`, or a
    state dict); any mismatch raises avatar_weights_incompatible."""
    return load_strict(LipSyncExpert(width), source, f"lip-sync expert (width {width})")
