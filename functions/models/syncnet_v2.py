"""SyncNet v2 (Chung & Zisserman, "Out of time", 2016), laid out so that the public `syncnet_v2.model` of
joonson/syncnet_python loads strictly. It is the network behind the standard LSE-D / LSE-C scores.

Two streams end in a 1024-d embedding each (no normalisation; the metric is their plain L2 distance):

* audio (`netcnnaud` → `netfcaud`): one 13×20 MFCC window, (N, 1, 13, 20) — 13 coefficients by 20
  columns at 100 Hz, i.e. 0.2 s = 5 video frames at 25 fps;
* lip (`netcnnlip` → `netfclip`): five consecutive 224×224 face crops as (N, 3, 5, 224, 224), colour in
  OpenCV's BGR order with values 0…255 (not rescaled), which is how syncnet_python feeds `cv2.imread` frames.

The state-dict names are those of syncnet_python's `S` module (`netcnnaud.0.weight`, `netcnnaud.1.running_var`,
…, `netfcaud.3.bias`, `netcnnlip.18.weight`, `netfclip.3.weight`): the public file is that module's bare
state dict with no prefix. ReLU and pooling layers keep their places in each `nn.Sequential` so the
indices match. Shapes at the public size: see `public_state_shapes()`.
"""

from __future__ import annotations

from torch import Tensor, nn

from functions.models.wav2lip import WeightsSource, load_strict
from schemas.errors import VideostudioError

EMBEDDING_DIM = 1024  # syncnet_python's num_layers_in_fc_layers
MFCC_COEFFS = 13
MFCC_WINDOW = 20  # MFCC columns per 5-frame window (100 Hz × 0.2 s)
LIP_FRAMES = 5
CROP_SIZE = 224


def _fc_head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """`forward_audio(mfcc)`: (N, 1, 13, 20) → (N, 1024); `forward_lip(video)`: (N, 3, 5, 224, 224) → (N, 1024)."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        # 13×20 → (pool 3×3 stride 1×2) 11×9 → (pool 3×3 stride 2) 5×4 → (conv 5×4) 1×1
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, 1, 1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), 1, 0), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = _fc_head(embedding_dim)
        self.netfclip = _fc_head(embedding_dim)
        # 5×224×224 → (conv 5×7×7 /2) 1×109 → (pool /2) 54 → (conv 5×5 /2) 26 → (pool /2) 13 → (pool /2) 6 → (conv 6×6) 1
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), 1, 0), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )
        self.embedding_dim = embedding_dim

    def forward_audio(self, mfcc: Tensor) -> Tensor:
        if mfcc.dim() != 4 or mfcc.shape[1:] != (1, MFCC_COEFFS, MFCC_WINDOW):
            raise ValueError(f"expected (N, 1, 13, 20) MFCC windows, got {tuple(mfcc.shape)}")
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, video: Tensor) -> Tensor:
        if video.dim() != 5 or video.shape[1:] != (3, LIP_FRAMES, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected (N, 3, 5, 224, 224) crops, got {tuple(video.shape)}")
        return self.netfclip(self.netcnnlip(video).flatten(1))

    def forward(self, mfcc: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """(audio, lip) embeddings."""
        return self.forward_audio(mfcc), self.forward_lip(video)


def public_state_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of every entry of the public `syncnet_v2.model` layout (BatchNorm counters included)."""
    return {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}


def load_syncnet_v2(source: WeightsSource) -> SyncNetV2:
    """SyncNet v2 (eval mode, CPU) with the weights of `source`: a local `syncnet_v2.model`, a hub file
    (`owner/repo:file`), or a state dict. Loaded strictly: every key and shape must match (only BatchNorm's
    `num_batches_tracked` may be absent). A file that is not there raises `syncnet_weights_unavailable`;
    one that is unreadable or does not fit raises `syncnet_weights_incompatible`."""
    try:
        return load_strict(SyncNetV2(), source, "SyncNet v2 (syncnet_v2.model)")
    except VideostudioError as exc:
        code = "syncnet_weights_unavailable" if exc.code == "model_unavailable" else "syncnet_weights_incompatible"
        raise VideostudioError(code, exc.message) from None
