"""The routing table: which stages each job kind runs. Handed to the runner by triggers/ and deploy.py."""

from __future__ import annotations

from core.stage import Pipeline
from functions.align import align
from functions.prepare import classify_input, prepare
from functions.render import render
from functions.train import train

ROUTES: dict[str, list[str]] = {
    "render": ["prepare", "render"],
    # A training video becomes an aligned face dataset, a LoRA, a deployed avatar and a preview video.
    "train": ["prepare", "align", "train", "render"],
}

STAGES = {"prepare": prepare, "align": align, "train": train, "render": render}


def default_pipeline() -> Pipeline:
    return Pipeline(routes=ROUTES, stages=STAGES, classify=classify_input)
