"""Person segmentation with mediapipe's selfie segmentation (its tflite model ships inside the 0.10.14 wheel:
nothing downloads; the 1.x wheels ship no models). The model sees 256×256; frames are shrunk to that before it runs, so its cost does not
grow with the video's resolution (functions/matte.py refines the edge at full size)."""

from __future__ import annotations

import os
from contextlib import redirect_stderr

import cv2
import numpy as np

MODEL_SIZE = 256  # the general selfie model's input side (mediapipe resizes to it anyway)
# A person covering less than this share of a frame is "no person" in that frame; a video where most frames
# are like that fails with no_person_found.
MIN_PERSON_SHARE = 0.03


class PersonSegmenter:
    """One mediapipe graph; `probability(frame)` → [MODEL_SIZE, MODEL_SIZE] float32 person probability."""

    def __init__(self) -> None:
        # Imported here: only the compose stage needs mediapipe. Its C++ logging writes a harmless protobuf
        # notice to stderr while the graph is built; keep it out of worker logs.
        with open(os.devnull, "w") as sink, redirect_stderr(sink):
            from mediapipe.python.solutions import selfie_segmentation

            self._graph = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def probability(self, frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
        return np.asarray(self._graph.process(small).segmentation_mask, dtype=np.float32)

    def close(self) -> None:
        self._graph.close()

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def person_share(probability: np.ndarray) -> float:
    return float((probability > 0.5).mean())
