"""The Modal app for videostudio: one function per stage, its GPU, volumes, secret and schedule.

Wiring only. Every function hands its message to the same `Runner` the local workers use
(`core/runner.py`); the routing tables are `functions/routes.py`; the reconciler and inbox
scan are `triggers/reconciler.py`. Messages travel by spawning the next function
(`core/queue/spawn.py`).

Per-backend GPU functions: a backend listed in `functions/routes.py` `BACKEND_FUNCTIONS` has its
train and render stages run by methods of a class of its own (`InfiniteTalk.train`,
`InfiniteTalk.render`), whose container loads the backend's models once (`@modal.enter`).
The queue's `route` hook picks them: for a train or render message it reads the job's manifest
(one GET per such spawn, and one more when the receiving function checks it is the right one).
Every other backend's train and render go to `run_train` / `run_render`.

The image pins exact versions (scripts/modal-requirements.txt, written by scripts/lock-modal.sh),
so that two deploys build the same image.

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

from core.jobs import ManifestStore
from core.queue.spawn import SpawnQueue
from core.runner import Runner
from core.settings import Settings
from core.storage import is_s3_uri, open_storage
from functions.routes import ROUTED_STAGES, default_pipeline, stage_function
from schemas.events import TaskMessage
from triggers.reconciler import InboxScanner, run_once

log = logging.getLogger("videostudio.deploy")

APP_NAME = "videostudio"
MINUTES = 60  # seconds
HOURS = 60 * MINUTES

BUCKET_MOUNT = "/bucket"
BUCKET_VOLUME = "videostudio-bucket"
MODELS_MOUNT = "/models"  # the Hugging Face cache, so real Mochi and InfiniteTalk weights download once
MODELS_VOLUME = "videostudio-models"
SECRET_NAME = "videostudio"  # VIDEOSTUDIO_BUCKET, AWS_*, VIDEOSTUDIO_WEBHOOK_SECRET, VIDEOSTUDIO_API_TOKEN, HF_TOKEN, ...

RENDER_GPUS = ["H100", "A100-80GB"]  # in order of preference
TRAIN_GPUS = ["H100", "A100-80GB"]


def gpu_list(value: str | None, default: list[str]) -> list[str]:
    """A comma-separated list of Modal GPU names ("L40S, L4", "A100-80GB:2"); the default when empty."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or list(default)


# backend: infinitetalk (Wan2.1-I2V-14B + audio, 18.9 B parameters: 35.2 GiB in bf16, about 51 GiB at the
# peak of a 480p chunk with every model resident, per `videostudio plan --backend infinitetalk`): bf16
# needs an 80 GB card, and so does training its LoRA. VIDEOSTUDIO_INFINITETALK_GPUS, read when
# `modal deploy` imports this file, replaces the list for a low-memory, render-only deployment
# (docs/deploy.md: fp8 on a 48 GB L40S or an A100-40GB; a 24 GB L4/A10G needs nf4, or fp8 with model
# CPU offload, which the planner puts just over 24 GB).
INFINITETALK_GPUS = gpu_list(os.environ.get("VIDEOSTUDIO_INFINITETALK_GPUS"), ["H100", "A100-80GB"])
INFINITETALK_CLASS = "InfiniteTalk"
INFINITETALK_TRAIN = f"{INFINITETALK_CLASS}.train"  # the names functions/routes.py BACKEND_FUNCTIONS uses
INFINITETALK_RENDER = f"{INFINITETALK_CLASS}.render"
# In the container (the Secret): 0 skips loading the default checkpoint at container start, for a
# deployment whose avatars use another `infinitetalk.base_model` (or one that loads quantized weights).
INFINITETALK_PRELOAD_ENV = "VIDEOSTUDIO_INFINITETALK_PRELOAD"

# The reconciler re-sends a queued stage whose manifest has not changed for lease_s / 4, and
# re-runs a running stage whose heartbeat is older than lease_s: keep lease_s / 4 above a GPU
# cold start (image pull + container start), so a slow start is not mistaken for a lost message.
LEASE_S = 10 * MINUTES
RECONCILE_EVERY_MINUTES = 2
MAX_WAIT_S = 5 * MINUTES  # one wake_later call waits at most this long, then chains

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]  # scripts/lock-modal.sh holds the lock to these
FACENET = "facenet-pytorch==2.6.0"  # its metadata pins old torch/numpy: installed with --no-deps
MEDIAPIPE = "mediapipe==0.10.14"  # pins protobuf<5 (modal needs newer) and pulls jax: --no-deps
SOURCE_PACKAGES = ["core", "schemas", "functions", "triggers"]
REPO_ROOT = Path(__file__).resolve().parent
PYPROJECT = REPO_ROOT / "pyproject.toml"
# Exact pins of pyproject.toml's runtime dependency closure: re-lock with scripts/lock-modal.sh.
MODAL_REQUIREMENTS = REPO_ROOT / "scripts" / "modal-requirements.txt"

STAGE_FUNCTIONS = {"prepare": "run_prepare", "align": "run_align", "train": "run_train", "render": "run_render",
                   "compose": "run_compose"}
WEBHOOK_FUNCTION = "run_webhook"
WEB_CONCURRENT_INPUTS = 16  # one web container serves this many requests at once
DELAY_FUNCTION = "wake_later"

app = modal.App(APP_NAME)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("ffmpeg")  # Debian's package brings ffprobe too
    .pip_install(*TORCH_PINS)  # a layer of its own: re-locking the rest does not download torch again
    # Everything else, pinned exactly (the lock holds torch at TORCH_PINS, so this layer keeps it).
    .pip_install_from_requirements(str(MODAL_REQUIREMENTS))
    .run_commands(f"python -m pip install --no-deps {FACENET} {MEDIAPIPE}")
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
def app_handle(name: str) -> Any:
    """The app's function called `name`, or for "Cls.method" that method of the app's class (the app-local
    class: inside the app's containers it is hydrated, like the functions)."""
    if "." in name:
        cls_name, method = name.split(".", 1)
        return getattr(CLASSES[cls_name](), method)
    return FUNCTIONS[name]


def spawn_target(name: str) -> Any:
    """What the queue spawns for a function name. Inside the app's containers these handles are hydrated."""
    return app_handle(name)


def backend_route(store: ManifestStore, task: TaskMessage) -> str | None:
    """The queue's route: a train or render message of a backend with functions of its own (functions/routes.py
    BACKEND_FUNCTIONS) goes to them. Reads the job's manifest: one GET per train/render spawn (none for
    prepare, align or webhooks). No manifest, or one that names no such backend: None (the stage's function)."""
    if task.stage not in ROUTED_STAGES:
        return None
    manifest = store.load(task.job_id)
    return stage_function(manifest, task.stage) if manifest is not None else None


def make_queue(settings: Settings, store: ManifestStore | None = None) -> SpawnQueue:
    """The spawn queue; with the bucket's `store`, train and render are routed per backend (`backend_route`).
    Without one (wake_later, which has no bucket) every stage goes to its stage function."""
    return SpawnQueue(
        app_name=APP_NAME,
        stage_functions=STAGE_FUNCTIONS,
        webhook_function=WEBHOOK_FUNCTION,
        delay_function=DELAY_FUNCTION,
        resolve=lambda name: spawn_target(name),  # looked up per spawn, so tests can swap it
        max_attempts=settings.queue_lease_attempts,
        route=(lambda task: backend_route(store, task)) if store is not None else None,
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
        storage = open_storage(settings.bucket, settings=settings)
        queue = make_queue(settings, ManifestStore(storage))
        runner = Runner(storage, queue, default_pipeline(), settings)
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
            target = queue.function_for(task)  # a train/render message: one manifest GET (backend_route)
            if target != function_name:
                queue.dispatch(task, attempt=attempt, function=target)  # delivered to the wrong function: pass it on
                return {"job_id": task.job_id, "forwarded_to": target}
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


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=8.0, memory=16384,
              timeout=2 * HOURS, retries=stage_retries)
def run_compose(message: dict, attempt: int = 1) -> dict:
    """compose: a new background behind the person (mediapipe segmentation and ffmpeg, CPU)."""
    return handle("run_compose", message, attempt)


@app.function(image=image, volumes={BUCKET_MOUNT: bucket_volume}, secrets=secrets, cpu=0.5, memory=1024,
              timeout=2 * MINUTES, retries=webhook_retries)
def run_webhook(message: dict, attempt: int = 1) -> dict:
    """One signed webhook delivery attempt; the runner records it and schedules the next."""
    return handle("run_webhook", message, attempt)


@app.function(image=image, secrets=secrets, cpu=0.125, memory=256, timeout=MAX_WAIT_S + 2 * MINUTES,
              retries=modal.Retries(max_retries=3, backoff_coefficient=1.0, initial_delay=1.0))
def wake_later(message: dict, attempt: int, delay_s: float, function: str | None = None) -> None:
    """A delayed message: wait here (not in the caller), then send it on to `function`, the one the sender
    chose (None: the stage's function). Longer waits chain."""
    wait = min(delay_s, MAX_WAIT_S)
    time.sleep(wait)
    queue = make_queue(Settings())  # no bucket here: this function only sends
    queue.dispatch(TaskMessage.model_validate(message), attempt=attempt, delay_s=delay_s - wait, function=function)


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


def infinitetalk_preload_enabled() -> bool:
    return os.environ.get(INFINITETALK_PRELOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def preload_infinitetalk() -> bool:
    """Load the default checkpoint's models (InfiniteTalkOptions()) onto the GPU, from the models Volume's
    Hugging Face cache (HF_HOME; downloaded there on first use). The backend's own `load_models` calls
    then find them in its per-process cache. A failure is logged, not raised: the stage loads again and
    records the error in the job's manifest (a raising enter would only crash and restart the container)."""
    if not infinitetalk_preload_enabled():
        log.info("InfiniteTalk: preload skipped (%s=0)", INFINITETALK_PRELOAD_ENV)
        return False
    from functions.models.infinitetalk_loading import load_models
    from schemas.brief import InfiniteTalkOptions

    clock = time.perf_counter()
    try:
        load_models(InfiniteTalkOptions(), device="cuda")
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("InfiniteTalk: preload failed; each stage loads its models itself")
        return False
    log.info("InfiniteTalk: default models loaded in %.0f s", time.perf_counter() - clock)
    return True


# One class for both stages, so a container that trained an avatar can render its preview with the models
# it already holds. The timeout is train's (a render is far shorter); GPUs: INFINITETALK_GPUS above.
@app.cls(image=image, volumes={BUCKET_MOUNT: bucket_volume, MODELS_MOUNT: models_volume}, secrets=secrets,
         gpu=INFINITETALK_GPUS, timeout=12 * HOURS, retries=stage_retries)
class InfiniteTalk:
    """backend: infinitetalk's train and render stages, on a GPU whose container loads the models once."""

    @modal.enter()
    def load(self) -> None:
        preload_infinitetalk()

    @modal.method()
    def train(self, message: dict, attempt: int = 1) -> dict:
        """train: an InfiniteTalk avatar's LoRA (checkpoints go to the bucket, so a retried container resumes)."""
        return handle(INFINITETALK_TRAIN, message, attempt)

    @modal.method()
    def render(self, message: dict, attempt: int = 1) -> dict:
        """render: an InfiniteTalk avatar speaks."""
        return handle(INFINITETALK_RENDER, message, attempt)


CLASSES = {INFINITETALK_CLASS: InfiniteTalk}

FUNCTIONS = {
    "run_prepare": run_prepare, "run_align": run_align, "run_train": run_train, "run_render": run_render,
    "run_compose": run_compose,
    "run_webhook": run_webhook,
    "wake_later": wake_later, "reconcile": reconcile, "web": web,
}
