"""Why a calendar-only room's booking is refused before anything is sent to its calendar.

Apart from the Graph and Google booking clients so that the agent can tell them apart without
importing a client (and its HTTP stack: an agent without a calendar source never loads httpx).
"""

from __future__ import annotations

from edge_agent.session import DeviceOffline

__all__ = ["BookingNotSupported", "CalendarUnavailable"]


class CalendarUnavailable(DeviceOffline):
    """A calendar room's calendar cannot take a booking now (its last round failed, no token,
    not read yet): refused before anything is sent (HTTP 503, like an offline device)."""


class BookingNotSupported(NotImplementedError):
    """The room's calendar source cannot be booked through the agent (HTTP 501)."""
