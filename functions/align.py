"""align: the prepared frames → an aligned, leak-free 512×512 face dataset of one subject.

1. detect faces in every kept frame (downscaled keyframes + region tracking, see faces.py);
2. link detections into tracks and keep the main subject's (tracking.py);
3. align each of its faces to the template with a similarity transform, rejecting
   implausible results (alignment.py);
4. split by contiguous time blocks 85/10/5 (dataset_split.py);
5. write faces/{train,val,test}/, metadata.jsonl, dataset.json and a contact sheet.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import cv2
import numpy as np

from core.stage import StageContext, StageResult
from functions.alignment import CROP_SIZE, estimate_alignment, face_template, warp_face
from functions.contact_sheet import sample_evenly, write_contact_sheet
from functions.dataset_split import DEFAULT_FRACTIONS, SPLITS, split_by_time_blocks
from functions.faces import Face, TrackingDetector
from functions.models.mochi import pick_device
from functions.tracking import link_tracks, main_track
from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError

LOW_DETECTION_RATE = 0.8
MIN_ALIGNED_FACES = 10
JPEG_QUALITY = 95


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VideostudioError("corrupt_frame", "a prepared frame could not be decoded", retryable=True)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return buffer.tobytes()


def align(ctx: StageContext) -> StageResult:
    request = ctx.request or {}
    frames_key = ctx.manifest.stages["prepare"].outputs.get("frames")
    if not frames_key:
        raise VideostudioError("missing_frames", "align needs the frame list written by prepare")
    frames = [FrameRecord.model_validate_json(line) for line in ctx.storage.get_bytes(frames_key).splitlines() if line]
    frames = [f for f in frames if f.key]
    seed = int(request.get("seed", 0))
    padding = float(request.get("face_padding", 0.2))

    # 1. detect, in time order (the tracker relies on it)
    clock = time.perf_counter()
    detector = TrackingDetector(device=pick_device(ctx.settings.device))
    per_frame: list[list[Face]] = []
    for n, frame in enumerate(frames):
        per_frame.append(detector.detect(_decode(ctx.storage.get_bytes(frame.key))))
        ctx.progress(0.6 * (n + 1) / len(frames), "detecting faces", step=n + 1, total=len(frames))
    detect_s = time.perf_counter() - clock

    # 2. follow one subject
    tracks = link_tracks(per_frame)
    subject = main_track(tracks)
    if subject is None:
        raise VideostudioError("no_face_detected", f"no face found in any of {len(frames)} frames")
    detection_rate = len(subject.frames) / len(frames)

    # 3. align the subject's faces
    template = face_template(CROP_SIZE, padding)
    records: list[FaceRecord] = []
    crop_dir = ctx.scratch / "crops"  # crops wait on local disk (not in memory) until the split is known
    crop_dir.mkdir()
    for n, (position, face) in enumerate(zip(subject.frames, subject.faces)):
        frame = frames[position]
        result = estimate_alignment(face, template)
        records.append(FaceRecord(
            frame_index=frame.index, time_s=frame.time_s, frame_key=frame.key,
            box=[round(float(v), 2) for v in face.box], landmarks=np.round(face.landmarks, 2).tolist(),
            score=round(face.score, 5), track_id=subject.track_id, roll_deg=result.roll_deg,
            eye_distance_px=result.eye_distance_px, fit_error=result.fit_error, rejected=result.reason,
            matrix=np.round(result.matrix, 6).tolist()))
        if result.ok:
            crop = warp_face(_decode(ctx.storage.get_bytes(frame.key)), result)
            (crop_dir / f"{len(records) - 1}.jpg").write_bytes(_encode_jpeg(crop))
        ctx.progress(0.6 + 0.3 * (n + 1) / len(subject.frames), "aligning faces", step=n + 1, total=len(subject.frames))
    aligned = [i for i, r in enumerate(records) if r.rejected is None]
    if len(aligned) < MIN_ALIGNED_FACES:
        reasons = Counter(r.rejected for r in records if r.rejected)
        raise VideostudioError("too_few_faces", f"only {len(aligned)} usable aligned faces (need {MIN_ALIGNED_FACES}); "
                               f"detected in {len(subject.frames)} of {len(frames)} frames; rejected: {dict(reasons)}")

    # 4. split by time blocks
    plan = split_by_time_blocks([records[i].time_s for i in aligned], seed=seed)
    for i, label in zip(aligned, plan.labels):
        records[i].split = label

    # 5. outputs, then metadata
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
    split_counts = Counter(r.split for r in records if r.split)
    rejected = Counter(r.rejected for r in records if r.rejected)
    metrics = {
        "frames": len(frames),
        "faces_detected": len(subject.frames),
        "detection_rate": round(detection_rate, 4),
        "aligned": len(aligned),
        "alignment_success_rate": round(len(aligned) / len(subject.frames), 4),
        "rejected": dict(rejected),
        "guard_band_dropped": sum(1 for label in plan.labels if label is None),
        "splits": {s: split_counts.get(s, 0) for s in SPLITS},
        "split_fractions": list(DEFAULT_FRACTIONS),
        "split_block_s": round(plan.block_s, 3),
        "split_guard_s": round(plan.guard_s, 3),
        "tracks": len(tracks),
        "main_track_id": subject.track_id,
        "keyframes": detector.keyframes,
        "roi_searches": detector.roi_searches,
        "detect_s": round(detect_s, 3),
        "faces_per_s": round(len(frames) / detect_s, 2) if detect_s else None,
        "crop_size": CROP_SIZE,
        "padding": padding,
    }
    dataset_key = ctx.put_output_bytes("dataset.json", json.dumps({
        "template": np.round(template, 3).tolist(), "seed": seed, **metrics}, indent=2).encode(),
        content_type="application/json")
    warnings = []
    if detection_rate < LOW_DETECTION_RATE:
        warnings.append(f"face detection rate {detection_rate:.0%} is under {LOW_DETECTION_RATE:.0%}: "
                        "the subject is often out of frame, turned away or too small")
    outputs = {"faces_prefix": ctx.output_key("faces/"), "metadata": metadata_key, "dataset": dataset_key,
               "contact_sheet": sheet_key}
    return StageResult(outputs=outputs, metrics=metrics, warnings=warnings,
                       job_outputs={"contact_sheet": sheet_key, "dataset": dataset_key})

