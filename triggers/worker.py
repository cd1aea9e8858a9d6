"""Local workers: lease messages from the queue and hand them to the runner until told to stop."""

from __future__ import annotations

import logging
import threading

from core.runner import Runner

log = logging.getLogger("videostudio.worker")

IDLE_POLL_S = 0.05


def work_until(runner: Runner, stop: threading.Event, *, idle_poll_s: float = IDLE_POLL_S) -> int:
    """Process messages until `stop` is set; returns how many were processed."""
    processed = 0
    while not stop.is_set():
        if runner.work_once():
            processed += 1
        else:
            stop.wait(idle_poll_s)
    return processed
