"""The folder watcher: files landing in `<bucket>/inbox/` become jobs.

watchfiles reports `added` before a file is complete, so a file counts as complete only
once its size and mtime have been stable for a quiet period. Writers that write a
hidden or `.tmp`/`.part` file and rename it into place are never seen half-written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from core.storage import LocalStorage

log = logging.getLogger("videostudio.watcher")

INBOX = "inbox"
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", "~", ".swp")


def is_candidate(path: Path) -> bool:
    """Hidden files and in-progress downloads are never inputs."""
    return not path.name.startswith(".") and not path.name.lower().endswith(TEMP_SUFFIXES)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class StableFileTracker:
    """Reports a path once its (size, mtime) has not changed for `quiet_s` seconds."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._seen: dict[Path, _Seen] = {}

    def observe(self, path: Path) -> None:
        self._seen.setdefault(path, _Seen(-1, -1, time.monotonic()))

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def due(self) -> list[Path]:
        now = time.monotonic()
        ready: list[Path] = []
        for path, seen in list(self._seen.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                self._seen.pop(path)  # renamed away or deleted
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                seen.size, seen.mtime_ns, seen.stable_since = st.st_size, st.st_mtime_ns, now
            elif now - seen.stable_since >= self.quiet_s:
                ready.append(path)
                self._seen.pop(path)
        return ready

    def __len__(self) -> int:
        return len(self._seen)


def watch_inbox(storage: LocalStorage, on_complete: Callable[[str], None], stop: threading.Event, *,
                quiet_s: float = 1.0) -> None:
    """Block until `stop` is set, calling `on_complete(key)` for each file that lands in inbox/."""
    inbox = storage.root / INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    tracker = StableFileTracker(quiet_s)
    for path in inbox.rglob("*"):  # files that arrived while nobody watched
        if path.is_file() and is_candidate(path):
            tracker.observe(path)
    tick_ms = max(20, int(min(quiet_s, 1.0) * 1000 / 4))
    for changes in watchfiles.watch(inbox, stop_event=stop, debounce=tick_ms, step=20, rust_timeout=tick_ms,
                                    yield_on_timeout=True, recursive=True, raise_interrupt=False):
        for change, raw in changes:
            path = Path(raw)
            if change == watchfiles.Change.deleted:
                tracker.forget(path)
            elif is_candidate(path) and path.is_file():
                tracker.observe(path)
        for path in tracker.due():
            try:
                on_complete(storage.key_for(path))
            except Exception:
                log.exception("could not submit %s", path.name)
