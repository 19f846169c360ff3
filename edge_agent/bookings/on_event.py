"""``on_event``: an ``Event Bookings`` notification -> :class:`~.state.Step`.

Decisions:

- ``booking.created`` is emitted once per booking: a ``BookingCreated`` for a booking already in
  the window with the same times (a duplicate, or one a re-list already reported) only updates the
  window.
- An identical Bookings event that ARRIVED again within :data:`DUPLICATE_HORIZON` of the first is
  dropped (devices and proxies do repeat frames); the Step says so (``Step.duplicate``) for the
  shell to count and warn. Arrival, not processing: behind a backlog (a stuck store, a stopped
  process) events the device sent minutes apart are processed milliseconds apart, and are not
  repeats. Lost events are the re-list's job, not this.
- An arrival may be known only as a span (``arrived_after`` .. ``arrived_at``): the frames the
  kernel buffered while the process was stopped are read together on resume. An event is a
  repeat only when it surely arrived within the horizon of its twin, i.e. the spans' farthest
  ends are within it; an identical event that may have arrived farther apart is kept (at least
  once beats a silent loss) and the Step says so (``Step.kept_uncertain``).
- Times: ``now`` is when the input is processed (the envelope's ``timestamp``); ``arrived_at``
  is when its frame arrived, and decides what the device did when: the dedupe, a request's
  ``requested_at`` (so its deadline), ``pending_ms``, and every envelope's ``observed_at``.
- A booking event naming a booking the window does not hold (``Start {Id}`` from older software,
  a move of an unknown booking) still produces its envelope, from what the event carries, and asks
  for a re-list to learn the booking.
- Every event in :data:`CALENDAR_CHANGES` asks for a re-list (the session debounces them).
  ``SyncRequired`` / ``Updated`` ask for one and do nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from edge_agent import jsoncodec
from edge_agent.bookings.events import (
    EVENT_TYPES,
    IGNORED_EVENTS,
    MAX_EVENT_DEPTH,
    RELIST_EVENTS,
    EventFields,
    merge,
    nesting_depth,
    parse_event,
    partial_booking_dict,
)
from edge_agent.bookings.models import Booking, booking_key, parse_device_time
from edge_agent.bookings.pending import Resolution, open_request
from edge_agent.bookings.state import DeviceBookings, Step
from edge_agent.bookings.window import WindowBounds, in_window, window_bounds
from edge_agent.clock import utc_iso

__all__ = ["CALENDAR_CHANGES", "DUPLICATE_HORIZON", "on_event"]

DUPLICATE_HORIZON = timedelta(seconds=5)
_RECENT_MAX = 64
_DEFAULT_AD_HOC_MIN = 30  # Bookings Book's default Duration
CALENDAR_CHANGES: Final[frozenset[str]] = frozenset(
    {"BookingCreated", "BookingFailed", "BookingMoved", "Deleted"}
)
"""Events after which a re-list is asked for: the event carries only some fields of the booking,
and a hybrid calendar may have changed more than it says."""


# ---------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class _When:
    """The two times of one event: ``now``, when it is processed (the envelope's ``timestamp``),
    and ``at``, when its frame arrived (what the device did when: ``observed_at``, deadlines)."""

    now: datetime
    at: datetime

    def envelope(self, state: DeviceBookings, type: str, **fields: Any) -> dict[str, Any]:
        return state._envelope(type, self.now, observed_at=self.at, **fields)


def _find(window: Mapping[str, Booking], ev: EventFields) -> tuple[str, Booking] | None:
    for k in (ev.meeting_id, ev.original_meeting_id, ("id:" + ev.id) if ev.id else None):
        if k and k in window:
            return k, window[k]
    if ev.id:
        for k, b in window.items():
            if b.id == ev.id:
                return k, b
    return None


def _fingerprint(ev: EventFields) -> bytes:
    # A 128-bit digest, not the canonical JSON itself: every device keeps the last few seconds'
    # fingerprints until its next event, which after a burst is ~0.5 KiB an event fleet-wide.
    return hashlib.blake2b(
        ev.name.encode() + b"|" + jsoncodec.canonical(ev.raw), digest_size=16
    ).digest()


def _within_horizon(a: datetime, b: datetime) -> bool:
    # Either way round: after a wall-clock step back, a later arrival may carry an earlier stamp.
    return abs(a - b) < DUPLICATE_HORIZON


def _surely_within(after: datetime, at: datetime, r_after: datetime, r_at: datetime) -> bool:
    """Whether two arrivals, each known to lie in its span, were surely within the horizon:
    the farthest apart they can have been is."""
    return _within_horizon(at, r_after) and _within_horizon(r_at, after)


_Recent = tuple[bytes, datetime, datetime]


def _look_back(
    recent: tuple[_Recent, ...], fp: bytes, at: datetime
) -> tuple[list[tuple[datetime, datetime]], list[_Recent]]:
    """One pass over the duplicate memory for an event arrived at ``at``: its twins (same
    fingerprint, arrived within the horizon: ``(after, at)`` each) and the entries to keep.

    Kept: those a later arrival may still be surely within the horizon of, i.e.
    ``_within_horizon(at, r_after)``. Both tests are bounds computed once, not a timedelta per
    entry (up to 64 per event, every event)."""
    lo, hi = at - DUPLICATE_HORIZON, at + DUPLICATE_HORIZON
    twins: list[tuple[datetime, datetime]] = []
    kept: list[_Recent] = []
    for r in recent:
        if lo < r[1] < hi:
            kept.append(r)
        if r[0] == fp and lo < r[2] < hi:
            twins.append((r[1], r[2]))
    return twins, kept


def _remember(
    state: DeviceBookings, kept: list[_Recent], fp: bytes, after: datetime, at: datetime
) -> DeviceBookings:
    excess = len(kept) - (_RECENT_MAX - 1)
    if excess > 0:
        del kept[:excess]
    kept.append((fp, after, at))
    return replace(state, recent=tuple(kept))


def _patch_window(
    window: Mapping[str, Booking],
    old_key: str | None,
    booking: Booking | None,
    bounds: WindowBounds,
) -> tuple[dict[str, Booking], dict[str, Booking], tuple[str, ...]]:
    """Put ``booking`` in the window (or take it out if it left), replacing ``old_key``.
    Returns (new window, upserts, deletes)."""
    new = dict(window)
    upsert: dict[str, Booking] = {}
    delete: list[str] = []
    new_key = booking_key(booking) if booking is not None else None
    if old_key is not None and old_key != new_key and old_key in new:
        del new[old_key]
        delete.append(old_key)
    if booking is not None and new_key is not None:
        if in_window(booking, bounds):
            new[new_key] = booking
            upsert[new_key] = booking
        elif new_key in new:
            del new[new_key]
            delete.append(new_key)
    return new, upsert, tuple(delete)


# ---------------------------------------------------------------------- transitions


def on_event(
    state: DeviceBookings,
    payload: Mapping[str, Any],
    now: datetime,
    *,
    arrived_at: datetime | None = None,
    arrived_after: datetime | None = None,
) -> Step:
    """An ``Event Bookings`` notification (the handler payload) processed at ``now``, its frame
    arrived at ``arrived_at`` (the reader's stamp; ``now`` when not given), or, when
    ``arrived_after`` is given, at some time between the two (read in a catch-up after a stall).

    Never raises: an event the agent cannot take in (nested past :data:`MAX_EVENT_DEPTH`, a
    value no parser foresaw) is dropped with a warning and costs that event only. The device's
    calendar still holds the booking, so the drop asks for a re-list."""
    depth = nesting_depth(payload)
    if depth > MAX_EVENT_DEPTH:
        return Step(
            state,
            relist=True,
            warnings=(
                f"Bookings event {_name_of(payload)} nested more than {MAX_EVENT_DEPTH} levels "
                f"deep dropped; re-listing instead",
            ),
        )
    try:
        at = now if arrived_at is None else arrived_at
        after = at if arrived_after is None else min(arrived_after, at)
        return _on_event(state, payload, now, at, after)
    except Exception as exc:  # noqa: BLE001 - one odd event must not cost the session
        return Step(
            state,
            relist=True,
            warnings=(
                f"Bookings event {_name_of(payload)} dropped ({type(exc).__name__}: {exc}); "
                f"re-listing instead",
            ),
        )


def _name_of(payload: Mapping[str, Any]) -> str:
    node: Any = payload
    for key in ("Event", "Bookings"):
        if isinstance(node, Mapping) and isinstance(node.get(key), Mapping):
            node = node[key]
    if isinstance(node, Mapping):
        name = next((k for k in node if k not in ("id", "Id")), None)
        if isinstance(name, str):
            return name[:64]
    return "<unnamed>"


def _on_event(
    state: DeviceBookings, payload: Mapping[str, Any], now: datetime, at: datetime, after: datetime
) -> Step:
    ev = parse_event(payload)
    if ev is None:
        return Step(state, notes=(f"not a Bookings event: {str(payload)[:200]}",))
    if ev.name in RELIST_EVENTS:
        return Step(state, relist=True)
    if ev.name in IGNORED_EVENTS:
        return Step(state)
    etype = EVENT_TYPES.get(ev.name)
    if etype is None:
        return Step(state, notes=(f"unknown Bookings event {ev.name!r} ignored",))
    fp = _fingerprint(ev)
    twins, kept = _look_back(state.recent, fp, at)
    if twins and any(_surely_within(after, at, a, t) for a, t in twins):
        return Step(state, duplicate=True, notes=(f"duplicate {ev.xevent} dropped",))
    state = _remember(state, kept, fp, after, at)
    handler = _HANDLERS.get(ev.name, _on_booking_event)
    step = handler(state, ev, _When(now, at))
    if ev.name in CALENDAR_CHANGES and not step.relist:
        step = replace(step, relist=True)
    if twins:
        # Read within the horizon of an identical one, but either may have waited out a stall
        # in the kernel's buffer: the device may have sent them far apart. Kept, and said.
        note = f"{ev.xevent} identical to one read just before kept: arrival uncertain"
        step = replace(step, kept_uncertain=True, notes=(*step.notes, note))
    return step


def _on_requested(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    duration = ev.duration_min or _DEFAULT_AD_HOC_MIN
    uuid = ev.booking_request_uuid
    partial = partial_booking_dict(ev)
    if uuid is None:
        env = t.envelope(state, "booking.requested", xevent=ev.xevent, booking=partial)
        return Step(
            state,
            events=(env,),
            notes=("BookingRequested without BookingRequestUUID: not tracked",),
        )
    if uuid in state.pending:
        return Step(state, notes=(f"BookingRequested {uuid} already pending: ignored",))
    req = open_request(
        device_id=state.device_id,
        booking_request_uuid=uuid,
        title=ev.title,
        start=ev.start,
        duration_min=duration,
        requested_at=t.at,
        booking_timeout_s=state.booking_timeout_s,
        grace_s=state.grace_s,
    )
    env = t.envelope(
        state,
        "booking.requested",
        xevent=ev.xevent,
        booking=partial,
        extra={"request": req.to_dict()},
    )
    new = replace(state, pending={**state.pending, uuid: req})
    return Step(new, pending_upsert=(req,), events=(env,))


def _on_created(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    found = _find(state.window, ev)
    old_key, stored = found if found else (None, None)
    booking = merge(stored, ev)
    req = state.pending.get(ev.booking_request_uuid) if ev.booking_request_uuid else None
    pending_delete: tuple[str, ...] = ()
    pending = state.pending
    extra: dict[str, Any] = {}
    if req is not None:
        pending = {k: v for k, v in state.pending.items() if k != req.booking_request_uuid}
        pending_delete = (req.booking_request_uuid,)
        extra["pending_ms"] = Resolution("created", req, t.at).pending_ms
        if booking is not None:
            booking = replace(booking, booking_request_uuid=req.booking_request_uuid)
    if booking is None:
        env = t.envelope(
            state,
            "booking.created",
            xevent=ev.xevent,
            booking=partial_booking_dict(ev),
            extra=extra or None,
        )
        return Step(
            replace(state, pending=pending),
            pending_delete=pending_delete,
            events=(env,),
            relist=True,
        )
    bounds = window_bounds(t.at, state.tz)  # only where a booking may enter or leave it
    window, upsert, delete = _patch_window(state.window, old_key, booking, bounds)
    new = replace(state, window=window, pending=pending)
    duplicate = (
        req is None
        and stored is not None
        and (stored.start, stored.end) == (booking.start, booking.end)
    )
    events: tuple[dict[str, Any], ...] = ()
    if not duplicate:
        events = (
            t.envelope(
                state, "booking.created", xevent=ev.xevent, booking=booking, extra=extra or None
            ),
        )
    return Step(
        new,
        window_upsert=upsert,
        window_delete=delete,
        pending_delete=pending_delete,
        events=events,
        notes=() if events else (f"{ev.xevent} for a known booking: no event",),
    )


def _on_failed(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    uuid = ev.booking_request_uuid
    req = state.pending.get(uuid) if uuid else None
    extra: dict[str, Any] = {"booking_request_uuid": uuid, "cause": ev.cause}
    if req is not None:
        extra["request"] = req.to_dict()
        extra["pending_ms"] = Resolution("failed", req, t.at).pending_ms
        pending = {k: v for k, v in state.pending.items() if k != uuid}
        env = t.envelope(state, "booking.failed", xevent=ev.xevent, extra=extra)
        return Step(
            replace(state, pending=pending),
            pending_delete=(req.booking_request_uuid,),
            events=(env,),
        )
    env = t.envelope(state, "booking.failed", xevent=ev.xevent, extra=extra)
    return Step(state, events=(env,))


def _on_moved(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    found = _find(state.window, ev)
    old_key, stored = found if found else (None, None)
    booking = merge(stored, ev)
    if booking is None:
        env = t.envelope(state, "booking.moved", xevent=ev.xevent, booking=partial_booking_dict(ev))
        return Step(state, events=(env,), relist=True)
    if stored is not None and (stored.start, stored.end) == (booking.start, booking.end):
        return Step(state, notes=(f"{ev.xevent} to the same time: no event",))
    bounds = window_bounds(t.at, state.tz)  # only where a booking may enter or leave it
    window, upsert, delete = _patch_window(state.window, old_key, booking, bounds)
    extra = (
        {"previous": {"start": utc_iso(stored.start), "end": utc_iso(stored.end)}}
        if stored is not None
        else None
    )
    env = t.envelope(state, "booking.moved", xevent=ev.xevent, booking=booking, extra=extra)
    return Step(
        replace(state, window=window),
        window_upsert=upsert,
        window_delete=delete,
        events=(env,),
        relist=stored is None,
    )


def _on_deleted(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    found = _find(state.window, ev)
    extra = {"cause": ev.cause}
    if found is None:
        b = merge(None, ev)
        env = t.envelope(
            state,
            "booking.deleted",
            xevent=ev.xevent,
            booking=b if b is not None else partial_booking_dict(ev),
            extra=extra,
        )
        return Step(state, events=(env,))
    key, stored = found
    window = {k: v for k, v in state.window.items() if k != key}
    env = t.envelope(
        state, "booking.deleted", xevent=ev.xevent, booking=merge(stored, ev), extra=extra
    )
    return Step(replace(state, window=window), window_delete=(key,), events=(env,))


def _on_booking_event(state: DeviceBookings, ev: EventFields, t: _When) -> Step:
    """Start, End, CheckedIn, ExtensionRequested/Failed, EditRequested/Failed."""
    etype = EVENT_TYPES[ev.name]
    found = _find(state.window, ev)
    extra: dict[str, Any] = {}
    if ev.cause is not None:
        extra["cause"] = ev.cause
    if ev.name == "ExtensionRequested":
        extra["new_end"] = utc_iso(ev.new_end) if ev.new_end else None
        extra["duration_min"] = ev.duration_min
    if ev.name == "ExtensionFailed" and ev.raw.get("ExtensionStart") is not None:
        start = parse_device_time(ev.raw.get("ExtensionStart"))
        extra["extension_start"] = utc_iso(start) if start else None
    if found is None:
        env = t.envelope(
            state, etype, xevent=ev.xevent, booking=partial_booking_dict(ev), extra=extra or None
        )
        # Older software sends Start/End with Id only: learn the booking from a list.
        return Step(state, events=(env,), relist=ev.name in ("Start", "End", "CheckedIn"))
    key, stored = found
    # An extension is only requested here; the window changes when the list (or a move) says so.
    booking = stored
    if ev.name == "CheckedIn":
        booking = replace(stored, checked_in=True)
    env = t.envelope(state, etype, xevent=ev.xevent, booking=booking, extra=extra or None)
    if booking is stored:
        return Step(state, events=(env,))
    window = {**state.window, key: booking}
    return Step(replace(state, window=window), window_upsert={key: booking}, events=(env,))


_HANDLERS = {
    "BookingRequested": _on_requested,
    "BookingCreated": _on_created,
    "BookingFailed": _on_failed,
    "BookingMoved": _on_moved,
    "Deleted": _on_deleted,
}
