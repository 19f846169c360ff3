"""Google Event resources -> delta items: the DESIGN.md mapping, all-day on a DST day, time
zones, cancelled, and entries the edge cannot read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from edge_agent.calendars.google.events import to_delta_items
from edge_agent.calendars.sync import Removal, Unreadable, Upsert
from tests.calendars.google.googlefake import google_event

OSLO = ZoneInfo("Europe/Oslo")
NEW_YORK = ZoneInfo("America/New_York")


def one(obj: dict[str, object], tz: ZoneInfo = OSLO) -> object:
    items, notes = to_delta_items([obj], tz)
    assert notes == []
    [item] = items
    return item


def test_mapping_per_design() -> None:
    item = one(
        google_event(
            "e1",
            "2026-11-23T09:00:00+01:00",
            "2026-11-23T10:30:00+01:00",
            "Standup",
            visibility="private",
        )
    )
    assert isinstance(item, Upsert)
    b = item.booking
    assert b.id == "e1" and b.meeting_id == "e1@google.com" and b.title == "Standup"
    assert b.start == datetime(2026, 11, 23, 8, tzinfo=UTC)
    assert b.end == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert (b.organizer.name, b.organizer.email) == ("Ada Lovelace", "ada@example.com")
    assert b.join_url == "https://meet.google.com/e1-abc-def" and b.platform == "hangoutsMeet"
    assert b.privacy == "private" and not b.cancelled
    d = b.to_dict()
    assert d["title"] == "Standup" and d["join_url"] == b.join_url


def test_conference_data_without_hangout_link() -> None:
    ev = google_event("z", "2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")
    del ev["hangoutLink"]
    ev["conferenceData"] = {
        "entryPoints": [
            {"entryPointType": "phone", "uri": "tel:+1-555-0100"},
            {"entryPointType": "video", "uri": "https://zoom.us/j/123"},
        ],
        "conferenceSolution": {"key": {"type": "addOn"}, "name": "Zoom Meeting"},
    }
    item = one(ev)
    assert isinstance(item, Upsert)
    assert item.booking.join_url == "https://zoom.us/j/123" and item.booking.platform == "addOn"


def test_local_date_time_with_time_zone() -> None:
    ev = google_event("t", "2026-11-23T09:00:00+01:00", "2026-11-23T10:00:00+01:00")
    ev["start"] = {"dateTime": "2026-11-23T09:00:00", "timeZone": "America/New_York"}
    ev["end"] = {"dateTime": "2026-11-23T10:00:00", "timeZone": "America/New_York"}
    item = one(ev)
    assert isinstance(item, Upsert) and item.booking.start == datetime(2026, 11, 23, 14, tzinfo=UTC)


def test_all_day_is_the_rooms_whole_local_day_on_a_dst_day() -> None:
    # 29 March 2026: Oslo springs forward at 02:00, the day has 23 hours.
    item = one(google_event("ad", "2026-03-29", "2026-03-30"))
    assert isinstance(item, Upsert)
    b = item.booking
    assert b.start == datetime(2026, 3, 28, 23, tzinfo=UTC)  # 00:00 CET
    assert b.end == datetime(2026, 3, 29, 22, tzinfo=UTC)  # 00:00 CEST
    assert b.end - b.start == timedelta(hours=23)
    # The same event for a room in New York is New York's day (its DST starts 8 March).
    ny = one(google_event("ad", "2026-03-29", "2026-03-30"), NEW_YORK)
    assert isinstance(ny, Upsert) and ny.booking.start == datetime(2026, 3, 29, 4, tzinfo=UTC)
    # Autumn: 25 October 2026 has 25 hours in Oslo; a two-day event spans 49.
    two = one(google_event("ad2", "2026-10-24", "2026-10-26"))
    assert isinstance(two, Upsert) and two.booking.end - two.booking.start == timedelta(hours=49)


def test_cancelled_is_a_removal_even_with_only_an_id() -> None:
    assert one({"kind": "calendar#event", "id": "gone", "status": "cancelled"}) == Removal(
        "gone", "cancelled"
    )


def test_unreadable_entries_keep_their_id_and_idless_ones_are_noted() -> None:
    bad_time = google_event("b1", "2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")
    bad_time["start"] = {"dateTime": "yesterday-ish"}
    no_zone = google_event("b2", "2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")
    no_zone["start"] = {"dateTime": "2026-11-23T09:00:00"}
    backwards = google_event("b3", "2026-11-23T10:00:00Z", "2026-11-23T09:00:00Z")
    nothing = google_event("b4", "2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")
    nothing["end"] = {}
    items, notes = to_delta_items([bad_time, no_zone, backwards, nothing, {"summary": "?"}], OSLO)
    assert [type(i) for i in items] == [Unreadable] * 4
    assert [i.id for i in items if isinstance(i, Unreadable)] == ["b1", "b2", "b3", "b4"]
    second = items[1]
    assert isinstance(second, Unreadable) and "neither an offset nor a timeZone" in second.reason
    assert len(notes) == 1 and "without an id" in notes[0]
