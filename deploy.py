"""The Modal app for videostudio: one function per stage, its GPU, volumes, secret and schedule.

Wiring only. Every function hands its message to the same `Runner` the local workers use
(`core/runner.py`); the routing table is `functions/routes.py`; the reconciler and inbox
scan are `triggers/reconciler.py`. Messages travel by spawning the next function
(`core/queue/spawn.py`).

Deploy (docs/deploy.md has the whole walk-through for AWS S3, R2, MinIO and Ceph):
    modal secret create videostudio VIDEOSTUDIO_BUCKET=s3://my-bucket/studio \
        AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=... \
        VIDEOSTUDIO_WEBHOOK_SECRET=whsec_... VIDEOSTUDIO_API_TOKEN=... VIDEOSTUDIO_EVENTS_SECRET=...
    videostudio deploy          # runs `modal deploy deploy.py` from the repo root

The `web` function serves the HTTP app (triggers/api/): `POST /events` for the bucket's
notifications (S3 via SNS/EventBridge, MinIO, Ceph RGW, an R2 forwarding worker) and the job API.
The scheduled `reconcile` lists `inbox/` every two minutes, the safety net for lost notifications.

Storage: with `VIDEOSTUDIO_BUCKET=s3://…` in the Secret, every function uses the S3 backend
(conditional puts make manifest updates safe across containers) and never touches the bucket
Volume. Without it, the bucket is a local folder on a `modal.Volume` mounted at /bucket: a
Volume shows a container the state it had at the last reload and publishes its writes on commit,
so each function reloads before it reads and commits after it writes, and spawns the next
function only after that commit. A Volume has no cross-container compare-and-swap (last commit
wins per file), so two containers writing one job's manifest at once can lose an update: use S3
for anything but a trial. Volume calls are skipped outside a Modal container (`.local()` in tests).
    modal volume put videostudio-bucket examples/hello.yaml inbox/hello.yaml   # Volume mode only
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import modal

from core.queue.spawn import SpawnQueue
from core.runner import Runner
from core.settings import Settings
from core.storage import is_s3_uri, open_storage
from functions.routes import default_pipeline
from schemas.events import TaskMessage
from triggers.reconciler import InboxScanner, run_once

log = logging.getLogger("videostudio.deploy")

APP_NAME = "videostudio"
MINUTES = 60  # seconds
HOURS = 60 * MINUTES

BUCKET_MOUNT = "/bucket"
BUCKET_VOLUME = "videostudio-bucket"
MODELS_MOUNT = "/models"  # the Hugging Face cache, so real Mochi weights download once
MODELS_VOLUME = "videostudio-models"
SECRET_NAME = "videostudio"  # VIDEOSTUDIO_BUCKET, AWS_*, VIDEOSTUDIO_WEBHOOK_SECRET, VIDEOSTUDIO_API_TOKEN, HF_TOKEN, ...

RENDER_GPUS = ["H100", "A100-80GB"]  # in order of preference
TRAIN_GPUS = ["H100", "A100-80GB"]
# The reconciler re-sends a queued stage whose manifest has not changed for lease_s / 4, and
# re-runs a running stage whose heartbeat is older than lease_s: keep lease_s / 4 above a GPU
# cold start (image pull + container start), so a slow start is not mistaken for a lost message.
LEASE_S = 10 * MINUTES
RECONCILE_EVERY_MINUTES = 2
MAX_WAIT_S = 5 * MINUTES  # one wake_later call waits at most this long, then chains

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
FACENET = "facenet-pytorch==2.6.0"  # its metadata pins old torch/numpy: installed with --no-deps
SOURCE_PACKAGES = ["core", "schemas", "functions", "triggers"]
PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"

STAGE_FUNCTIONS = {"prepare": "run_prepare", "align": "run_align", "train": "run_train", "render": "run_render"}
WEBHOOK_FUNCTION = "run_webhook"
WEB_CONCURRENT_INPUTS = 16  # one web container serves this many requests at once
DELAY_FUNCTION = "wake_later"

app = modal.App(APP_NAME)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("ffmpeg")  # Debian's package brings ffprobe too
    .pip_install(*TORCH_PINS)
    # The project's own dependencies, read from pyproject.toml when the image is built (torch is already satisfied).
    .pip_install_from_pyproject(str(PYPROJECT))
    .run_commands(f"python -m pip install --no-deps {FACENET}")
    .env({
        "VIDEOSTUDIO_LEASE_S": str(LEASE_S),
        "HF_HOME": f"{MODELS_MOUNT}/huggingface",
        "PYTHONUNBUFFERED": "1",
    })
    .add_local_python_source(*SOURCE_PACKAGES)  # last: mounted at container start, not baked in
)

bucket_volume = modal.Volume.from_name(BUCKET_VOLUME, create_if_missing=True)
models_volume = modal.Volume.from_name(MODELS_VOLUME, create_if_missing=True)
secrets = [modal.Secret.from_name(SECRET_NAME)]

# Modal retries a call whose container died (OOM, preemption, a failed commit); errors inside a
# stage are handled by the runner (manifest attempts, backoff), so they never reach these.
stage_retries = modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=10.0)
webhook_retries = modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=5.0)


# ---------------------------------------------------------------------------- wiring helpers
def spawn_target(name: str) -> Any:
    """The app's function called `name`. Inside the app's containers these handles are hydrated."""
    return FUNCTIONS[name]


def make_queue(settings: Settings) -> SpawnQueue:
    return SpawnQueue(
        app_name=APP_NAME,
        stage_functions=STAGE_FUNCTIONS,
        webhook_function=WEBHOOK_FUNCTION,
        delay_function=DELAY_FUNCTION,
        resolve=lambda name: spawn_target(name),  # looked up per spawn, so tests can swap it
        max_attempts=settings.queue_lease_attempts,
    )


_runners: dict[str, tuple[Runner, SpawnQueue, InboxScanner]] = {}


def bucket_uri() -> str:
    """VIDEOSTUDIO_BUCKET from the Secret (`s3://…`), else the bucket Volume's mount."""
    return os.environ.get("VIDEOSTUDIO_BUCKET") or BUCKET_MOUNT


def uses_volume() -> bool:
    return not is_s3_uri(bucket_uri())


def wiring() -> tuple[Runner, SpawnQueue, InboxScanner]:
    """One runner per container and bucket (the scanner remembers what it already hashed)."""
    settings = Settings(bucket=bucket_uri())
    if settings.bucket not in _runners:
        queue = make_queue(settings)
        runner = Runner(open_storage(settings.bucket, settings=settings), queue, default_pipeline(), settings)
        _runners[settings.bucket] = (runner, queue, InboxScanner(runner))
    return _runners[settings.bucket]


def reload_bucket() -> None:
    """See the latest committed bucket: Volume mode, inside a Modal container only (S3 needs nothing)."""
    if uses_volume() and not modal.is_local():
        bucket_volume.reload()


def commit_bucket() -> None:
    """Publish this container's writes to the bucket before anything else reads them (Volume mode)."""
    if uses_volume() and not modal.is_local():
        bucket_volume.commit()


def handle(function_name: str, message: dict[str, Any], attempt: int) -> dict[str, Any]:
    """Run one message with the runner: reload, process, commit, then send the next messages."""
    task = TaskMessage.model_validate(message)
    runner, queue, _ = wiring()
    with queue.hold():  # spawns leave after the commit below, so the next function sees these writes
        reload_bucket()
        try:
            if queue.function_for(task) != function_name:
                queue.dispatch(task, attempt=attempt)  # delivered to the wrong function: pass it on
                return {"job_id": task.job_id, "forwarded_to": queue.function_for(task)}
            runner.process(SpawnQueue.lease(task, attempt=attempt))
        finally:
            commit_bucket()
    manifest = runner.store.load(task.job_id)
    summary: dict[str, Any] = {"job_id": task.job_id, "action": task.action, "stage": task.stage,
                               "status": manifest.status.value if manifest else None}
    if manifest and task.stage in manifest.stages:
        summary["stage_status"] = manifest.stages[task.stage].status.value
    return summary


# ---------------------------------------------------------------------------- functions
@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=2.0, memory=4096,
              timeout=10 * MINUTES, retries=stage_retries)
def run_prepare(message: dict, attempt: int = 1) -> dict:
    """prepare: validate the brief and resolve the plan (CPU)."""
    return handle("run_prepare", message, attempt)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=8.0, memory=16384,
              timeout=30 * MINUTES, retries=stage_retries)
def run_align(message: dict, attempt: int = 1) -> dict:
    """align: MTCNN face detection on downscaled keyframes, alignment and the dataset split (CPU)."""
    return handle("run_align", message, attempt)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume, MODELS_MOUNT: models_volume}, secrets=secrets,
              gpu=TRAIN_GPUS, timeout=12 * HOURS, retries=stage_retries)
def run_train(message: dict, attempt: int = 1) -> dict:
    """train: the avatar LoRA on a GPU. Checkpoints go to the bucket, so a retried container resumes."""
    return handle("run_train", message, attempt)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume, MODELS_MOUNT: models_volume}, secrets=secrets,
              gpu=RENDER_GPUS, timeout=2 * HOURS, retries=stage_retries)
def run_render(message: dict, attempt: int = 1) -> dict:
    """render: Mochi text-to-video on a GPU."""
    return handle("run_render", message, attempt)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=0.5, memory=1024,
              timeout=2 * MINUTES, retries=webhook_retries)
def run_webhook(message: dict, attempt: int = 1) -> dict:
    """One signed webhook delivery attempt; the runner records it and schedules the next."""
    return handle("run_webhook", message, attempt)


@app.function(image=image, secrets=secrets, cpu=0.125, memory=256, timeout=MAX_WAIT_S + 2 * MINUTES,
              retries=modal.Retries(max_retries=3, backoff_coefficient=1.0, initial_delay=1.0))
def wake_later(message: dict, attempt: int, delay_s: float) -> None:
    """A delayed message: wait here (not in the caller), then send it on. Longer waits chain."""
    wait = min(delay_s, MAX_WAIT_S)
    time.sleep(wait)
    queue = make_queue(Settings())  # no bucket here: this function only sends
    queue.dispatch(TaskMessage.model_validate(message), attempt=attempt, delay_s=delay_s - wait)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=1.0, memory=2048,
              timeout=5 * MINUTES, max_containers=1, schedule=modal.Period(minutes=RECONCILE_EVERY_MINUTES))
def reconcile() -> None:
    """The safety net: re-send lost or stalled work, and start jobs for new files in inbox/."""
    runner, queue, scanner = wiring()
    with queue.hold():
        reload_bucket()
        try:
            run_once(runner, scanner)
        finally:
            commit_bucket()


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=1.0, memory=2048,
              timeout=15 * MINUTES)
@modal.concurrent(max_inputs=WEB_CONCURRENT_INPUTS)
@modal.asgi_app()
def web() -> Any:
    """The HTTP app: POST /events (bucket notifications) and the job API, behind VIDEOSTUDIO_API_TOKEN
    and VIDEOSTUDIO_EVENTS_SECRET. New jobs spawn their first stage at once."""
    from fastapi.concurrency import run_in_threadpool

    from triggers.api import create_app

    runner, _, _ = wiring()
    api = create_app(runner.settings, runner=runner)
    if uses_volume():
        @api.middleware("http")
        async def volume_sync(request: Any, call_next: Any) -> Any:
            # Volume mode: see the latest commit, and publish what a request wrote (a brief, a new job).
            # A first stage spawned before that commit may find no manifest yet; `reconcile` re-sends it.
            await run_in_threadpool(reload_bucket)
            response = await call_next(request)
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                await run_in_threadpool(commit_bucket)
            return response
    return api


FUNCTIONS = {
    "run_prepare": run_prepare, "run_align": run_align, "run_train": run_train, "run_render": run_render,
    "run_webhook": run_webhook,
    "wake_later": wake_later, "reconcile": reconcile, "web": web,
}
