"""Running real jobs in-process on a local bucket: a Runner with the default pipeline, briefs dropped into
inbox/, and a job driven to its end on this thread (no watcher, no worker process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.storage import LocalStorage
from functions.routes import default_pipeline
from schemas.events import StorageEvent
from schemas.manifest import JobManifest

# The smallest wav2lip avatar worth rendering with: avatar `ann` from uploads/ann.mp4, width 1/8, two steps.
TINY_WAV2LIP_TRAIN = """\
kind: train
avatar: ann
video: uploads/ann.mp4
backend: wav2lip
epochs: 1
batch_size: 8
max_steps: 2
checkpoint_every: 2
mixed_precision: "no"
seed: 3
wav2lip:
  width: 0.125
"""


def make_runner(bucket: Path, uploads: dict[str, Path] | None = None, **settings) -> Runner:
    """A runner on a folder bucket with `uploads` (bucket key → local file) copied in; progress unthrottled."""
    storage = LocalStorage(bucket)
    for key, path in (uploads or {}).items():
        storage.put_file(key, path)
    settings.setdefault("progress_interval_s", 0.0)
    return Runner(storage, SqliteQueue(storage.state_dir / "q.sqlite3"), default_pipeline(),
                  Settings(bucket=str(bucket), **settings))


def submit(runner: Runner, name: str, text: str) -> str:
    """Drop `text` as inbox/<name> and queue it; the job id."""
    runner.storage.put_bytes(f"inbox/{name}", text.encode())
    return runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}"))[0]


def drain(runner: Runner, job_id: str) -> JobManifest:
    """Work the job's stages here until none is left; its manifest."""
    while runner.work_once(job_id=job_id):
        pass
    return runner.store.load(job_id)


def run_job(runner: Runner, name: str, text: str) -> JobManifest:
    return drain(runner, submit(runner, name, text))


class SimulatedKill(BaseException):
    """Not an Exception: like SIGKILL, nothing in the runner gets to handle it."""


@contextmanager
def dies_after_checkpoint(monkeypatch: pytest.MonkeyPatch, module: Any, attribute: str, n: int) -> Iterator[None]:
    """While inside, `module.attribute` (a training loop called with `hooks=` LoopHooks) raises SimulatedKill
    right after its `n`th checkpoint was saved: the worker dies with the checkpoint in the bucket and the
    stage still `running`. The original is back on exit, so a retry runs (and resumes) normally."""
    original = getattr(module, attribute)

    def dies(*args, hooks, **kwargs):
        save, saved = hooks.save_checkpoint, []

        def save_then_die(step: int, data: bytes) -> None:
            save(step, data)
            saved.append(step)
            if len(saved) == n:
                raise SimulatedKill(f"killed after checkpoint {n} (step {step})")
        hooks.save_checkpoint = save_then_die
        return original(*args, hooks=hooks, **kwargs)

    monkeypatch.setattr(module, attribute, dies)
    try:
        yield
    finally:
        monkeypatch.setattr(module, attribute, original)
