"""`videostudio up` with fault injection, for the reliability tests: `python tests/fault_worker.py up --bucket B`.

It runs the real CLI (`triggers.cli.main`) after wrapping a few seams, all driven by one
environment variable, `VS_FAULT` (JSON):

- `{"kill": {"stage": "render", "at": 17}}` (or `"commit_event": 3`: the 3rd event of the commit
  phase; with `"before_commit": true` an `at` beyond the events before the commit phase lands as
  that phase begins): SIGKILL this process (kill -9: no handler,
  no cleanup, no flush) at the 17th *event* while stage `render` is in flight. Events are
  every storage write or delete, every queue put/ack/nack/extend and every progress report made
  by the worker thread (not the heartbeat thread, whose timing varies from run to run), counted
  from the moment the runner takes the stage message until it acks it: the kill can
  land before the stage starts, in the middle of its outputs, between its stage manifest and
  the job manifest (the commit marker), or between the commit and the next stage's message.
- `{"count": "/path/counts.json"}`: kill nothing; after each stage window, record how many
  events it had and how many came before the commit phase began (`{stage: [[n, commit_at], ...]}`;
  the commit phase writes the stage manifest, then the job manifest, queues webhooks and the next
  stage, and acks), so a test can pick kill points before and inside the commit phase.
- `{"poison": {"stage": "render", "mode": "kill" | "raise", "unless": "fixed"}}`: every
  attempt of that stage dies (SIGKILL) or raises `RuntimeError`, until the bucket holds the
  key named by `unless`: a poison job, for dead-lettering tests.

Nothing here changes what the runner does between events; it only decides where the process dies.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.queue.sqlite import SqliteQueue  # noqa: E402
from core.runner import Runner  # noqa: E402
from core.stage import StageContext  # noqa: E402
from core.storage.local import LocalStorage  # noqa: E402

PLAN = json.loads(os.environ.get("VS_FAULT") or "{}")
_lock = threading.Lock()
_window: dict[str, object] = {"stage": None, "events": 0, "thread": None, "commit_at": None}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _event() -> None:
    kill = PLAN.get("kill")
    with _lock:
        if _window["stage"] is None or _window["thread"] != threading.get_ident():
            return
        _window["events"] += 1  # type: ignore[operator]
        hit = bool(kill) and _window["stage"] == kill["stage"] and (
            _window["events"] == int(kill["at"]) if "at" in kill else
            _window["commit_at"] is not None and _window["events"] - _window["commit_at"] == int(kill["commit_event"]))
    if hit:
        _die()


def _counted(cls: type, name: str) -> None:
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        _event()
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


for _name in ("put_bytes", "put_file", "delete"):
    _counted(LocalStorage, _name)
for _name in ("put", "ack", "nack", "extend"):
    _counted(SqliteQueue, _name)
_counted(StageContext, "progress")

_original_run_stage = Runner._run_stage


def _run_stage(self: Runner, lease, stage: str) -> None:
    with _lock:
        _window.update(stage=stage, events=0, thread=threading.get_ident(), commit_at=None)
    try:
        _original_run_stage(self, lease, stage)
    finally:
        with _lock:
            events, commit_at, _window["stage"] = _window["events"], _window["commit_at"], None
        if PLAN.get("count"):
            path = Path(PLAN["count"])
            counts = json.loads(path.read_text()) if path.exists() else {}
            counts.setdefault(stage, []).append([events, commit_at])
            path.write_text(json.dumps(counts))


_original_commit_stage = Runner._commit_stage


def _commit_stage(self: Runner, *args, **kwargs) -> None:
    kill = PLAN.get("kill")
    with _lock:
        _window["commit_at"] = _window["events"]
        # A kill meant to land before the commit phase whose event was not reached (a resumed training
        # run has fewer events than the first): land it here, as the commit phase begins.
        early = (bool(kill) and kill.get("before_commit") and _window["stage"] == kill["stage"]
                 and _window["thread"] == threading.get_ident() and _window["events"] < int(kill["at"]))
    if early:
        _die()
    _original_commit_stage(self, *args, **kwargs)


Runner._run_stage = _run_stage  # type: ignore[method-assign]
Runner._commit_stage = _commit_stage  # type: ignore[method-assign]

if PLAN.get("poison"):
    import functions.routes as routes

    poison = PLAN["poison"]
    _original_stage = routes.STAGES[poison["stage"]]

    def _poisoned(ctx: StageContext):
        if not ctx.storage.exists(poison.get("unless", "fixed")):
            if poison.get("mode", "raise") == "kill":
                _die()
            raise RuntimeError(f"poisoned stage {ctx.stage} (attempt {ctx.attempt})")
        return _original_stage(ctx)

    routes.STAGES[poison["stage"]] = _poisoned


if __name__ == "__main__":
    from triggers.cli import main

    sys.argv[0] = "videostudio"
    sys.exit(main())
