from __future__ import annotations

from datetime import UTC, datetime

import orjson

from edge_agent.bookings.models import (
    Booking,
    ListPage,
    Organizer,
    booking_key,
    device_bool,
    join_pages,
    next_page_offset,
    parse_device_time,
    parse_list_result,
)

from .helpers import booking, list_entry, utc


def test_booking_absent_means_empty_list() -> None:
    page = parse_list_result(
        {"LastUpdated": "2026-11-23T08:00:00Z", "ResultInfo": {"TotalRows": "0"}, "status": "OK"}
    )
    assert page.bookings == ()
    assert page.total_rows == 0
    assert page.received == 0
    assert page.skipped == ()
    assert page.last_updated == utc(2026, 11, 23, 8)


def test_full_entry_parses_to_typed_booking() -> None:
    entry = list_entry(
        pos=7,
        Id="42",
        MeetingId="M-1",
        Title="Planning",
        Webex={"Enabled": "True", "Url": "https://x.webex.com/m/abc", "MeetingNumber": "123"},
    )
    page = parse_list_result({"Booking": [entry], "ResultInfo": {"TotalRows": "1"}, "status": "OK"})
    assert page.skipped == ()
    (b,) = page.bookings
    assert b.id == "42"  # upper-case Id, not the list position
    assert b.meeting_id == "M-1"
    assert b.title == "Planning"
    assert b.start == datetime(2026, 11, 23, 9, tzinfo=UTC)
    assert b.end == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert b.start.tzinfo is not None
    assert b.organizer == Organizer(name="Ada Lovelace", email="ada@example.com", id="org-1")
    assert b.privacy == "Public"
    assert b.platform == "Webex"
    assert b.join_url == "https://x.webex.com/m/abc"
    assert b.agenda is None
    assert b.start_buffer_s == 300 and b.end_buffer_s == 0
    assert b.booking_request_uuid is None
    assert booking_key(b) == "M-1"


def test_empty_strings_become_none_and_key_falls_back_to_id() -> None:
    entry = list_entry(
        Id="9",
        MeetingId="",
        Title="",
        Privacy="",
        Organizer={"FirstName": "", "LastName": "", "Email": "", "Id": ""},
        DialInfo={"Calls": {"Call": []}},
    )
    (b,) = parse_list_result({"Booking": [entry]}).bookings
    assert b.meeting_id is None
    assert b.title is None
    assert b.privacy is None
    assert b.organizer == Organizer()
    assert b.platform is None  # Webex Enabled "False", no MeetingPlatform
    assert b.join_url is None
    assert booking_key(b) == "id:9"


def test_dial_number_is_join_url_and_single_call_object_accepted() -> None:
    entry = list_entry(
        DialInfo={"Calls": {"Call": {"Number": "sip:room@x.com"}}}, MeetingPlatform="MicrosoftTeams"
    )
    (b,) = parse_list_result({"Booking": [entry]}).bookings
    assert b.join_url == "sip:room@x.com"
    assert b.platform == "MicrosoftTeams"


def test_single_booking_object_and_wrapped_result() -> None:
    page = parse_list_result({"BookingsListResult": {"Booking": list_entry(Id="5")}})
    assert [b.id for b in page.bookings] == ["5"]


def test_malformed_entries_are_skipped_with_reasons() -> None:
    good = list_entry(pos=1, Id="1")
    no_time = list_entry(pos=2, Id="2")
    del no_time["Time"]
    bad_time = list_entry(pos=3, Id="3", StartTime="yesterday")
    backwards = list_entry(pos=4, Id="4", StartTime="2026-11-23T11:00:00Z")
    no_id = list_entry(pos=5, Id="")
    page = parse_list_result(
        {
            "Booking": [good, no_time, bad_time, backwards, no_id, "junk"],
            "ResultInfo": {"TotalRows": "6"},
        }
    )
    assert [b.id for b in page.bookings] == ["1"]
    assert len(page.skipped) == 5
    assert "Id=2" in page.skipped[0] and "Time" in page.skipped[0]
    assert "Id=3" in page.skipped[1]
    assert "before" in page.skipped[2]
    assert "#5" in page.skipped[4]
    assert page.received == 6


def test_garbage_result_never_raises() -> None:
    assert parse_list_result("nope").skipped
    assert parse_list_result({"Booking": 3}).skipped
    assert parse_list_result({}).bookings == ()


def test_paging_offsets() -> None:
    entries = [list_entry(pos=i, Id=str(i)) for i in range(1, 4)]
    page = parse_list_result({"Booking": entries, "ResultInfo": {"TotalRows": "7"}})
    assert page.total_rows == 7
    assert next_page_offset(page, 0) == 3
    assert next_page_offset(page, 3) == 6
    assert next_page_offset(page, 4) is None
    assert next_page_offset(ListPage(bookings=(), total_rows=None, received=3), 0) is None


def test_device_bool() -> None:
    assert device_bool("True") is True
    assert device_bool("False") is False
    assert device_bool("") is None
    assert device_bool(None) is None


def test_row_round_trip() -> None:
    b = booking(
        "3",
        meeting_id="M",
        organizer=Organizer("A", "a@x", None),
        booking_request_uuid="u-1",
        privacy="Private",
        platform="Webex",
        join_url="https://j",
        agenda="hi",
        start_buffer_s=300,
        checked_in=True,
    )
    assert Booking.from_row(b.to_row()) == b
    # the envelope dict is the contract: exactly these keys
    assert set(b.to_dict()) == {
        "id",
        "meeting_id",
        "booking_request_uuid",
        "title",
        "start",
        "end",
        "organizer",
        "privacy",
        "platform",
        "join_url",
    }
    assert b.to_dict()["start"] == "2026-11-23T09:00:00.000Z"


def test_numbers_checked_in_and_none_platform() -> None:
    entry = list_entry(MeetingPlatform="None", CheckedIn="True")
    entry["Time"]["StartTimeBuffer"] = 600  # some software sends numbers, not strings
    entry["id"] = 1
    page = parse_list_result({"Booking": [entry], "ResultInfo": {"TotalRows": 1}})
    (b,) = page.bookings
    assert b.platform is None and b.checked_in is True and b.start_buffer_s == 600
    assert page.total_rows == 1


def test_empty_string_nodes_do_not_reject_the_booking() -> None:
    # Devices send "" for an empty node; that used to fail the nested models and drop the entry.
    entry = list_entry(Id="7", MeetingId="M-7", Organizer="", Webex="", DialInfo="", Title={})
    page = parse_list_result({"Booking": [entry]})
    assert page.skipped == ()
    (b,) = page.bookings
    assert (b.id, b.meeting_id, b.title) == ("7", "M-7", None)
    assert b.organizer == Organizer()
    assert b.platform is None and b.join_url is None
    assert b.start == utc(2026, 11, 23, 9) and b.end == utc(2026, 11, 23, 10)


def test_empty_inner_nodes_and_odd_calls_are_absent() -> None:
    calls_empty = list_entry(Id="1", DialInfo={"Calls": "", "ConnectMode": ""})
    call_junk = list_entry(Id="2", DialInfo={"Calls": {"Call": ["", {"Number": "sip:r@x"}]}})
    buffers = list_entry(Id="3")
    buffers["Time"]["StartTimeBuffer"] = ""
    buffers["Time"]["EndTimeBuffer"] = {}
    page = parse_list_result({"Booking": [calls_empty, call_junk, buffers]})
    assert page.skipped == ()
    a, b, c = page.bookings
    assert a.join_url is None
    assert b.join_url == "sip:r@x"
    assert c.start_buffer_s is None and c.end_buffer_s is None


def test_skipped_entries_carry_their_ids() -> None:
    no_end = list_entry(pos=1, Id="11", EndTime="")
    no_time = list_entry(pos=2, Id="12", Time="")
    page = parse_list_result({"Booking": [list_entry(Id="10"), no_end, no_time]})
    assert [b.id for b in page.bookings] == ["10"]
    assert page.skipped_ids == ("11", "12")
    assert "Id=11" in page.skipped[0] and "Time" in page.skipped[0]
    assert not page.skipped_unidentified
    no_id = list_entry(pos=3, Id="", EndTime="")
    page = parse_list_result({"Booking": [no_end, no_id, "junk"]})
    assert page.skipped_ids == ("11", None, None)
    assert page.skipped_unidentified


def test_unreadable_payload_is_unidentified_but_empty_node_is_no_bookings() -> None:
    assert parse_list_result("nope").skipped_unidentified
    assert parse_list_result({"Booking": 3}).skipped_unidentified
    empty = parse_list_result({"Booking": "", "ResultInfo": {"TotalRows": "0"}})
    assert empty.bookings == () and empty.skipped == () and not empty.skipped_unidentified


def test_join_pages_keeps_skipped_ids_aligned() -> None:
    p1 = parse_list_result(
        {
            "Booking": [list_entry(Id="1"), list_entry(Id="2", EndTime="")],
            "ResultInfo": {"TotalRows": "4"},
        }
    )
    p2 = parse_list_result(
        {"Booking": [list_entry(Id="3"), list_entry(Id="4")], "ResultInfo": {"TotalRows": "4"}}
    )
    joined = join_pages([p1, p2])
    assert [b.id for b in joined.bookings] == ["1", "3", "4"]
    assert joined.received == 4 and joined.total_rows == 4
    assert joined.skipped_ids == ("2",) and not joined.skipped_unidentified
    # A page built with reasons but no ids cannot say which booking it skipped.
    legacy = ListPage(bookings=(), received=1, skipped=("booking #0 skipped: ?",))
    assert legacy.skipped_unidentified
    assert join_pages([p1, legacy]).skipped_ids == ("2", None)
    assert join_pages([]) == ListPage(bookings=())


def test_rooms_share_one_object_per_time_and_per_privacy_value() -> None:
    # Two rooms' lists, parsed from separate JSON documents (no string shared between them).
    pages = [
        parse_list_result(
            orjson.loads(orjson.dumps({"Booking": [list_entry(Id=f"{room}")], "status": "OK"}))
        )
        for room in ("a", "b")
    ]
    (a,), (b,) = (p.bookings for p in pages)
    assert a.start == b.start == utc(2026, 11, 23, 9) and a.end == utc(2026, 11, 23, 10)
    assert a.start is b.start and a.end is b.end  # one datetime per distinct time
    assert a.privacy == "Public" and a.privacy is b.privacy
    # The store's rows (its own time format) share theirs the same way.
    rows = [Booking.from_row(orjson.loads(orjson.dumps(x.to_row()))) for x in (a, b)]
    assert rows == [a, b] and rows[0].start is rows[1].start
    assert rows[0].privacy is a.privacy
    assert parse_device_time("not a time") is None and parse_device_time("") is None
