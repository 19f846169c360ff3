"""One device's bookings state and its transitions: the whole domain behind a thin I/O shell.

Every transition is ``f(state, input, now) -> Step``; a :class:`Step` is pure data. The session
commits a Step to the store in ONE transaction (``Change``: window replace/upsert/delete, pending
upsert/delete, device state, envelopes), and only then swaps ``step.state`` in as its in-memory
state, and re-lists when ``step.relist`` is set.

Transitions: :func:`on_event` (an ``Event Bookings`` notification), :func:`on_list` (a complete
``Bookings List``, all pages), :func:`on_tick` (time passing: request deadlines, local midnight),
:func:`on_availability` (``Status Bookings``), :func:`on_connection` (link up/down).

Decisions:

- The very first list of a device (``state.bounds is None``: nothing stored yet) emits only the
  snapshot, not a ``booking.created`` per booking. The shell restores ``bounds`` from the device
  state row after a restart, so later lists do report what was missed (``data.reconciled: true``).
- ``booking.created`` is emitted once per booking: a ``BookingCreated`` for a booking already in
  the window with the same times (a duplicate, or one a re-list already reported) only updates the
  window.
- An identical Bookings event arriving again within :data:`DUPLICATE_HORIZON` is dropped (devices
  and proxies do repeat frames). Lost events are the re-list's job, not this.
- A booking event naming a booking the window does not hold (``Start {Id}`` from older software,
  a move of an unknown booking) still produces its envelope, from what the event carries, and asks
  for a re-list to learn the booking.
- ``device.online`` / ``device.offline`` only on a change; ``online`` is not persisted, so the
  first connect after an agent start emits ``device.online``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent import jsoncodec
from edge_agent.bookings.events import (
    EVENT_TYPES,
    IGNORED_EVENTS,
    RELIST_EVENTS,
    Entropy,
    EventFields,
    make_envelope,
    merge,
    parse_event,
    partial_booking_dict,
    prng_bytes,
)
from edge_agent.bookings.models import (
    Booking,
    ListPage,
    booking_key,
    device_str,
    parse_device_time,
)
from edge_agent.bookings.pending import (
    DEFAULT_GRACE_S,
    PendingRequest,
    Resolution,
    clamp_booking_timeout,
    open_request,
    resolve_by_list,
)
from edge_agent.bookings.reconcile import reconcile
from edge_agent.bookings.window import WindowBounds, in_window, next_midnight, window_bounds
from edge_agent.clock import utc_iso

__all__ = [
    "DUPLICATE_HORIZON",
    "Availability",
    "DeviceBookings",
    "Step",
    "on_availability",
    "on_connection",
    "on_event",
    "on_list",
    "on_tick",
]

DUPLICATE_HORIZON = timedelta(seconds=5)
_RECENT_MAX = 64
_DEFAULT_AD_HOC_MIN = 30  # Bookings Book's default Duration


@dataclass(frozen=True, slots=True)
class Availability:
    """``Status Bookings Availability``: ``status`` Free | FreeUntil | BookedUntil; ``until`` its
    ``TimeStamp`` (None when the device leaves it empty)."""

    status: str | None = None
    until: datetime | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"status": self.status, "until": utc_iso(self.until) if self.until else None}


@dataclass(frozen=True, slots=True)
class DeviceBookings:
    """What the agent knows of one device's bookings. Immutable; transitions return a new one.

    ``bounds`` is the window of the last list (None: never listed). ``tz`` is the device's
    ``Configuration Time Zone``; ``booking_timeout_s`` its ``AdhocBooking BookingTimeout`` (clamped
    to 60..300 where used). Change either with :meth:`with_config`.
    """

    site: str
    device_id: str
    tz: ZoneInfo
    booking_timeout_s: int = 60
    grace_s: float = DEFAULT_GRACE_S
    window: Mapping[str, Booking] = field(default_factory=dict)
    pending: Mapping[str, PendingRequest] = field(default_factory=dict)
    bounds: WindowBounds | None = None
    availability: Availability | None = None
    current_id: str | None = None
    online: bool | None = None
    recent: tuple[tuple[bytes, datetime], ...] = ()
    entropy: Entropy = field(default=prng_bytes, compare=False, repr=False)

    # ------------------------------------------------------------------ persistence

    @classmethod
    def restore(
        cls,
        *,
        site: str,
        device_id: str,
        tz: ZoneInfo,
        window_rows: Mapping[str, Mapping[str, Any]] | None = None,
        pending_rows: Sequence[Mapping[str, Any]] = (),
        device_state: Mapping[str, Any] | None = None,
        booking_timeout_s: int = 60,
        grace_s: float = DEFAULT_GRACE_S,
        entropy: Entropy = prng_bytes,
    ) -> tuple[DeviceBookings, list[str]]:
        """Rebuild the state from the store's rows (``load_window``, ``load_pending``,
        ``load_device_state``). Unreadable rows are skipped; the reasons are returned to log."""
        notes: list[str] = []
        window: dict[str, Booking] = {}
        for k, row in (window_rows or {}).items():
            try:
                window[k] = Booking.from_row(row)
            except (ValueError, TypeError) as exc:
                notes.append(f"window row {k!r} dropped: {exc}")
        pending: dict[str, PendingRequest] = {}
        for row in pending_rows:
            try:
                p = PendingRequest.from_row(row)
            except (ValueError, TypeError) as exc:
                notes.append(f"pending row dropped: {exc}")
                continue
            if p.device_id == device_id:
                pending[p.booking_request_uuid] = p
        bounds: WindowBounds | None = None
        availability: Availability | None = None
        current_id: str | None = None
        if device_state:
            b = device_state.get("bounds")
            if isinstance(b, Mapping):
                s, e = parse_device_time(b.get("start")), parse_device_time(b.get("end"))
                if s is not None and e is not None:
                    bounds = WindowBounds(s, e)
            a = device_state.get("availability")
            if isinstance(a, Mapping):
                availability = Availability(
                    device_str(a.get("status")), parse_device_time(a.get("until"))
                )
            current_id = device_str(device_state.get("current_id"))
        state = cls(
            site=site,
            device_id=device_id,
            tz=tz,
            booking_timeout_s=booking_timeout_s,
            grace_s=grace_s,
            window=window,
            pending=pending,
            bounds=bounds,
            availability=availability,
            current_id=current_id,
            entropy=entropy,
        )
        return state, notes

    def device_state_row(self) -> dict[str, Any]:
        """The JSON-able device state the store keeps (``Change.device_state``)."""
        return {
            "bounds": self.bounds.to_dict() if self.bounds else None,
            "availability": self.availability.to_dict() if self.availability else None,
            "current_id": self.current_id,
            "time_zone": self.tz.key,
            "booking_timeout_s": self.booking_timeout_s,
        }

    def with_config(
        self,
        *,
        tz: ZoneInfo | None = None,
        booking_timeout_s: int | None = None,
        grace_s: float | None = None,
    ) -> DeviceBookings:
        """The same state with the device configuration read anew (time zone, BookingTimeout).
        Open requests keep their deadline. A new time zone makes the next tick ask for a list."""
        return replace(
            self,
            tz=tz or self.tz,
            booking_timeout_s=self.booking_timeout_s
            if booking_timeout_s is None
            else clamp_booking_timeout(booking_timeout_s),
            grace_s=self.grace_s if grace_s is None else grace_s,
        )

    # ------------------------------------------------------------------ queries

    def current_bounds(self, now: datetime) -> WindowBounds:
        return window_bounds(now, self.tz)

    def next_wakeup(self, now: datetime) -> datetime:
        """When :func:`on_tick` next has something to do: the earliest deadline of a request not
        yet re-listed for, or the next local midnight."""
        t = next_midnight(now, self.tz)
        for p in self.pending.values():
            if not p.relist_requested and p.deadline < t:
                t = p.deadline
        return t

    def snapshot(self, now: datetime, bounds: WindowBounds | None = None) -> dict[str, Any]:
        """A ``bookings.snapshot`` envelope of the window (bookings sorted by start)."""
        b = bounds or self.bounds or window_bounds(now, self.tz)
        books = sorted(self.window.values(), key=lambda x: (x.start, x.end, booking_key(x)))
        return self._envelope(
            "bookings.snapshot",
            now,
            extra={
                "bookings": [x.to_dict() for x in books],
                "window": b.to_dict(),
            },
        )

    def _envelope(
        self,
        type: str,
        now: datetime,
        *,
        xevent: str | None = None,
        booking: Booking | Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return make_envelope(
            type,
            site=self.site,
            device_id=self.device_id,
            now=now,
            xevent=xevent,
            booking=booking,
            extra=extra,
            entropy=self.entropy,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one transition: pure data for the shell to commit, then adopt ``state``.

    ``window_replace`` (when not None) replaces the device's whole window; else
    ``window_upsert``/``window_delete`` patch it. ``pending_delete`` holds request UUIDs.
    ``device_state`` (when not None) is the new device state row. ``events`` are envelopes, in
    order. ``relist``: run ``Bookings List`` (then :func:`on_list`). ``notes``: log lines.
    """

    state: DeviceBookings
    window_replace: Mapping[str, Booking] | None = None
    window_upsert: Mapping[str, Booking] = field(default_factory=dict)
    window_delete: tuple[str, ...] = ()
    pending_upsert: tuple[PendingRequest, ...] = ()
    pending_delete: tuple[str, ...] = ()
    device_state: Mapping[str, Any] | None = None
    events: tuple[dict[str, Any], ...] = ()
    relist: bool = False
    notes: tuple[str, ...] = ()

    @property
    def needs_commit(self) -> bool:
        return bool(
            self.window_replace is not None
            or self.window_upsert
            or self.window_delete
            or self.pending_upsert
            or self.pending_delete
            or self.device_state is not None
            or self.events
        )

    def window_replace_rows(self) -> dict[str, dict[str, Any]] | None:
        if self.window_replace is None:
            return None
        return {k: b.to_row() for k, b in self.window_replace.items()}

    def window_upsert_rows(self) -> dict[str, dict[str, Any]]:
        return {k: b.to_row() for k, b in self.window_upsert.items()}

    def pending_upsert_rows(self) -> list[dict[str, Any]]:
        return [p.to_row() for p in self.pending_upsert]


# ---------------------------------------------------------------------- helpers


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


def _remember(state: DeviceBookings, fp: bytes, now: datetime) -> DeviceBookings:
    recent = tuple(r for r in state.recent if now - r[1] < DUPLICATE_HORIZON)[-(_RECENT_MAX - 1) :]
    return replace(state, recent=recent + ((fp, now),))


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


def on_event(state: DeviceBookings, payload: Mapping[str, Any], now: datetime) -> Step:
    """An ``Event Bookings`` notification (the handler payload) observed at ``now``."""
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
    if any(f == fp and now - t < DUPLICATE_HORIZON for f, t in state.recent):
        return Step(state, notes=(f"duplicate {ev.xevent} dropped",))
    state = _remember(state, fp, now)
    bounds = window_bounds(now, state.tz)
    handler = _HANDLERS.get(ev.name, _on_booking_event)
    return handler(state, ev, now, bounds)


def _on_requested(
    state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds
) -> Step:
    duration = ev.duration_min or _DEFAULT_AD_HOC_MIN
    uuid = ev.booking_request_uuid
    partial = partial_booking_dict(ev)
    if uuid is None:
        env = state._envelope("booking.requested", now, xevent=ev.xevent, booking=partial)
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
        requested_at=now,
        booking_timeout_s=state.booking_timeout_s,
        grace_s=state.grace_s,
    )
    env = state._envelope(
        "booking.requested",
        now,
        xevent=ev.xevent,
        booking=partial,
        extra={"request": req.to_dict()},
    )
    new = replace(state, pending={**state.pending, uuid: req})
    return Step(new, pending_upsert=(req,), events=(env,))


def _on_created(
    state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds
) -> Step:
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
        extra["pending_ms"] = Resolution("created", req, now).pending_ms
        if booking is not None:
            booking = replace(booking, booking_request_uuid=req.booking_request_uuid)
    if booking is None:
        env = state._envelope(
            "booking.created",
            now,
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
            state._envelope(
                "booking.created", now, xevent=ev.xevent, booking=booking, extra=extra or None
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


def _on_failed(state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds) -> Step:
    uuid = ev.booking_request_uuid
    req = state.pending.get(uuid) if uuid else None
    extra: dict[str, Any] = {"booking_request_uuid": uuid, "cause": ev.cause}
    if req is not None:
        extra["request"] = req.to_dict()
        extra["pending_ms"] = Resolution("failed", req, now).pending_ms
        pending = {k: v for k, v in state.pending.items() if k != uuid}
        env = state._envelope("booking.failed", now, xevent=ev.xevent, extra=extra)
        return Step(
            replace(state, pending=pending),
            pending_delete=(req.booking_request_uuid,),
            events=(env,),
        )
    env = state._envelope("booking.failed", now, xevent=ev.xevent, extra=extra)
    return Step(state, events=(env,))


def _on_moved(state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds) -> Step:
    found = _find(state.window, ev)
    old_key, stored = found if found else (None, None)
    booking = merge(stored, ev)
    if booking is None:
        env = state._envelope(
            "booking.moved", now, xevent=ev.xevent, booking=partial_booking_dict(ev)
        )
        return Step(state, events=(env,), relist=True)
    if stored is not None and (stored.start, stored.end) == (booking.start, booking.end):
        return Step(state, notes=(f"{ev.xevent} to the same time: no event",))
    window, upsert, delete = _patch_window(state.window, old_key, booking, bounds)
    extra = (
        {"previous": {"start": utc_iso(stored.start), "end": utc_iso(stored.end)}}
        if stored is not None
        else None
    )
    env = state._envelope("booking.moved", now, xevent=ev.xevent, booking=booking, extra=extra)
    return Step(
        replace(state, window=window),
        window_upsert=upsert,
        window_delete=delete,
        events=(env,),
        relist=stored is None,
    )


def _on_deleted(
    state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds
) -> Step:
    found = _find(state.window, ev)
    extra = {"cause": ev.cause}
    if found is None:
        b = merge(None, ev)
        env = state._envelope(
            "booking.deleted",
            now,
            xevent=ev.xevent,
            booking=b if b is not None else partial_booking_dict(ev),
            extra=extra,
        )
        return Step(state, events=(env,))
    key, stored = found
    window = {k: v for k, v in state.window.items() if k != key}
    env = state._envelope(
        "booking.deleted", now, xevent=ev.xevent, booking=merge(stored, ev), extra=extra
    )
    return Step(replace(state, window=window), window_delete=(key,), events=(env,))


def _on_booking_event(
    state: DeviceBookings, ev: EventFields, now: datetime, bounds: WindowBounds
) -> Step:
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
        env = state._envelope(
            etype, now, xevent=ev.xevent, booking=partial_booking_dict(ev), extra=extra or None
        )
        # Older software sends Start/End with Id only: learn the booking from a list.
        return Step(state, events=(env,), relist=ev.name in ("Start", "End", "CheckedIn"))
    key, stored = found
    # An extension is only requested here; the window changes when the list (or a move) says so.
    booking = stored
    if ev.name == "CheckedIn":
        booking = replace(stored, checked_in=True)
    env = state._envelope(etype, now, xevent=ev.xevent, booking=booking, extra=extra or None)
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


def on_list(
    state: DeviceBookings,
    result: ListPage | Sequence[Booking],
    now: datetime,
    bounds: WindowBounds | None = None,
) -> Step:
    """A complete ``Bookings List`` (all pages merged) received at ``now``.

    Reconciles the window (``booking.created``/``moved``/``deleted`` with ``data.reconciled:
    true`` for what was missed), closes pending requests found in the list (``booking.created``
    with ``pending_ms``) or past their deadline (``booking.request_expired``), and ends with a
    ``bookings.snapshot``. ``bounds`` defaults to the window for ``now`` in ``state.tz``.

    A list with skipped (unparsable) entries is incomplete: the stored copy of a booking whose
    entry was skipped is kept as it was, an entry skipped without a readable ``Id`` suppresses
    every deletion. The next clean list reconciles what this one could not.
    """
    if isinstance(result, ListPage):
        fresh = result.bookings
        notes = list(result.skipped)
        skipped_ids = {i for i in result.skipped_ids if i}
        complete = not result.skipped_unidentified
    else:
        fresh, notes, skipped_ids, complete = tuple(result), [], set(), True
    b = bounds or window_bounds(now, state.tz)
    rec = reconcile(state.window, fresh, b, now=now, skipped_ids=skipped_ids, complete=complete)
    notes.extend(rec.notes)
    if rec.kept:
        why = (
            "an entry without a readable Id was skipped, so no deletions from this list"
            if not complete
            else "their list entries were skipped"
        )
        kept = ", ".join(f"{booking_key(x)!r} (Id {x.id})" for x in rec.kept)
        notes.append(f"kept {len(rec.kept)} stored booking(s) as they were ({why}): {kept}")
    notes.extend(f"booking re-keyed {o!r} -> {n!r}" for o, n in rec.rekeyed)
    window = dict(rec.window)
    events: list[dict[str, Any]] = []
    pending = dict(state.pending)
    pending_delete: list[str] = []
    claimed: set[str] = set()
    reported: set[str] = set()
    candidates = [window.get(booking_key(x), x) for x in fresh]
    for req in sorted(state.pending.values(), key=lambda p: p.requested_at):
        pool = [x for x in candidates if booking_key(x) not in claimed]
        res = resolve_by_list(req, pool, now)
        if res is None:
            continue
        del pending[req.booking_request_uuid]
        pending_delete.append(req.booking_request_uuid)
        if res.outcome == "created" and res.booking is not None:
            k = booking_key(res.booking)
            claimed.add(k)
            booking = res.booking
            if k in window:
                booking = replace(window[k], booking_request_uuid=req.booking_request_uuid)
                window[k] = booking
            reported.add(k)
            events.append(
                state._envelope(
                    "booking.created",
                    now,
                    booking=booking,
                    extra={"pending_ms": res.pending_ms, "reconciled": True},
                )
            )
        else:
            events.append(
                state._envelope(
                    "booking.request_expired",
                    now,
                    extra={
                        "booking_request_uuid": req.booking_request_uuid,
                        "request": req.to_dict(),
                    },
                )
            )
    if state.bounds is not None:
        for c in rec.created:
            k = booking_key(c)
            if k not in reported:
                events.append(
                    state._envelope(
                        "booking.created", now, booking=window.get(k, c), extra={"reconciled": True}
                    )
                )
        for m in rec.moved:
            events.append(
                state._envelope(
                    "booking.moved",
                    now,
                    booking=window.get(booking_key(m.after), m.after),
                    extra={
                        "reconciled": True,
                        "previous": {
                            "start": utc_iso(m.before.start),
                            "end": utc_iso(m.before.end),
                        },
                    },
                )
            )
        for d in rec.deleted:
            events.append(
                state._envelope(
                    "booking.deleted", now, booking=d, extra={"reconciled": True, "cause": None}
                )
            )
    new = replace(state, window=window, pending=pending, bounds=b)
    events.append(new.snapshot(now, b))
    return Step(
        new,
        window_replace=window,
        pending_delete=tuple(pending_delete),
        device_state=new.device_state_row(),
        events=tuple(events),
        notes=tuple(notes),
    )


def on_tick(state: DeviceBookings, now: datetime) -> Step:
    """Time passed. Requests past their deadline ask for a re-list once (the list after it
    resolves or expires them); so does a new local day (or a new time zone) since the last list."""
    due = [p for p in state.pending.values() if now >= p.deadline and not p.relist_requested]
    flagged = tuple(replace(p, relist_requested=True) for p in due)
    stale_window = state.bounds is not None and window_bounds(now, state.tz) != state.bounds
    if not flagged and not stale_window:
        return Step(state)
    pending = {**state.pending, **{p.booking_request_uuid: p for p in flagged}}
    return Step(replace(state, pending=pending), pending_upsert=flagged, relist=True)


def _availability_node(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = payload
    for key in ("Status", "Bookings"):
        if isinstance(node, Mapping) and isinstance(node.get(key), Mapping):
            node = node[key]
    return node if isinstance(node, Mapping) else {}


def on_availability(state: DeviceBookings, payload: Mapping[str, Any], now: datetime) -> Step:
    """``Status Bookings`` (an ``xGet`` result or a status feedback, whole or partial).

    Emits ``room.availability {status, until}`` only when the value changed. ``Current Id`` is
    kept in the state (no event)."""
    node = _availability_node(payload)
    avail_raw = node.get("Availability")
    cur = state.availability or Availability()
    new_avail = cur
    if isinstance(avail_raw, Mapping):
        status = device_str(avail_raw["Status"]) if "Status" in avail_raw else cur.status
        until = parse_device_time(avail_raw["TimeStamp"]) if "TimeStamp" in avail_raw else cur.until
        new_avail = Availability(status, until)
    current_id = state.current_id
    current_raw = node.get("Current")
    if isinstance(current_raw, Mapping) and "Id" in current_raw:
        current_id = device_str(current_raw.get("Id"))
    if new_avail == state.availability and current_id == state.current_id:
        return Step(state)
    new = replace(
        state,
        availability=new_avail if new_avail != Availability() else state.availability,
        current_id=current_id,
    )
    events: tuple[dict[str, Any], ...] = ()
    if new.availability != state.availability and new_avail.status is not None:
        events = (
            new._envelope(
                "room.availability",
                now,
                xevent="Bookings.Availability",
                extra={"availability": new_avail.to_dict()},
            ),
        )
    return Step(new, device_state=new.device_state_row(), events=events)


def on_connection(
    state: DeviceBookings,
    online: bool,
    now: datetime,
    *,
    reason: str | None = None,
    software: str | None = None,
) -> Step:
    """The device link came up (``online``) or went down. ``device.online`` carries
    ``data.software`` (``SystemUnit Software Version``) when given; ``device.offline`` carries
    ``data.reason``. Only a change emits; going online also asks for a re-list (events sent while
    the link was down are lost)."""
    if state.online == online:
        return Step(state)
    new = replace(state, online=online)
    if online:
        env = new._envelope("device.online", now, extra={"software": software})
        return Step(new, events=(env,), relist=True)
    env = new._envelope("device.offline", now, extra={"reason": reason})
    return Step(new, events=(env,))
