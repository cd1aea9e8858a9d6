"""The `videostudio` command line.

Every verb takes `--bucket` (a folder; default `./bucket`, or VIDEOSTUDIO_BUCKET).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import multiprocessing
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from core.jobs import manifest_key
from core.runner import INBOX, Runner
from core.settings import DEFAULT_BUCKET, Settings
from core.storage import LocalStorage, ObjectInfo
from schemas.batch import is_batch_key
from schemas.brief import brief_json_schema, parse_brief
from schemas.errors import VideostudioError
from schemas.events import StorageEvent
from schemas.manifest import JobManifest, JobStatus
from triggers import cli_batches
from triggers.reconciler import InboxScanner, reconcile_forever, run_once
from triggers.watcher import watch_inbox
from triggers.wiring import open_runner
from triggers.worker import work_until

app = typer.Typer(help="videostudio: files in a bucket become videos and custom avatars.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)

BucketOpt = Annotated[str, typer.Option("--bucket", "-b", envvar="VIDEOSTUDIO_BUCKET",
                                        help="Bucket folder or s3://bucket/prefix (or VIDEOSTUDIO_BUCKET).")]
WATCH_POLL_S = 0.25


def _settings(bucket: str) -> Settings:
    return Settings(bucket=bucket)


def _runner(bucket: str, **kwargs: Any) -> Runner:
    return open_runner(_settings(bucket), **kwargs)


def _fail(exc: VideostudioError) -> NoReturn:
    err.print(f"[red]error[/red] {exc.code}: {exc.message}")
    raise typer.Exit(2)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])


def _print_event(event: str, data: dict[str, Any]) -> None:
    if event == "stage.progress":
        return
    stamp = time.strftime("%H:%M:%S")
    if event == "job.created":
        console.print(f"{stamp} [cyan]job[/cyan] {data['job_id']} ({data['kind']}) from {data['key']}")
    elif event == "stage.started":
        console.print(f"{stamp}   {data['job_id']} → {data['stage']} (attempt {data['attempt']})")
    elif event == "stage.succeeded":
        console.print(f"{stamp}   {data['job_id']} ✓ {data['stage']} in {data['seconds']:.2f}s")
    elif event == "stage.retry":
        console.print(f"{stamp}   {data['job_id']} ↻ {data['stage']}: {data['error']['code']} (retry in {data['delay_s']:.0f}s)")
    elif event == "job.finished":
        colour = {"succeeded": "green", "failed": "red"}.get(data["status"], "yellow")
        detail = f" {data['error']['code']}: {data['error']['message']}" if data.get("error") else ""
        console.print(f"{stamp} [{colour}]{data['status']}[/{colour}] {data['job_id']}{detail}")
    elif event == "webhook.attempt":
        console.print(f"{stamp}   {data['job_id']} webhook → {data['status_code'] or 'no response'}")
    elif event == "reconciled":
        console.print(f"{stamp} [yellow]re-queued[/yellow] {', '.join(data['requeued'])}")
    elif event in ("batch.created", "batch.completed", "batch.failed"):
        console.print(f"{stamp} [cyan]{event}[/cyan] {data['batch_id']} "
                      f"{', '.join(f'{k} {v}' for k, v in data.items() if k not in ('batch_id', 'error', 'source'))}")


def _worker_process(bucket: str, stop_event: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    runner = _runner(bucket, on_event=_print_event)
    work_until(runner, stop_event)


@app.command()
def up(bucket: BucketOpt = DEFAULT_BUCKET,
       workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
       http_port: Annotated[Optional[int], typer.Option(
           "--http-port", min=1, max=65535,
           help="Also serve the HTTP API here (POST /events for bucket notifications, jobs, briefs).")] = None,
       http_host: Annotated[str, typer.Option("--http-host", help="Address for --http-port.")] = "127.0.0.1",
       sqs: Annotated[Optional[str], typer.Option(
           "--sqs", help="Also long-poll this SQS queue URL for bucket notifications.")] = None,
       verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run workers until Ctrl-C: a folder bucket's inbox/ is watched; an s3:// bucket's inbox/ is scanned
    every VIDEOSTUDIO_RECONCILE_INTERVAL_S, and bucket notifications start jobs at once (--http-port, --sqs)."""
    _setup_logging(verbose)
    try:
        runner = _runner(bucket, on_event=_print_event)
    except VideostudioError as exc:
        _fail(exc)
    stop = threading.Event()
    mp_stop = multiprocessing.get_context("spawn").Event()

    def request_stop(*_: Any) -> None:
        stop.set()
        mp_stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    scanner = InboxScanner(runner)

    def submit_key(key: str) -> None:
        try:
            runner.submit(StorageEvent(bucket=runner.storage.name, key=key, source="folder"))
        except VideostudioError as exc:
            err.print(f"[red]cannot submit[/red] {key}: {exc.code}: {exc.message}")

    run_once(runner, scanner)  # on start: recover whatever the last run left
    threads = [
        threading.Thread(target=reconcile_forever, args=(runner, stop),
                         kwargs={"interval_s": runner.settings.reconcile_interval_s}, name="reconciler", daemon=True),
    ]
    if isinstance(runner.storage, LocalStorage):
        threads.append(threading.Thread(target=watch_inbox, args=(runner.storage, submit_key, stop),
                                        kwargs={"quiet_s": runner.settings.watch_quiet_s}, name="watcher", daemon=True))
        where = f"watching {bucket}/inbox"
    else:  # no folder to watch: the inbox scan, plus whatever notifications are wired in
        where = f"scanning {bucket} inbox/ every {runner.settings.reconcile_interval_s:g}s"
    if sqs:
        from triggers.intake import poll_sqs

        threads.append(threading.Thread(target=poll_sqs, args=(runner, sqs), kwargs={"stop": stop},
                                        name="sqs", daemon=True))
        where += f", polling {sqs}"
    if http_port is not None:
        threads.append(_http_thread(runner, http_host, http_port, stop))
        where += f", HTTP API on http://{http_host}:{http_port}"
    for thread in threads:
        thread.start()
    extra = [multiprocessing.get_context("spawn").Process(target=_worker_process, args=(bucket, mp_stop), daemon=True)
             for _ in range(workers - 1)]
    for process in extra:
        process.start()
    console.print(f"[bold]videostudio up[/bold]: {where}, with {workers} worker(s). Ctrl-C stops.")
    work_until(runner, stop)
    for process in extra:
        process.join(timeout=30)
    console.print("stopped")


def _http_thread(runner: Runner, host: str, port: int, stop: threading.Event) -> threading.Thread:
    """The HTTP API (with POST /events) on this runner, in a thread that ends when `stop` is set."""
    import uvicorn

    from triggers.api import configured_token, create_app

    if configured_token(runner.settings) is None:
        _fail(VideostudioError("no_api_token", "--http-port needs VIDEOSTUDIO_API_TOKEN (and VIDEOSTUDIO_EVENTS_SECRET "
                                               "for bucket notifications)"))
    server = uvicorn.Server(uvicorn.Config(create_app(runner.settings, runner=runner), host=host, port=port,
                                           log_level="warning", proxy_headers=False, server_header=False))

    def serve() -> None:
        threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True).start()
        server.run()

    return threading.Thread(target=serve, name="http", daemon=True)


@app.command()
def submit(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
           bucket: BucketOpt = DEFAULT_BUCKET) -> None:
    """Copy FILE into inbox/ and queue its job (a `*.batch.yaml|.jsonl|.csv`: its batch, a job per item)."""
    runner = _runner(bucket)
    job_id, created = _submit_file(runner, file)
    batch = is_batch_key(file.name)
    console.print(f"{'queued' if created else 'already known'}: {'batch ' if batch else ''}{job_id}")
    console.print(f"manifest: {cli_batches.manifest_path(runner, job_id) if batch else _manifest_path(runner, job_id)}")


def _submit_file(runner: Runner, file: Path) -> tuple[str, bool]:
    key = f"{INBOX}{file.name}"
    return _submit_input(runner, key, lambda: runner.storage.put_file(key, file))


def _submit_bytes(runner: Runner, key: str, data: bytes, *, content_type: str) -> tuple[str, bool]:
    """A brief built here, written to `key` in inbox/ and queued as `submit` queues a file."""
    return _submit_input(runner, key, lambda: runner.storage.put_bytes(key, data, content_type=content_type))


def _submit_input(runner: Runner, key: str, write: Callable[[], ObjectInfo]) -> tuple[str, bool]:
    try:
        info = write()
        return runner.submit(StorageEvent(bucket=runner.storage.name, key=key, size=info.size, etag=info.etag,
                                          source="cli"))
    except VideostudioError as exc:
        _fail(exc)
        raise


def _manifest_path(runner: Runner, job_id: str) -> str:
    storage = runner.storage
    return str(storage.path(manifest_key(job_id))) if isinstance(storage, LocalStorage) else manifest_key(job_id)


@app.command()
def run(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
        bucket: BucketOpt = DEFAULT_BUCKET,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Submit FILE and process its job here to completion. Exit 0 only if it succeeded.
    A batch file: its items, with one progress bar; exit 0 only if every item succeeded."""
    _setup_logging(verbose)
    if is_batch_key(file.name):
        batch = cli_batches.run_batch(lambda **kw: _runner(bucket, **kw), _submit_file, file, _fail)
        raise typer.Exit(0 if batch.counts.succeeded == batch.counts.total and batch.counts.total else 1)
    with _progress_runner(bucket) as (runner, progress):
        job_id, created = _submit_file(runner, file)
        progress.console.print(f"job {job_id} ({'new' if created else 'existing'})")
        manifest = _drive(runner, job_id)
    _print_summary(runner, manifest)
    raise typer.Exit(0 if manifest.status == JobStatus.succeeded else 1)


@contextmanager
def _progress_runner(bucket: str) -> Iterator[tuple[Runner, Progress]]:
    """A runner whose events draw a progress bar per stage (retries, webhooks and the end printed as lines)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def on_event(event: str, data: dict[str, Any]) -> None:
            stage = data.get("stage")
            if event == "stage.started":
                tasks[stage] = progress.add_task(f"{stage}", total=1.0, detail=f"attempt {data['attempt']}")
            elif event == "stage.progress" and stage in tasks:
                step = f"step {data['step']}/{data['total']}" if data.get("total") else data.get("message", "")
                progress.update(tasks[stage], completed=data["fraction"], detail=step)
            elif event == "stage.succeeded" and stage in tasks:
                progress.update(tasks[stage], completed=1.0, detail=f"done in {data['seconds']:.2f}s")
            elif event in ("stage.retry", "webhook.attempt", "job.finished"):
                _print_event(event, data)

        try:
            runner = _runner(bucket, on_event=on_event)
        except VideostudioError as exc:
            progress.stop()
            _fail(exc)
        yield runner, progress


def _drive(runner: Runner, job_id: str) -> JobManifest:
    """Process this job's messages until it is finished and its due webhooks are sent once."""
    while True:
        manifest = runner.store.load(job_id)
        if manifest.status.terminal and not any(
                d.status == "pending" and not d.attempts for d in manifest.webhooks):
            return manifest
        if not runner.work_once(job_id=job_id):
            if manifest.status.terminal:
                return manifest  # remaining webhook retries are left to `videostudio up`
            if runner.queue.pending(job_id) == 0:
                runner.reconcile()
            time.sleep(0.05)


def _print_summary(runner: Runner, manifest: JobManifest) -> None:
    colour = {"succeeded": "green", "failed": "red"}.get(manifest.status.value, "yellow")
    console.print(f"[{colour}]{manifest.status.value}[/{colour}] job {manifest.job_id}")
    console.print(f"manifest: {_manifest_path(runner, manifest.job_id)}")
    if manifest.error:
        console.print(f"error: {manifest.error.code}: {manifest.error.message}")
    storage = runner.storage
    for name, key in manifest.outputs.items():
        where = storage.path(key) if isinstance(storage, LocalStorage) else key
        console.print(f"{name}: {where}")
    for warning in manifest.warnings:
        console.print(f"[yellow]note[/yellow]: {warning}")


# -- say: a talking avatar speaks a text (or a recording), driven here like `run`
@app.command()
def say(avatar: Annotated[str, typer.Argument(help="A deployed talking avatar.")],
        text: Annotated[Optional[str], typer.Argument(help="What it says (or give --audio).")] = None,
        voice: Annotated[Optional[str], typer.Option(
            "--voice", help="Piper voice id or local .onnx path that speaks TEXT (default: the bundled one).")] = None,
        audio: Annotated[Optional[Path], typer.Option(
            "--audio", exists=True, dir_okay=False, readable=True,
            help="A recording it says instead of TEXT (wav, mp3, m4a, ogg, flac); uploaded into the bucket.")] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Same brief + seed → same video.")] = None,
        output: Annotated[Optional[Path], typer.Option(
            "--output", "-o", dir_okay=False, help="Copy the MP4 here too.")] = None,
        bucket: BucketOpt = DEFAULT_BUCKET,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Make AVATAR say TEXT (or --audio FILE) and wait for the MP4. Exit 0 only if it succeeded; the last
    line is the MP4's path (its key on an s3:// bucket, or --output)."""
    _setup_logging(verbose)
    recording = _recording(audio) if audio is not None else None
    brief, audio_key = _say_brief(avatar, text, recording=recording, voice=voice, seed=seed)
    with _progress_runner(bucket) as (runner, progress):
        if recording is not None and audio_key is not None:
            _upload_recording(runner, audio_key, recording.path)
            progress.console.print(f"recording: {audio_key}")
        job_id, _ = _submit_bytes(runner, f"{INBOX}say-{avatar}-{uuid.uuid4().hex[:8]}.yaml", brief,
                                  content_type="application/yaml")
        progress.console.print(f"job {job_id}")
        manifest = _drive(runner, job_id)
    _print_summary(runner, manifest)
    if manifest.status != JobStatus.succeeded:
        raise typer.Exit(1)
    print(_deliver_video(runner, manifest, output))  # plain print: a long path must not wrap


@dataclass(frozen=True)
class _Recording:
    """A local recording for `say --audio`: its file, its name as uploaded, its sha256."""

    path: Path
    filename: str
    sha256: str

    def key(self, avatar: str) -> str:
        """The key POST /briefs/speech gives the same upload."""
        from triggers.api.params import speech_upload_key

        return speech_upload_key(avatar, self.filename, self.sha256)


def _recording(path: Path) -> _Recording:
    from triggers.api.params import AUDIO_SUFFIXES, upload_filename

    try:
        filename = upload_filename(path.name, AUDIO_SUFFIXES, kind="audio")
    except VideostudioError as exc:
        _fail(exc)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return _Recording(path, filename, digest.hexdigest())


def _say_brief(avatar: str, text: str | None, *, recording: _Recording | None, voice: str | None,
               seed: int | None) -> tuple[bytes, str | None]:
    """The brief `say` submits and the recording's key, validated as prepare will validate them: a bad brief
    fails here, before anything is uploaded or queued."""
    if text is not None and recording is not None:
        _fail(VideostudioError("conflicting_speech", "give TEXT or --audio FILE, not both"))
    if text is None and recording is None:
        _fail(VideostudioError("missing_speech", "say what? give TEXT or --audio FILE"))
    document: dict[str, Any] = {"avatar": avatar}
    if recording is not None:
        # A provisional key first: the avatar id, validated with the rest, names the real key's folder.
        document["audio"] = f"uploads/{recording.filename}"
        _validated(document)
        document["audio"] = recording.key(avatar)
    else:
        document["script"] = text
    document.update({name: value for name, value in (("voice", voice), ("seed", seed)) if value is not None})
    return _validated(document), document.get("audio")


def _validated(document: dict[str, Any]) -> bytes:
    data = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
    try:
        parse_brief(data, "say.yaml")
    except VideostudioError as exc:
        _fail(exc)
    return data


def _upload_recording(runner: Runner, key: str, path: Path) -> None:
    if runner.storage.stat(key) is not None:
        return  # named by its content: the same recording is there already
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        runner.storage.put_file(key, path, content_type=content_type)
    except VideostudioError as exc:
        _fail(exc)


def _deliver_video(runner: Runner, manifest: JobManifest, output: Path | None) -> str:
    """Where the job's MP4 is for the caller: copied to `output`, else its file (folder bucket) or key."""
    key = manifest.outputs.get("video")
    if key is None:
        _fail(VideostudioError("no_video", f"job {manifest.job_id} succeeded without a video output"))
    if output is not None:
        try:
            return str(runner.storage.download(key, output))
        except (OSError, VideostudioError) as exc:
            _fail(exc if isinstance(exc, VideostudioError) else VideostudioError("output_not_written", str(exc)))
    storage = runner.storage
    return str(storage.path(key)) if isinstance(storage, LocalStorage) else key


def _load_or_exit(runner: Runner, job_id: str) -> JobManifest:
    try:
        manifest = runner.store.load(job_id)
    except VideostudioError as exc:
        _fail(exc)
    if manifest is None:
        _fail(VideostudioError("job_not_found", f"no job {job_id!r}"))
    return manifest


@app.command()
def status(job_id: str, bucket: BucketOpt = DEFAULT_BUCKET,
           as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest.")] = False) -> None:
    """Show one job."""
    runner = _runner(bucket)
    manifest = _load_or_exit(runner, job_id)
    if as_json:
        print(manifest.model_dump_json(indent=2))
        return
    _print_summary(runner, manifest)
    table = Table("stage", "status", "attempts", "progress", "seconds", "error")
    for name, record in manifest.stages.items():
        table.add_row(name, record.status.value, str(record.attempts),
                      f"{record.progress.fraction:.0%}" if record.progress else "",
                      f"{manifest.cost.seconds.get(name, 0):.2f}", record.error.code if record.error else "")
    console.print(table)


@app.command()
def jobs(bucket: BucketOpt = DEFAULT_BUCKET,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """List jobs, newest first."""
    runner = _runner(bucket)
    manifests = sorted(runner.store.all(), key=lambda m: m.created_at, reverse=True)
    if as_json:
        print(json.dumps([{"job_id": m.job_id, "kind": m.kind, "status": m.status.value, "stage": m.current_stage(),
                           "input": m.input.key, "updated_at": m.updated_at.isoformat()} for m in manifests], indent=2))
        return
    table = Table("kind", "status", "stage", "input", "updated")
    # Ids are what people copy into other commands: never wrap or truncate them.
    table.columns.insert(0, Column("job", no_wrap=True, min_width=max((len(m.job_id) for m in manifests), default=3)))
    for manifest in manifests:
        table.add_row(manifest.job_id, manifest.kind, manifest.status.value, manifest.current_stage() or "",
                      manifest.input.key, manifest.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def _describe(manifest: JobManifest) -> str:
    stage = manifest.current_stage()
    line = f"{manifest.job_id} {manifest.status.value}"
    if stage and not manifest.status.terminal:
        record = manifest.stages[stage]
        line += f" {stage}:{record.status.value}"
        if record.progress:
            line += f" {record.progress.fraction:.0%} {record.progress.message}"
    if manifest.error:
        line += f" {manifest.error.code}"
    return line


@app.command()
def watch(job_id: Annotated[Optional[str], typer.Argument()] = None, bucket: BucketOpt = DEFAULT_BUCKET) -> None:
    """Print manifest changes as they happen (one job until it finishes, or every job until Ctrl-C)."""
    runner = _runner(bucket)
    if job_id:
        _load_or_exit(runner, job_id)
    last: dict[str, str] = {}
    try:
        while True:
            manifests = [runner.store.load(job_id)] if job_id else list(runner.store.all())
            for manifest in manifests:
                line = _describe(manifest)
                if last.get(manifest.job_id) != line:
                    last[manifest.job_id] = line
                    console.print(f"{time.strftime('%H:%M:%S')} {line}")
            if job_id and manifests[0].status.terminal:
                return
            time.sleep(WATCH_POLL_S)
    except KeyboardInterrupt:
        return


@app.command()
def cancel(job_id: str, bucket: BucketOpt = DEFAULT_BUCKET) -> None:
    """Cancel a job: now if it is waiting, at the next step if it is running."""
    runner = _runner(bucket)
    try:
        manifest = runner.cancel(job_id)
    except VideostudioError as exc:
        _fail(exc)
    console.print(f"{job_id}: {'cancelled' if manifest.status == JobStatus.cancelled else 'cancel requested'}")


@app.command()
def retry(job_id: str, bucket: BucketOpt = DEFAULT_BUCKET) -> None:
    """Run a failed or dead-lettered job again from the stage that failed."""
    runner = _runner(bucket)
    try:
        manifest = runner.retry(job_id)
    except VideostudioError as exc:
        _fail(exc)
    stage = manifest.current_stage()
    console.print(f"{job_id}: queued again from {stage} (retry {len(manifest.retries)})")


@app.command()
def schema(which: Annotated[str, typer.Argument(help="brief | manifest")]) -> None:
    """Print JSON Schema for briefs or manifests (for editor validation)."""
    if which == "brief":
        document = brief_json_schema()
    elif which == "manifest":
        document = JobManifest.model_json_schema()
    else:
        err.print("choose brief or manifest")
        raise typer.Exit(2)
    print(json.dumps(document, indent=2))


# -- deploy: `modal deploy deploy.py` from the repo root (self-contained; modal itself is never imported here)
def _modal_cli() -> str | None:
    """The `modal` command: the one beside this Python first, then PATH."""
    import os
    import shutil

    return shutil.which("modal", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _has_modal_token() -> bool:
    """A token in MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, or in a profile of ~/.modal.toml (MODAL_CONFIG_PATH)."""
    import os
    import tomllib

    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    config = Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    try:
        profiles = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(isinstance(p, dict) and p.get("token_id") and p.get("token_secret") for p in profiles.values())


@app.command()
def deploy() -> None:
    """Deploy the Modal app: runs `modal deploy deploy.py` from the repo root."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "deploy.py").is_file():
        err.print(f"[red]error[/red] no deploy.py in {root}: deploy from a source checkout (pip install -e .)")
        raise typer.Exit(2)
    modal_cli = _modal_cli()
    if modal_cli is None:
        err.print("[red]error[/red] the `modal` command is not installed: pip install modal")
        raise typer.Exit(2)
    if not _has_modal_token():
        err.print("[red]error[/red] no Modal token: run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)")
        raise typer.Exit(2)
    console.print(f"running: modal deploy deploy.py (in {root})")
    raise typer.Exit(subprocess.call([modal_cli, "deploy", "deploy.py"], cwd=root))


@app.command()
def serve(bucket: BucketOpt = DEFAULT_BUCKET,
          host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
          insecure_no_auth: Annotated[bool, typer.Option(
              "--insecure-no-auth", help="Serve without a token (loopback addresses only; never in production).")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Serve the HTTP API (needs VIDEOSTUDIO_API_TOKEN). It only queues work: run `videostudio up` beside it."""
    from triggers.api import serve as serve_api  # lazy: FastAPI and uvicorn only for this verb

    _setup_logging(verbose)
    try:
        serve_api(_settings(bucket), host=host, port=port, insecure_no_auth=insecure_no_auth)
    except VideostudioError as exc:
        _fail(exc)


intake_app = typer.Typer(help="Bucket notifications in from a queue (POST /events is on `serve`/`up --http-port`).",
                         no_args_is_help=True)
app.add_typer(intake_app, name="intake")


@intake_app.command("sqs")
def intake_sqs(queue_url: Annotated[str, typer.Argument(help="The SQS queue URL S3 (or SNS, EventBridge) sends to.")],
               bucket: BucketOpt = DEFAULT_BUCKET,
               wait_s: Annotated[int, typer.Option(min=0, max=20, help="Long-poll wait per request.")] = 20,
               once: Annotated[bool, typer.Option("--once", help="One receive, then exit.")] = False,
               endpoint_url: Annotated[Optional[str], typer.Option(
                   help="SQS endpoint (default: AWS, or AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL).")] = None,
               region: Annotated[Optional[str], typer.Option(help="SQS region (default: AWS_REGION).")] = None,
               verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Long-poll QUEUE_URL and start the job of each inbox/ object it announces. A message is deleted once
    handled and left for SQS to deliver again when its submission failed. Run `up` for the workers."""
    from triggers.intake import poll_sqs, sqs_client

    _setup_logging(verbose)
    try:
        runner = _runner(bucket, on_event=_print_event)
    except VideostudioError as exc:
        _fail(exc)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def report(message_id: str, result: Any) -> None:
        for ignored in result.summary()["ignored"]:
            console.print(f"{time.strftime('%H:%M:%S')}   ignored {ignored['key'] or message_id}: {ignored['reason']}")
        for failed in result.summary()["failed"]:
            console.print(f"{time.strftime('%H:%M:%S')} [red]left for retry[/red] {failed['key']}: {failed['reason']}")

    console.print(f"[bold]videostudio intake sqs[/bold]: {queue_url} → {bucket}. Ctrl-C stops.")
    stats = poll_sqs(runner, queue_url, client=sqs_client(region=region, endpoint_url=endpoint_url), stop=stop,
                     wait_s=wait_s, once=once, on_result=report)
    console.print(f"received {stats.received}, submitted {stats.submitted}, deleted {stats.deleted}, left {stats.left}")


avatars_app = typer.Typer(help="Deployed avatars: list, deploy a finished train job, delete.", no_args_is_help=True)
app.add_typer(avatars_app, name="avatars")


def _avatar_registry(bucket: str):
    from core.avatars import AvatarRegistry
    from core.storage import open_storage

    try:
        return AvatarRegistry(open_storage(bucket))
    except VideostudioError as exc:
        _fail(exc)


@avatars_app.command("list")
def avatars_list(bucket: BucketOpt = DEFAULT_BUCKET,
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """List deployed avatars."""
    avatars = sorted(_avatar_registry(bucket).list(), key=lambda a: a.avatar_id)
    if as_json:
        print(json.dumps([a.model_dump(mode="json") for a in avatars], indent=2))
        return
    table = Table("trigger", "base model", "rank", "from job", "deployed")
    table.columns.insert(0, Column("avatar", no_wrap=True))
    for a in avatars:
        table.add_row(a.avatar_id, a.trigger_token, a.base_model, str(a.lora_rank), a.job_id,
                      a.deployed_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@avatars_app.command("deploy")
def avatars_deploy(job_id: str, bucket: BucketOpt = DEFAULT_BUCKET) -> None:
    """Deploy the avatar that the succeeded train job JOB_ID produced."""
    from core.avatars import deploy_from_job
    from core.jobs import ManifestStore

    registry = _avatar_registry(bucket)
    try:
        manifest = ManifestStore(registry.storage).load(job_id)
        if manifest is None:
            raise VideostudioError("job_not_found", f"no job {job_id!r}")
        avatar = deploy_from_job(registry, manifest)
    except VideostudioError as exc:
        _fail(exc)
    console.print(f"deployed avatar {avatar.avatar_id} (trigger {avatar.trigger_token!r}) from {job_id}")


@avatars_app.command("delete")
def avatars_delete(avatar_id: str, bucket: BucketOpt = DEFAULT_BUCKET,
                   yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete the deployed avatar AVATAR_ID (its manifest first, then its weights)."""
    registry = _avatar_registry(bucket)
    try:
        registry.require(avatar_id)
        if not yes:
            typer.confirm(f"delete avatar {avatar_id}?", abort=True)
        registry.delete(avatar_id)
    except VideostudioError as exc:
        _fail(exc)
    console.print(f"deleted avatar {avatar_id}")


from triggers.plan import plan_command  # noqa: E402  (videostudio plan: the VRAM planner)

app.command("plan")(plan_command)


app.add_typer(cli_batches.register(_runner, _fail), name="batch")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
