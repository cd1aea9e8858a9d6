"""Issue 7.7 — load: many briefs dropped at once into the embedded default (`videostudio up`, tiny model).

Every job succeeds; the worker's memory stays bounded (its peak resident set, VmHWM, is recorded
and compared with the RSS after a warm-up); and it leaks no file descriptors or threads: the
counts of /proc/<pid>/fd and threads after the burst, once idle, equal those after the warm-up.

CI drops 80 briefs; `VIDEOSTUDIO_RELIABILITY_FULL=1` drops 500.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from conftest import drop_by_rename, read_log, wait_for_job
from reliability import fd_count, full, job_manifests, proc_status, record

pytestmark = pytest.mark.slow

BRIEFS = full(80, 500)
WARMUP = 3
LOAD_BRIEF = """\
prompt: "load test {n}"
steps: 2
num_frames: 7
fps: 7
width: 32
height: 32
seed: {n}
model: tiny
"""


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


def _idle(bucket: Path, expected: int, proc, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, read_log(proc)
        manifests = job_manifests(bucket)
        if len(manifests) >= expected and all(m["status"] in ("succeeded", "failed") for m in manifests):
            return manifests
        time.sleep(1.0)
    raise AssertionError(f"not finished in {timeout}s: {len(job_manifests(bucket))} jobs")


def test_a_burst_of_briefs_all_succeed_with_bounded_memory_and_no_leaks(tmp_path, up_process):
    bucket = tmp_path / "bucket"
    proc = up_process(bucket, VIDEOSTUDIO_LEASE_S="60")
    worker = psutil.Process(proc.pid)
    for n in range(WARMUP):  # load the model, start ffmpeg once, open the queue: the steady state
        drop_by_rename(bucket, f"warm-{n}.yaml", LOAD_BRIEF.format(n=n))
        assert wait_for_job(bucket, f"inbox/warm-{n}.yaml", proc=proc)["status"] == "succeeded"
    time.sleep(2.0)  # let the reconciler and watcher settle
    fds_before, threads_before = _fds(proc.pid), worker.num_threads()
    rss_before = proc_status(proc.pid)

    staging = tmp_path / "staging"  # same file system, outside the bucket
    staging.mkdir()
    for n in range(BRIEFS):  # written aside, then renamed into place together: "dropped at once"
        (staging / f"load-{n:04d}.yaml").write_text(LOAD_BRIEF.format(n=1000 + n))
    clock = time.monotonic()
    for path in sorted(staging.iterdir()):
        os.replace(path, bucket / "inbox" / path.name)
    staging.rmdir()
    dropped_s = time.monotonic() - clock

    samples = []
    deadline = time.monotonic() + 60 + 6 * BRIEFS
    while time.monotonic() < deadline:
        assert proc.poll() is None, read_log(proc)
        status = proc_status(proc.pid)
        done = sum(1 for p in (bucket / "jobs").glob("*/render/manifest.json"))
        samples.append({"t": round(time.monotonic() - clock, 1), "rss": status["VmRSS"], "done": done,
                        "fds": fd_count(proc.pid)})
        if done >= WARMUP + BRIEFS:
            break
        time.sleep(1.0)
    manifests = _idle(bucket, WARMUP + BRIEFS, proc, timeout=120)
    burst_s = time.monotonic() - clock
    time.sleep(3.0)  # idle again: in-flight ffmpeg pipes and temp files are gone
    fds_after, threads_after = _fds(proc.pid), worker.num_threads()
    status = proc_status(proc.pid)

    assert len(manifests) == WARMUP + BRIEFS
    failed = [m for m in manifests if m["status"] != "succeeded"]
    assert not failed, failed[:3]
    assert all(m["stages"]["render"]["attempts"] == 1 for m in manifests)
    assert fds_after == fds_before, (set(fds_after) - set(fds_before), set(fds_before) - set(fds_after))
    assert threads_after == threads_before
    peak = max(s["rss"] for s in samples)
    assert status["VmRSS"] < rss_before["VmRSS"] + 300 * 2**20, (rss_before, status)  # no growth with the job count
    record("load", {
        "briefs": BRIEFS, "warmup": WARMUP, "drop_s": round(dropped_s, 3), "burst_s": round(burst_s, 1),
        "jobs_per_s": round(BRIEFS / burst_s, 2),
        "rss_after_warmup_mib": round(rss_before["VmRSS"] / 2**20, 1),
        "rss_peak_sampled_mib": round(peak / 2**20, 1), "vmhwm_mib": round(status["VmHWM"] / 2**20, 1),
        "rss_after_mib": round(status["VmRSS"] / 2**20, 1),
        "fds_before": len(fds_before), "fds_after": len(fds_after), "threads_before": threads_before,
        "threads_after": threads_after,
        "render_s_median": sorted(m["cost"]["seconds"]["render"] for m in manifests)[len(manifests) // 2],
        "samples": samples[:: max(1, len(samples) // 60)],
    })
