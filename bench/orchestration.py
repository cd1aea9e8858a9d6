"""Orchestration benchmark: what the pipeline around a stage costs, with stages that do nothing.

Two measurements, side by side in one run:

1. **Drop → first stage latency.** The real folder watcher (`triggers.watcher.watch_inbox`)
   and one worker loop (`triggers.worker.work_until`) run as in-process threads on a temp
   bucket, the way `videostudio up` runs them. Each drop writes a hidden temp file in
   `inbox/`, fsyncs it and renames it into place; the clock starts at the rename. The
   first stage is a no-op that records `time.time()` when it is entered; the manifest's
   `stages[first].started_at` is read back too. Repeated for several
   `Settings.watch_quiet_s` values so the stability wait is visible.
2. **No-op throughput.** M jobs are written with `storage.put_bytes` and submitted with
   `runner.submit` (source "cli"), then one worker drains the queue with `runner.work_once`.
   The floor is calling the same two no-op stage functions directly M times.

The runner is built like `triggers/wiring.py` (LocalStorage, SqliteQueue in the bucket's
state dir with the same max_attempts), but with a custom pipeline:
routes {"noop": ["a", "b"]}, two no-op stages, classify → "noop".

This is a benchmark, not a test: it asserts nothing about timings.

    .venv/bin/python bench/orchestration.py                  # defaults: 30 drops, 200 jobs, quiet 0, 0.25, 1.0
    .venv/bin/python bench/orchestration.py --drops 10 --jobs 50 --quiet-s 0 0.25 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import queue as pyqueue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import Pipeline, StageContext, StageResult
from core.storage import LocalStorage
from schemas.events import StorageEvent
from triggers.watcher import watch_inbox
from triggers.wiring import QUEUE_FILE
from triggers.worker import work_until
from runinfo import cpu_model  # bench/, on the path of a script run from it

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "out" / "orchestration.json"
ROUTE = ["a", "b"]

console = Console(stderr=True)


# ---------------------------------------------------------------------------- the no-op pipeline
class Probe:
    """The no-op stages, which record when they are entered, keyed by (input key, stage)."""

    def __init__(self) -> None:
        self.entered: dict[tuple[str, str], float] = {}
        self.calls = 0

    def stage(self, name: str):
        def noop(ctx: StageContext) -> StageResult:
            self.entered[(ctx.input.key, name)] = time.time()
            self.calls += 1
            return StageResult()

        noop.__name__ = noop.__qualname__ = f"noop_{name}"
        return noop

    def pipeline(self) -> Pipeline:
        return Pipeline(routes={"noop": list(ROUTE)}, stages={name: self.stage(name) for name in ROUTE},
                        classify=lambda storage, key: "noop")


class Events:
    """The runner's on_event hook: forwards job.finished to whoever waits for it."""

    def __init__(self) -> None:
        self.finished: pyqueue.Queue[tuple[str, str, float]] = pyqueue.Queue()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "job.finished":
            self.finished.put((data["job_id"], data.get("status", "?"), time.time()))


def build_runner(root: Path, settings: Settings, probe: Probe, events: Events) -> Runner:
    """As triggers.wiring.open_runner does, with the no-op pipeline instead of the default one."""
    storage = LocalStorage(root)
    queue = SqliteQueue(storage.state_dir / QUEUE_FILE, max_attempts=settings.queue_lease_attempts)
    runner = Runner(storage, queue, probe.pipeline(), settings, on_event=events)
    _ = runner.device  # detects the device once (imports torch): a one-time cost kept out of the timings
    return runner


def make_settings(root: Path, quiet_s: float) -> Settings:
    return Settings(_env_file=None, bucket=str(root), watch_quiet_s=quiet_s)


# ---------------------------------------------------------------------------- stats helpers
def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(quantile(ms, 0.9), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2), "n": len(ms)}


# ---------------------------------------------------------------------------- 1. latency
def drop_file(inbox: Path, name: str, data: bytes) -> float:
    """Write a hidden temp file, fsync it, rename it into place. Returns the wall time of the rename."""
    tmp = inbox / f".{name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    t0 = time.time()
    os.rename(tmp, inbox / name)
    return t0


def bench_latency(workdir: Path, quiet_s: float, drops: int, warmup: int, progress: Progress,
                  timeout_s: float) -> dict[str, Any]:
    root = workdir / f"latency-q{quiet_s:g}"
    settings = make_settings(root, quiet_s)
    probe, events = Probe(), Events()
    runner = build_runner(root, settings, probe, events)
    storage = runner.storage
    assert isinstance(storage, LocalStorage)
    inbox = storage.root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)

    submits: dict[str, tuple[float, float]] = {}  # key → (watcher reported it, submit returned)

    def on_complete(key: str) -> None:  # what `videostudio up` hands the watcher, plus two clocks
        t_detect = time.time()
        runner.submit(StorageEvent(bucket=storage.name, key=key, source="folder"))
        submits[key] = (t_detect, time.time())

    stop = threading.Event()
    threads = [
        threading.Thread(target=watch_inbox, args=(storage, on_complete, stop), kwargs={"quiet_s": quiet_s},
                         name="watcher", daemon=True),
        threading.Thread(target=work_until, args=(runner, stop), name="worker", daemon=True),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let watchfiles arm its inotify watch before the first drop

    rng = random.Random(1234)
    rows: list[dict[str, float]] = []
    task = progress.add_task(f"latency quiet_s={quiet_s:g}", total=warmup + drops)
    try:
        for i in range(warmup + drops):
            name = f"drop-{i:04d}.json"
            key = f"inbox/{name}"
            data = json.dumps({"drop": i, "nonce": uuid.uuid4().hex}).encode()
            t0 = drop_file(inbox, name, data)
            try:
                job_id, status, t_done = events.finished.get(timeout=timeout_s)
            except pyqueue.Empty:
                raise RuntimeError(f"drop {i} did not finish within {timeout_s}s (quiet_s={quiet_s})") from None
            if status != "succeeded":
                raise RuntimeError(f"job {job_id} ended {status}")
            manifest = runner.store.load(job_id)
            assert manifest is not None and manifest.input.key == key, (manifest and manifest.input.key, key)
            t_detect, t_submitted = submits[key]
            t_enter = probe.entered[(key, ROUTE[0])]
            t_started_at = manifest.stages[ROUTE[0]].started_at.timestamp()
            if i >= warmup:
                rows.append({
                    "to_stage_entry": t_enter - t0,
                    "to_manifest_started_at": t_started_at - t0,
                    "to_watcher_report": t_detect - t0,
                    "submit": t_submitted - t_detect,
                    "queue_to_stage_entry": t_enter - t_submitted,
                    "to_job_finished": t_done - t0,
                })
            progress.advance(task)
            time.sleep(rng.uniform(0.0, 0.05))  # decorrelate drops from the watcher's tick phase
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        runner.queue.close()  # type: ignore[attr-defined]

    result: dict[str, Any] = {"quiet_s": quiet_s, "drops": drops, "warmup_drops": warmup}
    for field in rows[0]:
        result[field] = summary_ms([r[field] for r in rows])
    result["samples_ms"] = {f: [round(r[f] * 1000.0, 3) for r in rows] for f in rows[0]}
    return result


# ---------------------------------------------------------------------------- 2. throughput
def bench_throughput(workdir: Path, jobs: int, progress: Progress, profile: bool, run: int = 0) -> dict[str, Any]:
    """One throughput run on a fresh bucket."""
    root = workdir / f"throughput-{run}"
    settings = make_settings(root, 1.0)
    probe, events = Probe(), Events()
    runner = build_runner(root, settings, probe, events)
    storage = runner.storage
    task = progress.add_task(f"throughput #{run + 1}: write+submit", total=jobs)

    # write the inputs and submit them, as `videostudio submit` does (put_bytes instead of put_file)
    t_write = t_submit = 0.0
    for i in range(jobs):
        key = f"inbox/job-{i:05d}.json"
        data = json.dumps({"job": i, "nonce": uuid.uuid4().hex}).encode()
        c0 = time.perf_counter()
        info = storage.put_bytes(key, data, content_type="application/json")
        c1 = time.perf_counter()
        _, created = runner.submit(StorageEvent(bucket=storage.name, key=key, size=info.size, etag=info.etag,
                                                source="cli"))
        c2 = time.perf_counter()
        assert created
        t_write += c1 - c0
        t_submit += c2 - c1
        progress.advance(task)

    # drain with one worker
    drain_task = progress.add_task(f"throughput #{run + 1}: drain", total=jobs * len(ROUTE))
    per_message: list[float] = []
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    d0 = time.perf_counter()
    while True:
        m0 = time.perf_counter()
        if not runner.work_once():
            break
        per_message.append(time.perf_counter() - m0)
        progress.advance(drain_task)
    drain_s = time.perf_counter() - d0
    if profiler:
        profiler.disable()

    finished = []
    while not events.finished.empty():
        finished.append(events.finished.get_nowait())
    succeeded = sum(1 for _, status, _ in finished if status == "succeeded")
    left = runner.queue.pending()
    runner.queue.close()  # type: ignore[attr-defined]
    if succeeded != jobs or probe.calls != jobs * len(ROUTE):
        raise RuntimeError(f"drain incomplete: {succeeded}/{jobs} jobs succeeded, {probe.calls} stage calls, "
                           f"{left} messages left")

    # the floor: the same two no-op stage functions called directly, M times
    manifest = runner.store.load(finished[0][0])
    assert manifest is not None
    ctx = StageContext(job_id=manifest.job_id, stage=ROUTE[0], attempt=1, manifest=manifest, storage=storage,
                       settings=settings, scratch=Path(tempfile.gettempdir()),
                       _progress=lambda *a: None, _cancel_requested=lambda: False)
    fns = [runner.pipeline.stages[name] for name in ROUTE]
    best = float("inf")
    reps = 0
    f_start = time.perf_counter()
    while reps < 5 or time.perf_counter() - f_start < 0.3:
        c0 = time.perf_counter()
        for _ in range(jobs):
            for fn in fns:
                fn(ctx)
        best = min(best, time.perf_counter() - c0)
        reps += 1

    quarter = max(1, len(per_message) // 4)
    result: dict[str, Any] = {
        "jobs": jobs,
        "stages_per_job": len(ROUTE),
        "messages_processed": len(per_message),
        "write_inputs_s": round(t_write, 4),
        "submit_s": round(t_submit, 4),
        "submit_jobs_per_s": round(jobs / t_submit, 1),
        "drain_s": round(drain_s, 4),
        "pipeline_jobs_per_s": round(jobs / drain_s, 1),
        "pipeline_ms_per_stage": round(drain_s / (jobs * len(ROUTE)) * 1000.0, 3),
        "work_once_ms": summary_ms(per_message),
        "work_once_first_quarter_median_ms": round(statistics.median(per_message[:quarter]) * 1000.0, 3),
        "work_once_last_quarter_median_ms": round(statistics.median(per_message[-quarter:]) * 1000.0, 3),
        "floor_s": best,
        "floor_reps": reps,
        "floor_jobs_per_s": round(jobs / best, 1),
        "overhead_ratio": round((jobs / best) / (jobs / drain_s), 1),
        "overhead_ms_per_job": round((drain_s - best) / jobs * 1000.0, 3),
    }
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        result["profile_top_tottime"] = buf.getvalue()
    return result


THROUGHPUT_KEYS = ["submit_jobs_per_s", "pipeline_jobs_per_s", "pipeline_ms_per_stage", "floor_jobs_per_s",
                   "overhead_ratio", "overhead_ms_per_job"]


def aggregate_throughput(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each headline figure over the repeated runs (the disk is shared and noisy)."""
    agg: dict[str, Any] = {"jobs": runs[0]["jobs"], "stages_per_job": runs[0]["stages_per_job"], "repeats": len(runs)}
    for key in THROUGHPUT_KEYS:
        values = [r[key] for r in runs]
        agg[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
    agg["runs"] = runs
    return agg


def fsync_probe(workdir: Path, n: int = 200, size: int = 1500) -> dict[str, float]:
    """Context for the figures: how long one small write + fsync takes on the bucket's disk right now."""
    folder = workdir / "fsync-probe"
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(n):
        c0 = time.perf_counter()
        with open(folder / f"f{i}", "wb") as handle:
            handle.write(b"x" * size)
            handle.flush()
            os.fsync(handle.fileno())
        times.append(time.perf_counter() - c0)
    shutil.rmtree(folder, ignore_errors=True)
    return summary_ms(times)


# ---------------------------------------------------------------------------- reporting
LATENCY_ROWS = [
    ("to_stage_entry", "drop → first stage entered (time.time() in the stage)"),
    ("to_manifest_started_at", "drop → manifest stages[first].started_at"),
    ("to_watcher_report", "  drop → watcher reports the file complete"),
    ("submit", "  runner.submit (hash, manifest create, enqueue)"),
    ("queue_to_stage_entry", "  submit returned → stage entered (poll + lease + take)"),
    ("to_job_finished", "drop → job.finished (both stages committed)"),
]

def machine_info(workdir: Path) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "workdir": str(workdir), "loadavg_start": os.getloadavg()}


def render(results: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 132)
    lat = Table(title="Drop in inbox/ → first stage (ms; median / p90 over the measured drops)")
    lat.add_column("interval")
    for r in results["latency"]:
        lat.add_column(f"quiet_s={r['quiet_s']:g} (n={r['drops']})", justify="right")
    for field, label in LATENCY_ROWS:
        lat.add_row(label, *(f"{r[field]['median_ms']:.1f} / {r[field]['p90_ms']:.1f}" for r in results["latency"]))
    out.print(lat)

    t = results["throughput"]
    thr = Table(title=f"No-op throughput: {t['jobs']} jobs × {t['stages_per_job']} stages, one worker, "
                      f"{t['repeats']} runs")
    thr.add_column("measure")
    for col in ("median", "min", "max"):
        thr.add_column(col, justify="right")

    def row(label: str, key: str, fmt: str) -> None:
        thr.add_row(label, *(format(t[key][c], fmt) for c in ("median", "min", "max")))

    row("submit: runner.submit (jobs/s)", "submit_jobs_per_s", ",.1f")
    row("pipeline: drain with runner.work_once (jobs/s)", "pipeline_jobs_per_s", ",.1f")
    row("  per stage message (ms)", "pipeline_ms_per_stage", ".2f")
    row("floor: stage functions called directly (jobs/s)", "floor_jobs_per_s", ",.0f")
    row("floor / pipeline (×)", "overhead_ratio", ",.0f")
    row("orchestration overhead per job (ms)", "overhead_ms_per_job", ".2f")
    out.print(thr)
    for i, r in enumerate(t["runs"]):
        out.print(f"  run {i + 1}: work_once median/p90 {r['work_once_ms']['median_ms']:.2f}/"
                  f"{r['work_once_ms']['p90_ms']:.2f} ms, max {r['work_once_ms']['max_ms']:.1f} ms; first/last quarter "
                  f"median {r['work_once_first_quarter_median_ms']:.2f}/{r['work_once_last_quarter_median_ms']:.2f} ms")
    m = results["machine"]
    out.print(f"  load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
              f"at end {'/'.join(f'{x:.2f}' for x in m['loadavg_end'])}")
    f = results["fsync_probe"]
    out.print(f"  disk: 1.5 KB write+fsync median/p90 {f['before']['median_ms']:.2f}/{f['before']['p90_ms']:.2f} ms "
              f"before, {f['after']['median_ms']:.2f}/{f['after']['p90_ms']:.2f} ms after")
    for r in t["runs"]:
        if "profile_top_tottime" in r:
            out.print(r["profile_top_tottime"], markup=False, highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--drops", type=int, default=30, help="measured drops per quiet_s value")
    parser.add_argument("--warmup-drops", type=int, default=2, help="unmeasured drops first, per quiet_s value")
    parser.add_argument("--jobs", type=int, default=200, help="no-op jobs for the throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs (fresh bucket each)")
    parser.add_argument("--quiet-s", type=float, nargs="+", default=[0.0, 0.25, 1.0],
                        help="Settings.watch_quiet_s values to measure latency with")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON results")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent folder for the temp buckets (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp buckets")
    parser.add_argument("--profile", action="store_true", help="cProfile the drain and print the top functions")
    parser.add_argument("--drop-timeout-s", type=float, default=30.0, help="give up on a drop after this long")
    args = parser.parse_args(argv)
    if args.drops < 1 or args.jobs < 1 or args.repeats < 1 or args.warmup_drops < 0:
        parser.error("--drops, --jobs and --repeats must be at least 1, --warmup-drops at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vs-bench-orch-", dir=args.workdir))
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "benchmark": "orchestration",
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "main(...)",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(workdir),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "latency": [],
    }
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            results["fsync_probe"] = {"before": fsync_probe(workdir)}
            for quiet_s in args.quiet_s:
                results["latency"].append(bench_latency(workdir, quiet_s, args.drops, args.warmup_drops, progress,
                                                        args.drop_timeout_s))
            runs = [bench_throughput(workdir, args.jobs, progress, args.profile and i == 0, run=i)
                    for i in range(args.repeats)]
            results["throughput"] = aggregate_throughput(runs)
            results["fsync_probe"]["after"] = fsync_probe(workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)

    render(results)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.json_out} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
