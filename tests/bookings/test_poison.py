"""Poison values from a device: one odd value costs its entry or its event, never the room.

Each case here raised before (OverflowError, TypeError from orjson) out of a parser documented
as "never raises", and so out of the session's worker: a session restart with a spurious
``device.offline``/``online``, and in a ``Bookings List`` the same entry failed every list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge_agent.bookings import DeviceBookings, on_event, on_list
from edge_agent.bookings.events import parse_event
from edge_agent.bookings.models import device_int, parse_device_time, parse_list_result

from .helpers import list_entry, utc

NOW = utc(2026, 11, 23, 8)


def nested(depth: int) -> Any:
    node: Any = "x"
    for _ in range(depth):
        node = {"a": node}
    return node


@pytest.fixture
def state(entropy: Callable[[int], bytes]) -> DeviceBookings:
    return DeviceBookings(site="hq", device_id="room-1", tz=ZoneInfo("UTC"), entropy=entropy)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999", "nan", float("inf"), 10**400])
def test_device_int_of_a_non_finite_or_huge_number_is_none(value: Any) -> None:
    assert device_int(value) is None


def test_device_int_still_reads_ordinary_numbers() -> None:
    assert device_int("30") == 30 and device_int("30.0") == 30 and device_int(-5) == -5


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "+99999-01-01T00:00:00Z"]
)
def test_a_time_outside_what_utc_can_hold_is_none(value: str) -> None:
    assert parse_device_time(value) is None


def test_start_plus_duration_overflowing_leaves_the_end_unknown() -> None:
    ev = parse_event(
        {"BookingCreated": {"Id": "1", "StartTime": "9999-12-31T23:00:00Z", "Duration": "120"}}
    )
    assert ev is not None and ev.end is None
    huge = parse_event(
        {"BookingCreated": {"Id": "1", "StartTime": "2026-11-23T09:00:00Z", "Duration": "1e15"}}
    )
    assert huge is not None and huge.end is None


POISON_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("end overflows", {"Id": "1", "StartTime": "9999-12-31T23:00:00Z", "Duration": "120"}),
    ("huge duration", {"Id": "1", "StartTime": "2026-11-23T09:00:00Z", "Duration": "1e15"}),
    ("infinite duration", {"BookingRequestUUID": "u", "Duration": "inf", "StartTime": ""}),
    ("year 1 in +01:00", {"Id": "1", "StartTime": "0001-01-01T00:00:00+01:00"}),
    ("nested 300 deep", {"Id": "1", "MeetingId": "M", "Extra": nested(300)}),
]


@pytest.mark.parametrize(("why", "body"), POISON_EVENTS, ids=[w for w, _ in POISON_EVENTS])
@pytest.mark.parametrize("name", ["BookingCreated", "BookingRequested", "Start", "BookingMoved"])
def test_a_poisoned_event_never_raises(
    state: DeviceBookings, name: str, why: str, body: dict[str, Any]
) -> None:
    step = on_event(state, {"Event": {"Bookings": {name: body}}}, NOW)
    for env in step.events:
        assert env["data"]["device_id"] == "room-1"


def test_an_event_nested_too_deep_is_dropped_with_a_warning(state: DeviceBookings) -> None:
    step = on_event(
        state, {"Event": {"Bookings": {"BookingCreated": {"Id": "1", "X": nested(300)}}}}, NOW
    )
    assert step.events == () and step.state == state
    assert any("BookingCreated" in w and "deep" in w for w in step.warnings)


@pytest.mark.parametrize("event", ["x", ["x"], 3, None, {"Bookings": "x"}, {"Bookings": [1]}])
def test_an_event_that_is_not_an_object_is_ignored(state: DeviceBookings, event: Any) -> None:
    step = on_event(state, {"Event": event}, NOW)
    assert step.events == () and not step.needs_commit


POISON_ENTRIES: list[tuple[str, dict[str, Any]]] = [
    (
        "infinite buffer",
        list_entry(Id="1", MeetingId="A")
        | {
            "Time": {
                "StartTime": "2026-11-23T09:00:00Z",
                "EndTime": "2026-11-23T10:00:00Z",
                "StartTimeBuffer": "inf",
            }
        },
    ),
    ("end out of range", list_entry(Id="1", MeetingId="A", EndTime="9999-12-31T23:59:59-01:00")),
    (
        "start out of range",
        list_entry(Id="1", MeetingId="A", StartTime="0001-01-01T00:00:00+01:00"),
    ),
    ("nested 300 deep", list_entry(Id="1", MeetingId="A", Title=nested(300), Extra=nested(300))),
]


@pytest.mark.parametrize(("why", "bad"), POISON_ENTRIES, ids=[w for w, _ in POISON_ENTRIES])
def test_a_poisoned_list_entry_costs_that_entry_only(
    state: DeviceBookings, why: str, bad: dict[str, Any]
) -> None:
    good = list_entry(
        pos=2,
        Id="2",
        MeetingId="B",
        StartTime="2026-11-23T11:00:00Z",
        EndTime="2026-11-23T12:00:00Z",
    )
    page = parse_list_result({"ResultInfo": {"TotalRows": "2"}, "Booking": [bad, good]})
    assert "B" in {b.meeting_id for b in page.bookings}
    step = on_list(state, page, NOW)
    assert "B" in dict(step.state.window)
    assert step.events[-1]["type"] == "bookings.snapshot"


def test_skipped_entries_are_one_warning_per_list(state: DeviceBookings) -> None:
    bad = [list_entry(pos=i, Id=str(i), EndTime="9999-12-31T23:59:59-01:00") for i in range(5)]
    step = on_list(state, parse_list_result({"Booking": bad}), NOW)
    (warning,) = step.warnings
    assert "5 of 5" in warning and "Id=0" in warning


def test_an_infinite_total_rows_is_no_total(state: DeviceBookings) -> None:
    page = parse_list_result({"ResultInfo": {"TotalRows": "inf"}, "Booking": [list_entry()]})
    assert page.total_rows is None and len(page.bookings) == 1


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        ("x", 0),
        ({}, 1),
        ([], 1),
        ({"a": "x", "b": 1, "c": None}, 1),
        ({"a": [1, {"b": {}}]}, 4),
        ([[], [[[]]], {"a": "x"}], 4),
        (nested(16), 16),
        (nested(300), 17),  # counting stops past the limit
    ],
)
def test_nesting_depth_counts_objects_and_arrays(value: Any, depth: int) -> None:
    from edge_agent.bookings.events import nesting_depth

    assert nesting_depth(value) == depth
