"""Mailboxes, rooms and events as Graph shows them; recurrence expansion (pure, no I/O).

Every change to a mailbox's calendar bumps the mailbox's ``seq`` and stamps the event with it:
a delta round is "everything in the window whose version is newer than the round's seq, plus
removals of what the client saw and is no longer there" (see ``delta.py``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EventType = Literal["singleInstance", "occurrence", "exception", "seriesMaster"]
SENSITIVITIES = ("normal", "personal", "private", "confidential")
DAYS_OF_WEEK = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# The Windows names Outlook uses most; Graph accepts these and IANA names in timeZone fields.
WINDOWS_ZONES = {
    "UTC": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Central European Standard Time": "Europe/Warsaw",
    "E. Europe Standard Time": "Europe/Chisinau",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
    "India Standard Time": "Asia/Kolkata",
    "Tokyo Standard Time": "Asia/Tokyo",
    "AUS Eastern Standard Time": "Australia/Sydney",
}


class GraphError(Exception):
    """A Graph error answer: HTTP ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def zone(name: str) -> ZoneInfo:
    """The zone of a Graph ``timeZone`` value (IANA or a Windows name); 400 when unknown."""
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        raise GraphError(
            400,
            "ErrorTimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. "
            f"The following TimeZone value is not supported: '{name}'.",
        ) from None


def graph_datetime(moment: datetime, tz: ZoneInfo) -> str:
    """``2026-11-23T09:00:00.0000000``: Graph's dateTimeTimeZone.dateTime (no offset)."""
    local = moment.astimezone(tz)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond:06d}0"


def parse_datetime_tz(value: Any, field_name: str) -> datetime:
    """A dateTimeTimeZone object ``{"dateTime", "timeZone"}`` as an aware UTC datetime."""
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise GraphError(
            400, "ErrorInvalidRequest", f"'{field_name}' must be {{dateTime, timeZone}}."
        )
    tz = zone(str(value.get("timeZone") or "UTC"))
    try:
        parsed = datetime.fromisoformat(value["dateTime"].rstrip("Z")[:26])
    except ValueError:
        raise GraphError(
            400, "ErrorInvalidRequest", f"Cannot convert '{value['dateTime']}' in {field_name}."
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def parse_query_datetime(value: str | None, name: str) -> datetime:
    """``startDateTime``/``endDateTime``: ISO 8601; without an offset it is UTC."""
    if not value:
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string parameters "
            "StartDateTime and EndDateTime.",
        )
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise GraphError(
            400, "ErrorInvalidParameter", f"The parameter '{name}' is not a valid date: {value}"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def opaque_id(*parts: str) -> str:
    """An Outlook-looking item id, stable for ``parts`` (URL-path safe)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return "AAMkAG" + digest[:48]


@dataclass
class Recurrence:
    """A patternedRecurrence: daily or weekly, ending by date, count, or never."""

    pattern_type: Literal["daily", "weekly"]
    start_date: date
    interval: int = 1
    days_of_week: tuple[str, ...] = ()
    range_type: Literal["endDate", "noEnd", "numbered"] = "noEnd"
    end_date: date | None = None
    number_of_occurrences: int = 0

    @classmethod
    def from_graph(cls, value: Any) -> Recurrence:
        try:
            pattern, rng = value["pattern"], value["range"]
            kind = pattern["type"]
            if kind not in ("daily", "weekly"):
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    f"The simulator expands daily and weekly recurrence patterns, not '{kind}'.",
                )
            days = tuple(str(d).lower() for d in pattern.get("daysOfWeek") or ())
            if kind == "weekly" and (not days or any(d not in DAYS_OF_WEEK for d in days)):
                raise GraphError(400, "ErrorInvalidRequest", "weekly needs valid daysOfWeek.")
            range_type = rng.get("type", "noEnd")
            if range_type not in ("endDate", "noEnd", "numbered"):
                raise GraphError(400, "ErrorInvalidRequest", f"bad range type '{range_type}'.")
            return cls(
                pattern_type=kind,
                start_date=date.fromisoformat(rng["startDate"]),
                interval=max(1, int(pattern.get("interval", 1))),
                days_of_week=days,
                range_type=range_type,
                end_date=date.fromisoformat(rng["endDate"]) if range_type == "endDate" else None,
                number_of_occurrences=int(rng.get("numberOfOccurrences", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(400, "ErrorInvalidRequest", f"bad recurrence: {exc}") from None

    def to_graph(self, tz_name: str) -> dict[str, Any]:
        return {
            "pattern": {
                "type": self.pattern_type,
                "interval": self.interval,
                "month": 0,
                "dayOfMonth": 0,
                "daysOfWeek": list(self.days_of_week),
                "firstDayOfWeek": "sunday",
                "index": "first",
            },
            "range": {
                "type": self.range_type,
                "startDate": self.start_date.isoformat(),
                "endDate": (self.end_date or date(1, 1, 1)).isoformat(),
                "recurrenceTimeZone": tz_name,
                "numberOfOccurrences": self.number_of_occurrences,
            },
        }

    def dates(self, until: date) -> Iterator[date]:
        """Occurrence dates from ``start_date`` up to ``until`` (exclusive), in order."""
        count = 0
        last = until if self.end_date is None else min(until, self.end_date + timedelta(days=1))
        for offset in itertools.count():
            day = self.start_date + timedelta(days=offset)
            if day >= last:
                return
            if self.pattern_type == "daily":
                hit = offset % self.interval == 0
            else:
                week = ((day - self.start_date).days + self.start_date.weekday()) // 7
                hit = week % self.interval == 0 and DAYS_OF_WEEK[day.weekday()] in self.days_of_week
            if not hit:
                continue
            count += 1
            if self.range_type == "numbered" and count > self.number_of_occurrences:
                return
            yield day


@dataclass
class Event:
    """An item in a mailbox's calendar: a single instance or a series master."""

    id: str
    ical_uid: str
    subject: str
    start: datetime  # UTC; for a series, the first occurrence
    end: datetime
    time_zone: str  # the zone the organizer wrote it in (originalStartTimeZone)
    organizer_name: str
    organizer_address: str
    created: datetime
    modified: datetime
    version: int
    join_url: str | None = None
    sensitivity: str = "normal"
    is_cancelled: bool = False
    is_all_day: bool = False
    body: str = ""
    location: str = ""
    transaction_id: str | None = None
    recurrence: Recurrence | None = None
    cancelled_dates: set[date] = field(default_factory=set)  # deleted occurrences of a series

    def instances(self, start: datetime, end: datetime) -> Iterator[Instance]:
        """What calendarView shows of this item in ``[start, end)``: itself, or occurrences."""
        if self.recurrence is None:
            if self.start < end and self.end > start:
                yield Instance(self, self.id, self.start, self.end, "singleInstance", None)
            return
        tz = zone(self.time_zone)
        local = self.start.astimezone(tz)
        duration = self.end - self.start
        until = (end.astimezone(tz) + timedelta(days=1)).date()
        for day in self.recurrence.dates(until):
            if day in self.cancelled_dates:
                continue
            begin = datetime.combine(day, local.timetz()).astimezone(UTC)
            if begin >= end:
                return
            if begin + duration > start:
                occurrence_id = occurrence_of(self.id, day)
                yield Instance(self, occurrence_id, begin, begin + duration, "occurrence", self.id)


def occurrence_of(master_id: str, day: date) -> str:
    """The id of a series' occurrence on ``day`` (stable, so delta can track it)."""
    return f"{master_id}_{day:%Y%m%d}"


def split_occurrence(item_id: str) -> tuple[str, date] | None:
    """(master id, date) of an occurrence id, or None for any other id."""
    master, sep, stamp = item_id.rpartition("_")
    if not sep or len(stamp) != 8 or not stamp.isdigit():
        return None
    try:
        return master, datetime.strptime(stamp, "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class Instance:
    """One row of a calendarView: an event or an occurrence, frozen when it was listed."""

    item: Event
    id: str
    start: datetime
    end: datetime
    type: EventType
    series_master_id: str | None

    @property
    def version(self) -> int:
        return self.item.version

    def snapshot(self) -> Instance:
        """A copy that later changes to the mailbox do not alter (pages of a delta round)."""
        return replace(
            self, item=replace(self.item, cancelled_dates=set(self.item.cancelled_dates))
        )


def event_json(inst: Instance, tz: ZoneInfo, tz_label: str, mailbox: str) -> dict[str, Any]:
    """The Graph event resource of ``inst``, start/end in ``tz`` (``Prefer: outlook.timezone``)."""
    e = inst.item
    if e.is_all_day:
        # All-day events float: midnight to midnight of the organizer's days, whatever zone
        # the client prefers (Graph labels them with the preferred zone all the same).
        tz = zone(e.time_zone)
    ical = e.ical_uid if inst.type == "singleInstance" else opaque_id(e.ical_uid, inst.id)[:40]
    online = e.join_url is not None
    return {
        "@odata.etag": f'W/"{e.version:016x}"',
        "id": inst.id,
        "createdDateTime": e.created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "lastModifiedDateTime": e.modified.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "changeKey": f"{e.version:016x}",
        "categories": [],
        "transactionId": e.transaction_id,
        "originalStartTimeZone": e.time_zone,
        "originalEndTimeZone": e.time_zone,
        "iCalUId": ical,
        "uid": e.ical_uid,
        "reminderMinutesBeforeStart": 15,
        "isReminderOn": True,
        "hasAttachments": False,
        "subject": e.subject,
        "bodyPreview": e.body[:255],
        "importance": "normal",
        "sensitivity": e.sensitivity,
        "isAllDay": e.is_all_day,
        "isCancelled": e.is_cancelled,
        "isOrganizer": e.organizer_address.lower() == mailbox.lower(),
        "responseRequested": True,
        "seriesMasterId": inst.series_master_id,
        "showAs": "free" if e.is_cancelled else "busy",
        "type": inst.type,
        "webLink": f"https://outlook.office365.com/owa/?itemid={inst.id}&exvsurl=1&path=/calendar/item",
        "onlineMeetingUrl": None,
        "isOnlineMeeting": online,
        "onlineMeetingProvider": "teamsForBusiness" if online else "unknown",
        "allowNewTimeProposals": True,
        "isDraft": False,
        "hideAttendees": False,
        "responseStatus": {
            "response": "organizer" if online else "none",
            "time": "0001-01-01T00:00:00Z",
        },
        "body": {"contentType": "text", "content": e.body},
        "start": {"dateTime": graph_datetime(inst.start, tz), "timeZone": tz_label},
        "end": {"dateTime": graph_datetime(inst.end, tz), "timeZone": tz_label},
        "location": {
            "displayName": e.location,
            "locationType": "default",
            "uniqueIdType": "unknown" if not e.location else "private",
        },
        "locations": [{"displayName": e.location, "locationType": "default"}] if e.location else [],
        "recurrence": (
            e.recurrence.to_graph(e.time_zone)
            if e.recurrence is not None and inst.type == "seriesMaster"
            else None
        ),
        "attendees": [],
        "organizer": {"emailAddress": {"name": e.organizer_name, "address": e.organizer_address}},
        "onlineMeeting": {"joinUrl": e.join_url} if online else None,
    }


@dataclass
class Mailbox:
    """A user or room mailbox: its calendar, and whether the room directory lists it."""

    address: str
    display_name: str
    id: str
    time_zone: str = "UTC"
    is_room: bool = True
    capacity: int = 8
    building: str = ""
    floor: int | None = None
    events: dict[str, Event] = field(default_factory=dict)
    seq: int = 0
    by_transaction: dict[str, str] = field(default_factory=dict)

    def bump(self) -> int:
        self.seq += 1
        return self.seq

    def instances(self, start: datetime, end: datetime) -> list[Instance]:
        """The calendarView of ``[start, end)``, by start time then id."""
        out = [i for e in self.events.values() for i in e.instances(start, end)]
        out.sort(key=lambda i: (i.start, i.id))
        return out

    def room_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.room",
            "id": self.id,
            "emailAddress": self.address,
            "displayName": self.display_name,
            "address": {
                "street": "",
                "city": "",
                "state": "",
                "countryOrRegion": "",
                "postalCode": "",
            },
            "geoCoordinates": None,
            "phone": "",
            "nickname": self.display_name,
            "label": "",
            "capacity": self.capacity,
            "building": self.building,
            "floorLabel": "" if self.floor is None else str(self.floor),
            "floorNumber": self.floor,
            "isWheelChairAccessible": False,
            "bookingType": "standard",
            "tags": [],
            "audioDeviceName": None,
            "videoDeviceName": None,
            "displayDeviceName": None,
        }


def local_midnight(moment: datetime, tz: ZoneInfo) -> datetime:
    """Midnight at the start of ``moment``'s local day in ``tz``, as UTC."""
    return datetime.combine(moment.astimezone(tz).date(), time(0), tzinfo=tz).astimezone(UTC)
