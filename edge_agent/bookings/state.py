"""One device's bookings state (:class:`DeviceBookings`) and a transition's outcome (:class:`Step`).

Every transition is ``f(state, input, now) -> Step``; a :class:`Step` is pure data. The session
commits a Step to the store in ONE transaction (``Change``: window replace/upsert/delete, pending
upsert/delete, device state, envelopes), and only then swaps ``step.state`` in as its in-memory
state, and re-lists when ``step.relist`` is set: every re-list decision is a transition's.

The transitions: :func:`~.on_event.on_event` (an ``Event Bookings`` notification),
:func:`~.on_list.on_list` (a complete ``Bookings List``, all pages), and in :mod:`.on_status`
``on_tick`` (time passing), ``on_availability`` (``Status Bookings``) and ``on_connection``
(link up/down).

Persistence: :meth:`DeviceBookings.restore` rebuilds the state from the store's rows,
:meth:`DeviceBookings.device_state_row` and the Step's ``*_rows`` methods produce them. The very
first list of a device (``bounds is None``: nothing stored yet) emits only the snapshot; the
shell restores ``bounds`` from the device state row after a restart, so later lists do report
what was missed. ``online`` is not persisted, so the first connect after an agent start emits
``device.online``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent.bookings.events import Entropy, make_envelope, prng_bytes
from edge_agent.bookings.models import Booking, booking_key, device_str, parse_device_time
from edge_agent.bookings.pending import DEFAULT_GRACE_S, PendingRequest, clamp_booking_timeout
from edge_agent.bookings.window import WindowBounds, next_midnight, window_bounds
from edge_agent.clock import utc_iso

__all__ = ["Availability", "DeviceBookings", "Step"]


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
    recent: tuple[tuple[bytes, datetime, datetime], ...] = ()
    """Fingerprints of the last Bookings events with when each ARRIVED (for the dedupe): the
    earliest and the latest it can have (the same unless read in a catch-up after a stall)."""
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
        observed_at: datetime | None = None,
    ) -> dict[str, Any]:
        return make_envelope(
            type,
            site=self.site,
            device_id=self.device_id,
            now=now,
            xevent=xevent,
            booking=booking,
            extra=extra,
            observed_at=observed_at,
            entropy=self.entropy,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one transition: pure data for the shell to commit, then adopt ``state``.

    ``window_replace`` (when not None) replaces the device's whole window; else
    ``window_upsert``/``window_delete`` patch it. ``pending_delete`` holds request UUIDs.
    ``device_state`` (when not None) is the new device state row. ``events`` are envelopes, in
    order. ``relist``: run ``Bookings List`` (then :func:`on_list`). ``notes``: log lines;
    ``warnings``: log lines a person should see (input the device sent that was dropped).
    ``duplicate``: the input was dropped as a repeat of one that arrived just before (the shell
    counts and warns: a drop is never silent). ``kept_uncertain``: the input is identical to
    one read just before, but either's arrival is uncertain (read in a catch-up after a stall),
    so it was kept rather than dropped (the shell counts it and says so).
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
    warnings: tuple[str, ...] = ()
    duplicate: bool = False
    kept_uncertain: bool = False

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
