"""The device's calendar, by concern (sans-I/O throughout):

- ``model``: bookings, organizers, requests awaiting the backend, the calendar's errors;
- ``wire``: device time format, ``Bookings List`` rows, Bookings event fields, Put documents;
- ``commands``: ``Calendar``, the bookings of one device and the Bookings commands' state machine;
- ``backend``: local vs hybrid calendar backend (confirmation delay, Decline, Timeout).
"""

from __future__ import annotations

from .backend import Backend
from .commands import Calendar
from .model import (
    KEEP_PAST,
    TIME_REMAINING_S,
    Booking,
    CalendarError,
    CalendarMode,
    Event,
    FailureCause,
    Organizer,
    PendingRequest,
    local_midnight,
)
from .wire import booking_from_document, parse_time, utc_iso

__all__ = [
    "KEEP_PAST",
    "TIME_REMAINING_S",
    "Backend",
    "Booking",
    "Calendar",
    "CalendarError",
    "CalendarMode",
    "Event",
    "FailureCause",
    "Organizer",
    "PendingRequest",
    "booking_from_document",
    "local_midnight",
    "parse_time",
    "utc_iso",
]
