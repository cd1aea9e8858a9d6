"""Issue 7.1 — crashes: kill -9 `videostudio up` at random points in every stage, then let it finish.

For a render job (prepare → render) and a small train job (prepare → align → train → render),
each trial starts `videostudio up` (through tests/fault_worker.py) with a kill point: the N-th
event (storage write or delete, queue put/ack/nack/extend, progress report) while a given stage
is in flight, N drawn at random from the events an uninterrupted run of that stage had: every kill
of a stage but its last before the stage's commit phase (so the stage runs again), its last one
inside it (stage manifest, job manifest — the commit marker —, webhooks, next message, ack). The
process SIGKILLs itself there: no handler runs, nothing is flushed. After each kill the bucket
is checked (no committed manifest names a missing, partial or temp file). After the last kill a
plain worker finishes the job. Then:

- every job `succeeded`;
- its outputs equal an uninterrupted run's: decoded video frames, the LoRA tensors, the frame
  list, the aligned dataset (faces, metadata) and the preview;
- every webhook event was delivered at least once, every delivery verifies with
  `standardwebhooks`, and each `webhook-id` always carried the same bytes (retries reuse it).

CI runs 22 trials; `VIDEOSTUDIO_RELIABILITY_FULL=1` runs 45. Figures: bench/out/reliability/crashes.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from standardwebhooks.webhooks import Webhook

from conftest import TEST_SECRET, TINY_BRIEF, drop_by_rename, stop
from reliability import (
    check_bucket_integrity,
    decoded_frames,
    full,
    job_manifests,
    read_log,
    record,
    start_fault_up,
    wait_exit,
)
from synthetic_video import write_face_video

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VIDEOSTUDIO_RELIABILITY_SEED", "7"))
LEASE_S = "1.5"
ALL_EVENTS = "[job.succeeded, job.failed, job.cancelled, stage.started, stage.succeeded, stage.failed]"
RENDER_KILLS = {"prepare": full(2, 5), "render": full(4, 8)}
TRAIN_KILLS = {"prepare": full(3, 6), "align": full(3, 6), "train": full(5, 10), "render": full(5, 10)}
MIN_TRIALS = full(20, 40)
# Every progress report writes the manifest (no time-based throttle), so a stage has as many events in
# every run and a kill point drawn from the reference run's count is always reached.
ENV = dict(VIDEOSTUDIO_PROGRESS_INTERVAL_S="0", VIDEOSTUDIO_LEASE_S=LEASE_S, VIDEOSTUDIO_MAX_ATTEMPTS="50", VIDEOSTUDIO_RECONCILE_INTERVAL_S="0.5",
           VIDEOSTUDIO_WEBHOOK_MAX_ATTEMPTS="20")

TRAIN_BRIEF = """\
kind: train
avatar: crashy
video: uploads/astronaut.mp4
extract_fps: 1
resolution: 32
clip_frames: 1
epochs: 2
batch_size: 4
learning_rate: 0.005
mixed_precision: "no"
checkpoint_every: 2
optimizer: adamw
preview_steps: 2
seed: 5
"""


def _hooked(brief: str, url: str) -> str:
    return brief + f"webhook:\n  url: {url}\n  events: {ALL_EVENTS}\n"


def _events(manifest: dict) -> list[str]:
    return sorted(d["event"] for d in manifest["webhooks"])


def _finished_and_notified(bucket: Path, events: list[str] | None) -> dict | None:
    manifests = job_manifests(bucket)
    if len(manifests) != 1:
        return None
    manifest = manifests[0]
    if manifest["status"] != "succeeded" or any(d["status"] != "delivered" for d in manifest["webhooks"]):
        return None
    if events is not None and _events(manifest) != events:
        return None  # an event the committed state implies is not queued yet
    return manifest


def _run_to_completion(bucket: Path, log: Path, fault: dict | None, events: list[str] | None = None,
                       timeout: float = 600) -> dict:
    """Run a worker until the job succeeded and its webhooks (all of `events`, when given) were delivered."""
    proc = start_fault_up(bucket, log, fault, **ENV)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, read_log(proc)
            manifest = _finished_and_notified(bucket, events)
            if manifest is not None:
                return manifest
            time.sleep(0.1)
        raise AssertionError(f"job not finished in {timeout}s: {job_manifests(bucket)}\n{read_log(proc)}")
    finally:
        stop(proc)


def _campaign(tmp_path: Path, name: str, setup, input_name: str, content: str, kills: dict[str, int],
              rng: random.Random) -> dict:
    """A reference run (counting events per stage), then a run killed `kills[stage]` times per stage."""
    # 1. the uninterrupted run, which also counts each stage's events
    # Job ids derive from the bucket's *name*: the two buckets get different names, so their jobs differ.
    ref = tmp_path / f"{name}-ref" / "reference"
    setup(ref)
    drop_by_rename(ref, input_name, content)
    counts_path = tmp_path / f"{name}-counts.json"
    reference = _run_to_completion(ref, tmp_path / f"{name}-ref.log", {"count": str(counts_path)})
    counts = {stage: min(map(tuple, n)) for stage, n in json.loads(counts_path.read_text()).items()}

    # 2. the same input, killed at random points of each stage in turn
    bucket = tmp_path / name / "killed"
    setup(bucket)
    drop_by_rename(bucket, input_name, content)
    trials = []
    log = tmp_path / f"{name}.log"
    carry = 0  # kills planned for a stage that was committed early (a kill after its commit marker)
    for stage, planned in kills.items():
        budget, carry = planned + carry, 0
        total, commit_at = counts[stage]
        for done in range(budget):
            manifests = job_manifests(bucket)
            if manifests and manifests[0]["stages"][stage]["status"] == "succeeded":
                carry = budget - done
                break
            # Every kill of a stage but its last lands before the commit phase (the stage runs again); the
            # last lands inside the commit phase (stage manifest, commit marker, webhooks, next message, ack).
            # Commit-phase kills count from the phase's start, and an early kill's event that a resumed
            # training run (fewer steps left) never reaches lands as its commit phase begins: the
            # reference run's counts are those of an uninterrupted stage.
            at = rng.randint(commit_at + 1, total) if done == budget - 1 else rng.randint(1, commit_at)
            spec = ({"stage": stage, "commit_event": at - commit_at} if at > commit_at
                    else {"stage": stage, "at": at, "before_commit": True})
            started = time.monotonic()
            proc = start_fault_up(bucket, log, {"kill": spec}, **ENV)
            code = wait_exit(proc, timeout=300)
            if code is None:
                stop(proc, signal.SIGKILL)
                raise AssertionError(f"{name}: no kill at event {at} of {stage}\n{read_log(proc)}")
            assert code == -signal.SIGKILL, f"{name}: worker exited {code}\n{read_log(proc)}"
            after = job_manifests(bucket)[0]
            integrity = check_bucket_integrity(bucket)
            trials.append({"job": name, "stage": stage, "event": at, "kill": spec, "of_events": total,
                           "commit_phase_from": commit_at + 1,
                           "stage_status_after": after["stages"][stage]["status"],
                           "attempts_after": after["stages"][stage]["attempts"],
                           "seconds": round(time.monotonic() - started, 2), "integrity": integrity})

    # 3. a plain worker finishes the job
    started = time.monotonic()
    manifest = _run_to_completion(bucket, log, None, _events(reference))
    integrity = check_bucket_integrity(bucket)
    return {"reference": reference, "manifest": manifest, "ref_bucket": ref, "bucket": bucket, "trials": trials,
            "event_counts": counts, "finish_s": round(time.monotonic() - started, 2), "integrity": integrity}


def _check_webhooks(result: dict, received) -> dict:
    """Each manifest delivery reached the receiver, signed; one webhook-id always carries the same bytes."""
    out = {}
    assert result["reference"]["job_id"] != result["manifest"]["job_id"]
    for which in ("reference", "manifest"):
        manifest = result[which]
        job_id = manifest["job_id"]
        hooks = [h for h in received if json.loads(h.body)["data"]["job_id"] == job_id]
        by_id: dict[str, set[bytes]] = defaultdict(set)
        for hook in hooks:
            payload = Webhook(TEST_SECRET).verify(hook.body, hook.headers)
            assert payload["data"]["job_id"] == job_id
            by_id[hook.headers["webhook-id"]].add(hook.body)
        ids = {d["webhook_id"] for d in manifest["webhooks"]}
        assert set(by_id) == ids, (which, set(by_id) ^ ids)
        differing = {i: sorted(b) for i, b in by_id.items() if len(b) != 1}
        assert not differing, f"a webhook-id carried different bodies: {differing}"
        for delivery in manifest["webhooks"]:
            assert delivery["status"] == "delivered" and delivery["attempts"][-1]["status_code"] == 200
        out[which] = {"events": len(ids), "requests": len(hooks),
                      "redelivered": sum(Counter(h.headers["webhook-id"] for h in hooks).values()) - len(ids)}
    assert _events(result["manifest"]) == _events(result["reference"])
    return out


def _same_file_tree(a: Path, b: Path) -> int:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    return len(files_a)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    return write_face_video(tmp_path_factory.mktemp("video") / "astronaut.mp4", duration_s=31.0, fps=10,
                            width=320, height=180)


def test_kill_9_at_random_points_of_every_stage(tmp_path, webhook_receiver, face_video):
    rng = random.Random(SEED)
    clock = time.monotonic()

    # A render job: prepare → render.
    render_brief = _hooked(TINY_BRIEF.format(steps=10, seed=11), webhook_receiver.url)
    render = _campaign(tmp_path, "render", lambda bucket: bucket.mkdir(parents=True), "crash.yaml", render_brief,
                       RENDER_KILLS, rng)

    # A train job: prepare → align → train → render.
    def with_video(bucket: Path) -> None:
        (bucket / "uploads").mkdir(parents=True)
        shutil.copyfile(face_video, bucket / "uploads" / "astronaut.mp4")

    train = _campaign(tmp_path, "train", with_video, "avatar.yaml", _hooked(TRAIN_BRIEF, webhook_receiver.url),
                      TRAIN_KILLS, rng)

    trials = render["trials"] + train["trials"]
    assert len(trials) >= MIN_TRIALS, trials
    for result in (render, train):
        assert result["manifest"]["status"] == "succeeded"

    # Outputs equal the uninterrupted run's.
    ref, got = render["reference"], render["manifest"]
    assert (decoded_frames(render["ref_bucket"] / ref["outputs"]["video"])
            == decoded_frames(render["bucket"] / got["outputs"]["video"])).all()
    ref, got = train["reference"], train["manifest"]
    a = load_file(str(train["ref_bucket"] / ref["outputs"]["lora"]))
    b = load_file(str(train["bucket"] / got["outputs"]["lora"]))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert got["stages"]["train"]["metrics"]["train_loss"] == ref["stages"]["train"]["metrics"]["train_loss"]
    compared = {}
    compared["faces"] = _same_file_tree(train["ref_bucket"] / "jobs" / ref["job_id"] / "align" / "faces",
                                        train["bucket"] / "jobs" / got["job_id"] / "align" / "faces")
    for stage, output in (("prepare", "frames"), ("align", "metadata"), ("align", "dataset")):
        ref_bytes = (train["ref_bucket"] / ref["stages"][stage]["outputs"][output]).read_bytes()
        got_bytes = (train["bucket"] / got["stages"][stage]["outputs"][output]).read_bytes()
        if output == "dataset":  # timings differ between runs; the dataset itself must not
            ref_bytes, got_bytes = (json.dumps({k: v for k, v in json.loads(x).items() if not k.endswith("_s")
                                                and k != "faces_per_s"}).encode() for x in (ref_bytes, got_bytes))
        assert ref_bytes.replace(ref["job_id"].encode(), b"") == got_bytes.replace(got["job_id"].encode(), b""), output
    assert (decoded_frames(train["ref_bucket"] / ref["outputs"]["video"])
            == decoded_frames(train["bucket"] / got["outputs"]["video"])).all()

    webhooks = {"render": _check_webhooks(render, webhook_receiver.received),
                "train": _check_webhooks(train, webhook_receiver.received)}
    per_stage = Counter(f"{t['job']}.{t['stage']}" for t in trials)
    record("crashes", {
        "seed": SEED, "lease_s": float(LEASE_S), "trials": len(trials), "kills_per_stage": dict(per_stage),
        "killed_after_commit": sum(t["stage_status_after"] == "succeeded" for t in trials),
        "attempts": {name: {s: r["attempts"] for s, r in result["manifest"]["stages"].items()}
                     for name, result in (("render", render), ("train", train))},
        "event_counts": {"render": render["event_counts"], "train": train["event_counts"]},
        "compared_files": compared, "webhooks": webhooks, "wall_s": round(time.monotonic() - clock, 1),
        "trial_log": trials,
    })
