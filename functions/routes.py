"""The routing table: which stages each job kind runs. Handed to the runner by triggers/ and deploy.py."""

from __future__ import annotations

from core.stage import Pipeline
from functions.prepare import classify_input, prepare
from functions.render import render

ROUTES: dict[str, list[str]] = {
    "render": ["prepare", "render"],
    # Train briefs and bare videos are validated by prepare; align → train arrive later.
    "train": ["prepare"],
}

STAGES = {"prepare": prepare, "render": render}


def default_pipeline() -> Pipeline:
    return Pipeline(routes=ROUTES, stages=STAGES, classify=classify_input)
