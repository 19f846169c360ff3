"""What a sink is: the protocol and the outcomes shared by the drainer and every sink.

A sink is handed :class:`~edge_agent.forward.schedule.OutboxEvent` batches (re-exported here,
since every sink names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.forward.schedule import OutboxEvent


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver acknowledged (HTTP 2xx, MQTT PUBACK)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: network error, 408, 429, 5xx, broker away."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """The receiver refused this event for good (other 4xx, a redirect; a permanent MQTT PUBACK
    reason): dead letter it at once (a rejected batch is first split, see the drainer)."""

    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Gone:
    """The endpoint is gone (webhook 410): stop the sink loudly; keep the events."""

    reason: str


Outcome = Delivered | Retry | Reject | Gone


class Sink(Protocol):
    name: str
    max_batch: int

    async def run(self) -> None:
        """Long-lived connection loop; may return at once for connectionless sinks."""
        ...

    def ready(self) -> bool: ...

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        """Deliver ``events`` (one device's, in order); the outcome applies to all of them."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """What a drainer reports for its sink (the local API shows it).

    Counts are events. ``stopped_reason`` is set when the sink was stopped for good (webhook
    410): the events stay in the outbox until the operator fixes the endpoint and restarts.
    """

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    """The sink's failure now: cleared (to ``previous_error``) by the next delivery."""
    last_error_at: str | None = None
    previous_error: str | None = None
    previous_error_at: str | None = None
    ready: bool = False
    stopped_reason: str | None = None
    in_flight: int = 0


__all__ = [
    "Delivered",
    "Gone",
    "OutboxEvent",
    "Outcome",
    "Reject",
    "Retry",
    "Sink",
    "SinkStats",
]
