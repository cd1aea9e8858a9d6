"""Build the runner for a bucket: storage, queue and the routing table, from settings.

The embedded queue is a SQLite file. A folder bucket keeps it beside its objects
(`<bucket>/.videostudio/`); an S3 bucket can't hold a SQLite file, so its queue lives in a local
state folder: `VIDEOSTUDIO_STATE_DIR`, by default `~/.cache/videostudio/<hash of the bucket URI>/`.
Every process on this machine that names the same bucket (`up`, `serve`, `intake sqs`, `submit`)
shares that queue; workers on other machines find the work through the reconciler.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.queue import SqliteQueue
from core.runner import EventHook, Runner
from core.settings import Settings
from core.storage import LocalStorage, Storage, open_storage

QUEUE_FILE = "queue.sqlite3"
STATE_HOME = "videostudio"


def default_state_dir(bucket_uri: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / STATE_HOME / hashlib.sha256(bucket_uri.rstrip("/").encode()).hexdigest()[:16]


def state_dir_for(settings: Settings, storage: Storage) -> Path:
    """Where this bucket's local state (the queue) lives on this machine."""
    if isinstance(storage, LocalStorage):
        return storage.state_dir
    path = Path(settings.state_dir).expanduser() if settings.state_dir else default_state_dir(settings.bucket)
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_runner(settings: Settings, *, on_event: EventHook | None = None) -> Runner:
    from functions.routes import default_pipeline

    storage = open_storage(settings.bucket, settings=settings)
    queue = SqliteQueue(state_dir_for(settings, storage) / QUEUE_FILE, max_attempts=settings.queue_lease_attempts)
    return Runner(storage, queue, default_pipeline(), settings, on_event=on_event)
