"""`videostudio batch list|status|cancel`, and `videostudio run x.batch.csv` with one progress bar for the batch.

Registered on the main app by triggers/cli.py (`app.add_typer(batch_app, name="batch")`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from core.batch_store import batch_manifest_key
from core.runner import Runner
from core.settings import DEFAULT_BUCKET
from core.storage import LocalStorage
from schemas.batch import BatchManifest, BatchSummary
from schemas.errors import VideostudioError
from schemas.manifest import JobStatus

console = Console()
batch_app = typer.Typer(help="Batches (inbox/<name>.batch.yaml|.jsonl|.csv): list, status, cancel.",
                        no_args_is_help=True)

BucketOpt = Annotated[str, typer.Option("--bucket", "-b", envvar="VIDEOSTUDIO_BUCKET",
                                        help="Bucket folder or s3://bucket/prefix (or VIDEOSTUDIO_BUCKET).")]
RunnerFactory = Callable[..., Runner]
DRIVE_IDLE_S = 0.05


def _load(runner: Runner, batch_id: str, fail: Callable[[VideostudioError], Any]) -> BatchManifest:
    manifest = runner.batches.store.load(batch_id)
    if manifest is None:
        fail(VideostudioError("batch_not_found", f"no batch {batch_id!r}"))
    return manifest


def manifest_path(runner: Runner, batch_id: str) -> str:
    key = batch_manifest_key(batch_id)
    return str(runner.storage.path(key)) if isinstance(runner.storage, LocalStorage) else key


def print_list(runner: Runner, *, as_json: bool) -> None:
    summaries = sorted((BatchSummary.of(m) for m in runner.batches.store.all()), key=lambda s: s.created_at,
                       reverse=True)
    if as_json:
        print(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
        return
    table = Table("name", "status", "items", "ok", "failed", "cancelled", "progress", "eta", "input")
    table.columns.insert(0, Column("batch", no_wrap=True, min_width=max((len(s.batch_id) for s in summaries), default=5)))
    for s in summaries:
        table.add_row(s.batch_id, s.name, s.status.value, str(s.counts.total), str(s.counts.succeeded),
                      str(s.counts.failed), str(s.counts.cancelled), f"{s.progress.fraction:.0%}", _eta(s.progress.eta_s),
                      s.input_key)
    console.print(table)


def print_status(manifest: BatchManifest, *, as_json: bool, path: str) -> None:
    if as_json:
        print(manifest.model_dump_json(indent=2))
        return
    c, p = manifest.counts, manifest.progress
    console.print(f"batch {manifest.batch_id} [bold]{manifest.status.value}[/bold] ({manifest.name}, {c.total} items)")
    console.print(f"manifest: {path}")
    if manifest.error:
        console.print(f"[red]error[/red] {manifest.error.code}: {manifest.error.message}")
    console.print(f"queued {c.queued} · running {c.running} · succeeded {c.succeeded} · failed {c.failed} · "
                  f"cancelled {c.cancelled} · {p.fraction:.0%} · eta {_eta(p.eta_s)}")
    problems = [i for i in manifest.items if i.status in (JobStatus.failed, JobStatus.cancelled)]
    if problems:
        table = Table("line", "job", "status", "error")
        for item in problems:
            table.add_row(str(item.line), item.job_id, item.status.value,
                          f"{item.error.code}: {item.error.message}" if item.error else "")
        console.print(table)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


# ---------------------------------------------------------------------------------------------- run
def run_batch(make_runner: RunnerFactory, submit_file: Callable[[Runner, Path], tuple[str, bool]], file: Path,
              fail: Callable[[VideostudioError], Any]) -> BatchManifest:
    """Submit a batch file and process its items here, one progress bar for the batch; its final manifest."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("batch", total=None, detail="expanding")

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "batch.item":
                progress.update(task, total=data["total"], completed=data["ended"], detail=data["status"])
            elif event == "stage.retry":
                progress.console.print(f"  {data['job_id']} ↻ {data['stage']}: {data['error']['code']}")

        try:
            runner = make_runner(on_event=on_event)
        except VideostudioError as exc:
            progress.stop()
            fail(exc)
        batch_id, created = submit_file(runner, file)
        progress.console.print(f"batch {batch_id} ({'new' if created else 'existing'})")
        manifest = drive_batch(runner, batch_id)
        progress.update(task, total=manifest.counts.total, completed=manifest.counts.ended,
                        detail=manifest.status.value)
    print_status(manifest, as_json=False, path=manifest_path(runner, batch_id))
    return manifest


def drive_batch(runner: Runner, batch_id: str) -> BatchManifest:
    """Process this batch's messages (its items' stages and webhooks, and its own webhook) until it has ended."""
    while True:
        manifest = runner.batches.store.load(batch_id)
        if manifest is None:
            raise VideostudioError("batch_not_found", f"no batch {batch_id!r}")
        first_attempts_done = not any(d.status == "pending" and not d.attempts for d in manifest.webhooks)
        if manifest.status.terminal and first_attempts_done:
            return manifest
        worked = False
        for item in manifest.items:
            if not item.status.terminal:
                while runner.work_once(job_id=item.job_id):
                    worked = True
        while runner.work_once(job_id=batch_id):
            worked = True
        if not worked:
            if manifest.status.terminal:
                return manifest  # webhook retries are left to `videostudio up`
            runner.reconcile()
            time.sleep(DRIVE_IDLE_S)


# ---------------------------------------------------------------------------------------------- verbs
def register(runner_for: Callable[[str], Runner], fail: Callable[[VideostudioError], Any]) -> typer.Typer:
    """The `batch` verbs, given how cli.py opens a runner for a bucket and reports an error."""

    @batch_app.command("list")
    def batch_list(bucket: BucketOpt = DEFAULT_BUCKET,
                   as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
        """List batches, newest first, with their counts and progress."""
        print_list(runner_for(bucket), as_json=as_json)

    @batch_app.command("status")
    def batch_status(batch_id: str, bucket: BucketOpt = DEFAULT_BUCKET,
                     as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest.")] = False) -> None:
        """One batch: counts, progress, ETA, and every item that failed or was cancelled (with its line)."""
        runner = runner_for(bucket)
        print_status(_load(runner, batch_id, fail), as_json=as_json, path=manifest_path(runner, batch_id))

    @batch_app.command("cancel")
    def batch_cancel(batch_id: str, bucket: BucketOpt = DEFAULT_BUCKET) -> None:
        """Cancel every item that has not ended: waiting ones now, running ones at their next step."""
        runner = runner_for(bucket)
        _load(runner, batch_id, fail)
        try:
            manifest = runner.cancel_batch(batch_id)
        except VideostudioError as exc:
            fail(exc)
        console.print(f"{batch_id}: cancel requested; {manifest.counts.cancelled} cancelled, "
                      f"{manifest.counts.running} stopping, {manifest.counts.ended} ended")

    return batch_app
