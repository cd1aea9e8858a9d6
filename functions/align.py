"""align: the frames prepare kept → an aligned, leak-free 512×512 face dataset of one subject.

1. decode the video again at the fps prepare sampled (one streamed ffmpeg pass, full resolution,
   the same samples prepare judged) and detect faces in every kept frame (downscaled keyframes
   + region tracking, see faces.py); each face that aligns is cropped right away, because the
   frame is gone once the next one arrives;
2. link detections into tracks and keep the main subject's (tracking.py); crops of anyone else
   are discarded;
3. the subject's alignments (similarity transform to the template, implausible results
   rejected, alignment.py) become the dataset;
4. split by contiguous time blocks 85/10/5 (dataset_split.py);
5. write faces/{train,val,test}/, metadata.jsonl, dataset.json and a contact sheet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.device import pick_device
from core.stage import StageContext, StageResult
from core.storage.base import file_sha256
from core.video import sample_frames
from functions.alignment import CROP_SIZE, Alignment, estimate_alignment, face_template, warp_face
from functions.contact_sheet import sample_evenly, write_contact_sheet
from functions.dataset_split import DEFAULT_FRACTIONS, SPLITS, SplitPlan, split_by_time_blocks
from functions.faces import Face, TrackingDetector
from functions.tracking import Track, link_tracks, main_track
from schemas.brief import TrainBrief
from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput, DatasetPrepared

LOW_DETECTION_RATE = 0.8
MIN_ALIGNED_FACES = 10
JPEG_QUALITY = 95


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return buffer.tobytes()


def fetch_video(ctx: StageContext, prepared: DatasetPrepared) -> Path:
    """The video prepare judged, checked by its sha256: a replaced upload would give other frames."""
    video_key = prepared.video_key
    if ctx.storage.stat(video_key) is None:
        raise VideostudioError("video_not_found", f"the training video {video_key!r} is no longer in the bucket")
    local = ctx.storage.download(video_key, ctx.scratch / ("input" + Path(video_key).suffix.lower()))
    if file_sha256(local) != prepared.video_sha256:
        raise VideostudioError("video_changed", f"the training video {video_key!r} was replaced after prepare ran; "
                               "submit the job again")
    return local


def _kept_frames(ctx: StageContext, prepared: DatasetPrepared) -> list[FrameRecord]:
    lines = ctx.storage.get_bytes(prepared.frames_key).splitlines()
    return [f for f in (FrameRecord.model_validate_json(line) for line in lines if line) if f.dropped is None]


@dataclass
class Detections:
    """Every face of every kept frame, in time order, with the alignments of those that align."""

    per_frame: list[list[Face]]
    alignments: dict[tuple[int, int], Alignment]  # (position, face number) → its alignment
    crop_dir: Path  # crops wait on local disk (not in memory) until the subject and split are known
    detector: TrackingDetector
    seconds: float


def _detect(ctx: StageContext, prepared: DatasetPrepared, kept: list[FrameRecord], template: np.ndarray) -> Detections:
    """Detect in time order (the tracker relies on it), and crop every face that aligns while its frame is here."""
    local = fetch_video(ctx, prepared)
    position_of = {f.index: n for n, f in enumerate(kept)}
    clock = time.perf_counter()
    found = Detections([], {}, ctx.scratch / "crops", TrackingDetector(device=pick_device(ctx.settings.device)), 0.0)
    found.crop_dir.mkdir()
    ctx.progress(0.0, "detecting faces", step=0, total=len(kept))
    size = (prepared.video.width, prepared.video.height)  # prepare probed this very file
    for frame in sample_frames(local, fps=prepared.sample_fps, size=size, keep=position_of.__contains__):
        position = position_of[frame.index]
        faces = found.detector.detect(frame.pixels)
        found.per_frame.append(faces)
        for number, face in enumerate(faces):
            result = found.alignments[position, number] = estimate_alignment(face, template)
            if result.ok:
                (found.crop_dir / f"{position}_{number}.jpg").write_bytes(
                    _encode_jpeg(warp_face(frame.pixels, result)))
        ctx.progress(0.9 * (position + 1) / len(kept), "detecting faces", step=position + 1, total=len(kept))
    found.seconds = time.perf_counter() - clock
    if len(found.per_frame) != len(kept):
        raise VideostudioError("video_changed", f"decoding the video again gave {len(found.per_frame)} of the "
                               f"{len(kept)} frames prepare kept")
    return found


def _subject_records(found: Detections, kept: list[FrameRecord], subject: Track) -> list[FaceRecord]:
    """The subject's faces in frame order; crop i.jpg becomes record i's."""
    records: list[FaceRecord] = []
    for position, face in zip(subject.frames, subject.faces):
        number = next(n for n, f in enumerate(found.per_frame[position]) if f is face)
        frame, result = kept[position], found.alignments[position, number]
        records.append(FaceRecord(
            frame_index=frame.index, time_s=frame.time_s,
            box=[round(float(v), 2) for v in face.box], landmarks=np.round(face.landmarks, 2).tolist(),
            score=round(face.score, 5), track_id=subject.track_id, roll_deg=result.roll_deg,
            eye_distance_px=result.eye_distance_px, fit_error=result.fit_error, rejected=result.reason,
            matrix=np.round(result.matrix, 6).tolist()))
        if result.ok:
            (found.crop_dir / f"{position}_{number}.jpg").rename(found.crop_dir / f"{len(records) - 1}.jpg")
    return records


def align(ctx: StageContext) -> StageResult:
    brief = ctx.brief(TrainBrief)
    prepared = ctx.handoff(DatasetPrepared)
    kept = _kept_frames(ctx, prepared)
    template = face_template(CROP_SIZE, brief.face_padding)

    # 1. detect and crop; 2. follow one subject; 3. its faces, in frame order
    found = _detect(ctx, prepared, kept, template)
    tracks = link_tracks(found.per_frame)
    subject = main_track(tracks)
    if subject is None:
        raise VideostudioError("no_face_detected", f"no face found in any of {len(kept)} frames")
    records = _subject_records(found, kept, subject)
    ctx.progress(0.92, "writing the dataset")
    aligned = [i for i, r in enumerate(records) if r.rejected is None]
    if len(aligned) < MIN_ALIGNED_FACES:
        reasons = Counter(r.rejected for r in records if r.rejected)
        raise VideostudioError("too_few_faces", f"only {len(aligned)} usable aligned faces (need {MIN_ALIGNED_FACES}); "
                               f"detected in {len(subject.frames)} of {len(kept)} frames; rejected: {dict(reasons)}")

    # 4. split by time blocks
    plan = split_by_time_blocks([records[i].time_s for i in aligned], seed=brief.seed)
    for i, label in zip(aligned, plan.labels):
        records[i].split = label

    # 5. outputs, then metadata
    keys = _write_outputs(ctx, records, aligned, found.crop_dir)
    metrics = _metrics(found, kept=kept, subject=subject, records=records, tracks=tracks, plan=plan,
                       padding=brief.face_padding)
    dataset_key = ctx.put_output_bytes("dataset.json", json.dumps({
        "template": np.round(template, 3).tolist(), "seed": brief.seed, **metrics}, indent=2).encode(),
        content_type="application/json")
    warnings = []
    if metrics["detection_rate"] < LOW_DETECTION_RATE:
        warnings.append(f"face detection rate {metrics['detection_rate']:.0%} is under {LOW_DETECTION_RATE:.0%}: "
                        "the subject is often out of frame, turned away or too small")
    outputs = {"faces_prefix": ctx.output_key("faces/"), "metadata": keys["metadata"], "dataset": dataset_key,
               "contact_sheet": keys["contact_sheet"]}
    handoff = AlignOutput(faces_prefix=outputs["faces_prefix"], metadata_key=keys["metadata"], dataset_key=dataset_key,
                          contact_sheet_key=keys["contact_sheet"], splits=metrics["splits"])
    return StageResult(outputs=outputs, metrics=metrics, warnings=warnings, handoff=handoff,
                       job_outputs={"contact_sheet": keys["contact_sheet"], "dataset": dataset_key})


def _write_outputs(ctx: StageContext, records: list[FaceRecord], aligned: list[int], crop_dir: Path) -> dict[str, str]:
    """The split's face crops, a contact sheet of up to 48 of them, and metadata.jsonl (written last)."""
    in_dataset = []
    for i in aligned:
        record = records[i]
        if record.split is None:
            continue
        record.face_key = ctx.put_output_file(f"faces/{record.split}/{record.frame_index:06d}.jpg",
                                              crop_dir / f"{i}.jpg", content_type="image/jpeg")
        in_dataset.append(i)
    sheet = [in_dataset[k] for k in sample_evenly(len(in_dataset), 48)]
    picked = [(_decode((crop_dir / f"{i}.jpg").read_bytes()), records[i].split, records[i].time_s) for i in sheet]
    sheet_key = ctx.put_output_file("contact_sheet.png", write_contact_sheet(picked, ctx.scratch / "contact_sheet.png"),
                                    content_type="image/png")
    metadata_key = ctx.put_output_bytes("metadata.jsonl", "".join(r.model_dump_json() + "\n" for r in records).encode(),
                                        content_type="application/x-ndjson")
    return {"contact_sheet": sheet_key, "metadata": metadata_key}


def _metrics(found: Detections, *, kept: list[FrameRecord], subject: Track, records: list[FaceRecord],
             tracks: list[Track], plan: SplitPlan, padding: float) -> dict[str, Any]:
    aligned = sum(1 for r in records if r.rejected is None)
    split_counts = Counter(r.split for r in records if r.split)
    return {
        "frames": len(kept),
        "faces_detected": len(subject.frames),
        "detection_rate": round(len(subject.frames) / len(kept), 4),
        "aligned": aligned,
        "alignment_success_rate": round(aligned / len(subject.frames), 4),
        "rejected": dict(Counter(r.rejected for r in records if r.rejected)),
        "guard_band_dropped": sum(1 for label in plan.labels if label is None),
        "splits": {s: split_counts.get(s, 0) for s in SPLITS},
        "split_fractions": list(DEFAULT_FRACTIONS),
        "split_block_s": round(plan.block_s, 3),
        "split_guard_s": round(plan.guard_s, 3),
        "tracks": len(tracks),
        "main_track_id": subject.track_id,
        "keyframes": found.detector.keyframes,
        "refinements": found.detector.refinements,
        "roi_searches": found.detector.roi_searches,
        "detect_s": round(found.seconds, 3),
        "faces_per_s": round(len(kept) / found.seconds, 2) if found.seconds else None,
        "crop_size": CROP_SIZE,
        "padding": padding,
    }
