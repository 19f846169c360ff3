"""Write planning (pure): serialize a change in its caller's task, fold a group into final writes.

Nothing here touches the database; the writer turns the plans into batched statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from edge_agent import jsoncodec
from edge_agent.forward.schedule import OutboxEvent
from edge_agent.store.base import Change
from edge_agent.store.calendar import PreparedCalendar, prepare_calendar
from edge_agent.store.occupancy import OccupancyWrite
from edge_agent.store.requests import outcomes_of


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    event_id: str
    type: str
    body: bytes
    observed_at: float | None  # None: the commit time


@dataclass(slots=True)
class PreparedChange:
    """A Change serialized in the caller's task (JSON errors surface there, not in the writer)."""

    device_id: str
    window_replace: dict[str, bytes] | None
    window_upsert: dict[str, bytes]
    window_delete: list[str]
    pending_upsert: list[tuple[str, float, bytes]]
    pending_delete: list[str]
    device_state: bytes | None
    events: list[PreparedEvent]
    future: asyncio.Future[None]
    request_outcomes: list[tuple[str, str, bytes]] = field(default_factory=list)
    """``(uuid, status, outcome JSON)``: booking requests its events close (store.requests)."""
    calendar: PreparedCalendar | None = None
    occupancy: Sequence[OccupancyWrite] = ()


@dataclass(slots=True)
class DeviceWrite:
    """One device's final write for a group: what replaces, upserts and deletes."""

    replace: bool = False
    window: dict[str, bytes | None] = field(default_factory=dict)  # None: delete
    pending: dict[str, tuple[float, bytes] | None] = field(default_factory=dict)
    state: bytes | None = None


@dataclass(slots=True)
class ProgressOp:
    """A drainer's outcome for one stream's events, queued for the writer."""

    kind: Literal["delivered", "retry", "dead"]
    sink: str
    device_id: str
    seqs: list[int]
    attempts: int = 0
    next_attempt_at: float = 0.0
    error: str | None = None
    future: asyncio.Future[None] | None = None


def observed_at(envelope: dict[str, Any]) -> float | None:
    """The envelope's ``data.observed_at`` as unix seconds; ``None`` when absent or unreadable."""
    data = envelope.get("data")
    if isinstance(data, dict):
        obs = data.get("observed_at")
        if isinstance(obs, str) and obs:
            # parse_utc(obs).timestamp(), without its string surgery and astimezone: one per
            # event on the commit path (fromisoformat reads the "Z" itself since 3.11).
            try:
                dt = datetime.fromisoformat(obs)
            except ValueError:
                return None
            return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()
    return None


def prepare(change: Change, future: asyncio.Future[None]) -> PreparedChange:
    """Serialize ``change``.

    Raises:
        ValueError: an event envelope lacks ``type`` or ``data.event_id``.
    """
    dumpb = jsoncodec.dumpb
    events: list[PreparedEvent] = []
    for env in change.events:
        try:
            event_id = str(env["data"]["event_id"])
            etype = str(env["type"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{change.device_id}: event envelope without type or data.event_id: {exc!r}"
            ) from exc
        events.append(PreparedEvent(event_id, etype, dumpb(env), observed_at(env)))
    return PreparedChange(
        device_id=change.device_id,
        window_replace=(
            None
            if change.window_replace is None
            else {k: dumpb(v) for k, v in change.window_replace.items()}
        ),
        window_upsert={k: dumpb(v) for k, v in change.window_upsert.items()},
        window_delete=list(change.window_delete),
        pending_upsert=[
            (p.booking_request_uuid, float(p.deadline), dumpb(p.row)) for p in change.pending_upsert
        ],
        pending_delete=list(change.pending_delete),
        device_state=None if change.device_state is None else dumpb(change.device_state),
        events=events,
        future=future,
        request_outcomes=outcomes_of(change.events),
        calendar=None if change.calendar is None else prepare_calendar(change.calendar),
        occupancy=tuple(change.occupancy),
    )


def coalesce(changes: Iterable[PreparedChange]) -> dict[str, DeviceWrite]:
    """Fold changes (in commit order) into one final write per device.

    Statements are then batched per table with ``executemany``; folding first keeps the result
    equal to applying the changes one by one (a later ``window_replace`` discards earlier
    upserts of the same device, a later upsert revives an earlier delete...).
    """
    out: dict[str, DeviceWrite] = {}
    for ch in changes:
        w = out.setdefault(ch.device_id, DeviceWrite())
        if ch.window_replace is not None:
            w.replace = True
            w.window = dict(ch.window_replace)
        for k in ch.window_delete:
            w.window[k] = None
        w.window.update(ch.window_upsert)
        for u in ch.pending_delete:
            w.pending[u] = None
        for u, deadline, row in ch.pending_upsert:
            w.pending[u] = (deadline, row)
        if ch.device_state is not None:
            w.state = ch.device_state
    return out


def stream_seqs(events: Sequence[OutboxEvent]) -> tuple[str, list[int]]:
    """The one stream of ``events`` and their seqs.

    Raises:
        ValueError: no events, or events of several streams.
    """
    if not events:
        raise ValueError("no events")
    device = events[0].device_id
    if any(e.device_id != device for e in events):
        raise ValueError("events of several devices in one progress mark")
    return device, [e.seq for e in events]
