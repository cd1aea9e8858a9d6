"""Follow one subject: link detections across frames into tracks and pick the main one.

The main track is the one present in the most frames — the person the video is about —
not whoever is largest in a single frame. A face the detector followed from the previous
frame (`Face.follows`, set by `TrackingDetector`) continues that face's track however far it
moved between samples (at 1 frame per second a head moves more than its width). Other faces
are linked by overlap or nearby centres, tolerating short gaps (a turned head, a blink of
the detector) so one person's track is not cut into pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from functions.faces import Face, iou


@dataclass
class Track:
    track_id: int
    frames: list[int] = field(default_factory=list)  # positions in the frame sequence
    faces: list[Face] = field(default_factory=list)

    @property
    def last_box(self) -> np.ndarray:
        return self.faces[-1].box

    @property
    def mean_area(self) -> float:
        return float(np.mean([f.area for f in self.faces]))


def _same_subject(previous: np.ndarray, box: np.ndarray, iou_threshold: float) -> float:
    """A match score: IoU, or for fast motion, centre distance small relative to size with similar size."""
    overlap = iou(previous, box)
    if overlap >= iou_threshold:
        return overlap
    pw, bw = previous[2] - previous[0], box[2] - box[0]
    if pw <= 0 or bw <= 0 or not 0.67 <= bw / pw <= 1.5:
        return 0.0
    pc = (previous[:2] + previous[2:]) / 2
    bc = (box[:2] + box[2:]) / 2
    distance = float(np.linalg.norm(pc - bc)) / pw
    return 0.5 * iou_threshold * (1 - distance) if distance < 0.5 else 0.0


def link_tracks(per_frame: list[list[Face]], *, iou_threshold: float = 0.3, max_gap: int = 12) -> list[Track]:
    """`per_frame`: the detections of consecutive frames, in the order the detector saw them."""
    tracks: list[Track] = []
    previous_owner: dict[int, Track] = {}  # face number in the previous frame → its track
    for position, faces in enumerate(per_frame):
        owner: dict[int, Track] = {}
        # 1. faces the detector followed from the previous frame continue that face's track
        for fi, face in enumerate(faces):
            track = previous_owner.get(face.follows) if face.follows is not None else None
            if track is not None and track.frames[-1] == position - 1 and all(t is not track for t in owner.values()):
                owner[fi] = track
        # 2. the rest by geometry, best matches first
        open_tracks = [t for t in tracks if position - t.frames[-1] <= max_gap and all(t is not o for o in owner.values())]
        pairs = sorted(((_same_subject(t.last_box, face.box, iou_threshold), ti, fi)
                        for ti, t in enumerate(open_tracks) for fi, face in enumerate(faces) if fi not in owner),
                       reverse=True)
        used_tracks: set[int] = set()
        for score, ti, fi in pairs:
            if score <= 0 or ti in used_tracks or fi in owner:
                continue
            used_tracks.add(ti)
            owner[fi] = open_tracks[ti]
        for fi, face in enumerate(faces):
            track = owner.get(fi)
            if track is None:
                track = owner[fi] = Track(len(tracks))
                tracks.append(track)
            track.frames.append(position)
            track.faces.append(face)
        previous_owner = owner
    return tracks


def main_track(tracks: list[Track]) -> Track | None:
    """Most frames wins; among equals, the larger mean face."""
    if not tracks:
        return None
    return max(tracks, key=lambda t: (len(t.frames), t.mean_area))
