"""The queue interface: at-least-once delivery with leases (visibility timeouts).

A message is leased by `get`; it must be `ack`ed before the lease expires or it is
delivered again. After `max_attempts` leases it is dead-lettered. Messages are only
wake-up calls (`TaskMessage`); storage holds the truth.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from schemas.events import TaskMessage


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
