"""What a store is: the public types and the interface every implementation provides.

:class:`StoreBackend` is what the session, the drainer, the local API and the CLI use; the
SQLite store (:class:`edge_agent.store.sqlite.SqliteStore`) and the PostgreSQL store
(:class:`edge_agent.store.postgres.PostgresStore`, fleet mode) both implement all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from edge_agent.forward.schedule import OutboxEvent, SinkProgress

if TYPE_CHECKING:
    from edge_agent.store.occupancy import OccupancyWrite
    from edge_agent.store.requests import BookingRequestRow

Synchronous = Literal["normal", "full"]


UNREADY_AFTER_FAILURES = 3
"""Writes failing in a row that make the store unhealthy (one failure may be a hiccup)."""
UNREADY_AFTER_S = 10.0
"""A failing streak this long makes the store unhealthy however few writes were tried."""
WATCHDOG_AFTER_S = 60.0
"""A failing streak this long (not disk full) withholds the systemd watchdog ping."""


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether writes get in: the current failing streak, if any.

    See "Health" in :mod:`edge_agent.store.writer` for the rules and why.
    """

    failures: int = 0
    """Writes failed in a row (0: the last write succeeded)."""
    failing_for_s: float = 0.0
    kind: str | None = None
    """The last failure's kind (``full``, ``io``...)."""
    error: str | None = None
    """The last failure's message, with what to do."""

    @property
    def healthy(self) -> bool:
        return self.failures < UNREADY_AFTER_FAILURES and (
            self.failures == 0 or self.failing_for_s < UNREADY_AFTER_S
        )

    @property
    def problem(self) -> str | None:
        """Why the store is not healthy, for ``/readyz`` and ``STATUS=``, else ``None``."""
        if self.healthy:
            return None
        return (
            f"store writes failing for {self.failing_for_s:.0f} s ({self.failures} in a row): "
            f"{self.error}"
        )

    @property
    def restart_helps(self) -> bool:
        """Whether to withhold the watchdog ping (never on a full disk: a restart frees no
        space)."""
        return (
            not self.healthy and self.kind != "full" and self.failing_for_s >= WATCHDOG_AFTER_S
        )


class StoreError(Exception):
    """A write could not be made durable (disk full, I/O error, database newer than the code)."""


class StoreUnusable(StoreError):
    """The database cannot be used as it is, and restarting the agent will not change that.

    ``edge-agent run`` exits 78 (``EX_CONFIG``, which the systemd unit does not restart on)
    with the message: a person has to act on the file first.
    """


class StoreCorrupt(StoreUnusable):
    """The database file is damaged (``PRAGMA quick_check`` failed, or SQLite says malformed)."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        shown = "; ".join(problems[:3]) + more
        super().__init__(
            f"the database at {path} is damaged ({shown}); the agent will not run on it: stop "
            f"the agent, move {path.name} and its -wal/-shm files aside (keep them for "
            "analysis), then restore it from a backup or start without it (an empty store: the "
            "undelivered events in it are lost)"
        )
        self.path = path
        self.problems = tuple(problems)


class StoreTooNew(StoreUnusable):
    """The database has a schema version newer than this code understands."""

    def __init__(self, path: Path, version: int, supported: int) -> None:
        super().__init__(
            f"the database at {path} has schema version {version}, newer than this agent "
            f"understands ({supported}); upgrade the agent, or move the file aside to start "
            "with an empty store"
        )
        self.path = path
        self.version = version
        self.supported = supported


class StoreLocked(StoreError):
    """Another store (another agent, another CLI command) has the database open."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(
            f"another edge-agent is using {path} (pid {pid}?); stop it first, or give this one "
            "its own [store] path"
        )
        self.path = path
        self.pid = pid


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A booking request awaiting ``BookingCreated`` / ``BookingFailed`` until ``deadline``."""

    device_id: str
    booking_request_uuid: str
    deadline: float  # unix seconds
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CalendarSyncWrite:
    """A calendar room's sync state and window, replaced as part of a :class:`Change`
    (:mod:`edge_agent.store.calendar`). ``state`` None forgets the room (row and window)."""

    room_id: str
    source: str
    state: dict[str, Any] | None
    window: dict[str, dict[str, Any]] = field(default_factory=dict)


@runtime_checkable
class CalendarRows(Protocol):
    """Reading calendar rooms' sync rows (:mod:`edge_agent.store.calendar`). The PostgreSQL
    store has it; the SQLite store is read through its own read connection until it does."""

    async def load_calendar_sync(self, room_id: str, source: str) -> bytes | None:
        """The room's stored sync state JSON (window range, delta link), or ``None``."""
        ...

    async def calendar_syncs(self) -> list[tuple[str, str, bytes]]:
        """Every stored room: ``(room_id, source, state JSON)``."""
        ...


@dataclass(slots=True)
class Change:
    """One device's state change and the events it produced, committed atomically.

    Applied in this order: ``window_replace`` (the whole window, when not ``None``), then
    ``window_delete``, then ``window_upsert``; ``pending_delete`` then ``pending_upsert``;
    ``device_state`` replaces the stored document when not ``None``; ``occupancy`` rows are
    written as :meth:`StoreBackend.save_occupancy` would. ``events`` are full
    envelope dicts carrying ``type`` and ``data.event_id``; an ``event_id`` already in the
    outbox is ignored (committing the same event twice is harmless).
    """

    device_id: str
    window_replace: dict[str, dict[str, Any]] | None = None
    window_upsert: dict[str, dict[str, Any]] = field(default_factory=dict)
    window_delete: list[str] = field(default_factory=list)
    pending_upsert: list[PendingRow] = field(default_factory=list)
    pending_delete: list[str] = field(default_factory=list)
    device_state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    calendar: CalendarSyncWrite | None = None
    """A calendar room's sync state (its ``device_id`` is then the room id: the event stream)."""
    occupancy: Sequence[OccupancyWrite] = ()
    """The device's occupancy rows its events start or end, written in the same transaction
    (in order, after the window): a booking's start and its occupancy track are durable
    together."""


class StoreBackend(Protocol):
    """The agent's durable state, as its callers use it.

    Progress marks (``mark_delivered``, ``mark_retry``, ``dead_letter``) return at once with a
    future that resolves when the progress is durable, or fails with :class:`StoreError` when
    its write failed; the store keeps such progress and writes it later all the same.
    Progress lost in a crash only means events are delivered again (at least once).
    """

    path: Path
    sinks: tuple[str, ...]

    @property
    def failed(self) -> str | None:
        """Why the store cannot write any more, else ``None``."""
        ...

    @property
    def unhealthy(self) -> str | None:
        """Why writes keep failing now (the agent is not ready), else ``None``."""
        ...

    def health(self) -> StoreHealth: ...

    async def close(self) -> None: ...

    # -- the session ------------------------------------------------------------------------
    async def commit(self, change: Change) -> None: ...
    async def flush(self) -> None: ...
    async def load_window(self, device_id: str) -> dict[str, dict[str, Any]]: ...
    async def load_pending(self, device_id: str | None = None) -> list[PendingRow]: ...
    async def load_device_state(self, device_id: str) -> dict[str, Any] | None: ...
    async def forget_device(self, device_id: str) -> None: ...

    # -- the drainer ------------------------------------------------------------------------
    def wakeup(self, sink: str) -> asyncio.Event: ...
    async def load_progress(self, sink: str) -> SinkProgress: ...
    def take_committed(self, sink: str) -> dict[str, int]: ...
    async def read_outbox(
        self, sink: str, reads: Sequence[tuple[str, int, int]]
    ) -> list[OutboxEvent]: ...
    def mark_delivered(self, sink: str, events: Sequence[OutboxEvent]) -> asyncio.Future[None]: ...
    def mark_retry(
        self,
        sink: str,
        head: OutboxEvent,
        *,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
    ) -> asyncio.Future[None]: ...
    def dead_letter(
        self, sink: str, events: Sequence[OutboxEvent], *, reason: str, attempts: int = 0
    ) -> asyncio.Future[None]: ...

    # -- the local API and the CLI ------------------------------------------------------------
    async def stats(self) -> dict[str, Any]: ...
    async def dead_letters(
        self, limit: int = 100, sink: str | None = None
    ) -> list[dict[str, Any]]: ...
    async def replay_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int: ...
    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int: ...

    # -- booking requests made through the agent (edge_agent.store.requests) ----------------
    async def record_request(self, uuid: str, room_id: str, request: dict[str, Any]) -> None: ...
    async def resolve_request(self, uuid: str, status: str, outcome: dict[str, Any]) -> None: ...
    async def load_request(self, uuid: str) -> BookingRequestRow | None: ...

    # -- occupancy (edge_agent.store.occupancy) ---------------------------------------------
    async def save_occupancy(self, change: OccupancyWrite) -> None: ...
    async def load_occupancy(
        self, device_id: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]: ...
