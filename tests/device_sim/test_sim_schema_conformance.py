"""Everything the simulator produces validates against its profile's schema file."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from simtest_helpers import T0, Client, make_core

from device_sim.calendar import Booking, Organizer, utc_iso
from device_sim.profiles import load_schema
from device_sim.tree import leaves

UTC_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _objects(profile: str, kind: str) -> dict[str, dict[str, Any]]:
    return {
        o["path"]: o["attributes"] for o in load_schema(profile)["objects"] if o["type"] == kind
    }


def _check_value(where: str, space: dict[str, Any], value: Any) -> None:
    kind = space.get("type")
    if kind == "Literal":
        assert value in space["Values"], f"{where}: {value!r} not in {space['Values'][:8]}"
    elif kind == "Integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
        if "Min" in space:
            assert int(space["Min"]) <= value <= int(space["Max"]), f"{where}: {value}"
    else:
        assert isinstance(value, str), f"{where}: {value!r} is not a string"


def _check_event(profile: str, name: str, fields: dict[str, Any]) -> None:
    schema = _objects(profile, "Event")
    path = f"Bookings {name}"
    assert path in schema, f"{profile} has no event {path}"
    children = schema[path]["children"]
    for key, value in fields.items():
        assert key in children, f"{path}: field {key} not in the {profile} schema"
        spec = children[key]
        if spec["valuespace"] == "int":
            assert isinstance(value, int) and not isinstance(value, bool), f"{path} {key}"
        elif spec["valuespace"] == "literal":
            assert value in spec["values"], f"{path} {key}: {value!r}"
        else:
            assert isinstance(value, str), f"{path} {key}: {value!r}"
    for key, spec in children.items():
        if spec["required"]:
            assert key in fields, f"{path}: required field {key} missing"


def _check_tree(profile: str, root: str, payload: dict[str, Any]) -> None:
    schema = _objects(profile, root)
    for path, value in leaves(payload):
        name = " ".join(path)
        assert name in schema, f"{root} {name} is not in the {profile} schema"
        _check_value(f"{root} {name}", schema[name]["valuespace"], value)


def _check_booking_entry(entry: dict[str, Any]) -> None:
    assert isinstance(entry["id"], int) and isinstance(entry["Id"], str)
    assert isinstance(entry["MeetingId"], str)
    for key in ("StartTime", "EndTime"):
        assert UTC_RE.match(entry["Time"][key])
    for flag in (entry["Webex"]["Enabled"], entry["CheckedIn"]):
        assert flag in ("True", "False")
    assert set(entry["Organizer"]) == {"FirstName", "LastName", "Email", "Id"}


def _scenario(profile: str, mode: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run every command and clock-driven path; (notifications, command results)."""
    core = make_core(profile=profile, mode=mode, confirm_delay_s=2, time_zone="Europe/Oslo")
    c = Client(core)
    for query in (["Event"], ["Status"], ["Configuration"]):
        c.subscribe(query, notify=True)
    notes: list[dict[str, Any]] = list(c.pending)
    results: list[Any] = []
    org = Organizer("Kari", "Hansen", "kari@example.com", "k1")
    booking = core.calendar.add(
        T0,
        Booking(
            id="",
            meeting_id="mx",
            title="Review",
            start=T0 + timedelta(minutes=20),
            end=T0 + timedelta(minutes=80),
            organizer=org,
            end_buffer_s=300,
        ),
    )
    core.flush(T0)
    notes += c.frames()

    def run(path: str, **params: Any) -> None:
        reply = c.call("xCommand/" + path.replace(" ", "/"), **params)
        assert "result" in reply, (path, reply)
        results.append(reply["result"])
        notes.extend(c.pending)

    run(
        "Bookings Book",
        BookingRequestUUID="u-ok",
        Duration=30,
        StartTime=utc_iso(T0 + timedelta(hours=3)),
        Title="Adhoc",
    )
    run(
        "Bookings Book",
        BookingRequestUUID="u-clash",
        Duration=30,
        StartTime=utc_iso(T0 + timedelta(minutes=30)),
    )
    run("Bookings List", DayOffset=0, Days=2)
    run("Bookings List", DayOffset=0, Days=1, Limit=1, Offset=0)
    run("Bookings Get", Id=booking.id)
    if profile in ("current", "modern"):
        run("Bookings Extend", Id=booking.id, Duration=10)
        run("Bookings Edit", MeetingId="mx", Title="Edited")
        run("Bookings NotificationSnooze", Id=booking.id)
        run("Bookings CheckIn", Id=booking.id)
    else:
        run("Bookings Extend", Id=booking.id, Duration=10)
        run("Bookings Edit", MeetingId="mx", Title="Edited")
    core.tick(T0 + timedelta(seconds=5))
    notes += c.frames()
    core.calendar.backend.decline_next = 1
    run(
        "Bookings Book",
        BookingRequestUUID="u-declined",
        Duration=15,
        StartTime=utc_iso(T0 + timedelta(hours=6)),
    )
    core.calendar.backend.confirm_delay_s = 500
    run(
        "Bookings Book",
        BookingRequestUUID="u-timeout",
        Duration=15,
        StartTime=utc_iso(T0 + timedelta(hours=7)),
    )
    core.tick(T0 + timedelta(hours=2))  # buffers, Start, TimeRemaining, End, EndTimeBuffer
    notes += c.frames()
    moved = core.calendar.add(
        T0,
        Booking(
            id="",
            meeting_id="mm",
            title="Moved",
            organizer=org,
            start=T0 + timedelta(hours=5),
            end=T0 + timedelta(hours=6),
        ),
    )
    core.calendar.move(T0, moved.id, T0 + timedelta(hours=8))
    core.flush(T0 + timedelta(hours=2))
    notes += c.frames()
    run("Bookings Delete", Id=moved.id)
    run("Bookings Clear")
    run("Bookings List", DayOffset=0, Days=2)
    assert c.result("xSet", Path="Configuration Time Zone", Value="America/New_York") is True
    notes += c.frames()
    core.ready = False
    core.rebooted(T0 + timedelta(hours=3))
    c2 = Client(core)
    c2.subscribe(["Event", "Bookings"])
    notes += c2.pending
    return notes, results


@pytest.mark.parametrize("profile", ["current", "modern", "legacy"])
@pytest.mark.parametrize("mode", ["local", "hybrid"])
def test_everything_produced_validates(profile: str, mode: str) -> None:
    notes, results = _scenario(profile, mode)
    seen: set[str] = set()
    for note in notes:
        assert note["method"] == "xFeedback/Event" and isinstance(note["params"]["Id"], int)
        params = {k: v for k, v in note["params"].items() if k != "Id"}
        [(root, payload)] = params.items()
        if root == "Event":
            for name, fields in payload["Bookings"].items():
                seen.add(name)
                _check_event(profile, name, fields)
        else:
            _check_tree(profile, root, payload)
    for result in results:
        assert result["status"] == "OK"
        for entry in result.get("Booking", []) if isinstance(result.get("Booking"), list) else []:
            _check_booking_entry(entry)
        if isinstance(result.get("Booking"), dict):
            _check_booking_entry(result["Booking"])
    if profile in ("current", "modern"):
        expected = {
            "BookingRequested",
            "BookingCreated",
            "BookingFailed",
            "BookingMoved",
            "Deleted",
            "Start",
            "End",
            "StartTimeBuffer",
            "EndTimeBuffer",
            "TimeRemaining",
            "ExtensionRequested",
            "EditRequested",
            "CheckedIn",
            "NotificationSnoozed",
            "Updated",
            "SyncRequired",
        }
        assert expected <= seen, expected - seen
    else:
        assert seen == {"BookingRequested", "Start", "End", "Updated"}


@pytest.mark.parametrize("profile", ["current", "modern", "legacy"])
def test_status_and_configuration_trees_validate(profile: str) -> None:
    core = make_core(profile=profile)
    _check_tree(profile, "Status", core.status_tree(T0))
    _check_tree(profile, "Configuration", core.config)


def test_failures_validate() -> None:
    """ExtensionFailed and EditFailed (hybrid declines) are modern-only and validate too."""
    core = make_core(mode="hybrid", confirm_delay_s=1)
    c = Client(core)
    c.subscribe(["Event"])
    first = core.calendar.add(
        T0, Booking(id="", meeting_id="a", title="a", start=T0, end=T0 + timedelta(minutes=30))
    )
    core.calendar.add(
        T0,
        Booking(
            id="",
            meeting_id="b",
            title="b",
            start=T0 + timedelta(minutes=30),
            end=T0 + timedelta(hours=1),
        ),
    )
    c.command("Bookings Extend", Id=first.id, Duration=15)
    core.calendar.backend.decline_next = 1
    c.command("Bookings Edit", Id=first.id, Title="x")
    core.tick(T0 + timedelta(seconds=2))
    names = []
    for note in c.frames():
        for name, fields in note["params"]["Event"]["Bookings"].items():
            _check_event("modern", name, fields)
            names.append(name)
    assert {"ExtensionFailed", "EditFailed"} <= set(names)
