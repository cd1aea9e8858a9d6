"""Wav2Lip training windows: five consecutive faces of one split, their mel window, a distant reference."""

from __future__ import annotations

from functions.models.wav2lip_audio import window_start
from functions.wav2lip_dataset import MIN_REFERENCE_GAP_S, WINDOW_FRAMES, sync_windows
from schemas.dataset import FaceRecord

FPS = 25.0


def record(index: int, split: str | None, *, face: bool = True) -> FaceRecord:
    return FaceRecord(frame_index=index, time_s=index / FPS, box=[0, 0, 10, 10], landmarks=[[0, 0]] * 5, score=0.99,
                      track_id=0, roll_deg=0.0, eye_distance_px=30.0, fit_error=0.01, split=split,
                      face_key=f"faces/{split}/{index:06d}.jpg" if face and split else None, matrix=[[1, 0, 0], [0, 1, 0]])


def test_windows_are_consecutive_faces_of_one_split_and_start_at_their_mel_column():
    records = [record(i, "train") for i in range(100)] + [record(i, "val") for i in range(100, 130)]
    records[40] = record(40, "train", face=False)  # an unusable frame: marked, never trained on, breaks the run
    windows = sync_windows(records, "train", fps=FPS, seed=1)
    starts = [w.frame_indices[0] for w in windows]
    assert all(not (36 <= s <= 40) for s in starts) and 35 in starts and 41 in starts
    assert len(windows) == (40 - WINDOW_FRAMES + 1) + (59 - WINDOW_FRAMES + 1)
    for window in windows:
        first = window.frame_indices[0]
        assert window.frame_indices == tuple(range(first, first + WINDOW_FRAMES))
        assert window.mel_start == int(80 * first / FPS) and all("/train/" in k for k in window.face_keys)
        reference_index = int(window.reference_key.rsplit("/", 1)[1].split(".")[0])
        assert "/train/" in window.reference_key and abs(reference_index - first) / FPS >= MIN_REFERENCE_GAP_S
    assert all("/val/" in w.face_keys[0] for w in sync_windows(records, "val", fps=FPS, seed=1))
    assert sync_windows(records, "train", fps=FPS, seed=1) == windows  # deterministic for a seed


def test_mel_start_follows_the_frame_time():
    assert [window_start(i, 25) for i in (0, 1, 2, 24, 25, 26)] == [0, 3, 6, 76, 80, 83]
    assert window_start(30, 30) == 80
