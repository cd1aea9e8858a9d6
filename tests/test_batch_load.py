"""Issue 15.1 — batches under load and under kill -9.

- A 1,000-item batch of the cheapest real renders (tiny Mochi, one 16×16 frame, two steps) completes,
  with the worker's resident memory sampled all along: its growth after the warm-up stays bounded (a
  per-item leak of even 0.3 MB would break the bound), and the figures go to bench/out/reliability/.
- `videostudio up` killed with SIGKILL in the middle of a batch (during a render, and between a
  render's commit and what follows it), then started again: no item is lost or doubled, the batch
  completes, and exactly one signed `batch.completed` arrives.
"""

from __future__ import annotations

import json
import resource
import signal
import time
from pathlib import Path

import psutil
import pytest
from standardwebhooks.webhooks import Webhook

from batch_jobs import Receiver, submit_batch, tiny_csv, work_all
from conftest import TEST_SECRET, drop_by_rename, read_log, start_up, stop
from core.batch_store import item_job_id
from pipeline_jobs import make_runner
from reliability import check_bucket_integrity, load_json, record, start_fault_up, wait_exit

pytestmark = pytest.mark.slow

ITEMS = 1000
WARMUP_ITEMS = 100
RSS_GROWTH_BOUND = 300 * 2**20  # bytes over the post-warm-up RSS: 1,000 items leaking 0.3 MB each would pass it


@pytest.mark.timeout(3600)
def test_a_1000_item_batch_of_tiny_renders_completes_with_bounded_memory(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    me = psutil.Process()
    clock = time.monotonic()
    batch_id, created = submit_batch(runner, "thousand.batch.csv", tiny_csv(ITEMS))
    expanded_s = time.monotonic() - clock
    assert created and runner.queue.pending() == ITEMS

    samples: list[tuple[int, int]] = []  # (items ended, RSS bytes)
    processed = 0
    while True:
        done = work_all(runner, limit=100)
        processed += done
        ended = runner.batches.store.load(batch_id).progress.ended
        samples.append((ended, me.memory_info().rss))
        if done == 0:
            break
    wall_s = time.monotonic() - clock
    manifest = runner.batches.store.load(batch_id)
    assert manifest.status.value == "completed"
    assert manifest.counts.succeeded == ITEMS and len(list(runner.store.job_ids())) == ITEMS
    baseline = next(rss for ended, rss in samples if ended >= WARMUP_ITEMS)
    peak = max(rss for _, rss in samples)
    record("batch_load", {
        "items": ITEMS, "messages": processed, "expand_s": round(expanded_s, 2), "wall_s": round(wall_s, 1),
        "items_per_s": round(ITEMS / wall_s, 2), "rss_after_warmup_mb": round(baseline / 2**20, 1),
        "rss_peak_sampled_mb": round(peak / 2**20, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "batch_manifest_kb": round(len(runner.storage.get_bytes(f"batches/{batch_id}/manifest.json")) / 1024, 1),
        "samples": [[e, round(r / 2**20, 1)] for e, r in samples]})
    assert peak - baseline < RSS_GROWTH_BOUND, samples


# ---------------------------------------------------------------------------------------------- kill -9
def _wait_batch_file(bucket: Path, timeout: float, proc=None) -> dict:
    deadline = time.monotonic() + timeout
    manifest = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{read_log(proc)}")
        paths = list((bucket / "batches").glob("*/manifest.json")) if (bucket / "batches").exists() else []
        manifest = load_json(paths[0]) if paths else None
        if manifest and manifest["status"] == "completed" and all(
                d["status"] != "pending" for d in manifest["webhooks"]):
            return manifest
        time.sleep(0.2)
    raise AssertionError(f"batch not completed in {timeout}s: {json.dumps(manifest)[:1500]}")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kill", [{"stage": "render", "at": 4}, {"stage": "render", "commit_event": 3}],
                         ids=["during-a-render", "inside-a-commit"])
def test_kill_9_during_a_batch_loses_no_item(tmp_path, kill, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    receiver = Receiver()
    url = receiver.start()
    bucket = tmp_path / "bucket"
    items = 12
    killed = start_fault_up(bucket, tmp_path / "killed.log", {"kill": kill}, NO_PROXY="127.0.0.1")
    try:
        drop_by_rename(bucket, "nightly.batch.csv", tiny_csv(items, webhook=url))
        assert wait_exit(killed, 180) == -signal.SIGKILL, read_log(killed)
    finally:
        stop(killed)
    batch = load_json(next((bucket / "batches").glob("*/manifest.json")))
    assert batch["status"] != "completed"  # it died with the batch under way
    restarted = start_up(bucket, tmp_path / "up.log", NO_PROXY="127.0.0.1")
    try:
        batch = _wait_batch_file(bucket, 300, restarted)
    finally:
        stop(restarted)
        receiver.stop()
    batch_id = batch["batch_id"]
    assert batch["counts"]["succeeded"] == items and batch["progress"]["fraction"] == 1.0
    jobs = sorted(p.parent.name for p in (bucket / "jobs").glob("*/manifest.json"))
    assert jobs == sorted(item_job_id(batch_id, n) for n in range(items))  # none lost, none doubled
    assert all(load_json(bucket / "jobs" / j / "manifest.json")["status"] == "succeeded" for j in jobs)
    check_bucket_integrity(bucket)
    hits = receiver.of_type("batch.completed")
    assert len(hits) == 1
    assert Webhook(TEST_SECRET).verify(hits[0][1], hits[0][0])["data"]["counts"]["succeeded"] == items
