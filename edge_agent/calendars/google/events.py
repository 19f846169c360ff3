"""Google Calendar ``Event`` resources (events.list items) -> source-neutral delta items.

Per the events reference: ``start``/``end`` carry ``dateTime`` (RFC 3339 with an offset, or a
local time with ``timeZone``) or, for an all-day event, ``date`` (``yyyy-mm-dd``; ``end.date``
is exclusive). An all-day event names calendar days, not instants: it is placed on the room's
own local day(s), midnight to midnight in the room's zone (23 or 25 hours on a DST day).
``status: cancelled`` is a deletion (incremental syncs carry cancelled events, often with little
more than their id). Unlike a Graph delta entry, an item is always the whole event, so nothing
is merged with the stored copy.

Mapping (DESIGN.md): ``id`` -> id, ``iCalUID`` -> meeting_id, ``summary`` -> title,
``organizer.email``/``displayName``, ``hangoutLink`` (or ``conferenceData``'s video entry
point) -> join_url, ``conferenceData.conferenceSolution.key.type`` -> platform,
``visibility`` -> privacy, ``recurringEventId`` -> series_id. Every instance of a recurring
series carries the series' ``iCalUID`` ("all occurrences of one event have different ids while
they all share the same iCalUIDs", Event.iCalUID), so ``meeting_id`` does not tell instances
apart; ``series_id`` marks them (the sync logic never pairs them as one meeting under a new id).
A cancelled item whose id is a series id cancels the whole series (its stored instances go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent.bookings.models import Organizer, device_str
from edge_agent.bookings.window import local_midnight
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.sync import DeltaItem, Removal, Unreadable, Upsert

__all__ = ["parse_event_time", "to_booking", "to_delta_items"]


def parse_event_time(value: Any, tz: ZoneInfo) -> datetime:
    """An event's ``start``/``end`` -> aware UTC. ``date``: local midnight of that day in the
    room's zone ``tz``. Raises ValueError."""
    if not isinstance(value, Mapping):
        raise ValueError(f"not an event time object: {value!r}")
    raw = value.get("dateTime")
    if isinstance(raw, str) and raw:
        dt = datetime.fromisoformat(raw)
        if dt.tzinfo is None:
            zone = value.get("timeZone")
            if not isinstance(zone, str) or not zone:
                raise ValueError(f"dateTime {raw!r} has neither an offset nor a timeZone")
            try:
                dt = dt.replace(tzinfo=ZoneInfo(zone))
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"unknown time zone {zone!r}") from e
        return dt.astimezone(UTC)
    day = value.get("date")
    if isinstance(day, str) and day:
        return local_midnight(date.fromisoformat(day), tz)
    raise ValueError(f"event time without dateTime or date: {dict(value)!r}")


def _join_url(obj: Mapping[str, Any]) -> str | None:
    url = device_str(obj.get("hangoutLink"))
    if url:
        return url
    conf = obj.get("conferenceData")
    points = conf.get("entryPoints") if isinstance(conf, Mapping) else None
    if isinstance(points, list):
        for p in points:
            if isinstance(p, Mapping) and p.get("entryPointType") == "video":
                return device_str(p.get("uri"))
    return None


def _platform(obj: Mapping[str, Any]) -> str | None:
    conf = obj.get("conferenceData")
    solution = conf.get("conferenceSolution") if isinstance(conf, Mapping) else None
    key = solution.get("key") if isinstance(solution, Mapping) else None
    if isinstance(key, Mapping):
        return device_str(key.get("type"))
    return "hangoutsMeet" if device_str(obj.get("hangoutLink")) else None


def to_booking(obj: Mapping[str, Any], tz: ZoneInfo) -> CalendarBooking:
    """One confirmed/tentative event -> booking. Raises ValueError (or TypeError)."""
    start = parse_event_time(obj.get("start"), tz)
    end = parse_event_time(obj.get("end"), tz)
    if end < start:
        raise ValueError(f"ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    org = obj.get("organizer")
    organizer = (
        Organizer(name=device_str(org.get("displayName")), email=device_str(org.get("email")))
        if isinstance(org, Mapping)
        else Organizer()
    )
    return CalendarBooking(
        id=str(obj["id"]),
        start=start,
        end=end,
        title=device_str(obj.get("summary")),
        meeting_id=device_str(obj.get("iCalUID")),
        organizer=organizer,
        privacy=device_str(obj.get("visibility")),
        platform=_platform(obj),
        join_url=_join_url(obj),
        series_id=device_str(obj.get("recurringEventId")),
    )


def to_delta_items(values: Iterable[Any], tz: ZoneInfo) -> tuple[list[DeltaItem], list[str]]:
    """The ``items`` of a round's pages (in order) -> delta items, plus notes on entries that
    carried no id at all (they cannot be applied or kept; the next full listing settles them)."""
    items: list[DeltaItem] = []
    notes: list[str] = []
    for obj in values:
        if not isinstance(obj, Mapping) or not device_str(obj.get("id")):
            notes.append(f"entry without an id skipped: {str(obj)[:200]}")
            continue
        eid = str(obj["id"])
        if obj.get("status") == "cancelled":
            items.append(Removal(eid, "cancelled"))
            continue
        try:
            items.append(Upsert(to_booking(obj, tz)))
        except (ValueError, TypeError) as e:
            items.append(Unreadable(eid, str(e)))
    return items, notes
