"""Lip-sync metrics of an InfiniteTalk render: the avatar's lip-sync expert on mouth crops of the generated frames.

Wav2Lip draws its mouth into a known box, so its renders hand the expert their 96-px crops directly.
InfiniteTalk generates whole frames: head and face move, so the face is looked for in every frame, as the
align stage did for the training faces (functions/align.py), and cut out the same way:

1. `TrackingDetector` (MTCNN, functions/faces.py) on each frame in order; of its faces the subject's is the
   one overlapping the subject's last box most, else the largest;
2. `estimate_alignment` to `face_template(CROP_SIZE, face_padding)`, the train brief's `face_padding`
   (recorded in the avatar's `lip_sync_expert.json`), with the same limits (a face align would reject is
   no face here), then `warp_face` to the 512-px crop align writes, resized to 96 px with `INTER_AREA` as
   `load_face` does for training (align's JPEG round trip is the only step left out);
3. `lower_half` of each crop → `lip_sync_metrics(expert, lower_halves, mel, fps=25)`; for the standard LSE,
   `syncnet_crop` of the frame around the detected box (as wav2lip's render cuts it around its track's box).

Frames without a usable face: a gap after a face is cut with the last good alignment (and box) from the frame
itself (the face is where it last was: its mouth still moves in the crop); frames before the first face repeat
the first crop. The share of frames with a face of their own is reported (`lip_sync_faces`); under
MIN_FACE_SHARE the metrics are skipped with a warning (the crops would not show a mouth). Nothing here fails a
render: any error costs the metric, with a warning. Memory: a 48×96 lower half a frame (14 KB; 224-px crops,
150 KB a frame, only when SyncNet v2 weights are set), never the frames.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from functions.alignment import CROP_SIZE, AlignLimits, Alignment, estimate_alignment, face_template, warp_face
from functions.faces import Face, TrackingDetector, iou
from functions.lip_sync_expert import add_render_lip_sync, standard_scorer
from functions.lipsync_metrics import lower_half
from functions.models.syncnet import LipSyncExpert, load_expert
from functions.models.wav2lip import FACE_SIZE
from functions.models.wav2lip_audio import load_wav, melspectrogram
from functions.standard_lse import syncnet_crop

EXPERT_INFO_FILE = "lip_sync_expert.json"
MIN_FACE_SHARE = 0.5  # frames with a face of their own, below which a render's lip-sync metrics are skipped


class ExpertInfo(BaseModel):
    """How an infinitetalk avatar's expert sees faces: what a render needs to cut crops like its training ones."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(gt=0, description="the expert's channel width (LipSyncExpert(width))")
    face_padding: float = Field(ge=0, description="the train brief's face_padding: align's template")
    crop_size: int = Field(default=CROP_SIZE, description="the aligned crops' size before the 96-px resize")
    channel_order: Literal["rgb"] = "rgb"
    fps: float = 25.0


def expert_crop(frame: np.ndarray, alignment: Alignment, *, crop_size: int = CROP_SIZE) -> np.ndarray:
    """The 96×96×3 uint8 face the expert was trained on: align's crop of `frame`, resized as `load_face`."""
    return cv2.resize(warp_face(frame, alignment, crop_size), (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


class MouthCrops:
    """Feed a video's frames in order (`add`); `lower_halves()` is then the expert's (N, 3, 48, 96) input in
    [0, 1], one per frame, and `syncnet_crops` (with `syncnet=True`) the 224-px crops of the standard LSE."""

    def __init__(self, *, face_padding: float, crop_size: int = CROP_SIZE, device: str = "cpu",
                 syncnet: bool = False, detector: TrackingDetector | None = None,
                 limits: AlignLimits = AlignLimits()) -> None:
        self.detector = detector or TrackingDetector(device=device)
        self.template = face_template(crop_size, face_padding)
        self.crop_size = crop_size
        self.limits = limits
        self.keep_syncnet = syncnet
        self._halves: list[torch.Tensor | None] = []  # (1, 3, 48, 96) uint8 per frame; None until a first face
        self.syncnet_crops: list[np.ndarray | None] = []
        self._last: tuple[Alignment, np.ndarray] | None = None  # the subject's last good alignment and box
        self.face_frames = 0
        self.detect_s = 0.0

    @property
    def frames(self) -> int:
        return len(self._halves)

    @property
    def face_share(self) -> float:
        return self.face_frames / self.frames if self.frames else 0.0

    def _subject(self, faces: list[Face]) -> Face | None:
        if not faces:
            return None
        if self._last is not None:
            box = self._last[1]
            nearest = max(faces, key=lambda f: iou(f.box, box))
            if iou(nearest.box, box) > 0:
                return nearest
        return max(faces, key=lambda f: f.area)

    def add(self, frame: np.ndarray) -> bool:
        """One H×W×3 uint8 RGB frame; True if a usable face of its own was found in it."""
        clock = time.perf_counter()
        face = self._subject(self.detector.detect(frame))
        alignment = estimate_alignment(face, self.template, self.limits) if face is not None else None
        found = alignment is not None and alignment.ok
        first = found and self._last is None
        if found:
            self.face_frames += 1
            self._last = (alignment, np.asarray(face.box, dtype=np.float64))
        if self._last is None:  # no face yet: filled in with the first one's crop
            self._halves.append(None)
            self.syncnet_crops.append(None)
        else:
            self._append(frame, *self._last)  # a gap: the frame cut where the face last was
            if first:
                self._fill_leading()
        self.detect_s += time.perf_counter() - clock
        return found

    def _append(self, frame: np.ndarray, alignment: Alignment, box: np.ndarray) -> None:
        crop = torch.from_numpy(expert_crop(frame, alignment, crop_size=self.crop_size)).permute(2, 0, 1)[None]
        self._halves.append(lower_half(crop).contiguous())
        self.syncnet_crops.append(syncnet_crop(frame, box) if self.keep_syncnet else None)

    def _fill_leading(self) -> None:
        half, crop = self._halves[-1], self.syncnet_crops[-1]
        for n in range(len(self._halves) - 1):
            if self._halves[n] is None:
                self._halves[n], self.syncnet_crops[n] = half, crop

    def lower_halves(self) -> torch.Tensor:
        """(N, 3, 48, 96) float32 in [0, 1], RGB (the expert's channel order); (0, 3, 48, 96) without any face."""
        if self._last is None:
            return torch.zeros(0, 3, FACE_SIZE // 2, FACE_SIZE)
        return torch.cat(self._halves).float() / 255.0

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "face_frames": self.face_frames,
                "held_frames": self.frames - self.face_frames,
                "face_share": round(self.face_share, 4), "detect_s": round(self.detect_s, 3)}


class RenderLipSync:
    """What a render collects for its lip-sync metrics while its frames stream to the encoder: `add` each frame,
    then `finish`. Without an expert or SyncNet v2 weights it collects nothing; an error stops collecting
    (with a warning), never the render."""

    def __init__(self, *, expert: LipSyncExpert | None, info: ExpertInfo | None, syncnet, device: str,
                 warnings: list[str]) -> None:
        self.expert, self.info, self.syncnet, self.warnings = expert, info, syncnet, warnings
        self.crops: MouthCrops | None = None
        if expert is not None or syncnet is not None:
            padding = info.face_padding if info is not None else 0.2
            self.crops = MouthCrops(face_padding=padding, crop_size=info.crop_size if info else CROP_SIZE,
                                    device=device, syncnet=syncnet is not None)

    @classmethod
    def for_avatar(cls, expert_path: Path | None, info_path: Path | None, *, device: str,
                   warnings: list[str]) -> RenderLipSync:
        """The avatar's expert (files fetched from its assets; None: it has none) and the SyncNet v2 scorer."""
        syncnet = standard_scorer(warnings)
        expert = info = None
        if expert_path is None or info_path is None:
            warnings.append("no lip-sync metrics: the avatar has no lip-sync expert (trained before infinitetalk "
                            "avatars had one: train it again to get them)")
        else:
            try:
                info = ExpertInfo.model_validate_json(info_path.read_bytes())
                expert = load_expert(expert_path, width=info.width).to(device)
            except Exception as exc:  # a metric: never the render
                warnings.append(f"no lip-sync metrics: the avatar's lip-sync expert does not load: {exc}")
                expert = info = None
        return cls(expert=expert, info=info, syncnet=syncnet, device=device, warnings=warnings)

    def add(self, frame: np.ndarray) -> None:
        if self.crops is None:
            return
        try:
            self.crops.add(frame)
        except Exception as exc:  # a metric: never the render
            self.warnings.append(f"no lip-sync metrics: finding the face in frame {self.crops.frames} failed: "
                                 f"{type(exc).__name__}: {exc}")
            self.crops = None

    def finish(self, metrics: dict[str, Any], *, speech: Path, fps: float) -> None:
        """`lip_sync_faces` (how many frames had a face) and, if enough did, `lip_sync` / `lip_sync_standard`."""
        crops = self.crops
        if crops is None:
            return
        metrics["lip_sync_faces"] = crops.summary()
        if crops.face_share < MIN_FACE_SHARE:
            self.warnings.append(
                f"no lip-sync metrics: a usable face was found in {crops.face_frames} of {crops.frames} rendered "
                f"frames ({crops.face_share:.0%}; {MIN_FACE_SHARE:.0%} needed) — the frames show no face the "
                "detector aligns (e.g. the tiny model's noise)")
            return
        try:
            mel = melspectrogram(load_wav(speech))
            add_render_lip_sync(metrics, self.warnings, expert=self.expert,
                                lower_halves=crops.lower_halves() if self.expert is not None else None, mel=mel,
                                fps=fps, syncnet=self.syncnet,
                                syncnet_crops=crops.syncnet_crops if self.syncnet is not None else None, speech=speech)
        except Exception as exc:  # a metric: never the render
            self.warnings.append(f"no lip-sync metrics: {type(exc).__name__}: {exc}")
