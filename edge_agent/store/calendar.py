"""Calendar rooms in the store: the ``CalendarStore`` the room pollers persist through.

:class:`RoomCalendarStore` implements :class:`edge_agent.calendars.graph.poller.CalendarStore` on
either store (SQLite, or PostgreSQL in fleet mode). ``save_sync_state`` is ONE
:class:`~edge_agent.store.base.Change`: the room's ``calendar_sync`` row (window range, delta
link), its window rows and its events commit in one transaction, so the delta link is never
ahead of the window and the outbox, and a restart after kill -9 refetches from the last
committed link and reports nothing twice (``calendars/sync.py``: re-applying a round is
idempotent).

In a fleet the same Change is fenced like a device's (:mod:`edge_agent.store.pgwriter`): it is
written only if this member still holds the room's lease with its token, so a member that lost
the room (frozen, cut off) cannot store a round it fetched after that, and the new owner
resumes from the last committed delta link / sync token.

The outbox stream of a room's events is the room id: a linked room (room id = device id) shares
its stream with the device's own events, so order is per room. Its window rows sit under
``schema.calendar_window_owner(room, source)``, apart from the device's own window.

For a linked room, a ``booking.created`` the calendar reports for a meeting the device has
already reported as the resolution of a request made on it, or that a request still pending on
the device is about to resolve, is not reported (:mod:`edge_agent.bookings.precedence`); it
stays in the window and the snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from edge_agent import jsoncodec
from edge_agent.store import schema
from edge_agent.store.base import CalendarRows, CalendarSyncWrite, Change, StoreBackend
from edge_agent.store.schema import calendar_window_owner

if TYPE_CHECKING:
    from edge_agent.calendars.graph.poller import RoomUpdate
    from edge_agent.calendars.sync import SyncState

log = structlog.get_logger(__name__)

__all__ = [
    "PreparedCalendar",
    "calendar_window_owner",
    "RoomCalendarStore",
    "prepare_calendar",
    "write_calendars",
]


@dataclass(frozen=True, slots=True)
class PreparedCalendar:
    room_id: str
    source: str
    state: bytes | None
    window: dict[str, bytes]


def prepare_calendar(w: CalendarSyncWrite) -> PreparedCalendar:
    """Serialize in the caller's task (JSON errors surface there, not in the writer)."""
    dumpb = jsoncodec.dumpb
    return PreparedCalendar(
        w.room_id,
        w.source,
        None if w.state is None else dumpb(w.state),
        {k: dumpb(v) for k, v in w.window.items()},
    )


def write_calendars(db: sqlite3.Connection, writes: Sequence[PreparedCalendar]) -> None:
    """Inside the writer's transaction (on the write connection's thread): replace each room's
    sync row and window rows, in order."""
    for w in writes:
        owner = calendar_window_owner(w.room_id, w.source)
        db.execute(schema.DELETE_WINDOW_OF, (owner,))
        if w.state is None:
            db.execute(schema.DELETE_CALENDAR_SYNC, (w.room_id, w.source))
            continue
        db.execute(schema.PUT_CALENDAR_SYNC, (w.room_id, w.source, w.state))
        if w.window:
            db.executemany(schema.PUT_WINDOW, [(owner, k, v) for k, v in w.window.items()])


def state_row(state: SyncState) -> dict[str, Any]:
    return {
        "window": state.window.to_dict() if state.window is not None else None,
        "delta_link": state.delta_link,
    }


class RoomCalendarStore:
    """``CalendarStore`` for one source on the agent's store; ``site`` goes into envelopes."""

    def __init__(self, store: StoreBackend, *, site: str, source: str) -> None:
        self._store = store
        self.site = site
        self.source = source

    async def _sync_row(self, room_id: str) -> bytes | None:
        if isinstance(self._store, CalendarRows):
            return await self._store.load_calendar_sync(room_id, self.source)
        # The SQLite store's read connection (same package): committed rows only, never
        # blocked by the writer.
        rows = list(
            await self._store._rconn.execute_fetchall(  # type: ignore[attr-defined]
                schema.SELECT_CALENDAR_SYNC, (room_id, self.source)
            )
        )
        return bytes(rows[0][0]) if rows else None

    async def load_sync_state(self, room_id: str) -> SyncState | None:
        from edge_agent.bookings.window import WindowBounds
        from edge_agent.calendars.model import CalendarBooking
        from edge_agent.calendars.sync import SyncState
        from edge_agent.clock import parse_utc

        # Only this room's own task writes its state (in a fleet: the task of the member that
        # holds its lease), so the two reads see one version of it.
        sync_row = await self._sync_row(room_id)
        if sync_row is None:
            return None
        owner = calendar_window_owner(room_id, self.source)
        stored = await self._store.load_window(owner)
        resync = False
        bounds, link = None, None
        try:
            doc = jsoncodec.loads(sync_row)
            win = doc.get("window")
            if win is not None:
                bounds = WindowBounds(parse_utc(win["start"]), parse_utc(win["end"]))
            link = doc.get("delta_link")
            if link is not None and not isinstance(link, str):
                raise TypeError("delta_link is not a string")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            resync, bounds, link = True, None, None
            log.warning(
                "calendar sync state unreadable; listing the room in full",
                room=room_id,
                error=repr(exc),
            )
        bookings = {}
        for key, row in stored.items():
            try:
                b = CalendarBooking.from_row(row)
            except (ValueError, TypeError, AttributeError) as exc:
                # One odd row must not stop the room: the full listing puts back what is real.
                resync = True
                log.warning(
                    "calendar window row unreadable; listing the room in full",
                    room=room_id,
                    key=key,
                    error=repr(exc),
                )
                continue
            bookings[b.id] = b
        ordered = dict(sorted(bookings.items(), key=lambda kv: (kv[1].start, kv[1].end, kv[0])))
        return SyncState(window=bounds, delta_link=None if resync else link, bookings=ordered)

    async def save_sync_state(
        self, room_id: str, state: SyncState, update: RoomUpdate | None
    ) -> None:
        from edge_agent.calendars.envelopes import room_update_envelopes
        from edge_agent.calendars.sync import SyncState as _SyncState

        forget = state == _SyncState()
        write = CalendarSyncWrite(
            room_id,
            self.source,
            None if forget else state_row(state),
            {} if forget else {bid: b.to_row() for bid, b in state.bookings.items()},
        )
        events: list[dict[str, Any]] = []
        if update is not None:
            device_rows: list[dict[str, Any]] = []
            pending: list[dict[str, Any]] = []
            if update.device_id is not None and any(
                c.type == "booking.created" for c in update.changes
            ):
                # Pending first: a request resolved between the two reads is then seen in one
                # of them (pending before, or the window after), never in neither.
                pending = [p.row for p in await self._store.load_pending(update.device_id)]
                device_rows = list((await self._store.load_window(update.device_id)).values())
            elif any(c.type == "booking.created" for c in update.changes):
                # A calendar-only room booked through the agent: its requests and bookings sit
                # under the room id (edge_agent.agent: the answer to the create reports it).
                now = update.observed_at.timestamp()
                rows = await self._store.load_pending(update.room_id)
                pending = [p.row for p in rows if p.deadline > now]
                device_rows = list((await self._store.load_window(update.room_id)).values())
            events = room_update_envelopes(
                update, site=self.site, device_window=device_rows, device_pending=pending
            )
        await self._store.commit(Change(room_id, events=events, calendar=write))

    async def rooms(self) -> dict[str, dict[str, Any]]:
        """Every stored room of this source: ``{room_id: state row}`` (status, tests)."""
        if isinstance(self._store, CalendarRows):
            rows = await self._store.calendar_syncs()
        else:
            rows = list(
                await self._store._rconn.execute_fetchall(  # type: ignore[attr-defined]
                    schema.SELECT_CALENDAR_SYNCS
                )
            )
        return {r: jsoncodec.loads(st) for r, src, st in rows if src == self.source}
