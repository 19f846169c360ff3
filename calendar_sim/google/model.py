"""Resource calendars and their events as the Google Calendar API shows them (pure, no I/O).

Every change bumps the calendar's ``seq``; a sync token stands for "changes after seq N", which
is what Google documents: with ``syncToken`` the list holds every event changed since, window
or not (the client filters), and deleted ones as ``status: "cancelled"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any


class GoogleError(Exception):
    """``{"error": {"errors": [{domain, reason, message}], "code", "message"}}``."""

    def __init__(self, status: int, reason: str, message: str, domain: str = "global") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}],
                "code": self.status,
                "message": self.message,
            }
        }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value: str | None, name: str) -> datetime:
    """``timeMin``/``timeMax``: RFC 3339 with a mandatory offset (400 otherwise)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise GoogleError(400, "badRequest", f"Bad Request: {name} must be RFC 3339 with offset.")
    return moment.astimezone(UTC)


@dataclass
class GEvent:
    id: str
    summary: str
    start: datetime  # for all-day: local midnight, UTC
    end: datetime
    organizer: str
    created: datetime
    updated: datetime
    seq: int
    all_day_dates: tuple[date, date] | None = None  # (first day, day after the last)
    status: str = "confirmed"
    visibility: str = "default"
    hangout_link: str | None = None
    sequence: int = 0
    daily_count: int = 0  # a series: RRULE:FREQ=DAILY;COUNT=n (0: a single event)

    def expand(self) -> list[GEvent]:
        """With ``singleEvents=true``: the instances of a series (itself when single)."""
        if not self.daily_count or self.status == "cancelled":
            return [self]
        out = []
        for k in range(self.daily_count):
            shift = timedelta(days=k)
            inst = replace(
                self,
                id=f"{self.id}_{(self.start + shift):%Y%m%dT%H%M%SZ}",
                start=self.start + shift,
                end=self.end + shift,
                daily_count=0,
            )
            inst.series = self
            out.append(inst)
        return out

    series: GEvent | None = field(default=None, repr=False, compare=False)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and self.end > start

    def json(self, calendar: str) -> dict[str, Any]:
        etag = '"' + hashlib.sha1(f"{self.id}:{self.seq}".encode()).hexdigest()[:16] + '"'
        if self.status == "cancelled":
            return {"kind": "calendar#event", "etag": etag, "id": self.id, "status": "cancelled"}
        if self.all_day_dates is not None:
            start: dict[str, str] = {"date": self.all_day_dates[0].isoformat()}
            end: dict[str, str] = {"date": self.all_day_dates[1].isoformat()}
        else:
            start = {"dateTime": rfc3339(self.start), "timeZone": "UTC"}
            end = {"dateTime": rfc3339(self.end), "timeZone": "UTC"}
        out: dict[str, Any] = {
            "kind": "calendar#event",
            "etag": etag,
            "id": self.id,
            "status": self.status,
            "htmlLink": f"https://www.google.com/calendar/event?eid={self.id}",
            "created": rfc3339(self.created),
            "updated": rfc3339(self.updated),
            "summary": self.summary,
            "creator": {"email": self.organizer},
            "organizer": {"email": self.organizer},
            "start": start,
            "end": end,
            # Instances share the series' iCalUID, as Google's do (Event.iCalUID).
            "iCalUID": f"{(self.series or self).id}@google.com",
            "sequence": self.sequence,
            "visibility": self.visibility,
            "attendees": [{"email": calendar, "resource": True, "responseStatus": "accepted"}],
            "reminders": {"useDefault": True},
            "eventType": "default",
        }
        if self.daily_count:
            out["recurrence"] = [f"RRULE:FREQ=DAILY;COUNT={self.daily_count}"]
        if self.series is not None:
            out["recurringEventId"] = self.series.id
            out["originalStartTime"] = start
        if self.hangout_link:
            out["hangoutLink"] = self.hangout_link
            out["conferenceData"] = {
                "entryPoints": [{"entryPointType": "video", "uri": self.hangout_link}],
                "conferenceSolution": {"key": {"type": "hangoutsMeet"}, "name": "Google Meet"},
            }
        return out


@dataclass
class ResourceCalendar:
    email: str
    name: str
    resource_id: str
    capacity: int = 8
    time_zone: str = "UTC"
    # CONFERENCE_ROOM, OTHER (a projector, a car...) or CATEGORY_UNKNOWN (legacy data); the
    # Directory lists them all as resource calendars (CalendarResource.resourceCategory).
    category: str = "CONFERENCE_ROOM"
    resource_type: str = "Conference room"
    events: dict[str, GEvent] = field(default_factory=dict)  # cancelled ones stay (tombstones)
    seq: int = 0

    def bump(self) -> int:
        self.seq += 1
        return self.seq

    def resource_json(self) -> dict[str, Any]:
        return {
            "kind": "admin#directory#resources#calendars#CalendarResource",
            "etags": f'"{self.resource_id}"',
            "resourceId": self.resource_id,
            "resourceName": self.name,
            "generatedResourceName": f"{self.name} ({self.capacity})",
            "resourceType": self.resource_type,
            "resourceEmail": self.email,
            "capacity": self.capacity,
            "resourceCategory": self.category,
        }
