"""A work queue for Modal: `put` spawns the Modal function that runs the message.

There is no broker to pull from. Each spawned call receives its message directly, and
the function hands the runner a lease built from it (`SpawnQueue.lease`), so the same
`Runner.process(lease)` runs here as in the local workers.

What each method means here:
- `put` / `dispatch`: `Function.spawn(message, attempt)` on the function that runs the
  message (one per stage, one for webhooks, or the one an optional `route` picks; see
  "Routing" below). A spawn cannot be deduplicated: `put` returns True whenever it sent
  (or, inside `hold()`, will send) the message.
- `get`: always None. Messages are pushed to functions, never leased from a queue.
- `ack` / `extend`: no-ops that return True. A spawned call is done when it returns;
  Modal retries a call whose container crashed (`modal.Retries` on the function), and
  the storage-based reconciler re-queues what is still missing. Together: at least once.
- `nack`: spawns the message again with `attempt + 1`. With a delay, it spawns the
  `delay_function` (a small function that waits in its own container and then
  dispatches to the function chosen before the wait), so no caller ever sleeps. Without a `delay_function` configured, a
  delayed nack sends nothing and leaves the message to the reconciler's next pass (the
  manifest still says the stage is queued or the webhook is pending). After
  `max_attempts` the message is dropped and logged (the dead-letter of this queue).
- `pending`: always 0, because Modal cannot say which calls are waiting for one job.
  `Runner.reconcile` then decides from storage alone: a running stage is lost when its
  manifest heartbeat is older than `lease_s`; a queued stage (or a pending webhook) is
  re-sent when its manifest has not changed for `lease_s / 4`. A spawn that takes
  longer than that to start its stage can therefore be sent twice; the runner runs
  stages idempotently, so the cost is a duplicate run, not a wrong result. Choose
  `lease_s` well above the functions' cold-start time.

Routing: `function_for(message)` names the function for a message. Webhooks go to
`webhook_function`. For a stage message the optional `route(message)` is asked first: a name
sends it there (e.g. a class method `"Cls.method"` on a GPU kept warm for one kind of job),
None leaves it to `stage_functions[stage]`. The route is the caller's: this module knows no
job kinds. When the route raises (it may read storage), `function_for` raises too (a function
checking that it received the right message fails, and is retried), while `dispatch` logs it
and sends to the stage's function: so a route may only pick among functions that could all run
the message, the choice saying where it runs best.

`hold()`: storage that publishes writes only on commit (a Modal Volume) must commit
before the next function starts reading. Inside `with queue.hold():` dispatches are
kept and sent when the block exits without an exception (after the caller's commit).

Lanes (batches): the message's `lane` travels in its payload, so a function hands it on to every
message it sends and the reconciler re-derives it from the job manifest, as locally. But a spawn
is pushed at once, so there is no queue here to interleave lanes: each spawned call waits in
Modal's own input queue for its function (first come, first served), and a 1,000-item batch
spawns its 1,000 prepares when it is expanded. A brief dropped after it starts once Modal has a
container free for it: at once while the function can scale out (`max_containers` above the
batch's concurrency), behind the batch's calls when the function is at its cap. Fairness on Modal
therefore comes from capacity, not ordering; the SQLite queue (`videostudio up`) orders by lane.

`modal` is imported only inside methods that talk to Modal, never at import time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from core.queue.base import DEFAULT_LEASE_ATTEMPTS, Lease, WorkQueue
from schemas.errors import VideostudioError
from schemas.events import TaskMessage

log = logging.getLogger("videostudio.queue.spawn")


class Spawnable(Protocol):
    """What `resolve` returns: a `modal.Function` (or anything with its `spawn`)."""

    def spawn(self, *args: Any, **kwargs: Any) -> Any: ...


Route = Callable[[TaskMessage], str | None]


@dataclass(frozen=True)
class Dispatch:
    """One spawn: which function, the message, its attempt number and how long to wait first."""

    function: str
    message: TaskMessage
    attempt: int = 1
    delay_s: float = 0.0


class SpawnQueue(WorkQueue):
    def __init__(
        self,
        *,
        app_name: str,
        stage_functions: Mapping[str, str],
        webhook_function: str,
        delay_function: str | None = None,
        resolve: Callable[[str], Spawnable] | None = None,
        environment_name: str | None = None,
        max_attempts: int = DEFAULT_LEASE_ATTEMPTS,
        route: Route | None = None,
    ) -> None:
        """
        app_name: the deployed Modal app (for `modal.Function.from_name` when no `resolve` is given).
        stage_functions: stage name → name of the function that runs that stage.
        webhook_function: the function that delivers webhook messages.
        delay_function: a function `(message: dict, attempt: int, delay_s: float, function: str)` that
            waits, then dispatches to `function` (the one chosen before the wait); None leaves delayed
            messages to the reconciler.
        resolve: function name → a spawnable handle. Inside the app's own containers pass the app's
            hydrated functions; by default they are looked up by name in the deployed app (a name
            `"Cls.method"` is a method of a deployed class: `modal.Cls.from_name(app, "Cls")().method`).
        max_attempts: spawns of one message (its lease attempts) before `nack` drops it as a dead letter.
        route: stage message → the name of the function that should run it, or None for
            `stage_functions`; asked before `stage_functions` on every dispatch and `function_for`
            (see the module docstring: it may read storage, so it costs whatever that read costs).
        """
        self.app_name = app_name
        self.stage_functions = dict(stage_functions)
        self.webhook_function = webhook_function
        self.delay_function = delay_function
        self.max_attempts = max_attempts
        self._resolve = resolve
        self._route = route
        self._environment_name = environment_name
        self._held: list[Dispatch] | None = None

    # ------------------------------------------------------------------ routing
    def function_for(self, message: TaskMessage) -> str:
        """The name of the function that runs `message`: the route's choice, else the stage's function.
        An error of the route propagates."""
        return self._routed(message) or self._default_function(message)

    def _routed(self, message: TaskMessage) -> str | None:
        if message.action != "stage" or self._route is None:
            return None
        return self._route(message)

    def _default_function(self, message: TaskMessage) -> str:
        if message.action in ("webhook", "batch_webhook"):  # a batch's webhook is delivered like a job's
            return self.webhook_function
        try:
            return self.stage_functions[message.stage or ""]
        except KeyError:
            raise VideostudioError(
                "no_function_for_stage",
                f"no Modal function runs stage {message.stage!r} (known: {', '.join(sorted(self.stage_functions))})",
            ) from None

    @staticmethod
    def lease(message: TaskMessage | Mapping[str, Any], *, attempt: int = 1, token: str | None = None) -> Lease:
        """The lease a spawned function hands to `Runner.process` for the message it received."""
        if not isinstance(message, TaskMessage):
            message = TaskMessage.model_validate(message)
        return Lease(message_id=0, token=token or uuid.uuid4().hex, message=message, attempt=attempt)

    # ------------------------------------------------------------------ sending
    def dispatch(self, message: TaskMessage, *, attempt: int = 1, delay_s: float = 0.0,
                 function: str | None = None) -> bool:
        """Spawn the function for `message` (through the delay function when `delay_s` > 0).

        `function` sends it to that function instead of asking `function_for` (the delay function
        passes on the choice made before its wait, so it needs no storage to route).
        False when nothing was sent: a delay without a delay function (the reconciler will re-send), or
        a stage no function runs (logged as an error; raising would abort the reconciler's whole pass).
        """
        target = function
        if target is None:
            try:
                target = self._routed(message)
            except Exception as exc:  # noqa: BLE001 - a failed lookup must not stop a send (module docstring)
                log.warning("%s: route failed (%s: %s); sending to the stage's function", message.dedupe_key(),
                            type(exc).__name__, exc)
        if target is None:
            try:
                target = self._default_function(message)
            except VideostudioError as exc:
                log.error("%s: %s", message.dedupe_key(), exc.message)
                return False
        if delay_s > 0 and self.delay_function is None:
            log.info("%s: no delay function; leaving it to the reconciler (wanted %.1fs)", message.dedupe_key(), delay_s)
            return False
        item = Dispatch(function=target, message=message, attempt=attempt, delay_s=max(0.0, delay_s))
        if self._held is not None:
            self._held.append(item)
        else:
            self._send(item)
        return True

    def _send(self, item: Dispatch) -> None:
        payload = item.message.model_dump(mode="json")
        if item.delay_s > 0:
            assert self.delay_function is not None
            self._function(self.delay_function).spawn(payload, item.attempt, item.delay_s, item.function)
        else:
            self._function(item.function).spawn(payload, item.attempt)

    def _function(self, name: str) -> Spawnable:
        if self._resolve is not None:
            return self._resolve(name)
        import modal  # lazily: nothing in core imports modal at import time

        if "." in name:  # a method of a deployed class: "Cls.method"
            cls_name, method = name.split(".", 1)
            cls = modal.Cls.from_name(self.app_name, cls_name, environment_name=self._environment_name)
            return getattr(cls(), method)
        return modal.Function.from_name(self.app_name, name, environment_name=self._environment_name)

    @contextmanager
    def hold(self) -> Iterator[list[Dispatch]]:
        """Keep dispatches made inside the block; send them when it exits cleanly, drop them if it raises."""
        if self._held is not None:
            raise RuntimeError("SpawnQueue.hold() does not nest")
        held: list[Dispatch] = []
        self._held = held
        try:
            yield held
        except BaseException:
            if held:
                log.warning("dropping %d unsent message(s) after an error: %s", len(held),
                            ", ".join(d.message.dedupe_key() for d in held))
            raise
        finally:
            self._held = None
        for item in held:
            self._send(item)

    # ------------------------------------------------------------------ WorkQueue
    def put(self, message: TaskMessage, *, delay_s: float = 0.0) -> bool:
        return self.dispatch(message, delay_s=delay_s)

    def get(self, *, lease_s: float, job_id: str | None = None) -> Lease | None:
        return None  # messages are pushed to functions; there is nothing to pull

    def ack(self, lease: Lease) -> bool:
        return True

    def extend(self, lease: Lease, *, lease_s: float) -> bool:
        return True

    def nack(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> bool:
        if lease.attempt >= self.max_attempts:
            log.error("dead letter after %d attempts: %s (%s)", lease.attempt, lease.message.dedupe_key(), error)
            return False
        return self.dispatch(lease.message, attempt=lease.attempt + 1, delay_s=delay_s)

    def pending(self, job_id: str | None = None) -> int:
        return 0  # unknowable: see the module docstring for what the reconciler does instead
