"""Work queues: a durable local SQLite queue (embedded default); Modal queues later."""

from core.queue.base import Lease, WorkQueue
from core.queue.sqlite import SqliteQueue

__all__ = ["Lease", "SqliteQueue", "WorkQueue"]
