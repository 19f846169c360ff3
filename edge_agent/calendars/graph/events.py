"""Graph ``event`` resources (calendarView/delta pages) -> source-neutral delta items.

Per the delta query docs, a removed instance is ``{"id", "@removed": {"reason"}}`` and an updated
one carries "at least the properties that have been updated": a partial entry is laid over the
stored copy of that id. ``start``/``end`` are ``dateTimeTimeZone`` objects; the client asks for
UTC (``Prefer: outlook.timezone="UTC"``) but a named zone is honoured when the server answers in
one. Graph writes seven fractional digits (``2026-11-23T09:00:00.0000000``), more than
``datetime.fromisoformat`` takes on 3.11, so the fraction is cut to microseconds.

An entry whose ``start`` and ``end`` are both present and null is an event that left the range:
"if any changes are outside the window, the returned events have all fields null" (Microsoft
Q&A 1190523); the delta docs promise only ``@removed`` for that, but the service is reported to
do this too. Reading it as unreadable would keep the stored copy forever, so it is a removal.

All-day events are floating days: with UTC asked for they read 00:00Z-00:00Z, which for a room in
Oslo is the wrong instant. They are placed on the room's own local day(s) instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent.bookings.models import Organizer, device_str
from edge_agent.bookings.window import local_midnight
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.sync import DeltaItem, Removal, Unreadable, Upsert

__all__ = ["parse_date_time_time_zone", "to_delta_items"]


def parse_date_time_time_zone(value: Any) -> datetime:
    """A Graph ``dateTimeTimeZone`` -> aware UTC datetime. Raises ValueError."""
    if not isinstance(value, Mapping):
        raise ValueError(f"not a dateTimeTimeZone object: {value!r}")
    raw = value.get("dateTime")
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"dateTimeTimeZone without dateTime: {dict(value)!r}")
    s = raw.rstrip("Z")
    if "." in s:
        head, frac = s.split(".", 1)
        s = head + "." + frac[:6]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        zone = value.get("timeZone") or "UTC"
        if zone in ("UTC", "tzone://Microsoft/Utc", "Etc/UTC"):
            dt = dt.replace(tzinfo=UTC)
        else:
            try:
                dt = dt.replace(tzinfo=ZoneInfo(str(zone)))
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"unknown time zone {zone!r} (asked for UTC)") from e
    return dt.astimezone(UTC)


def _all_day(value: Any, tz: ZoneInfo) -> datetime:
    # The calendar day the floating all-day bound names, as that day's local midnight.
    day = parse_date_time_time_zone({"dateTime": value.get("dateTime"), "timeZone": "UTC"})
    return local_midnight(day.date(), tz)


def _merge(obj: Mapping[str, Any], stored: CalendarBooking | None, tz: ZoneInfo) -> CalendarBooking:
    eid = str(obj["id"])
    all_day = obj.get("isAllDay") is True
    if "start" in obj:
        start = _all_day(obj["start"], tz) if all_day else parse_date_time_time_zone(obj["start"])
    elif stored is not None:
        start = stored.start
    else:
        raise ValueError("no start, and no stored copy to take it from")
    if "end" in obj:
        end = _all_day(obj["end"], tz) if all_day else parse_date_time_time_zone(obj["end"])
    elif stored is not None:
        end = stored.end
    else:
        raise ValueError("no end, and no stored copy to take it from")
    base = stored or CalendarBooking(id=eid, start=start, end=end)
    organizer = base.organizer
    if "organizer" in obj:
        org = obj.get("organizer")
        addr = org.get("emailAddress") if isinstance(org, Mapping) else None
        if isinstance(addr, Mapping):
            organizer = Organizer(
                name=device_str(addr.get("name")), email=device_str(addr.get("address"))
            )
        else:
            organizer = Organizer()
    join_url = base.join_url
    if "onlineMeeting" in obj:
        om = obj.get("onlineMeeting")
        join_url = device_str(om.get("joinUrl")) if isinstance(om, Mapping) else None
    if join_url is None and device_str(obj.get("onlineMeetingUrl")):
        join_url = device_str(obj.get("onlineMeetingUrl"))

    def pick(key: str, current: str | None) -> str | None:
        return device_str(obj.get(key)) if key in obj else current

    platform = pick("onlineMeetingProvider", base.platform)
    if platform == "unknown":
        platform = None
    return CalendarBooking(
        id=eid,
        start=start,
        end=end,
        title=pick("subject", base.title),
        meeting_id=pick("iCalUId", base.meeting_id),
        organizer=organizer,
        privacy=pick("sensitivity", base.privacy),
        platform=platform,
        join_url=join_url,
        cancelled=obj["isCancelled"] is True if "isCancelled" in obj else base.cancelled,
    )


def to_delta_items(
    values: Iterable[Any], stored: Mapping[str, CalendarBooking], tz: ZoneInfo
) -> tuple[list[DeltaItem], list[str]]:
    """The ``value`` entries of a round's pages (in order) -> items, plus notes on entries that
    carried no id at all (they cannot be applied or kept; the next full listing settles them)."""
    items: list[DeltaItem] = []
    notes: list[str] = []
    merged: dict[str, CalendarBooking] = dict(stored)
    for obj in values:
        if not isinstance(obj, Mapping) or not device_str(obj.get("id")):
            notes.append(f"entry without an id skipped: {str(obj)[:200]}")
            continue
        eid = str(obj["id"])
        if "@removed" in obj:
            removed = obj.get("@removed")
            reason = removed.get("reason") if isinstance(removed, Mapping) else None
            items.append(Removal(eid, device_str(reason)))
            merged.pop(eid, None)
            continue
        if "start" in obj and "end" in obj and obj["start"] is None and obj["end"] is None:
            items.append(Removal(eid, "left the range (null start and end)"))
            merged.pop(eid, None)
            continue
        try:
            b = _merge(obj, merged.get(eid), tz)
        except (ValueError, TypeError) as e:
            items.append(Unreadable(eid, str(e)))
            continue
        merged[eid] = b
        items.append(Upsert(b))
    return items, notes
