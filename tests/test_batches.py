"""Issue 15.1 — batches: a batch file becomes one batch manifest and one job per item.

Real tiny renders in process (tests/batch_jobs.py), a real HTTP receiver for the webhooks, and the
embedded SQLite queue in its own lease order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from batch_jobs import TINY_SINGLE, Receiver, submit_batch, tiny_csv, wait_batch, work_all
from conftest import TEST_SECRET
from core.batch_expand import BatchExpander
from core.batch_store import batch_manifest_key, item_job_id
from core.batch_track import BatchTracker
from functions.batch_file import parse_batch_file
from pipeline_jobs import SimulatedKill, make_runner, submit
from schemas.batch import BatchStatus
from schemas.manifest import JobStatus
from triggers.reconciler import InboxScanner


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def receiver():
    server = Receiver()
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------- reading files
def test_csv_columns_map_to_fields_empty_cells_unset_and_lines():
    text = ('# defaults: {model: tiny, steps: 3}\n'
            '# webhook: {url: "https://example.com/b", item_events: true}\n'
            'prompt,seed,steps\n'
            'first,7,\n'
            '"a prompt\nover two lines",8,5\n'
            '\n'
            'third,x,\n')
    plan = parse_batch_file(text.encode(), "inbox/a.batch.csv")
    assert str(plan.webhook.url) == "https://example.com/b" and plan.webhook.item_events
    first, second, third = plan.entries
    assert (first.line, second.line, third.line) == (4, 5, 8)
    assert first.document["seed"] == 7 and first.document["steps"] == 3  # text → int; empty cell → the default
    assert second.document["prompt"] == "a prompt\nover two lines" and second.document["steps"] == 5
    assert first.document["webhook"]["events"] == ["job.succeeded", "job.failed", "job.cancelled"]
    assert third.document is None and third.error.code == "invalid_field_type"


def test_csv_dotted_columns_reach_nested_fields_and_merge_with_nested_defaults():
    text = ("# defaults: {kind: train, backend: wav2lip, video: uploads/a.mp4, wav2lip: {width: 0.25}}\n"
            "avatar,wav2lip.width,wav2lip.base_weights,webhook.url\n"
            "ann,0.5,,https://example.com/a\n"
            "bob,,w.pth,\n"
            "cat,2,,\n")
    ann, bob, cat = parse_batch_file(text.encode(), "inbox/t.batch.csv").entries
    assert ann.kind == "train" and ann.document["wav2lip"]["width"] == 0.5
    assert ann.document["webhook"]["url"] == "https://example.com/a"
    assert bob.document["wav2lip"] == {"width": 0.25, "base_weights": "w.pth"} and "webhook" not in bob.document
    assert (cat.line, cat.error.code) == (5, "invalid_field_value")


def test_yaml_items_carry_their_own_lines_and_merge_defaults():
    text = b"defaults:\n  model: tiny\n  steps: 4\nitems:\n  - prompt: a\n  - prompt: b\n    steps: 1\n  - prompt: c\n"
    a, b, c = parse_batch_file(text, "inbox/x.batch.yaml").entries
    assert (a.line, b.line, c.line) == (5, 6, 8)
    assert a.document["steps"] == 4 and b.error.code == "invalid_steps" and c.document["model"] == "tiny"


def test_jsonl_header_line_and_a_broken_line_fail_only_that_item():
    text = b'{"defaults": {"model": "tiny"}}\n{"prompt": "a"}\n{broken\n\n{"prompt": "b", "fps": 0}\n[1]\n'
    a, broken, b, listed = parse_batch_file(text, "inbox/x.batch.jsonl").entries
    assert a.line == 2 and a.document["model"] == "tiny"
    assert (broken.line, broken.error.code) == (3, "invalid_json")
    assert (b.line, b.error.code) == (5, "invalid_field_value")
    assert (listed.line, listed.error.code) == (6, "invalid_brief")


@pytest.mark.parametrize("name,text,code", [
    ("a.batch.yaml", "- prompt: a\n", "invalid_batch"),
    ("a.batch.yaml", "items: [{prompt: a}]\nextra: 1\n", "unknown_field"),
    ("a.batch.yaml", "items: []\n", "empty_batch"),
    ("a.batch.csv", "", "empty_batch"),
    ("a.batch.csv", "prompt,prompt\na,b\n", "invalid_csv"),
    ("a.batch.jsonl", '{"defaults": {}, "webhook": {"url": "not a url"}}\n{"prompt": "a"}\n', "invalid_field_type"),
])
def test_an_unreadable_batch_file_is_one_failed_batch_and_work_goes_on(tmp_path, name, text, code):
    runner = make_runner(tmp_path / "bucket")
    batch_id, created = submit_batch(runner, name, text)
    manifest = runner.batches.store.load(batch_id)
    assert created and manifest.status == BatchStatus.failed and manifest.error.code == code
    assert manifest.items == [] and list(runner.store.job_ids()) == []
    job_id = submit(runner, "after.yaml", TINY_SINGLE)  # the worker goes on
    work_all(runner)
    assert runner.store.load(job_id).status == JobStatus.succeeded


# ---------------------------------------------------------------------------------------------- a whole batch
def test_50_row_csv_with_three_bad_rows_and_one_signed_batch_completed(tmp_path, receiver):
    url = f"http://127.0.0.1:{receiver.server.server_port}/hook"
    bad = {10: "item 10,not-a-seed,4.5", 25: ",25,4.5", 40: "item 40,40,99"}
    runner = make_runner(tmp_path / "bucket", webhook_secret=TEST_SECRET, webhook_backoff_base_s=0.1)
    batch_id, created = submit_batch(runner, "spring.batch.csv", tiny_csv(50, bad=bad, webhook=url, item_events=True))
    assert created
    manifest = wait_batch(runner, batch_id, timeout=300)

    # 47 jobs succeed, 3 fail, each with its code and its row's line (two option lines and the header come first)
    assert manifest.status == BatchStatus.completed
    assert manifest.counts.model_dump() == {"queued": 0, "running": 0, "succeeded": 47, "failed": 3, "cancelled": 0}
    assert manifest.progress.fraction == 1.0 and manifest.progress.eta_s == 0.0
    failed = {i.line: i.error.code for i in manifest.items if i.status == JobStatus.failed}
    assert failed == {14: "invalid_field_type", 29: "missing_field", 44: "invalid_field_value"}
    jobs = {m.job_id: m for m in runner.store.all()}
    assert len(jobs) == 50
    for item in manifest.items:
        job = jobs[item.job_id]
        assert job.batch.batch_id == batch_id and job.batch.line == item.line and job.status == item.status
        if item.status == JobStatus.succeeded:
            assert item.outputs["video"] == job.outputs["video"]
            assert (runner.storage.root / job.outputs["video"]).stat().st_size > 0
        else:
            assert job.error.code == item.error.code

    # exactly one batch.completed arrived, and it verifies as the receiver would check it
    completed = receiver.of_type("batch.completed")
    assert len(completed) == 1
    headers, body = completed[0]
    payload = Webhook(TEST_SECRET).verify(body, headers)
    assert payload["data"]["batch_id"] == batch_id and payload["data"]["counts"]["failed"] == 3
    assert sorted(i["line"] for i in payload["data"]["not_succeeded"]) == [14, 29, 44]
    assert payload["data"]["manifest_key"] == batch_manifest_key(batch_id)
    assert [d.status for d in manifest.webhooks] == ["delivered"]
    # item events: the 47 jobs that ran each sent job.succeeded to the batch's endpoint, signed, with their line
    items = receiver.of_type("job.succeeded")
    assert len(items) == 47
    lines = {Webhook(TEST_SECRET).verify(b, h)["data"]["batch"]["line"] for h, b in items}
    assert lines == {i.line for i in manifest.items if i.status == JobStatus.succeeded}

    # a reconcile pass and another drop of the same file send nothing again
    runner.reconcile()
    assert submit_batch(runner, "spring.batch.csv", tiny_csv(50, bad=bad, webhook=url, item_events=True)) == (
        batch_id, False)
    work_all(runner)
    assert len(receiver.of_type("batch.completed")) == 1


def test_the_same_batch_twice_is_one_batch_from_every_intake(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    text = tiny_csv(4)
    first = submit_batch(runner, "twice.batch.csv", text, source="cli")
    again = submit_batch(runner, "twice.batch.csv", text, source="folder")
    InboxScanner(runner).scan()  # the reconciler's inbox scan finds the same file
    assert first[1] is True and again == (first[0], False)
    assert list(runner.batches.store.batch_ids()) == [first[0]]
    assert len(list(runner.store.job_ids())) == 4 and runner.queue.pending() == 4
    changed = submit_batch(runner, "twice.batch.csv", tiny_csv(5))  # other bytes under the name: another batch
    assert changed[1] is True and changed[0] != first[0]


def test_item_job_ids_are_stable_and_every_message_of_an_item_travels_in_its_batch_lane(tmp_path, receiver):
    url = f"http://127.0.0.1:{receiver.server.server_port}/hook"
    runner = make_runner(tmp_path / "bucket", webhook_secret=TEST_SECRET)
    batch_id, _ = submit_batch(runner, "lanes.batch.csv", tiny_csv(3, webhook=url, item_events=True))
    assert [i.job_id for i in runner.batches.store.load(batch_id).items] == [item_job_id(batch_id, n) for n in range(3)]
    seen = []
    work_all(runner, on_lease=lambda lease: seen.append(lease.message))
    actions = {(m.action, m.stage) for m in seen}
    assert {("stage", "prepare"), ("stage", "render"), ("webhook", None), ("batch_webhook", None)} <= actions
    assert all(m.lane == batch_id for m in seen)


def test_the_reconciler_requeues_a_lost_item_message_in_its_lane(tmp_path):
    runner = make_runner(tmp_path / "bucket", lease_s=0.4)
    batch_id, _ = submit_batch(runner, "lost.batch.csv", tiny_csv(2))
    while (lease := runner.queue.get(lease_s=60)) is not None:  # every first message is lost
        runner.queue.ack(lease)
    import time
    time.sleep(0.2)
    requeued = runner.reconcile()
    assert len([r for r in requeued if r.endswith(":prepare")]) == 2
    assert runner.queue.lanes() == [(batch_id, 2)]
    assert wait_batch(runner, batch_id).counts.succeeded == 2


# ---------------------------------------------------------------------------------------------- fairness
def test_a_single_brief_dropped_after_a_1000_item_batch_starts_next(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    batch_id, _ = submit_batch(runner, "big.batch.csv", tiny_csv(1000))
    assert runner.queue.pending() == 1000
    order: list[str] = []
    work_all(runner, on_lease=lambda lease: order.append(lease.message.job_id), limit=3)  # the batch is under way
    single = submit(runner, "urgent.yaml", TINY_SINGLE)
    work_all(runner, on_lease=lambda lease: order.append(f"{lease.message.job_id}:{lease.message.stage}"), limit=4)
    # Leases after the drop: the single's prepare first (within one stage of the batch's current work), then
    # one batch message, then the single's render: it never waits behind the other 997 items.
    assert order[3] == f"{single}:prepare"
    assert order[5] == f"{single}:render"
    batch_jobs = {item_job_id(batch_id, n) for n in range(1000)}
    assert {o.split(":")[0] for o in order[:3] + [order[4], order[6]]} <= batch_jobs
    assert runner.store.load(single).status == JobStatus.succeeded
    assert runner.batches.store.load(batch_id).counts.queued >= 990


def test_two_batches_share_the_workers_turn_by_turn(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    a, _ = submit_batch(runner, "a.batch.csv", tiny_csv(3))
    b, _ = submit_batch(runner, "b.batch.csv", tiny_csv(3))
    lanes: list[str] = []
    work_all(runner, on_lease=lambda lease: lanes.append(lease.message.lane), limit=6)
    assert lanes == [b, a, b, a, b, a]  # the newer lane starts at the front, then they alternate


# ---------------------------------------------------------------------------------------------- cancel, crashes
def test_cancel_a_batch_cancels_what_has_not_ended_and_completes_it_once(tmp_path, receiver):
    url = f"http://127.0.0.1:{receiver.server.server_port}/hook"
    runner = make_runner(tmp_path / "bucket", webhook_secret=TEST_SECRET)
    batch_id, _ = submit_batch(runner, "stop.batch.csv", tiny_csv(6, webhook=url))
    while runner.batches.store.load(batch_id).counts.succeeded < 2:
        runner.work_once()
    manifest = runner.cancel_batch(batch_id)
    assert manifest.cancel_requested
    manifest = wait_batch(runner, batch_id)
    assert manifest.status == BatchStatus.completed
    assert manifest.counts.succeeded >= 2 and manifest.counts.cancelled >= 1
    assert manifest.counts.succeeded + manifest.counts.cancelled == 6
    hits = receiver.of_type("batch.completed")
    assert len(hits) == 1 and json.loads(hits[0][1])["data"]["counts"]["cancelled"] == manifest.counts.cancelled


def test_a_crash_in_the_middle_of_expansion_loses_and_duplicates_no_item(tmp_path, monkeypatch):
    bucket = tmp_path / "bucket"
    runner = make_runner(bucket, lease_s=0.4)
    original, calls = BatchExpander._item_job, []

    def dies_at_the_fourth(self, batch, entry):
        calls.append(entry.index)
        if len(calls) == 4:
            raise SimulatedKill("killed while expanding")
        return original(self, batch, entry)

    monkeypatch.setattr(BatchExpander, "_item_job", dies_at_the_fourth)
    with pytest.raises(SimulatedKill):
        submit_batch(runner, "crash.batch.csv", tiny_csv(8, bad={5: ",5,4.5"}))
    monkeypatch.setattr(BatchExpander, "_item_job", original)
    (batch_id,) = runner.batches.store.batch_ids()
    assert not runner.batches.store.load(batch_id).expanded and len(list(runner.store.job_ids())) == 3
    restarted = make_runner(bucket, lease_s=0.4)  # a new worker: its reconciler finishes the expansion
    import time
    time.sleep(0.2)
    assert f"{batch_id}:expand" in restarted.reconcile()
    manifest = wait_batch(restarted, batch_id)
    assert sorted(m.job_id for m in restarted.store.all()) == sorted(item_job_id(batch_id, n) for n in range(8))
    assert manifest.counts.succeeded == 7 and manifest.counts.failed == 1


def test_a_crash_between_an_items_end_and_its_batch_is_repaired_by_the_reconciler(tmp_path, monkeypatch, receiver):
    url = f"http://127.0.0.1:{receiver.server.server_port}/hook"
    runner = make_runner(tmp_path / "bucket", webhook_secret=TEST_SECRET)
    batch_id, _ = submit_batch(runner, "gap.batch.csv", tiny_csv(2, webhook=url))
    original = BatchTracker.record

    def dies_on_the_last_end(self, job, status):
        if status == JobStatus.succeeded and self.store.load(job.batch.batch_id).counts.succeeded == 1:
            raise SimulatedKill("killed after the job committed, before the batch heard of it")
        return original(self, job, status)

    monkeypatch.setattr(BatchTracker, "record", dies_on_the_last_end)
    with pytest.raises(SimulatedKill):
        work_all(runner)
    monkeypatch.setattr(BatchTracker, "record", original)
    assert runner.batches.store.load(batch_id).status == BatchStatus.running
    assert all(m.status == JobStatus.succeeded for m in runner.store.all())
    runner.reconcile()
    manifest = wait_batch(runner, batch_id)
    assert manifest.status == BatchStatus.completed and manifest.counts.succeeded == 2
    assert len(receiver.of_type("batch.completed")) == 1


def test_batch_manifest_and_items_are_written_outside_inbox(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    batch_id, _ = submit_batch(runner, "where.batch.yaml", "defaults: {model: tiny}\nitems:\n  - prompt: a\n")
    keys = runner.storage.list_keys("")
    assert f"batches/{batch_id}/manifest.json" in keys
    assert [k for k in keys if k.startswith("inbox/")] == ["inbox/where.batch.yaml"]
    job = runner.store.load(item_job_id(batch_id, 0))
    assert job.input.key == f"batches/{batch_id}/items/00000.json"
    assert str(Path(runner.storage.root)) not in (runner.storage.root / batch_manifest_key(batch_id)).read_text()


def test_progress_and_eta_come_from_the_items_that_ran():
    from datetime import datetime, timedelta, timezone

    from core.batch_track import summarise
    from schemas.batch import BatchItem, BatchManifest
    from schemas.errors import ErrorInfo
    from schemas.manifest import InputRecord

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    items = [BatchItem(index=0, line=2, job_id="a", status=JobStatus.succeeded, started_at=start),
             BatchItem(index=1, line=3, job_id="b", status=JobStatus.failed, started_at=start),
             BatchItem(index=2, line=4, job_id="c", status=JobStatus.failed,
                       error=ErrorInfo(code="missing_field", message="prompt")),  # invalid: never ran
             BatchItem(index=3, line=5, job_id="d", status=JobStatus.running, started_at=start),
             BatchItem(index=4, line=6, job_id="e")]
    manifest = BatchManifest(batch_id="x-batch-0", name="x", input=InputRecord(key="inbox/x.batch.csv"),
                             expanded=True, status=BatchStatus.running, items=items, started_at=start)
    assert summarise(manifest, now=start + timedelta(seconds=10)) is False
    assert manifest.counts.model_dump() == {"queued": 1, "running": 1, "succeeded": 1, "failed": 2, "cancelled": 0}
    assert manifest.progress.fraction == 0.6 and manifest.progress.items_per_s == 0.2  # 2 ran in 10 s
    assert manifest.progress.eta_s == 10.0  # 2 left at 0.2 a second
    for item in items[3:]:
        item.status = JobStatus.succeeded
    assert summarise(manifest, now=start + timedelta(seconds=20)) is True  # this call completed it
    assert manifest.status == BatchStatus.completed and manifest.progress.eta_s == 0.0
    assert summarise(manifest, now=start + timedelta(seconds=21)) is False  # completes once


def test_a_batch_file_deleted_during_an_interrupted_expansion_ends_with_what_it_has(tmp_path, monkeypatch):
    runner = make_runner(tmp_path / "bucket", lease_s=0.4)
    original, calls = BatchExpander._item_job, []

    def dies_at_the_third(self, batch, entry):
        calls.append(entry.index)
        if len(calls) == 3:
            raise SimulatedKill("killed while expanding")
        return original(self, batch, entry)

    monkeypatch.setattr(BatchExpander, "_item_job", dies_at_the_third)
    with pytest.raises(SimulatedKill):
        submit_batch(runner, "gone.batch.csv", tiny_csv(5))
    monkeypatch.setattr(BatchExpander, "_item_job", original)
    runner.storage.delete("inbox/gone.batch.csv")
    import time
    time.sleep(0.2)
    (batch_id,) = runner.batches.store.batch_ids()
    assert f"{batch_id}:expand" in runner.reconcile()
    manifest = wait_batch(runner, batch_id)
    assert manifest.counts.succeeded == 2 and manifest.counts.failed == 3
    assert {i.error.code for i in manifest.items if i.error} == {"batch_changed"}


def test_a_batch_comes_in_through_s3_notifications_and_the_folder_watcher_as_one_batch(tmp_path):
    import threading
    import time
    from urllib.parse import quote_plus

    from notification_samples import s3_notification, s3_record
    from schemas.events import StorageEvent
    from triggers.intake import handle_payload
    from triggers.watcher import watch_inbox

    runner = make_runner(tmp_path / "media-in")  # the folder's name is the bucket's name in notifications
    assert runner.storage.name == "media-in"
    key = "inbox/spring sale.batch.csv"
    runner.storage.put_bytes(key, tiny_csv(3).encode())
    result = handle_payload(runner, s3_notification(s3_record(quote_plus(key, safe="/"), bucket="media-in")))
    [outcome] = result.outcomes
    assert outcome.status == "submitted" and outcome.created
    batch_id = outcome.job_id  # for a batch file, submit answers with the batch's id

    stop = threading.Event()
    seen: list[tuple[str, bool]] = []
    watcher = threading.Thread(target=watch_inbox, daemon=True, kwargs=dict(
        storage=runner.storage, stop=stop, quiet_s=0.2,
        on_complete=lambda k: seen.append(runner.submit(StorageEvent(bucket=runner.storage.name, key=k,
                                                                     source="folder")))))
    watcher.start()
    try:
        time.sleep(0.5)
        (runner.storage.root / "inbox" / "other.batch.jsonl").write_text('{"prompt": "a", "model": "tiny"}\n')
        (runner.storage.root / "inbox" / "spring sale.batch.csv").touch()  # the same bytes announced again
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert (batch_id, False) in seen
    assert sorted(runner.batches.store.batch_ids()) == sorted({batch_id, *(b for b, _ in seen)})
    assert len(list(runner.batches.store.batch_ids())) == 2
    assert runner.batches.store.load(batch_id).input.source == "s3"
