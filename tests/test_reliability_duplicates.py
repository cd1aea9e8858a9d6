"""Issue 7.2 — duplicates: 1,000 events for 100 inputs, shuffled and duplicated, from several intakes at once.

Intakes run as threads, each with its own `Runner` (its own SQLite connection, as separate
processes would have) on one bucket:

- `folder`: `runner.submit(StorageEvent(source="folder"))`, what the folder watcher does;
- `cli`: what `videostudio submit` does: copy the same bytes into inbox/ again, then submit;
- `http`: `POST /briefs?name=…` through the FastAPI app (TestClient), same bytes and name;
- `events`: `POST /events` with S3 event notifications (URL-encoded keys, batches of 1–3
  records, sometimes the same record twice in one batch), as S3, MinIO or Ceph RGW send them;
- `reconciler`: `InboxScanner.scan()` over the whole inbox, in a loop, on fresh scanners.

Three worker threads (each its own `Runner`) and a reconcile loop run meanwhile, on a no-op
pipeline that counts each stage invocation. Result: exactly 100 jobs, each stage run exactly
once, every job succeeded, the queue empty and nothing dead-lettered.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient

from conftest import TINY_BRIEF
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import Pipeline, StageContext, StageResult
from core.storage import LocalStorage
from reliability import full, record
from schemas.events import StorageEvent
from triggers.api import create_app
from triggers.reconciler import InboxScanner
from triggers.worker import work_until

INPUTS = 100
EVENTS = full(1000, 1000)
REPEATS = full(1, 5)
TOKEN = "dup-token-0123456789"
WORKERS = 3


def _runner(bucket: Path, pipeline: Pipeline) -> Runner:
    storage = LocalStorage(bucket)
    settings = Settings(bucket=str(bucket), lease_s=30.0, api_token=TOKEN, progress_interval_s=0.0,
                        reconcile_interval_s=0.2)
    return Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3", max_attempts=10), pipeline, settings)


def _one_round(tmp_path: Path, seed: int) -> dict:
    bucket = tmp_path / f"bucket-{seed}"
    calls: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def counted(ctx: StageContext) -> StageResult:
        with lock:
            calls[(ctx.job_id, ctx.stage)] += 1
        key = ctx.put_output_bytes("out.txt", f"{ctx.stage} of {ctx.job_id}".encode())
        return StageResult(outputs={"out": key})

    pipeline = Pipeline(routes={"render": ["prepare", "render"]}, stages={"prepare": counted, "render": counted},
                        classify=lambda storage, key: "render")
    bodies = {f"in{i:03d}": TINY_BRIEF.format(steps=2, seed=i).encode() for i in range(INPUTS)}
    uploads = tmp_path / f"uploads-{seed}"
    uploads.mkdir()
    setup = _runner(bucket, pipeline)
    for name, body in bodies.items():  # the uploader put every input in place; events announce them
        setup.storage.put_bytes(f"inbox/{name}.yaml", body)
        (uploads / f"{name}.yaml").write_bytes(body)

    rng = random.Random(seed)
    intakes = ["folder", "cli", "http", "events"]
    events = [(intakes[n % len(intakes)], f"in{n % INPUTS:03d}") for n in range(EVENTS)]
    rng.shuffle(events)
    per_intake: dict[str, list[str]] = {name: [] for name in intakes}
    for intake, name in events:
        per_intake[intake].append(name)

    created: Counter[str] = Counter()  # job id → how many intake calls said they created it
    outcomes: Counter[str] = Counter()
    errors: list[str] = []

    def note(job_id: str, was_created: bool, intake: str) -> None:
        with lock:
            created[job_id] += int(was_created)
            outcomes[f"{intake}:{'created' if was_created else 'known'}"] += 1

    def folder(names: list[str]) -> None:
        runner = _runner(bucket, pipeline)
        for name in names:
            job_id, was_created = runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}.yaml",
                                                             source="folder"))
            note(job_id, was_created, "folder")

    def cli(names: list[str]) -> None:
        runner = _runner(bucket, pipeline)
        for name in names:
            info = runner.storage.put_file(f"inbox/{name}.yaml", uploads / f"{name}.yaml")
            job_id, was_created = runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}.yaml",
                                                             size=info.size, etag=info.etag, source="cli"))
            note(job_id, was_created, "cli")

    def http(names: list[str]) -> None:
        runner = _runner(bucket, pipeline)
        with TestClient(create_app(runner.settings, runner=runner)) as client:
            for name in names:
                response = client.post("/briefs", content=bodies[name], params={"name": name},
                                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"})
                if response.status_code not in (200, 201):
                    errors.append(f"http {name}: {response.status_code} {response.text}")
                    continue
                note(response.json()["job_id"], response.status_code == 201, "http")

    def events_intake(names: list[str]) -> None:
        runner = _runner(bucket, pipeline)
        local = random.Random(seed + 1)
        with TestClient(create_app(runner.settings, runner=runner)) as client:
            position = 0
            while position < len(names):
                batch = names[position:position + local.randint(1, 3)]
                position += len(batch)
                if local.random() < 0.2:
                    batch = batch + batch[:1]  # the same record twice in one notification
                records = [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                            "eventTime": "2026-11-25T00:00:00.000Z",
                            "s3": {"bucket": {"name": runner.storage.name},
                                   "object": {"key": f"inbox/{name}.yaml", "size": len(bodies[name])}}}
                           for name in batch]
                response = client.post("/events", json={"Records": records},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
                if response.status_code != 200:
                    errors.append(f"events {batch}: {response.status_code} {response.text}")
                    continue
                summary = response.json()
                if summary.get("failed"):
                    errors.append(f"events {batch}: {summary['failed']}")
                for item in summary["submitted"]:
                    note(item["job_id"], item["created"], "events")
                with lock:
                    outcomes["events:ignored_in_batch"] += len(summary["ignored"])

    stop_scanning = threading.Event()
    scans = [0]

    def reconciler() -> None:
        runner = _runner(bucket, pipeline)
        while not stop_scanning.is_set():
            for job_id in InboxScanner(runner).scan():  # a fresh scanner knows nothing: it announces every input
                note(job_id, True, "reconciler")
            runner.reconcile()
            scans[0] += 1

    def guarded(fn, *args):
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # a failed intake fails the test, with its reason
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
        return threading.Thread(target=run, name=fn.__name__)

    stop_workers = threading.Event()
    workers = [threading.Thread(target=work_until, args=(_runner(bucket, pipeline), stop_workers), name=f"worker-{n}")
               for n in range(WORKERS)]
    threads = [guarded(folder, per_intake["folder"]), guarded(cli, per_intake["cli"]),
               guarded(http, per_intake["http"]), guarded(events_intake, per_intake["events"]), guarded(reconciler)]
    clock = time.monotonic()
    for thread in workers + threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join(timeout=300)
    intake_s = time.monotonic() - clock
    stop_scanning.set()
    threads[-1].join(timeout=60)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manifests = list(setup.store.all())
        if len(manifests) >= INPUTS and all(m.status.value == "succeeded" for m in manifests) \
                and setup.queue.pending() == 0:
            break
        time.sleep(0.1)
    stop_workers.set()
    for thread in workers:
        thread.join(timeout=30)
    total_s = time.monotonic() - clock

    assert not errors, errors[:5]
    manifests = list(setup.store.all())
    assert len(manifests) == INPUTS, len(manifests)
    assert sorted(m.input.key for m in manifests) == sorted(f"inbox/{name}.yaml" for name in bodies)
    assert all(m.status.value == "succeeded" for m in manifests), Counter(m.status.value for m in manifests)
    for manifest in manifests:
        for stage in ("prepare", "render"):
            assert calls[(manifest.job_id, stage)] == 1, (manifest.job_id, stage, calls[(manifest.job_id, stage)])
            assert manifest.stages[stage].attempts == 1
    assert sum(calls.values()) == 2 * INPUTS
    assert set(created) == {m.job_id for m in manifests} and all(n == 1 for n in created.values()), created
    assert setup.queue.pending() == 0 and not setup.queue.dead_letters()
    return {"events": len(events), "per_intake": {k: len(v) for k, v in per_intake.items()}, "scans": scans[0],
            "outcomes": dict(outcomes), "jobs": len(manifests), "stage_runs": sum(calls.values()),
            "intake_s": round(intake_s, 2), "total_s": round(total_s, 2)}


def test_1000_duplicated_events_from_several_intakes_make_100_jobs_each_stage_once(tmp_path):
    rounds = [_one_round(tmp_path, seed) for seed in range(REPEATS)]
    record("duplicates", {"inputs": INPUTS, "workers": WORKERS, "rounds": rounds})


def test_two_workers_holding_copies_of_one_stage_message_run_it_once(tmp_path):
    """The race a duplicated message opens: worker B read the manifest just before worker A took the stage.

    B's snapshot still says `queued`, so only the take itself (a compare-and-swap on the manifest)
    can see that A holds the stage with a fresh heartbeat. B must back off, and run nothing.
    """
    calls: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def slow(ctx: StageContext) -> StageResult:
        calls.append(ctx.stage)
        inside.set()
        release.wait(10)
        return StageResult()

    pipeline = Pipeline(routes={"render": ["a", "b"]}, stages={"a": slow, "b": lambda ctx: StageResult()},
                        classify=lambda storage, key: "render")
    worker_a, worker_b = _runner(tmp_path / "bucket", pipeline), _runner(tmp_path / "bucket", pipeline)
    worker_a.storage.put_bytes("inbox/x.yaml", b"prompt: x\n")
    job_id, _ = worker_a.submit(StorageEvent(bucket=worker_a.storage.name, key="inbox/x.yaml"))
    snapshot = worker_a.store.load(job_id)  # what B read: stage a still queued
    first = worker_a.queue.get(lease_s=30)
    from schemas.events import TaskMessage
    assert worker_a.queue.put(TaskMessage(job_id=job_id, stage="a"))  # a duplicate (a redelivery, a reconciler)
    second = worker_b.queue.get(lease_s=30)
    assert second is not None and second.message_id != first.message_id

    thread_a = threading.Thread(target=worker_a.process, args=(first,))
    thread_a.start()
    assert inside.wait(10)  # A has taken stage a and is running it
    original_load = worker_b.store.load
    worker_b.store.load = lambda jid: snapshot if jid == job_id else original_load(jid)  # B's earlier read
    try:
        worker_b.process(second)
    finally:
        worker_b.store.load = original_load
        release.set()
        thread_a.join(10)
    assert calls == ["a"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and worker_b.store.load(job_id).status.value != "succeeded":
        worker_b.work_once() or time.sleep(0.05)
    manifest = worker_b.store.load(job_id)
    assert manifest.status.value == "succeeded" and calls == ["a"] and manifest.stages["a"].attempts == 1
