"""What the runner reports as it goes (`job.created`, `stage.progress`, …): logged, and handed to a hook.

The hook is the CLI's live output and the tests' probe; nothing depends on it for correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("videostudio.runner")

EventHook = Callable[[str, dict[str, Any]], None]


class Emitter:
    """`emit("stage.started", job_id=…)`: logs the event, then calls the hook (if any) with its data."""

    def __init__(self, hook: EventHook | None = None) -> None:
        self.hook = hook

    def __call__(self, event: str, **data: Any) -> None:
        log.info("%s %s", event, data)
        if self.hook is not None:
            self.hook(event, data)
