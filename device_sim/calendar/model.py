"""What a device's calendar holds: bookings, organizers, requests awaiting the backend.

Plain data and the rules that belong to one booking (its milestones). No wire format here
(``wire``), no command handling (``commands``), no confirmation policy (``backend``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

CalendarMode = Literal["local", "hybrid"]
FailureCause = Literal["Timeout", "Decline", "ConfigError", "HttpError", "KmsError"]
Outcome = Literal["accept", "decline", "timeout"]

TIME_REMAINING_S = 300  # the device warns this long before a meeting ends
KEEP_PAST = timedelta(days=2)  # bookings older than this fall out of the calendar
Event = tuple[str, dict[str, Any]]


class CalendarError(Exception):
    """A Bookings command the device refuses (JSON-RPC error code 1, ``data.Cause``)."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


@dataclass(slots=True)
class Organizer:
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    id: str = ""

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @classmethod
    def from_name(cls, name: str, email: str = "", id: str = "") -> Organizer:
        first, _, last = name.strip().partition(" ")
        return cls(first, last, email, id)


@dataclass(slots=True)
class Booking:
    """One booking as the device holds it."""

    id: str
    meeting_id: str
    title: str
    start: datetime
    end: datetime
    organizer: Organizer = field(default_factory=Organizer)
    agenda: str = ""
    privacy: str = "Public"
    start_buffer_s: int = 300
    end_buffer_s: int = 0
    platform: str = "Webex"  # MeetingPlatform: Webex, MicrosoftTeams, GoogleMeet, Zoom, Other, None
    number: str = ""  # what the device dials (DialInfo)
    webex_url: str = ""
    webex_pin: str = ""
    booking_request_uuid: str = ""
    checked_in: bool = False
    fired: set[str] = field(default_factory=set)

    @property
    def duration_min(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)

    def milestones(self) -> list[tuple[datetime, int, str]]:
        """(when, order, event) for the events this booking fires as time passes."""
        out = [(self.start, 1, "Start"), (self.end, 3, "End")]
        if self.start_buffer_s > 0:
            out.append((self.start - timedelta(seconds=self.start_buffer_s), 0, "StartTimeBuffer"))
        if (self.end - self.start).total_seconds() > TIME_REMAINING_S:
            out.append((self.end - timedelta(seconds=TIME_REMAINING_S), 2, "TimeRemaining"))
        if self.end_buffer_s > 0:
            out.append((self.end, 4, "EndTimeBuffer"))
        return out

    def mark_past(self, now: datetime, *, start_if_current: bool) -> None:
        """Forget milestones already behind ``now`` (a new or moved booking fires no history).

        With ``start_if_current`` a booking that is running right now still gets its Start
        (a room booked "from now" on the touch panel starts at once).
        """
        self.fired = set()
        for when, _, name in self.milestones():
            if when < now or (when == now and name != "Start"):
                if name == "Start" and start_if_current and self.end > now:
                    continue
                self.fired.add(name)


@dataclass(slots=True)
class PendingRequest:
    """A Book, Edit or Extend request waiting for the (simulated) calendar backend."""

    kind: Literal["book", "edit", "extend"]
    due: datetime
    outcome: Outcome
    uuid: str = ""
    start: datetime | None = None
    duration_min: int = 30
    title: str = ""
    organizer: Organizer = field(default_factory=Organizer)
    booking_id: str = ""
    changes: dict[str, Any] = field(default_factory=dict)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """00:00 of ``day`` in ``zone``, as UTC."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
