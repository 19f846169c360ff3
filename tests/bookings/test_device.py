from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge_agent.bookings import (
    DeviceBookings,
    Step,
    on_availability,
    on_connection,
    on_event,
    on_list,
    on_tick,
)
from edge_agent.bookings.models import parse_list_result

from .helpers import booking, list_entry, utc
from .test_events import validate

OSLO = ZoneInfo("Europe/Oslo")
NOW = utc(2026, 11, 23, 8)  # 09:00 in Oslo


@pytest.fixture
def state(entropy: Callable[[int], bytes]) -> DeviceBookings:
    return DeviceBookings(
        site="hq", device_id="room-4a", tz=OSLO, booking_timeout_s=60, grace_s=15, entropy=entropy
    )


def types(step: Step) -> list[str]:
    for e in step.events:
        validate(e)
    return [e["type"] for e in step.events]


def ev(name: str, **body: Any) -> dict[str, Any]:
    return {"Event": {"Bookings": {name: body}}}


def listed(state: DeviceBookings, *entries: dict[str, Any], now: Any = NOW) -> Step:
    return on_list(state, parse_list_result({"Booking": list(entries)}), now)


def test_first_list_emits_only_snapshot(state: DeviceBookings) -> None:
    step = listed(
        state,
        list_entry(Id="1", MeetingId="A"),
        list_entry(pos=2, Id="2", StartTime="2026-11-23T07:00:00Z", EndTime="2026-11-23T07:30:00Z"),
    )
    assert types(step) == ["bookings.snapshot"]
    snap = step.events[0]["data"]
    assert [b["id"] for b in snap["bookings"]] == ["2", "1"]  # by start
    assert snap["window"] == {
        "start": "2026-11-22T23:00:00.000Z",
        "end": "2026-11-24T07:00:00.000Z",
    }
    assert step.window_replace is not None and set(step.window_replace) == {"A", "id:2"}
    assert step.device_state is not None and step.device_state["bounds"] == snap["window"]
    assert step.state.bounds is not None
    rows = step.window_replace_rows()
    assert rows is not None and rows["A"]["title"] == "Standup"


def test_later_list_reports_missed_changes_reconciled(state: DeviceBookings) -> None:
    s = listed(
        state,
        list_entry(Id="1", MeetingId="A"),
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T12:00:00Z",
            EndTime="2026-11-23T13:00:00Z",
        ),
    ).state
    step = listed(
        s,
        list_entry(Id="1", MeetingId="A", StartTime="2026-11-23T09:30:00Z"),
        list_entry(
            pos=2,
            Id="3",
            MeetingId="C",
            StartTime="2026-11-23T14:00:00Z",
            EndTime="2026-11-23T15:00:00Z",
        ),
    )
    assert types(step) == [
        "booking.created",
        "booking.moved",
        "booking.deleted",
        "bookings.snapshot",
    ]
    for e in step.events[:3]:
        assert e["data"]["reconciled"] is True
        assert e["data"]["xevent"] is None
    assert step.events[1]["data"]["previous"]["start"] == "2026-11-23T09:00:00.000Z"


def test_request_created_by_event(state: DeviceBookings) -> None:
    s = listed(state).state
    step = on_event(
        s,
        ev(
            "BookingRequested",
            BookingRequestUUID="u-1",
            Duration=30,
            StartTime="2026-11-23T10:00:00Z",
            Title="Ad hoc",
        ),
        NOW,
    )
    assert types(step) == ["booking.requested"]
    assert [p.booking_request_uuid for p in step.pending_upsert] == ["u-1"]
    assert step.events[0]["data"]["request"]["deadline"] == "2026-11-23T08:01:15.000Z"
    s = step.state
    later = NOW + timedelta(seconds=4, milliseconds=250)
    step = on_event(
        s,
        ev(
            "BookingCreated",
            Id="7",
            MeetingId="M7",
            BookingRequestUUID="u-1",
            Duration=30,
            StartTime="2026-11-23T10:00:00Z",
            Title="Ad hoc",
            OrganizerEmail="",
            OrganizerName="",
        ),
        later,
    )
    assert types(step) == ["booking.created"]
    data = step.events[0]["data"]
    assert data["pending_ms"] == 4250
    assert data["booking"]["booking_request_uuid"] == "u-1"
    assert data["booking"]["meeting_id"] == "M7"
    assert data["booking"]["end"] == "2026-11-23T10:30:00.000Z"
    assert step.pending_delete == ("u-1",)
    assert set(step.window_upsert) == {"M7"}
    assert step.state.pending == {}
    # a later list finds it unchanged: no duplicate created
    step2 = listed(
        step.state,
        list_entry(
            Id="7",
            MeetingId="M7",
            Title="Ad hoc",
            StartTime="2026-11-23T10:00:00Z",
            EndTime="2026-11-23T10:30:00Z",
        ),
        now=later,
    )
    assert types(step2) == ["bookings.snapshot"]
    assert step2.events[0]["data"]["bookings"][0]["booking_request_uuid"] == "u-1"


def test_request_failed_by_event(state: DeviceBookings) -> None:
    s = on_event(
        listed(state).state,
        ev("BookingRequested", BookingRequestUUID="u-2", Duration=30, StartTime="", Title=""),
        NOW,
    ).state
    step = on_event(
        s,
        ev("BookingFailed", BookingRequestUUID="u-2", FailureCause="Decline"),
        NOW + timedelta(seconds=2),
    )
    assert types(step) == ["booking.failed"]
    d = step.events[0]["data"]
    assert d["booking_request_uuid"] == "u-2" and d["cause"] == "Decline"
    assert d["request"]["start"] is None
    assert "booking" not in d
    assert step.pending_delete == ("u-2",)


def test_request_expires_after_deadline_relist(state: DeviceBookings) -> None:
    s = on_event(
        listed(state).state,
        ev(
            "BookingRequested",
            BookingRequestUUID="u-3",
            Duration=30,
            StartTime="2026-11-23T10:00:00Z",
            Title="X",
        ),
        NOW,
    ).state
    assert on_tick(s, NOW + timedelta(seconds=74)).relist is False
    tick = on_tick(s, NOW + timedelta(seconds=75))
    assert tick.relist and tick.pending_upsert[0].relist_requested
    assert on_tick(tick.state, NOW + timedelta(seconds=76)).relist is False  # asked once
    step = listed(tick.state, now=NOW + timedelta(seconds=77))
    assert types(step) == ["booking.request_expired", "bookings.snapshot"]
    d = step.events[0]["data"]
    assert d["booking_request_uuid"] == "u-3" and d["request"]["title"] == "X"
    assert step.pending_delete == ("u-3",) and step.state.pending == {}


def test_legacy_request_resolved_by_any_relist(state: DeviceBookings) -> None:
    s = on_event(
        listed(state).state,
        ev(
            "BookingRequested",
            BookingRequestUUID="u-4",
            Duration=30,
            StartTime="2026-11-23T10:00:00Z",
            Title="Ad hoc",
        ),
        NOW,
    ).state
    # RoomOS 11 sends Updated instead of BookingCreated
    upd = on_event(s, ev("Updated"), NOW + timedelta(seconds=5))
    assert upd.relist and upd.events == ()
    step = listed(
        upd.state,
        list_entry(
            Id="7",
            MeetingId="",
            Title="Ad hoc",
            StartTime="2026-11-23T10:00:00Z",
            EndTime="2026-11-23T10:30:00Z",
        ),
        now=NOW + timedelta(seconds=6),
    )
    assert types(step) == ["booking.created", "bookings.snapshot"]
    d = step.events[0]["data"]
    assert d["pending_ms"] == 6000 and d["reconciled"] is True
    assert d["booking"]["booking_request_uuid"] == "u-4"
    assert d["booking_request_uuid"] == "u-4"
    assert step.pending_delete == ("u-4",)
    assert step.state.window["id:7"].booking_request_uuid == "u-4"


def test_moved_deleted_and_duplicates(state: DeviceBookings) -> None:
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    mv = ev("BookingMoved", Id="1", MeetingId="A", StartTime="2026-11-23T11:00:00Z", Duration=60)
    step = on_event(s, mv, NOW)
    assert types(step) == ["booking.moved"]
    assert step.events[0]["data"]["booking"]["start"] == "2026-11-23T11:00:00.000Z"
    assert step.events[0]["data"]["previous"]["start"] == "2026-11-23T09:00:00.000Z"
    assert step.window_upsert["A"].start == utc(2026, 11, 23, 11)
    # the same frame again right away is dropped; again later it is a no-op move
    assert on_event(step.state, mv, NOW + timedelta(seconds=1)).events == ()
    assert on_event(step.state, mv, NOW + timedelta(seconds=60)).events == ()
    dl = on_event(
        step.state,
        ev(
            "Deleted",
            Id="1",
            MeetingId="A",
            Cause="Deleted",
            StartTime="2026-11-23T11:00:00Z",
            EndTime="2026-11-23T12:00:00Z",
            OrganizerId="",
            TimeStamp="2026-11-23T08:00:00Z",
            ScheduledDuration=60,
            MinutesFreed=60,
        ),
        NOW,
    )
    assert types(dl) == ["booking.deleted"]
    assert dl.events[0]["data"]["cause"] == "Deleted"
    assert dl.events[0]["data"]["booking"]["title"] == "Standup"  # from the stored entry
    assert dl.window_delete == ("A",) and dl.state.window == {}


def test_dedupe_is_by_arrival_not_by_processing(state: DeviceBookings) -> None:
    """Behind a backlog (a store on a full disk, a stopped process) events the device sent far
    apart are processed close together: they are not repeats. Frames that arrived close
    together are, however late they are processed."""
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    start = ev("Start", Id="1", MeetingId="A")
    ms = timedelta(milliseconds=1)
    later = NOW + timedelta(minutes=5)  # both processed five minutes late, 1 ms apart
    first = on_event(s, start, later, arrived_at=NOW)
    second = on_event(first.state, start, later + ms, arrived_at=NOW + timedelta(seconds=10))
    assert types(first) == types(second) == ["booking.started"]
    assert not first.duplicate and not second.duplicate
    repeat = on_event(first.state, start, later + 30 * 1000 * ms, arrived_at=NOW + 1000 * ms)
    assert repeat.events == () and repeat.duplicate and not repeat.needs_commit
    assert repeat.notes == ("duplicate Bookings.Start dropped",)
    # A wall clock stepped back: a repeat may carry an earlier stamp; still a repeat.
    assert on_event(first.state, start, later, arrived_at=NOW - 2000 * ms).duplicate


def test_event_times_come_from_the_arrival(state: DeviceBookings) -> None:
    """``observed_at``, a request's deadline and ``pending_ms`` are what the device did when;
    only ``timestamp`` says when the agent got round to it."""
    s = listed(state).state
    processed = NOW + timedelta(minutes=3)
    req = ev("BookingRequested", BookingRequestUUID="u-1", Duration=30, Title="Ad hoc")
    step = on_event(s, req, processed, arrived_at=NOW)
    (env,) = step.events
    assert env["data"]["observed_at"] == "2026-11-23T08:00:00.000Z"
    assert env["timestamp"] == "2026-11-23T08:03:00.000Z"
    assert env["data"]["request"]["deadline"] == "2026-11-23T08:01:15.000Z"  # 60 s + 15 s grace
    created = ev(
        "BookingCreated",
        Id="7",
        MeetingId="M7",
        BookingRequestUUID="u-1",
        Duration=30,
        StartTime="2026-11-23T10:00:00Z",
    )
    arrived = NOW + timedelta(seconds=4, milliseconds=250)
    done = on_event(step.state, created, processed + timedelta(milliseconds=1), arrived_at=arrived)
    data = done.events[0]["data"]
    assert data["pending_ms"] == 4250 and data["observed_at"] == "2026-11-23T08:00:04.250Z"
    # Without a stamp (a caller that has none) the event is taken as arriving when processed.
    alone = on_event(s, req, processed)
    assert alone.events[0]["data"]["observed_at"] == alone.events[0]["timestamp"]


def test_created_for_known_booking_is_not_repeated(state: DeviceBookings) -> None:
    s = listed(state).state
    s = listed(s, list_entry(Id="7", MeetingId="M7")).state  # reported as reconciled created
    step = on_event(
        s,
        ev(
            "BookingCreated",
            Id="7",
            MeetingId="M7",
            Duration=60,
            StartTime="2026-11-23T09:00:00Z",
            Title="Standup",
        ),
        NOW,
    )
    assert step.events == ()


@pytest.mark.parametrize(
    "name,etype",
    [
        ("Start", "booking.started"),
        ("End", "booking.ended"),
        ("CheckedIn", "booking.checked_in"),
        ("ExtensionRequested", "booking.extension_requested"),
        ("ExtensionFailed", "booking.extension_failed"),
        ("EditRequested", "booking.edit_requested"),
        ("EditFailed", "booking.edit_failed"),
    ],
)
def test_booking_events_map(state: DeviceBookings, name: str, etype: str) -> None:
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    body: dict[str, Any] = {"Id": "1", "MeetingId": "A"}
    if name in ("ExtensionFailed", "ExtensionRequested"):
        body = {
            "OriginalMeetingId": "A",
            "FailureCause": "Timeout",
            "NewEndTime": "2026-11-23T10:15:00Z",
            "Duration": 15,
            "ExtensionStart": "2026-11-23T10:00:00Z",
        }
    if name == "EditFailed":
        body["FailureCause"] = "HttpError"
    step = on_event(s, {"Event": {"Bookings": {name: body}}}, NOW)
    assert types(step) == [etype]
    d = step.events[0]["data"]
    assert d["xevent"] == f"Bookings.{name}"
    assert d["booking"]["meeting_id"] == "A" and d["booking"]["title"] == "Standup"
    assert step.relist is False
    if name == "CheckedIn":
        assert step.window_upsert["A"].checked_in is True
    if name == "ExtensionRequested":
        assert d["new_end"] == "2026-11-23T10:15:00.000Z"
        assert not step.window_upsert  # only requested: the window is unchanged


def test_legacy_start_with_only_id_asks_for_relist(state: DeviceBookings) -> None:
    step = on_event(listed(state).state, ev("Start", Id="99"), NOW)
    assert types(step) == ["booking.started"]
    assert step.events[0]["data"]["booking"]["id"] == "99"
    assert step.events[0]["data"]["booking"]["start"] is None
    assert step.relist


@pytest.mark.parametrize(
    "name",
    ["StartTimeBuffer", "EndTimeBuffer", "TimeRemaining", "NotificationSnoozed", "SomethingNew"],
)
def test_ignored_events(state: DeviceBookings, name: str) -> None:
    step = on_event(state, ev(name, Id="1", Seconds=60), NOW)
    assert step.events == () and not step.relist and not step.needs_commit


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("BookingCreated", {"Id": "1", "MeetingId": "A", "StartTime": "2026-11-23T09:00:00Z"}),
        ("BookingFailed", {"BookingRequestUUID": "nobody", "FailureCause": "Decline"}),
        ("BookingMoved", {"Id": "1", "MeetingId": "A", "StartTime": "2026-11-23T09:30:00Z"}),
        ("Deleted", {"Id": "1", "MeetingId": "A"}),
    ],
)
def test_calendar_changes_ask_for_a_relist(
    state: DeviceBookings, name: str, body: dict[str, Any]
) -> None:
    # The decision is the transition's (the session only obeys Step.relist): the event carries
    # only some fields, and a hybrid calendar may have changed more than it says.
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    step = on_event(s, ev(name, **body), NOW)
    assert step.relist, name
    # ... but a repeated frame (dropped as a duplicate) does not ask again.
    assert not on_event(step.state, ev(name, **body), NOW).relist


def test_sync_required_relists(state: DeviceBookings) -> None:
    step = on_event(state, ev("SyncRequired"), NOW)
    assert step.relist and step.events == ()


def test_tick_relists_at_local_midnight(state: DeviceBookings) -> None:
    s = listed(state).state
    assert not on_tick(s, utc(2026, 11, 23, 22, 59)).relist
    assert on_tick(s, utc(2026, 11, 23, 23, 0)).relist
    assert s.next_wakeup(NOW) == utc(2026, 11, 23, 23)


def test_availability_only_on_change(state: DeviceBookings) -> None:
    payload = {
        "Availability": {"Status": "BookedUntil", "TimeStamp": "2026-11-23T09:00:00Z"},
        "Current": {"Id": "1"},
    }
    step = on_availability(state, payload, NOW)
    assert types(step) == ["room.availability"]
    assert step.events[0]["data"]["availability"] == {
        "status": "BookedUntil",
        "until": "2026-11-23T09:00:00.000Z",
    }
    assert step.state.current_id == "1"
    again = on_availability(step.state, {"Status": {"Bookings": payload}}, NOW)
    assert again.events == () and not again.needs_commit
    free = on_availability(
        step.state,
        {"Status": {"Bookings": {"Availability": {"Status": "Free", "TimeStamp": ""}}}},
        NOW,
    )
    assert free.events[0]["data"]["availability"] == {"status": "Free", "until": None}
    # a partial feedback (only TimeStamp) keeps the status
    part = on_availability(free.state, {"Availability": {"TimeStamp": "2026-11-23T12:00:00Z"}}, NOW)
    assert part.events[0]["data"]["availability"]["status"] == "Free"


def test_connection_only_on_change(state: DeviceBookings) -> None:
    up = on_connection(state, True, NOW, software="ce26.4.1")
    assert types(up) == ["device.online"] and up.relist
    assert up.events[0]["data"]["software"] == "ce26.4.1"
    assert on_connection(up.state, True, NOW).events == ()
    down = on_connection(up.state, False, NOW, reason="connection lost: ping timeout")
    assert types(down) == ["device.offline"]
    assert down.events[0]["data"]["reason"] == "connection lost: ping timeout"
    assert on_connection(down.state, False, NOW, reason="x").events == ()


def test_restore_round_trip(state: DeviceBookings, entropy: Callable[[int], bytes]) -> None:
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    step = on_event(
        s,
        ev(
            "BookingRequested",
            BookingRequestUUID="u-1",
            Duration=30,
            StartTime="2026-11-23T10:00:00Z",
            Title="X",
        ),
        NOW,
    )
    step2 = on_availability(step.state, {"Availability": {"Status": "Free", "TimeStamp": ""}}, NOW)
    s = step2.state
    restored, notes = DeviceBookings.restore(
        site="hq",
        device_id="room-4a",
        tz=OSLO,
        window_rows={k: b.to_row() for k, b in s.window.items()} | {"bad": {"id": "x"}},
        pending_rows=[p.to_row() for p in s.pending.values()] + [{"nope": 1}],
        device_state=s.device_state_row(),
        booking_timeout_s=60,
        grace_s=15,
        entropy=entropy,
    )
    assert len(notes) == 2
    assert restored.window == s.window
    assert restored.pending == s.pending
    assert restored.bounds == s.bounds
    assert restored.availability == s.availability
    # restored state is not "first list": a list now reports changes
    step3 = listed(restored)
    assert "booking.deleted" in types(step3)


def test_snapshot_booking_fields_are_contract(state: DeviceBookings) -> None:
    step = listed(state, list_entry(Id="1", MeetingId="", Privacy="Private"))
    b = step.events[-1]["data"]["bookings"][0]
    assert b["meeting_id"] is None and b["privacy"] == "Private"
    assert b["organizer"] == {"name": "Ada Lovelace", "email": "ada@example.com", "id": "org-1"}
    assert b["join_url"] == "room@example.webex.com"
    assert booking("1").to_dict().keys() == b.keys()


def _two_bookings(state: DeviceBookings) -> DeviceBookings:
    return listed(
        state,
        list_entry(Id="1", MeetingId="A"),
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T12:00:00Z",
            EndTime="2026-11-23T13:00:00Z",
        ),
    ).state


def test_malformed_entry_of_a_stored_booking_is_not_a_deletion(state: DeviceBookings) -> None:
    s = _two_bookings(state)
    stored_b = s.window["B"]
    step = listed(
        s,
        list_entry(Id="1", MeetingId="A"),
        list_entry(pos=2, Id="2", MeetingId="B", StartTime="2026-11-23T12:00:00Z", EndTime=""),
    )
    assert types(step) == ["bookings.snapshot"]
    assert step.window_replace is not None and step.window_replace["B"] == stored_b
    assert any("Id=2" in w for w in step.warnings)
    assert any("kept 1 stored booking" in n and "'B'" in n for n in step.notes)
    # Once the device sends it well-formed again: nothing was missed, so nothing is reported.
    again = listed(
        step.state,
        list_entry(Id="1", MeetingId="A"),
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T12:00:00Z",
            EndTime="2026-11-23T13:00:00Z",
        ),
    )
    assert types(again) == ["bookings.snapshot"]


def test_empty_string_organizer_and_webex_keep_the_booking(state: DeviceBookings) -> None:
    s = _two_bookings(state)
    step = listed(
        s,
        list_entry(Id="1", MeetingId="A"),
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T12:00:00Z",
            EndTime="2026-11-23T13:00:00Z",
            Organizer="",
            Webex="",
        ),
    )
    assert types(step) == ["bookings.snapshot"]
    assert step.notes == ()
    assert step.window_replace is not None and set(step.window_replace) == {"A", "B"}


def test_entry_skipped_without_id_suppresses_deletions(state: DeviceBookings) -> None:
    s = _two_bookings(state)
    step = listed(
        s,
        list_entry(Id="1", MeetingId="A", StartTime="2026-11-23T09:30:00Z"),
        list_entry(pos=2, Id="", MeetingId="", EndTime=""),
        list_entry(
            pos=3,
            Id="3",
            MeetingId="C",
            StartTime="2026-11-23T14:00:00Z",
            EndTime="2026-11-23T15:00:00Z",
        ),
    )
    # B is not in the list as far as the agent can read it, but the unreadable entry may be B.
    assert types(step) == ["booking.created", "booking.moved", "bookings.snapshot"]
    assert step.window_replace is not None and set(step.window_replace) == {"A", "B", "C"}
    assert any("no deletions" in n for n in step.notes)
    # The next clean list reconciles: B really is gone.
    clean = listed(
        step.state,
        list_entry(Id="1", MeetingId="A", StartTime="2026-11-23T09:30:00Z"),
        list_entry(
            pos=3,
            Id="3",
            MeetingId="C",
            StartTime="2026-11-23T14:00:00Z",
            EndTime="2026-11-23T15:00:00Z",
        ),
    )
    assert types(clean) == ["booking.deleted", "bookings.snapshot"]
    assert clean.events[0]["data"]["booking"]["meeting_id"] == "B"


def test_the_duplicate_memory_keeps_the_horizon_and_its_bound(state: DeviceBookings) -> None:
    """What each event remembers (one pass over the memory, issue 17): entries that arrived
    more than the horizon before the newest are forgotten, at most 64 are kept, newest last,
    and a repeat of a forgotten event is not a duplicate any more."""
    s = listed(state, list_entry(Id="1", MeetingId="A")).state
    ms = timedelta(milliseconds=1)
    step = on_event(s, ev("Start", Id="1", MeetingId="A"), NOW, arrived_at=NOW)
    s = step.state
    # 100 distinct events 10 ms apart (the horizon is 5 s): the memory stops at 64.
    for i in range(100):
        at = NOW + (i + 1) * 10 * ms
        s = on_event(s, ev("CheckedIn", Id="1", MeetingId="A", N=str(i)), at, arrived_at=at).state
    assert len(s.recent) == 64
    assert [r[2] for r in s.recent] == sorted(r[2] for r in s.recent)
    assert s.recent[-1][2] == NOW + 1000 * ms
    # The first Start fell out of the bound: seen again it is forwarded, not dropped.
    again = on_event(s, ev("Start", Id="1", MeetingId="A"), NOW + 1001 * ms)
    assert not again.duplicate and types(again) == ["booking.started"]
    # Six seconds on, everything before is past the horizon: only the new event is kept.
    later = NOW + timedelta(seconds=7)
    fresh = on_event(again.state, ev("End", Id="1", MeetingId="A"), later, arrived_at=later)
    assert [r[2] for r in fresh.state.recent] == [later]
    # A duplicate leaves the memory as it was (it is not remembered twice).
    dup = on_event(fresh.state, ev("End", Id="1", MeetingId="A"), later + ms)
    assert dup.duplicate and dup.state.recent == fresh.state.recent
