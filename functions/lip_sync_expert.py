"""The per-person lip-sync expert both talking backends train and score renders with (wav2lip, infinitetalk).

The expert is Wav2Lip's colour SyncNet (functions/models/syncnet.py) trained on the person's own aligned faces
(96 px) and the mel windows of their own speech (functions/wav2lip_training.py `train_expert`): 5-frame windows of
consecutive faces of one split (functions/wav2lip_dataset.py `sync_windows`), shown with their own mel window or an
off-sync one. What lives here is what the two train stages share around that loop:

* `load_window_sets`: each split's windows as WindowSets, with progress (wav2lip: faces and references, for its
  generator too); `load_expert_windows`: the windows the expert alone needs (no reference frames: half the memory);
* `train_person_expert`: the expert of a job, trained with checkpoints in the job's outputs and resumed from them
  bit for bit; a finished expert is kept (`<finished>expert.pth` + `report.json`), so a crash later in the stage
  does not retrain it; or a given checkpoint, only evaluated;
* `loop_hooks` / `latest_loop_checkpoint`: a loop's live metrics, progress and checkpoints (the generator of
  wav2lip uses them too);
* `add_render_lip_sync`: a render's `lip_sync` metrics on the avatar's expert and, when
  VIDEOSTUDIO_SYNCNET_WEIGHTS names SyncNet v2 (`standard_scorer`), its standard LSE-D / LSE-C; neither ever
  fails a render (a warning says why a metric is missing).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.audio import read_wav
from core.stage import StageContext
from functions.lipsync_metrics import LipSyncMetrics, lip_sync_metrics
from functions.lora_training import LoopHooks
from functions.models.syncnet import SYNC_FRAMES, LipSyncExpert, load_expert
from functions.models.wav2lip import FACE_SIZE, read_state_dict
from functions.models.wav2lip_audio import mel_window
from functions.standard_lse import standard_lse, syncnet_weights_from_env
from functions.wav2lip_dataset import ChannelOrder, load_face, load_window_set, sync_windows
from functions.wav2lip_training import ExpertConfig, ExpertReport, LoopState, WindowSet, evaluate_expert, train_expert
from schemas.dataset import FaceRecord
from schemas.errors import VideostudioError

CHECKPOINTS = "checkpoints/"
KEEP_CHECKPOINTS = 2
# Progress shares of the three splits' loading in wav2lip's train stage.
WINDOW_SHARES: dict[str, tuple[float, float]] = {"train": (0.02, 0.08), "val": (0.08, 0.09), "test": (0.09, 0.1)}


@dataclass(frozen=True)
class ExpertKeys:
    """Where, in the train stage's outputs, the expert's loop checkpoints and the finished expert go.
    Wav2lip's defaults; a backend whose own checkpoints live under `checkpoints/` (the LoRA loops) gives the
    expert a folder of its own."""

    checkpoints: str = f"{CHECKPOINTS}expert/"  # step-NNNNNNN.pt and latest.json
    finished: str = "expert/"  # expert.pth and report.json once the loop is over

    @property
    def weights(self) -> str:
        return f"{self.finished}expert.pth"

    @property
    def report(self) -> str:
        return f"{self.finished}report.json"


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def state_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def read_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return read_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def epoch_curves(history: dict[str, list]) -> dict[str, list[float | None]]:
    """The per-epoch train and validation curves (per-step values stay in the checkpoints and the PNG)."""
    return {k: [rounded(v) for v in values] for k, values in history.items() if not k.startswith("step_")}


def expert_summary(report: ExpertReport) -> dict[str, Any]:
    """The expert's part of a train stage's metrics."""
    return {"steps": report.steps, "val_loss": rounded(report.val_loss), "val_accuracy": rounded(report.val_accuracy),
            "converged": report.converged}


# --------------------------------------------------------------------------- loops: hooks and checkpoints
def loop_hooks(ctx: StageContext, phase: str, *, share: tuple[float, float], checkpoints: str | None = None,
               prefixed: bool = False, message: str | None = None) -> LoopHooks:
    """Progress and live metrics (L1, sync loss, expert accuracy, validation) into the manifest; checkpoints
    into the job's outputs under `checkpoints` (default `checkpoints/<phase>/`), the last KEEP_CHECKPOINTS kept.
    `prefixed`: the live step, total_steps, steps_per_s and eta_s are published as `<phase>_step`… (beside
    another loop of the same stage that publishes the plain names)."""
    prefix = checkpoints or f"{CHECKPOINTS}{phase}/"
    lo, hi = share
    text = message or f"training the {phase}"
    name = (lambda key: f"{phase}_{key}") if prefixed else (lambda key: key)

    def on_step(state: LoopState, total: int, loss: float, steps_per_s: float) -> None:
        ctx.progress(lo + (hi - lo) * state.step / total, text, step=state.step, total=total)
        last = {k.removeprefix("step_"): rounded(v[-1]) for k, v in state.history.items() if k.startswith("step_") and v}
        remaining = total - state.step
        ctx.update_metrics(phase=phase, **{name("step"): state.step, name("total_steps"): total,
                                           f"{phase}_last": last, name("steps_per_s"): round(steps_per_s, 4),
                                           name("eta_s"): round(remaining / steps_per_s, 1) if steps_per_s else None})

    def on_epoch(state: LoopState) -> None:
        ctx.update_metrics(**{f"{phase}_epoch": state.epoch, f"{phase}_history": epoch_curves(state.history)})

    def save_checkpoint(step: int, data: bytes) -> None:
        key = ctx.put_output_bytes(f"{prefix}step-{step:07d}.pt", data)
        ctx.put_output_bytes(f"{prefix}latest.json", json.dumps({"step": step, "key": key}).encode())
        old = [k for k in ctx.storage.list_keys(ctx.output_key(prefix)) if k.endswith(".pt")]
        for stale in sorted(old)[:-KEEP_CHECKPOINTS]:
            ctx.storage.delete(stale)

    return LoopHooks(on_step=on_step, on_epoch=on_epoch, save_checkpoint=save_checkpoint)


def latest_loop_checkpoint(ctx: StageContext, phase: str, *, checkpoints: str | None = None) -> bytes | None:
    """The newest checkpoint a previous attempt of this stage saved for `phase`'s loop, or None."""
    pointer = ctx.output_key(f"{checkpoints or f'{CHECKPOINTS}{phase}/'}latest.json")
    if ctx.storage.stat(pointer) is None:
        return None
    return ctx.storage.get_bytes(json.loads(ctx.storage.get_bytes(pointer))["key"])


# --------------------------------------------------------------------------- windows
def _split_progress(ctx: StageContext, lo: float, hi: float, message: str) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            ctx.progress(lo + (hi - lo) * done / total, message, step=done, total=total)

    return progress


def load_window_sets(ctx: StageContext, records: list[FaceRecord], mel: np.ndarray, *, fps: float, seed: int,
                     channel_order: ChannelOrder,
                     shares: dict[str, tuple[float, float]] = WINDOW_SHARES) -> dict[str, WindowSet]:
    """The windows of each split of `shares` (with their reference frames, as wav2lip's generator needs them),
    loading faces with progress within each split's share of the stage."""
    return {split: load_window_set(ctx.storage, records, split, mel, fps=fps, seed=seed, channel_order=channel_order,
                                   progress=_split_progress(ctx, lo, hi, "loading faces"))
            for split, (lo, hi) in shares.items()}


def load_expert_windows(ctx: StageContext, records: list[FaceRecord], mel: np.ndarray, *, fps: float, seed: int,
                        channel_order: ChannelOrder = "rgb", splits: Sequence[str] = ("train", "val"),
                        share: tuple[float, float] = (0.0, 0.0)) -> dict[str, WindowSet]:
    """The windows the expert trains and validates on: those of `load_window_set` (the same windows, faces and
    mels), without reference frames (`references` is `targets` itself: the expert never reads them), each face
    decoded once. Memory: 5 × 27 KB per window in float16. Progress runs over `share` of the stage."""
    lo, hi = share
    sets = {}
    for n, split in enumerate(splits):
        a, b = lo + (hi - lo) * n / len(splits), lo + (hi - lo) * (n + 1) / len(splits)
        sets[split] = _expert_window_set(ctx, records, split, mel, fps=fps, seed=seed, channel_order=channel_order,
                                         progress=_split_progress(ctx, a, b, "loading faces for the lip-sync expert"))
    return sets


def _expert_window_set(ctx: StageContext, records: list[FaceRecord], split: str, mel: np.ndarray, *, fps: float,
                       seed: int, channel_order: ChannelOrder, progress: Callable[[int, int], None]) -> WindowSet:
    windows = sync_windows(records, split, fps=fps, seed=seed)
    keys = sorted({k for w in windows for k in w.face_keys})
    row_of = {key: n for n, key in enumerate(keys)}
    faces = torch.empty((len(keys), 3, FACE_SIZE, FACE_SIZE), dtype=torch.float16)
    for n, key in enumerate(keys):
        face = load_face(ctx.storage, key)
        if channel_order == "bgr":
            face = face[..., ::-1]
        faces[n] = torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1)))
        progress(n + 1, len(keys))
    if not windows:
        empty = torch.zeros((0, SYNC_FRAMES, 3, FACE_SIZE, FACE_SIZE), dtype=torch.float16)
        mels = torch.zeros((0, SYNC_FRAMES, 80, 16))
        return WindowSet(targets=empty, references=empty, frame_mels=mels, sync_mels=mels[:, 0],
                         first_frames=torch.zeros(0, dtype=torch.long))
    targets = faces[torch.tensor([[row_of[k] for k in w.face_keys] for w in windows])]
    mels = torch.from_numpy(np.stack([np.stack([mel_window(mel, i, fps) for i in w.frame_indices]) for w in windows]))
    return WindowSet(targets=targets, references=targets, frame_mels=mels, sync_mels=mels[:, 0].clone(),
                     first_frames=torch.tensor([w.frame_indices[0] for w in windows]))


# --------------------------------------------------------------------------- the expert
def train_person_expert(ctx: StageContext, sets: dict[str, WindowSet], *, width: float, config: ExpertConfig,
                        seed: int, expert_weights: str | None = None, share: tuple[float, float] = (0.1, 0.4),
                        keys: ExpertKeys = ExpertKeys(), phase: str = "expert", prefixed: bool = False,
                        message: str | None = None) -> tuple[LipSyncExpert, ExpertReport]:
    """The job's lip-sync expert (width `width`) and its report: `expert_weights` loaded and evaluated on the
    val windows if given; else the one a previous attempt finished (under `keys.finished`); else trained from
    weights drawn from `seed` on `sets["train"]`, validated on `sets["val"]`, resuming from the newest checkpoint
    under `keys.checkpoints`, progress within `share` (the live metrics as `loop_hooks(phase, prefixed)`)."""
    if expert_weights:
        ctx.progress(share[0], "loading the lip-sync expert")
        expert = load_expert(expert_weights, width=width).to(config.device)
        val_loss, val_accuracy = evaluate_expert(expert, sets["val"], config)
        return expert, ExpertReport(steps=0, epochs=0, history={}, val_loss=val_loss, val_accuracy=val_accuracy,
                                    converged=val_loss is not None and val_loss <= config.converged_loss,
                                    converged_loss=config.converged_loss)
    done = ctx.output_key(keys.report)
    if ctx.storage.stat(done) is not None:  # a resumed job: the expert had finished
        expert = LipSyncExpert(width)
        expert.load_state_dict(read_state_dict_bytes(ctx.storage.get_bytes(ctx.output_key(keys.weights))))
        return expert.to(config.device).eval(), ExpertReport.model_validate_json(ctx.storage.get_bytes(done))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expert = LipSyncExpert(width)
    report = train_expert(expert, sets["train"], sets["val"], config=config,
                          resume=latest_loop_checkpoint(ctx, phase, checkpoints=keys.checkpoints),
                          hooks=loop_hooks(ctx, phase, share=share, checkpoints=keys.checkpoints, prefixed=prefixed,
                                           message=message))
    ctx.put_output_bytes(keys.weights, state_bytes(expert))
    ctx.put_output_bytes(keys.report, report.model_dump_json().encode(), content_type="application/json")
    return expert, report


# --------------------------------------------------------------------------- a render's metrics
def standard_scorer(warnings: list[str]):
    """SyncNet v2 when VIDEOSTUDIO_SYNCNET_WEIGHTS names it; a bad setting costs the metric, never the render."""
    try:
        return syncnet_weights_from_env()
    except VideostudioError as exc:
        warnings.append(f"no standard LSE: {exc}")
        return None


def add_render_lip_sync(metrics: dict[str, Any], warnings: list[str], *, expert: LipSyncExpert | None,
                        lower_halves: torch.Tensor | None, mel: np.ndarray, fps: float, syncnet=None,
                        syncnet_crops: Sequence[np.ndarray] | None = None, speech: Path | None = None) -> None:
    """`metrics["lip_sync"]`: the LSE-style metrics of the render's (N, 3, 48, 96) lower halves on the avatar's
    expert; `metrics["lip_sync_standard"]` (with `lse_d`, `lse_c`): SyncNet v2's on the N 224×224×3
    `syncnet_crops` and the `speech` WAV, when a scorer is given. A clip too short for them is a warning."""
    if expert is not None and lower_halves is not None:
        try:
            sync: LipSyncMetrics = lip_sync_metrics(expert, lower_halves, mel, fps=fps)
            metrics["lip_sync"] = sync.model_dump(exclude={"distances"})
        except VideostudioError as exc:  # speech shorter than the ±15-frame search
            warnings.append(f"no lip-sync metrics: {exc}")
    if syncnet is not None and syncnet_crops is not None and speech is not None:
        try:
            standard = standard_lse(np.stack(syncnet_crops), read_wav(speech).samples, syncnet)
            metrics["lip_sync_standard"] = {**standard.model_dump(exclude={"distances"}),
                                            "lse_d": standard.min_dist, "lse_c": standard.confidence}
        except VideostudioError as exc:
            warnings.append(f"no standard LSE: {exc}")
