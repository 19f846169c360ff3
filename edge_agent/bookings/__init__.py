"""Bookings domain logic: pure functions of (state, input, now), no I/O, no asyncio.

- :mod:`.models` -- ``Booking``, ``parse_list_result`` (``Bookings List``), ``booking_key``.
- :mod:`.window` -- the calendar window for the device's time zone, ``next_midnight``.
- :mod:`.reconcile` -- stored window vs a fresh list -> created / moved / deleted.
- :mod:`.pending` -- booking requests from ``BookingRequested`` until created, failed, expired.
- :mod:`.events` -- xAPI event -> envelope type, ``make_envelope``, ``merge``.
- :mod:`.state` -- ``DeviceBookings`` (one device's state, its store rows) and ``Step`` (what a
  transition returns for the shell to commit, including whether to re-list).
- :mod:`.on_event` -- ``Event Bookings`` feedback -> Step.
- :mod:`.on_list` -- a complete ``Bookings List`` -> Step (reconciliation, pending closed).
- :mod:`.on_status` -- time passing, ``Status Bookings``, the device link -> Step.
"""

from __future__ import annotations

from edge_agent.bookings.events import (
    ENVELOPE_TYPES,
    EVENT_TYPES,
    IGNORED_EVENTS,
    RELIST_EVENTS,
    EventFields,
    make_envelope,
    merge,
    new_event_id,
    parse_event,
)
from edge_agent.bookings.models import (
    Booking,
    ListPage,
    Organizer,
    booking_key,
    join_pages,
    next_page_offset,
    parse_list_result,
)
from edge_agent.bookings.on_event import CALENDAR_CHANGES, on_event
from edge_agent.bookings.on_list import on_list
from edge_agent.bookings.on_status import on_availability, on_connection, on_tick
from edge_agent.bookings.pending import (
    PendingRequest,
    Resolution,
    deadline_for,
    match_in_list,
    open_request,
    resolve_by_list,
)
from edge_agent.bookings.reconcile import Moved, Reconciliation, reconcile
from edge_agent.bookings.state import Availability, DeviceBookings, Step
from edge_agent.bookings.window import WindowBounds, in_window, next_midnight, window_bounds

__all__ = [
    "CALENDAR_CHANGES",
    "ENVELOPE_TYPES",
    "EVENT_TYPES",
    "IGNORED_EVENTS",
    "RELIST_EVENTS",
    "Availability",
    "Booking",
    "DeviceBookings",
    "EventFields",
    "ListPage",
    "Moved",
    "Organizer",
    "PendingRequest",
    "Reconciliation",
    "Resolution",
    "Step",
    "WindowBounds",
    "booking_key",
    "deadline_for",
    "in_window",
    "join_pages",
    "make_envelope",
    "match_in_list",
    "merge",
    "new_event_id",
    "next_midnight",
    "next_page_offset",
    "on_availability",
    "on_connection",
    "on_event",
    "on_list",
    "on_tick",
    "open_request",
    "parse_event",
    "parse_list_result",
    "reconcile",
    "resolve_by_list",
    "window_bounds",
]
