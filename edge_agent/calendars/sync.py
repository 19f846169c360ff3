"""A room's calendar window, kept in step with a calendar source. Pure: (state, input, now) -> out.

The window is ``[local midnight today, local midnight today + horizon_days)`` in the room's zone
(DESIGN.md "Rooms and calendar sources"), counted in local calendar days: on a DST day it is an
hour shorter or longer than ``horizon_days * 24 h``. A *round* is one run of delta calls over one
fixed range (Graph ties a delta link to its ``startDateTime``/``endDateTime``): it starts with a
full listing and continues with incremental pages. When local midnight moves the range, the old
round ends and a new one starts with a full listing of the new range.

Rules (the envelope types are DESIGN.md's; none invented):

- An upsert of an id not in the window is ``booking.created``; a time change is
  ``booking.moved``; any other change (title, organizer, join URL...) is silent: it is in the next
  snapshot, but no event (as the device path decides, ``bookings/reconcile.py``).
- ``isCancelled``, a removal (Graph ``@removed``, Google ``status: cancelled``) and an event moved
  out of the window are ``booking.deleted`` -- once: an id that is not in the window is not
  deleted again.
- A full listing replaces the window (mark-and-sweep): what the listing did not carry is deleted,
  except bookings that merely aged out (they end at or before the new window's start: yesterday's
  meetings after the midnight roll), which leave silently.
- One meeting, one booking: an id that vanishes while a new id with the same ``meeting_id``
  (iCalendar UID) appears in the same round is the same meeting under a new id (Exchange gives an
  item a new id when it changes folder), reported as moved or not at all, never deleted+created.
  Instances of a recurring series (``series_id`` set) are never paired: Google gives every
  instance the series' ``iCalUID``, so yesterday's instance and the one the midnight roll brings
  in share a ``meeting_id`` but are two meetings (the old one ages out, the new one is created).
- A removal of a series id (Google cancels a whole recurring series with one cancelled item that
  carries the series' id) removes every stored instance of that series.
- Idempotent: applying the same items again to the state they produced yields no change, so a
  page re-applied after a crash (resuming from the last stored delta link) reports nothing twice.
- ``Unreadable`` items (an entry the source edge could not map) keep the stored copy of that id:
  one odd event must neither vanish from the window nor be reported deleted.
- The first round of a room (nothing stored: never synced, or forgotten after it left the
  directory) reports the window as its ``bookings.snapshot`` only, no ``booking.created`` per
  meeting -- as a device's very first list does (``bookings/state.py``). DESIGN.md makes the
  change events the diff against what the cloud was told ("the changes that were missed") and
  the snapshot the whole window "after each list"; before the first list the cloud was told
  nothing, so there is nothing to diff against, and 2,000 rooms joining would otherwise send
  one created event per meeting on the horizon. Every later round (a resync after 410, the
  midnight roll) reports its changes as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from edge_agent.bookings.window import WindowBounds, local_midnight, next_midnight, overlaps
from edge_agent.calendars.model import CalendarBooking

__all__ = [
    "BookingChange",
    "DeltaItem",
    "Removal",
    "RoundPlan",
    "SyncResult",
    "SyncState",
    "Unreadable",
    "Upsert",
    "apply_round",
    "calendar_window",
    "next_roll",
    "plan_round",
    "resync_required",
    "room_removed",
]

ChangeType = Literal["booking.created", "booking.moved", "booking.deleted"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Upsert:
    """The source says this event now looks like ``booking`` (new or changed)."""

    booking: CalendarBooking


@dataclass(frozen=True, slots=True)
class Removal:
    """The source says event ``id`` is gone (deleted, or no longer in the range)."""

    id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The source listed event ``id`` but the edge could not map it (``reason`` says why)."""

    id: str
    reason: str


DeltaItem = Upsert | Removal | Unreadable


# --------------------------------------------------------------------------- state and outputs


@dataclass(frozen=True, slots=True)
class SyncState:
    """What the agent knows of one room's calendar; the store keeps it across restarts.

    ``window`` is the range of the current round (None: never synced); ``delta_link`` resumes
    that round (None: the next round starts with a full listing); ``bookings`` the window by id.
    """

    window: WindowBounds | None = None
    delta_link: str | None = None
    bookings: Mapping[str, CalendarBooking] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BookingChange:
    type: ChangeType
    booking: CalendarBooking
    before: CalendarBooking | None = None  # the stored copy, for moved and deleted


@dataclass(frozen=True, slots=True)
class SyncResult:
    """The new state and what to publish. ``snapshot`` is the whole window (start order) when
    a ``bookings.snapshot`` is due: after every full listing and every round that changed it."""

    state: SyncState
    changes: tuple[BookingChange, ...] = ()
    snapshot: tuple[CalendarBooking, ...] | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """The next call: over ``bounds``, from ``delta_link`` (None: a full listing)."""

    bounds: WindowBounds
    delta_link: str | None

    @property
    def full(self) -> bool:
        return self.delta_link is None


# --------------------------------------------------------------------------- the window


def calendar_window(now_utc: datetime, tz: ZoneInfo, horizon_days: int) -> WindowBounds:
    """``[local midnight today, local midnight of today + horizon_days)`` in ``tz``, aware UTC."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, not {horizon_days}")
    today = now_utc.astimezone(tz).date()
    return WindowBounds(
        local_midnight(today, tz), local_midnight(today + timedelta(days=horizon_days), tz)
    )


def next_roll(now_utc: datetime, tz: ZoneInfo) -> datetime:
    """When the window next moves: the next local midnight in ``tz``."""
    return next_midnight(now_utc, tz)


def plan_round(state: SyncState, now_utc: datetime, tz: ZoneInfo, horizon_days: int) -> RoundPlan:
    """Continue the stored round, or start a new one when the range moved (or none is stored)."""
    bounds = calendar_window(now_utc, tz, horizon_days)
    if state.window != bounds or state.delta_link is None:
        return RoundPlan(bounds, None)
    return RoundPlan(bounds, state.delta_link)


def resync_required(state: SyncState) -> SyncState:
    """The source lost the round (Graph 410 ``SyncStateNotFound``): the next call lists in full,
    and that listing sweeps the stored window. The window itself is kept until then."""
    return SyncState(window=state.window, delta_link=None, bookings=state.bookings)


def room_removed(state: SyncState) -> SyncResult:
    """The room left the directory: its window is reported empty, once, and forgotten."""
    return SyncResult(state=SyncState(), snapshot=())


# --------------------------------------------------------------------------- applying a round


def _order(b: CalendarBooking) -> tuple[datetime, datetime, str]:
    return (b.start, b.end, b.id)


def apply_round(
    state: SyncState,
    plan: RoundPlan,
    items: Iterable[DeltaItem],
    next_link: str,
    now_utc: datetime,
) -> SyncResult:
    """Apply the items of one complete round (the whole nextLink chain up to its delta link
    ``next_link``) fetched per ``plan``. A full plan sweeps what the listing did not carry."""
    del now_utc  # kept in the signature: time is an input, and aging rules may want it
    bounds = plan.bounds
    stored = dict(state.bookings)
    working = dict(stored)
    seen: set[str] = set()
    notes: list[str] = []
    for item in items:
        if isinstance(item, Upsert):
            b = item.booking
            seen.add(b.id)
            if b.cancelled or not overlaps(b.start, b.end, bounds):
                working.pop(b.id, None)
            else:
                working[b.id] = b
        elif isinstance(item, Removal):
            seen.discard(item.id)
            working.pop(item.id, None)
            for bid in [k for k, b in working.items() if b.series_id == item.id]:
                seen.discard(bid)
                del working[bid]
        else:
            seen.add(item.id)
            notes.append(f"event {item.id}: {item.reason}; kept the stored copy")
    if plan.full:
        for bid in [k for k in working if k not in seen]:
            del working[bid]
    # Whatever the round did, a booking outside the range is not the window's.
    for bid in [k for k, b in working.items() if not overlaps(b.start, b.end, bounds)]:
        del working[bid]

    created = {k: b for k, b in working.items() if k not in stored}
    vanished = {k: b for k, b in stored.items() if k not in working}
    changes: list[BookingChange] = []
    silent = False

    # Same meeting under a new id: pair them by meeting_id when the pairing is unambiguous.
    # Instances of a series share the series' meeting_id (Google): never paired.
    for old_id, old in sorted(vanished.items(), key=lambda kv: _order(kv[1])):
        if old.meeting_id is None or old.series_id is not None:
            continue
        hits = [
            k
            for k, b in created.items()
            if b.meeting_id == old.meeting_id and b.series_id is None
        ]
        back = [k for k, b in vanished.items() if b.meeting_id == old.meeting_id]
        if len(hits) == 1 and back == [old_id]:
            new = created.pop(hits[0])
            del vanished[old_id]
            notes.append(f"meeting {old.meeting_id}: id {old_id} is now {new.id}")
            if (old.start, old.end) != (new.start, new.end):
                changes.append(BookingChange("booking.moved", new, old))
            else:
                silent = True

    for k, now_b in working.items():
        prev = stored.get(k)
        if prev is None or prev == now_b:
            continue
        if (prev.start, prev.end) != (now_b.start, now_b.end):
            changes.append(BookingChange("booking.moved", now_b, prev))
        else:
            silent = True
    for b in created.values():
        changes.append(BookingChange("booking.created", b))
    for old in vanished.values():
        if old.end <= bounds.start:
            silent = True  # aged out at the midnight roll: yesterday's meeting, not a deletion
            continue
        changes.append(BookingChange("booking.deleted", old, old))

    rank = {"booking.created": 0, "booking.moved": 1, "booking.deleted": 2}
    changes.sort(key=lambda c: (rank[c.type], _order(c.booking)))
    if state.window is None and not stored:
        changes = []  # the first round: the snapshot below is the room's whole story
    window = dict(sorted(working.items(), key=lambda kv: _order(kv[1])))
    new_state = SyncState(window=bounds, delta_link=next_link, bookings=window)
    publish = plan.full or bool(changes) or silent
    return SyncResult(
        state=new_state,
        changes=tuple(changes),
        snapshot=tuple(window.values()) if publish else None,
        notes=tuple(notes),
    )
