"""Graph event JSON (shapes from the calendarView/delta docs) -> delta items."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from edge_agent.calendars.graph.events import parse_date_time_time_zone, to_delta_items
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.sync import Removal, Unreadable, Upsert
from tests.calendars.graphfake import graph_event

OSLO = ZoneInfo("Europe/Oslo")


def test_full_event_maps_to_the_envelope_fields() -> None:
    ev = graph_event("AAMkAG1", "2026-11-23T09:00:00", "2026-11-23T10:00:00", "Design review")
    items, notes = to_delta_items([ev], {}, OSLO)
    assert notes == []
    (item,) = items
    assert isinstance(item, Upsert)
    assert item.booking.to_dict() == {
        "id": "AAMkAG1",
        "meeting_id": "040000008200E00074C5B7101A82E008-AAMkAG1",
        "booking_request_uuid": None,
        "title": "Design review",
        "start": "2026-11-23T09:00:00.000Z",
        "end": "2026-11-23T10:00:00.000Z",
        "organizer": {"name": "Ada Lovelace", "email": "ada@contoso.com", "id": None},
        "privacy": "normal",
        "platform": "teamsForBusiness",
        "join_url": "https://teams.microsoft.com/l/meetup-join/AAMkAG1",
    }


def test_removed_and_cancelled() -> None:
    removed = {
        "@odata.type": "#microsoft.graph.event",
        "id": "x",
        "@removed": {"reason": "deleted"},
    }
    cancelled = graph_event("c", "2026-11-23T09:00:00", "2026-11-23T10:00:00", isCancelled=True)
    items, _ = to_delta_items([removed, cancelled], {}, OSLO)
    assert items[0] == Removal("x", "deleted")
    assert isinstance(items[1], Upsert) and items[1].booking.cancelled


def test_null_start_and_end_is_an_event_that_left_the_range() -> None:
    # Microsoft Q&A 1190523: "the returned events have all fields null" outside the window.
    stored = CalendarBooking(
        id="n",
        start=datetime(2026, 11, 23, 9, tzinfo=UTC),
        end=datetime(2026, 11, 23, 10, tzinfo=UTC),
    )
    nulled = {"id": "n", "subject": None, "start": None, "end": None, "isCancelled": None}
    items, notes = to_delta_items([nulled], {"n": stored}, OSLO)
    assert items == [Removal("n", "left the range (null start and end)")] and notes == []
    # Only one of them null is still an entry the edge cannot read (the stored copy stays).
    items, _ = to_delta_items([{"id": "n", "start": None}], {"n": stored}, OSLO)
    assert isinstance(items[0], Unreadable)


def test_partial_update_is_laid_over_the_stored_copy() -> None:
    stored = CalendarBooking(
        id="p",
        start=datetime(2026, 11, 23, 9, tzinfo=UTC),
        end=datetime(2026, 11, 23, 10, tzinfo=UTC),
        title="Old",
        join_url="https://j",
    )
    items, _ = to_delta_items([{"id": "p", "subject": "New"}], {"p": stored}, OSLO)
    (item,) = items
    assert isinstance(item, Upsert)
    assert item.booking.title == "New" and item.booking.start == stored.start
    assert item.booking.join_url == "https://j"


def test_partial_entry_without_stored_copy_is_unreadable_not_dropped() -> None:
    items, _ = to_delta_items([{"id": "p", "subject": "New"}], {}, OSLO)
    assert items == [Unreadable("p", "no start, and no stored copy to take it from")]


def test_entry_without_id_is_noted() -> None:
    items, notes = to_delta_items([{"subject": "?"}, "junk"], {}, OSLO)
    assert items == [] and len(notes) == 2


def test_all_day_event_is_the_rooms_local_day() -> None:
    ev = graph_event("d", "2026-11-24T00:00:00", "2026-11-25T00:00:00", isAllDay=True)
    (item,), _ = to_delta_items([ev], {}, OSLO)
    assert isinstance(item, Upsert)
    assert item.booking.start == datetime(2026, 11, 23, 23, tzinfo=UTC)
    assert item.booking.end == datetime(2026, 11, 24, 23, tzinfo=UTC)


def test_seven_fraction_digits_and_named_zones() -> None:
    t = parse_date_time_time_zone({"dateTime": "2026-11-23T09:00:00.1234567", "timeZone": "UTC"})
    assert t == datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)
    t = parse_date_time_time_zone({"dateTime": "2026-11-23T10:00:00", "timeZone": "Europe/Oslo"})
    assert t == datetime(2026, 11, 23, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_date_time_time_zone({"dateTime": "2026-11-23T10:00:00", "timeZone": "Mars/Base"})
    bad = graph_event("b", "2026-11-23T09:00:00", "2026-11-23T10:00:00")
    bad["start"] = {"dateTime": "yesterday", "timeZone": "UTC"}
    (item,), _ = to_delta_items([bad], {}, OSLO)
    assert isinstance(item, Unreadable) and item.id == "b"
