"""The routing table: which stages each job kind runs. Handed to the runner by triggers/ and deploy.py."""

from __future__ import annotations

from core.stage import Pipeline
from functions.align import align
from functions.prepare import classify_input, prepare
from functions.render import render

ROUTES: dict[str, list[str]] = {
    "render": ["prepare", "render"],
    # A training video becomes an aligned face dataset; the train stage comes next.
    "train": ["prepare", "align"],
}

STAGES = {"prepare": prepare, "align": align, "render": render}


def default_pipeline() -> Pipeline:
    return Pipeline(routes=ROUTES, stages=STAGES, classify=classify_input)
