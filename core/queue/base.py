"""The queue interface: at-least-once delivery with leases (visibility timeouts).

A message is leased by `get`; it must be `ack`ed before the lease expires or it is
delivered again. After `max_attempts` leases it is dead-lettered. Messages are only
wake-up calls (`TaskMessage`); storage holds the truth.

A queue's `max_attempts` counts leases of one message, and is only the last-resort dead
letter for a message that crashes the runner itself. It is not `Settings.max_attempts`,
the attempts a stage gets (counted in the job manifest), nor `Settings.webhook_max_attempts`;
the wiring sets it above both, so those budgets run out first.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from schemas.events import TaskMessage

# Leases of one message before a queue dead-letters it, where the caller names no other (the
# wiring's max(stage attempts, webhook attempts) + 2 comes to the same for the default settings).
DEFAULT_LEASE_ATTEMPTS = 10


@dataclass(frozen=True)
class Lease:
    message_id: int
    token: str
    message: TaskMessage
    attempt: int


class WorkQueue(abc.ABC):
    @abc.abstractmethod
    def put(self, message: TaskMessage, *, delay_s: float = 0.0) -> bool:
        """Enqueue; False if an identical message is already waiting (deduplicated)."""

    @abc.abstractmethod
    def get(self, *, lease_s: float, job_id: str | None = None) -> Lease | None:
        """Lease the next ready message (optionally only one of `job_id`'s), or None."""

    @abc.abstractmethod
    def ack(self, lease: Lease) -> bool: ...

    @abc.abstractmethod
    def nack(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> bool: ...

    @abc.abstractmethod
    def extend(self, lease: Lease, *, lease_s: float) -> bool: ...

    @abc.abstractmethod
    def pending(self, job_id: str | None = None) -> int:
        """Messages waiting or in flight (not dead)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
