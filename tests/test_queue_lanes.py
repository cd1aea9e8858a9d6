"""Issue 15.1 — fair lanes in the SQLite queue: round-robin by lane, oldest job first within a lane, old files migrate."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from core.queue import SqliteQueue
from core.queue.sqlite import LANE_NEXT
from schemas.events import TaskMessage

LEASE_S = 30.0


@pytest.fixture
def queue(tmp_path: Path) -> SqliteQueue:
    q = SqliteQueue(tmp_path / "q.sqlite3")
    yield q
    q.close()


def lease_all(queue: SqliteQueue) -> list[TaskMessage]:
    out = []
    while (lease := queue.get(lease_s=LEASE_S)) is not None:
        out.append(lease.message)
        queue.ack(lease)
    return out


def test_lanes_take_turns_and_a_new_lane_starts_at_the_front(queue):
    for n in range(3):
        queue.put(TaskMessage(job_id=f"a{n}", stage="s", lane="batch-a"))
    queue.put(TaskMessage(job_id="s0", stage="s"))  # a single job: the shared lane
    queue.put(TaskMessage(job_id="b0", stage="s", lane="batch-b"))
    order = [m.job_id for m in lease_all(queue)]
    # Newest lane first (it was never served), then round-robin; a drained lane drops out.
    assert order == ["b0", "s0", "a0", "a1", "a2"]


def test_a_single_put_behind_a_long_lane_is_next(queue):
    for n in range(500):
        queue.put(TaskMessage(job_id=f"item{n}", stage="s", lane="big"))
    first = queue.get(lease_s=LEASE_S)
    queue.ack(first)
    queue.put(TaskMessage(job_id="urgent", stage="s"))
    assert queue.get(lease_s=LEASE_S).message.job_id == "urgent"
    assert queue.get(lease_s=LEASE_S).message.job_id == "item1"


def test_within_a_lane_a_jobs_next_stage_goes_before_younger_jobs(queue):
    for n in range(3):
        queue.put(TaskMessage(job_id=f"j{n}", stage="prepare", lane="L"))
    lease = queue.get(lease_s=LEASE_S)
    assert lease.message.job_id == "j0"
    queue.put(TaskMessage(job_id="j0", stage="render", lane="L"))  # as a commit does: next stage, then ack
    queue.ack(lease)
    assert [(m.job_id, m.stage) for m in lease_all(queue)] == [("j0", "render"), ("j1", "prepare"), ("j2", "prepare")]


def test_delayed_messages_wait_without_blocking_their_lane(queue):
    queue.put(TaskMessage(job_id="later", stage="s", lane="L"), delay_s=60)
    queue.put(TaskMessage(job_id="now", stage="s", lane="L"))
    assert [m.job_id for m in lease_all(queue)] == ["now"]
    assert queue.lanes() == [("L", 1)]


def test_an_expired_lease_is_redelivered_before_any_lane(queue):
    queue.put(TaskMessage(job_id="crashed", stage="s", lane="L"))
    queue.get(lease_s=0.05)  # its worker dies with it
    queue.put(TaskMessage(job_id="fresh", stage="s"))
    time.sleep(0.1)
    assert queue.get(lease_s=LEASE_S).message.job_id == "crashed"


def test_the_lane_query_walks_its_index_without_sorting_the_backlog(queue):
    for n in range(1000):
        queue.put(TaskMessage(job_id=f"j{n}", stage="s", lane="L"))
    queue._db.execute("ANALYZE")  # with statistics the planner would prefer by_availability: INDEXED BY holds
    plan = " ".join(row[-1] for row in queue._db.execute(f"EXPLAIN QUERY PLAN {LANE_NEXT}", ("L", time.time())))
    assert "USING INDEX by_lane (lane=? AND state=?)" in plan and "TEMP B-TREE" not in plan, plan


def test_a_queue_file_from_before_lanes_opens_and_serves_its_messages(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe_key TEXT NOT NULL, job_id TEXT NOT NULL,
            body TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'ready', attempts INTEGER NOT NULL DEFAULT 0,
            available_at REAL NOT NULL, leased_until REAL, lease_token TEXT, last_error TEXT, created_at REAL NOT NULL);
    """)
    for n in range(2):
        db.execute("INSERT INTO messages(dedupe_key, job_id, body, available_at, created_at) VALUES (?,?,?,0,0)",
                   (f"old{n}:stage:s", f"old{n}", TaskMessage(job_id=f"old{n}", stage="s").model_dump_json()))
    db.commit()
    db.close()
    queue = SqliteQueue(path)
    queue.put(TaskMessage(job_id="new", stage="s", lane="L"))
    assert sorted(m.job_id for m in lease_all(queue)) == ["new", "old0", "old1"]
    assert queue.pending() == 0
    queue.close()
