"""The calendar window: the device's current local day plus 8 hours.

The device holds ``[local midnight today, local midnight tomorrow + 8 h)`` in its own time zone
(``Configuration Time Zone``). "+ 8 h" is 8 *elapsed* hours after tomorrow's local midnight (an
instant, not the wall-clock 08:00): when tomorrow's DST change falls in its first 8 hours the end
reads 09:00 (spring) or 07:00 (autumn) on the wall clock. Either way ``Bookings List DayOffset 0
Days 2`` covers it. "Today" itself is 23 or 25 hours long on a DST day.

Local midnight that does not exist (zones that change clocks at 00:00) resolves to the first
instant of that day; an ambiguous one to its first occurrence (PEP 495 ``fold=0``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from edge_agent.bookings.models import Booking
from edge_agent.clock import utc_iso

__all__ = [
    "WINDOW_TAIL",
    "WindowBounds",
    "in_window",
    "local_midnight",
    "next_midnight",
    "overlaps",
    "window_bounds",
]

WINDOW_TAIL = timedelta(hours=8)


class WindowBounds(NamedTuple):
    """A half-open UTC interval ``[start, end)``."""

    start: datetime
    end: datetime

    def to_dict(self) -> dict[str, str]:
        return {"start": utc_iso(self.start), "end": utc_iso(self.end)}


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of local calendar day ``day`` in ``tz``, as aware UTC."""
    wall = datetime.combine(day, time(0), tzinfo=tz)  # fold=0
    utc = wall.astimezone(UTC)
    # In a gap, fold=0 uses the offset from before the change, which lands on the first instant
    # after the gap -- still on ``day``. Guard against tz rules that would push it to day-1.
    if utc.astimezone(tz).date() < day:
        utc = datetime.combine(day, time(0), tzinfo=tz).replace(fold=1).astimezone(UTC)
    return utc


def window_bounds(now_utc: datetime, tz: ZoneInfo) -> WindowBounds:
    """``[local midnight today, local midnight tomorrow + 8 h)`` for the device zone ``tz``."""
    today = now_utc.astimezone(tz).date()
    start = local_midnight(today, tz)
    end = local_midnight(today + timedelta(days=1), tz) + WINDOW_TAIL
    return WindowBounds(start, end)


def next_midnight(now_utc: datetime, tz: ZoneInfo) -> datetime:
    """The next local midnight strictly after ``now_utc`` (when the shell re-lists), aware UTC."""
    today = now_utc.astimezone(tz).date()
    nxt = local_midnight(today + timedelta(days=1), tz)
    if nxt <= now_utc:  # only if ``now`` sits in a repeated hour crossing midnight
        nxt = local_midnight(today + timedelta(days=2), tz)
    return nxt


def overlaps(start: datetime, end: datetime, bounds: WindowBounds) -> bool:
    """Does ``[start, end)`` overlap ``bounds``? A zero-length booking counts at its instant."""
    if end <= start:
        return bounds.start <= start < bounds.end
    return start < bounds.end and end > bounds.start


def in_window(booking: Booking, bounds: WindowBounds) -> bool:
    """Does the booking overlap the window?"""
    return overlaps(booking.start, booking.end, bounds)
