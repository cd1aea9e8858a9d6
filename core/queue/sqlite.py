"""A durable work queue in one SQLite file (WAL mode), safe across threads and processes.

SQLite's write lock serializes `get`, so two workers never lease the same message; the
file survives restarts, and an expired lease makes a message visible again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from core.queue.base import DEFAULT_LEASE_ATTEMPTS, Lease, WorkQueue
from schemas.events import TaskMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key    TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    body          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'ready',   -- ready | leased | dead
    attempts      INTEGER NOT NULL DEFAULT 0,
    available_at  REAL NOT NULL,
    leased_until  REAL,
    lease_token   TEXT,
    last_error    TEXT,
    created_at    REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_waiting_copy ON messages(dedupe_key) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS by_availability ON messages(state, available_at, id);
CREATE INDEX IF NOT EXISTS by_lease_expiry ON messages(state, leased_until, id);
CREATE INDEX IF NOT EXISTS by_job ON messages(job_id);
"""


class SqliteQueue(WorkQueue):
    def __init__(self, path: str | Path, *, max_attempts: int = DEFAULT_LEASE_ATTEMPTS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _tx(self, fn):
        """Run `fn(cursor)` in one IMMEDIATE transaction (takes the write lock up front)."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return result

    def put(self, message: TaskMessage, *, delay_s: float = 0.0) -> bool:
        now = time.time()

        def insert(cur: sqlite3.Cursor) -> bool:
            cur.execute(
                "INSERT OR IGNORE INTO messages(dedupe_key, job_id, body, available_at, created_at) VALUES (?,?,?,?,?)",
                (message.dedupe_key(), message.job_id, message.model_dump_json(), now + delay_s, now),
            )
            return cur.rowcount == 1

        return self._tx(insert)

    def get(self, *, lease_s: float, job_id: str | None = None) -> Lease | None:
        def lease(cur: sqlite3.Cursor) -> Lease | None:
            now = time.time()
            job_filter = "AND job_id = ?" if job_id else ""
            args: tuple = (now, job_id) if job_id else (now,)
            while True:
                # Two index range scans (ready by availability, leased by expiry) instead of one OR that
                # SQLite would answer by sorting every waiting message: leasing stays O(log n) in the backlog.
                candidates = [cur.execute(
                    f"""SELECT {order}, id, body, attempts FROM messages
                        WHERE state = '{state}' AND {order} <= ? {job_filter}
                        ORDER BY {order}, id LIMIT 1""", args).fetchone()
                    for state, order in (("ready", "available_at"), ("leased", "leased_until"))]
                found = [c for c in candidates if c is not None]
                if not found:
                    return None
                _, message_id, body, attempts = min(found)
                if attempts >= self.max_attempts:
                    # Leased max_attempts times and never acked: a poison message.
                    cur.execute("UPDATE messages SET state = 'dead', lease_token = NULL WHERE id = ?", (message_id,))
                    continue
                token = uuid.uuid4().hex
                # A leased row leaves the 'ready' unique index, so a fresh copy may be queued meanwhile.
                cur.execute(
                    "UPDATE messages SET state = 'leased', attempts = attempts + 1, leased_until = ?, lease_token = ? WHERE id = ?",
                    (now + lease_s, token, message_id),
                )
                return Lease(message_id, token, TaskMessage.model_validate_json(body), attempts + 1)

        return self._tx(lease)

    def ack(self, lease: Lease) -> bool:
        return self._tx(lambda cur: cur.execute(
            "DELETE FROM messages WHERE id = ? AND lease_token = ?", (lease.message_id, lease.token)).rowcount == 1)

    def nack(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> bool:
        def release(cur: sqlite3.Cursor) -> bool:
            cur.execute(
                """UPDATE messages SET state = 'ready', available_at = ?, leased_until = NULL, lease_token = NULL,
                   last_error = ? WHERE id = ? AND lease_token = ?""",
                (time.time() + delay_s, error, lease.message_id, lease.token),
            )
            return cur.rowcount == 1

        try:
            return self._tx(release)
        except sqlite3.IntegrityError:
            # A fresh copy is already waiting: this one is redundant.
            return self.ack(lease)

    def extend(self, lease: Lease, *, lease_s: float) -> bool:
        return self._tx(lambda cur: cur.execute(
            "UPDATE messages SET leased_until = ? WHERE id = ? AND lease_token = ? AND state = 'leased'",
            (time.time() + lease_s, lease.message_id, lease.token)).rowcount == 1)

    def pending(self, job_id: str | None = None) -> int:
        with self._lock:
            if job_id:
                row = self._db.execute("SELECT COUNT(*) FROM messages WHERE state != 'dead' AND job_id = ?", (job_id,)).fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM messages WHERE state != 'dead'").fetchone()
        return int(row[0])

    def dead_letters(self) -> list[tuple[TaskMessage, int, str | None]]:
        with self._lock:
            rows = self._db.execute("SELECT body, attempts, last_error FROM messages WHERE state = 'dead' ORDER BY id").fetchall()
        return [(TaskMessage.model_validate_json(body), attempts, error) for body, attempts, error in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
