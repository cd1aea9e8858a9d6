"""Build the runner for a bucket: storage, queue and the routing table, from settings."""

from __future__ import annotations

from core.queue import SqliteQueue
from core.runner import EventHook, Runner
from core.settings import Settings
from core.storage import LocalStorage, open_storage
from schemas.errors import VideostudioError

QUEUE_FILE = "queue.sqlite3"


def open_runner(settings: Settings, *, on_event: EventHook | None = None) -> Runner:
    from functions.routes import default_pipeline

    storage = open_storage(settings.bucket)
    if not isinstance(storage, LocalStorage):
        raise VideostudioError("no_local_queue", "the embedded queue needs a local bucket folder")
    # Queue dead-lettering is the safety net for messages that crash the runner itself;
    # stage attempts are bounded in the manifest, webhook attempts by their own budget.
    queue = SqliteQueue(storage.state_dir / QUEUE_FILE,
                        max_attempts=max(settings.max_attempts, settings.webhook_max_attempts) + 2)
    return Runner(storage, queue, default_pipeline(), settings, on_event=on_event)
