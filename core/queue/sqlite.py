"""A durable work queue in one SQLite file (WAL mode), safe across threads and processes.

SQLite's write lock serializes `get`, so two workers never lease the same message; the
file survives restarts, and an expired lease makes a message visible again.

Lanes (fairness): every message travels in a lane, `TaskMessage.lane` (a batch's id), or the shared
`single` lane for jobs that are in no batch. `get` serves lanes round-robin: the lane served longest
ago that has a ready message goes first, and within a lane the message of the oldest job (a job's
later stages inherit its first message's `rank`, so a batch finishes items in order, a few at a time,
instead of running every item's first stage before any second one). So a brief dropped
after a 1,000-item batch is leased next, not after the batch, and two batches share the workers
evenly. Singles share one lane rather than one lane each, so that a stream of single briefs cannot
starve a batch (a lane per job would give a batch one turn in N+1). A new lane starts at the front.
Cost: one index probe per lane with nothing ready (lanes are batches, not jobs: few), then O(log n).
An expired lease is re-leased before any lane: it is work that already started once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from core.queue.base import DEFAULT_LEASE_ATTEMPTS, Lease, WorkQueue
from schemas.batch_ref import SINGLE_LANE
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
CREATE TABLE IF NOT EXISTS lanes (
    lane    TEXT PRIMARY KEY,
    served  INTEGER NOT NULL    -- round-robin order: the lowest is served next
);
CREATE INDEX IF NOT EXISTS lanes_by_turn ON lanes(served, lane);
"""
# Added after the first release: files written before them get the columns (old rows join the single lane).
_ADDED_COLUMNS = {"lane": f"ALTER TABLE messages ADD COLUMN lane TEXT NOT NULL DEFAULT '{SINGLE_LANE}'",
                  "rank": "ALTER TABLE messages ADD COLUMN rank INTEGER"}
_LANE_INDEX = "CREATE INDEX IF NOT EXISTS by_lane ON messages(lane, state, rank, id)"


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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        for column, statement in _ADDED_COLUMNS.items():
            if column not in columns:
                try:
                    self._db.execute(statement)
                except sqlite3.OperationalError:  # another process opening the same old file added it first
                    pass
        self._db.execute(_LANE_INDEX)

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
        lane = message.lane or SINGLE_LANE

        def insert(cur: sqlite3.Cursor) -> bool:
            # The job's rank: that of a message it still has (the one being committed), else this message's id.
            cur.execute(
                "INSERT OR IGNORE INTO messages(dedupe_key, job_id, body, available_at, created_at, lane, rank) "
                "VALUES (?,?,?,?,?,?,(SELECT MIN(rank) FROM messages WHERE job_id = ?))",
                (message.dedupe_key(), message.job_id, message.model_dump_json(), now + delay_s, now, lane,
                 message.job_id),
            )
            inserted = cur.rowcount == 1
            if inserted:
                cur.execute("UPDATE messages SET rank = id WHERE id = last_insert_rowid() AND rank IS NULL")
                _join_lane(cur, lane)
            return inserted

        return self._tx(insert)

    def get(self, *, lease_s: float, job_id: str | None = None) -> Lease | None:
        def lease(cur: sqlite3.Cursor) -> Lease | None:
            now = time.time()
            while True:
                found = _next_for_job(cur, now, job_id) if job_id else _next_fair(cur, now)
                if found is None:
                    return None
                message_id, body, attempts = found
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

    def lanes(self) -> list[tuple[str, int]]:
        """(lane, messages not dead) in the order `get` will serve them next."""
        with self._lock:
            rows = self._db.execute(
                """SELECT l.lane, (SELECT COUNT(*) FROM messages m WHERE m.lane = l.lane AND m.state != 'dead')
                   FROM lanes l ORDER BY l.served, l.lane""").fetchall()
        return [(lane, int(count)) for lane, count in rows]

    def dead_letters(self) -> list[tuple[TaskMessage, int, str | None]]:
        with self._lock:
            rows = self._db.execute("SELECT body, attempts, last_error FROM messages WHERE state = 'dead' ORDER BY id").fetchall()
        return [(TaskMessage.model_validate_json(body), attempts, error) for body, attempts, error in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------- choosing
# The next message of one lane. INDEXED BY: without it SQLite may pick `by_availability` (every ready message
# qualifies) and sort the whole backlog for the ORDER BY; this index walks the lane in order and stops at one.
LANE_NEXT = """SELECT id, body, attempts FROM messages INDEXED BY by_lane
               WHERE lane = ? AND state = 'ready' AND available_at <= ? ORDER BY rank, id LIMIT 1"""
def _join_lane(cur: sqlite3.Cursor, lane: str) -> None:
    """A lane that is not waiting yet joins at the front: it has not been served at all."""
    cur.execute("INSERT OR IGNORE INTO lanes(lane, served) VALUES (?, COALESCE((SELECT MIN(served) FROM lanes), 0) - 1)",
                (lane,))


def _served(cur: sqlite3.Cursor, lane: str) -> None:
    """The lane goes to the back of the round."""
    _join_lane(cur, lane)
    cur.execute("UPDATE lanes SET served = COALESCE((SELECT MAX(served) FROM lanes), 0) + 1 WHERE lane = ?", (lane,))


def _next_for_job(cur: sqlite3.Cursor, now: float, job_id: str) -> tuple[int, str, int] | None:
    # Two index range scans (ready by availability, leased by expiry) instead of one OR that
    # SQLite would answer by sorting every waiting message: leasing stays O(log n) in the backlog.
    candidates = [cur.execute(
        f"""SELECT {order}, id, body, attempts FROM messages
            WHERE state = '{state}' AND {order} <= ? AND job_id = ?
            ORDER BY {order}, id LIMIT 1""", (now, job_id)).fetchone()
        for state, order in (("ready", "available_at"), ("leased", "leased_until"))]
    found = [c for c in candidates if c is not None]
    if not found:
        return None
    _, message_id, body, attempts = min(found)
    return message_id, body, attempts


def _next_fair(cur: sqlite3.Cursor, now: float) -> tuple[int, str, int] | None:
    expired = cur.execute(
        """SELECT id, body, attempts FROM messages WHERE state = 'leased' AND leased_until <= ?
           ORDER BY leased_until, id LIMIT 1""", (now,)).fetchone()
    if expired is not None:
        return expired
    for (lane,) in cur.execute("SELECT lane FROM lanes ORDER BY served, lane").fetchall():
        row = cur.execute(LANE_NEXT, (lane, now)).fetchone()
        if row is not None:
            _served(cur, lane)
            return row
        if cur.execute("SELECT 1 FROM messages WHERE lane = ? LIMIT 1", (lane,)).fetchone() is None:
            cur.execute("DELETE FROM lanes WHERE lane = ?", (lane,))  # drained: it rejoins at the front
    # Rows no lane lists (written by an older version, or inserted in bulk): plain FIFO, and their lane joins.
    row = cur.execute(
        """SELECT id, body, attempts, lane FROM messages WHERE state = 'ready' AND available_at <= ?
           ORDER BY available_at, id LIMIT 1""", (now,)).fetchone()
    if row is None:
        return None
    _served(cur, row[3])
    return row[0], row[1], row[2]
