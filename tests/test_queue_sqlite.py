"""SqliteQueue: leases, dedupe, retries, dead letters, durability, and competing consumers."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from core.queue import SqliteQueue
from schemas.events import TaskMessage

LEASE = 0.2  # seconds; short so expiry tests stay fast


def msg(job: str = "job-1", stage: str | None = "render", **kw) -> TaskMessage:
    return TaskMessage(job_id=job, stage=stage, **kw)


@pytest.fixture
def queue(tmp_path: Path):
    q = SqliteQueue(tmp_path / "q" / "queue.db", max_attempts=3)
    yield q
    q.close()


def test_put_get_ack(queue: SqliteQueue) -> None:
    assert queue.get(lease_s=5) is None
    assert queue.put(msg()) is True
    assert queue.pending() == 1
    lease = queue.get(lease_s=5)
    assert lease is not None
    assert lease.message == msg()
    assert lease.attempt == 1
    assert queue.get(lease_s=5) is None  # leased: invisible to others
    assert queue.pending() == 1  # in flight still counts
    assert queue.ack(lease) is True
    assert queue.pending() == 0
    assert queue.ack(lease) is False  # already gone
    assert queue.get(lease_s=5) is None


def test_fifo_order(queue: SqliteQueue) -> None:
    for i in range(5):
        queue.put(msg(f"job-{i}"))
    got = []
    while (lease := queue.get(lease_s=5)) is not None:
        got.append(lease.message.job_id)
        queue.ack(lease)
    assert got == [f"job-{i}" for i in range(5)]


def test_identical_waiting_messages_are_deduplicated(queue: SqliteQueue) -> None:
    assert queue.put(msg()) is True
    assert queue.put(msg()) is False
    assert queue.put(msg(stage="prepare")) is True  # different stage: different message
    assert queue.put(msg(job="job-2")) is True
    assert queue.put(TaskMessage(job_id="job-1", action="webhook", webhook_id="msg_1")) is True
    assert queue.pending() == 4
    lease = queue.get(lease_s=5, job_id="job-1")
    assert lease.message == msg()
    # once leased, the message no longer waits: a fresh copy may be queued
    assert queue.put(msg()) is True
    assert queue.put(msg()) is False


def test_expired_lease_redelivers_with_attempt_incremented(queue: SqliteQueue) -> None:
    queue.put(msg())
    first = queue.get(lease_s=LEASE)
    assert first.attempt == 1
    assert queue.get(lease_s=LEASE) is None
    time.sleep(LEASE + 0.05)
    second = queue.get(lease_s=5)
    assert second is not None
    assert second.message_id == first.message_id
    assert second.attempt == 2
    assert second.token != first.token
    # the first holder's token is stale now
    assert queue.ack(first) is False
    assert queue.nack(first) is False
    assert queue.extend(first, lease_s=10) is False
    assert queue.pending() == 1
    assert queue.ack(second) is True
    assert queue.pending() == 0


def test_nack_with_delay_hides_message_until_delay_passes(queue: SqliteQueue) -> None:
    queue.put(msg())
    lease = queue.get(lease_s=5)
    assert queue.nack(lease, delay_s=0.3, error="boom") is True
    assert queue.get(lease_s=5) is None
    time.sleep(0.35)
    again = queue.get(lease_s=5)
    assert again is not None
    assert again.attempt == 2
    assert queue.ack(again) is True


def test_nack_without_delay_is_immediately_visible(queue: SqliteQueue) -> None:
    queue.put(msg())
    lease = queue.get(lease_s=5)
    assert queue.nack(lease) is True
    assert queue.get(lease_s=5).attempt == 2


def test_nack_when_a_fresh_copy_waits_drops_the_redundant_one(queue: SqliteQueue) -> None:
    queue.put(msg())
    lease = queue.get(lease_s=5)
    assert queue.put(msg()) is True  # a fresh copy while the first is in flight
    assert queue.nack(lease) is True
    assert queue.pending() == 1
    fresh = queue.get(lease_s=5)
    assert fresh.message_id != lease.message_id
    assert fresh.attempt == 1


def test_extend_keeps_message_hidden(queue: SqliteQueue) -> None:
    queue.put(msg())
    lease = queue.get(lease_s=LEASE)
    assert queue.extend(lease, lease_s=5) is True
    time.sleep(LEASE + 0.1)
    assert queue.get(lease_s=5) is None  # would have been redelivered without extend
    assert queue.ack(lease) is True


def test_dead_letter_after_max_attempts(queue: SqliteQueue) -> None:
    queue.put(msg())
    queue.put(msg(job="healthy"), delay_s=0.0)
    for attempt in range(1, 4):  # max_attempts = 3
        lease = queue.get(lease_s=5, job_id="job-1")
        assert lease is not None and lease.attempt == attempt
        assert queue.nack(lease, error=f"failure {attempt}") is True
    assert queue.get(lease_s=5, job_id="job-1") is None
    dead = queue.dead_letters()
    assert len(dead) == 1
    message, attempts, error = dead[0]
    assert message == msg()
    assert attempts == 3
    assert error == "failure 3"
    assert queue.pending() == 1  # only the healthy one
    assert queue.pending("job-1") == 0
    healthy = queue.get(lease_s=5)
    assert healthy.message.job_id == "healthy"
    # the poison message does not block putting a fresh copy
    assert queue.put(msg()) is True


def test_dead_letter_after_expired_leases(queue: SqliteQueue) -> None:
    queue.put(msg())
    for attempt in range(1, 4):
        lease = queue.get(lease_s=0.05)
        assert lease.attempt == attempt
        time.sleep(0.07)  # never acked: the lease runs out
    assert queue.get(lease_s=5) is None
    assert [(m.job_id, a) for m, a, _ in queue.dead_letters()] == [("job-1", 3)]


def test_delayed_put(queue: SqliteQueue) -> None:
    queue.put(msg(), delay_s=0.25)
    assert queue.get(lease_s=5) is None
    assert queue.pending() == 1
    time.sleep(0.3)
    assert queue.get(lease_s=5) is not None


def test_get_filtered_by_job_id(queue: SqliteQueue) -> None:
    queue.put(msg("job-a", "prepare"))
    queue.put(msg("job-b", "prepare"))
    queue.put(msg("job-b", "render"))
    lease = queue.get(lease_s=5, job_id="job-b")
    assert lease.message == msg("job-b", "prepare")
    lease2 = queue.get(lease_s=5, job_id="job-b")
    assert lease2.message == msg("job-b", "render")
    assert queue.get(lease_s=5, job_id="job-b") is None
    assert queue.get(lease_s=5, job_id="job-c") is None
    assert queue.pending("job-a") == 1
    assert queue.pending("job-b") == 2
    assert queue.get(lease_s=5).message.job_id == "job-a"


def test_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q1 = SqliteQueue(path)
    q1.put(msg("durable", "render"))
    q1.put(msg("delayed", "render"), delay_s=0.2)
    leased = q1.get(lease_s=LEASE, job_id="durable")
    q1.close()

    q2 = SqliteQueue(path)
    try:
        assert q2.pending() == 2
        assert q2.get(lease_s=5, job_id="durable") is None  # still leased across the restart
        time.sleep(LEASE + 0.05)
        lease = q2.get(lease_s=5, job_id="durable")
        assert lease is not None
        assert lease.message == msg("durable", "render")
        assert lease.attempt == 2
        assert q2.ack(leased) is False
        assert q2.ack(lease) is True
        assert q2.get(lease_s=5).message.job_id == "delayed"
    finally:
        q2.close()


def test_put_then_reopen_then_get(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q1 = SqliteQueue(path)
    q1.put(msg("persisted", "prepare"))
    q1.close()
    q2 = SqliteQueue(path)
    try:
        lease = q2.get(lease_s=5)
        assert lease is not None and lease.message == msg("persisted", "prepare")
        assert lease.attempt == 1
    finally:
        q2.close()


def test_threads_sharing_one_queue_never_double_lease(queue: SqliteQueue) -> None:
    for i in range(100):
        queue.put(msg(f"job-{i}"))
    seen: list[int] = []
    acked: list[bool] = []
    lock = threading.Lock()

    def consume() -> None:
        while (lease := queue.get(lease_s=30)) is not None:
            ok = queue.ack(lease)
            with lock:
                seen.append(lease.message_id)
                acked.append(ok)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 100
    assert len(set(seen)) == 100
    assert all(acked)


def _consume_all(path: str, ready, start, results) -> None:
    q = SqliteQueue(path)
    ready.put(True)
    start.wait()
    ids = []
    while (lease := q.get(lease_s=60)) is not None:
        ids.append((lease.message_id, lease.message.job_id))
        time.sleep(0.001)  # a little "work" so that the consumers interleave
        q.ack(lease)
    q.close()
    results.put(ids)


def test_competing_processes_never_lease_the_same_message(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = SqliteQueue(path)
    total = 200
    for i in range(total):
        assert q.put(msg(f"job-{i}"))
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_consume_all, args=(str(path), ready, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    start.set()
    collected = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    all_ids = [mid for ids in collected for mid, _ in ids]
    assert len(all_ids) == total
    assert len(set(all_ids)) == total
    assert {job for ids in collected for _, job in ids} == {f"job-{i}" for i in range(total)}
    assert all(ids for ids in collected), "both consumers should have competed for messages"
    assert q.pending() == 0
    q.close()
