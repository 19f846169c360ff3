"""The sans-I/O device core: JSON-RPC dispatch, errors, paths, calendar and time."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from simtest_helpers import T0, Client, events, make_core

from device_sim import rpc
from device_sim.calendar import Booking, Organizer, utc_iso
from device_sim.tree import covers, glob_match, parse_path

# ---- JSON-RPC ----------------------------------------------------------------------------


def test_parse_error_and_invalid_request() -> None:
    c = Client(make_core())
    [reply] = c.raw("{not json")
    assert reply == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error"},
    }
    [reply] = c.raw("[1, 2]")
    assert reply["error"]["code"] == rpc.INVALID_REQUEST
    [reply] = c.raw('{"id": 5, "method": "xGet"}')  # no "jsonrpc": "2.0"
    assert reply["id"] == 5 and reply["error"]["code"] == rpc.INVALID_REQUEST


@pytest.mark.parametrize("request_id", [7, "abc-1", 0, 1.5])
def test_reply_echoes_the_id_exactly(request_id: object) -> None:
    c = Client(make_core())
    doc = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "xGet",
        "params": {"Path": ["Status", "SystemUnit", "ProductId"]},
    }
    [reply] = c.raw(orjson.dumps(doc))
    assert reply["id"] == request_id and type(reply["id"]) is type(request_id)
    assert reply["result"] == "Cisco Room Kit Pro"


def test_request_without_id_gets_no_reply() -> None:
    c = Client(make_core())
    assert c.raw('{"jsonrpc":"2.0","method":"xGet","params":{"Path":"Status SystemUnit"}}') == []
    assert c.raw('{"jsonrpc":"2.0","method":"nope"}') == []


def test_method_not_found_and_invalid_params() -> None:
    c = Client(make_core())
    assert c.call("xNothing")["error"]["code"] == rpc.METHOD_NOT_FOUND
    assert c.call("xCommand/Bookings/Explode")["error"]["code"] == rpc.METHOD_NOT_FOUND
    assert c.call("xGet")["error"]["code"] == rpc.INVALID_PARAMS
    assert c.call("xGet", Path=["Status", "Nope"])["error"]["code"] == rpc.INVALID_PARAMS
    bad = c.call("xCommand/Bookings/List", DayOffset=0, Days=0)
    assert bad["error"]["code"] == rpc.INVALID_PARAMS
    assert c.call("xCommand/Bookings/List", Bogus=1)["error"]["code"] == rpc.INVALID_PARAMS
    assert c.call("xCommand/Bookings/Extend", Id="1")["error"]["code"] == rpc.INVALID_PARAMS


def test_command_error_has_a_cause() -> None:
    c = Client(make_core())
    reply = c.call("xCommand/Bookings/Delete", Id="404")
    assert reply["error"]["code"] == rpc.COMMAND_ERROR
    assert reply["error"]["data"]["Cause"] == "NotFound"


def test_roles_follow_the_schema() -> None:
    """The xAPI schema's roles: User reads the Time Zone and BookingTimeout it needs and uses
    Bookings, but may not Put or set; Integrator reads the Time Zone but may not use Bookings;
    a configuration branch or a path the schema does not list needs Admin."""
    core = make_core()
    user = Client(core, role="User")
    assert user.result("xGet", Path="Configuration Time Zone") == "Etc/UTC"
    assert isinstance(
        user.result("xGet", Path="Configuration Bookings AdhocBooking BookingTimeout"), int
    )
    denied = rpc.PERMISSION_DENIED
    assert user.call("xGet", Path="Configuration Bookings")["error"]["code"] == denied
    assert user.call("xCommand/Bookings/Put", body="[]")["error"]["code"] == denied
    assert user.call("xSet", Path="Configuration Time Zone", Value="UTC")["error"]["code"] == -31999
    assert user.result("xGet", Path="Status Bookings Availability Status") == "Free"
    assert "error" not in user.call("xCommand/Bookings/List", DayOffset=0, Days=1)
    integrator = Client(core, role="Integrator")
    assert integrator.result("xGet", Path="Configuration Time Zone") == "Etc/UTC"
    assert integrator.call("xCommand/Bookings/List")["error"]["code"] == denied
    timeout = "Configuration Bookings AdhocBooking BookingTimeout"
    assert integrator.call("xGet", Path=timeout)["error"]["code"] == denied
    admin = Client(core)
    assert admin.result("xGet", Path="Configuration/Time/Zone") == "Etc/UTC"


def test_too_many_subscriptions() -> None:
    c = Client(make_core())
    ids = [c.subscribe(["Event", "Bookings"]) for _ in range(50)]
    assert ids == list(range(50))
    reply = c.call("xFeedback/Subscribe", Query=["Event"])
    assert reply["error"]["code"] == rpc.TOO_MANY_SUBSCRIPTIONS
    assert c.result("xFeedback/Unsubscribe", Id=3) is True
    c.subscribe(["Status"])


def test_not_ready_after_boot() -> None:
    core = make_core()
    core.ready = False
    c = Client(core)
    assert c.call("xGet", Path="Status")["error"]["code"] == rpc.NOT_READY


# ---- paths ------------------------------------------------------------------------------


def test_path_forms() -> None:
    assert parse_path(["Status", "Bookings"]) == ("Status", "Bookings")
    assert parse_path("Status Bookings") == parse_path("Status/Bookings") == ("Status", "Bookings")
    for bad in ([], "", [""], 5, [None]):
        with pytest.raises(ValueError):
            parse_path(bad)
    assert glob_match(("Status", "**", "Id"), ("Status", "Bookings", "Current", "Id"))
    assert glob_match(("status", "*", "current", "id"), ("Status", "Bookings", "Current", "Id"))
    assert not glob_match(("Status", "*", "Id"), ("Status", "Bookings", "Current", "Id"))
    assert covers(("Event", "Bookings"), ("Event", "Bookings", "Start"))
    assert covers(("Event", "Bookings", "Start", "Id"), ("Event", "Bookings", "Start"))
    assert not covers(("Event", "Bookings", "End"), ("Event", "Bookings", "Start"))


def test_get_and_query() -> None:
    c = Client(make_core(time_zone="Europe/Oslo"))
    assert c.result("xGet", Path=["Status", "Bookings", "Availability"]) == {
        "Status": "Free",
        "TimeStamp": "",
    }
    assert c.result("xGet", Path="status bookings current id") == ""
    assert c.result("xGet", Path="Status SystemUnit Software Version").startswith("ce26.4.1")
    assert c.result("xQuery", Query=["Status", "**", "Id"]) == {
        "Status": {"Bookings": {"Current": {"Id": ""}}}
    }
    assert c.result("xQuery", Query="Configuration Time") == {
        "Configuration": {"Time": {"Zone": "Europe/Oslo"}}
    }
    assert c.call("xGet", Path="Status ** Id")["error"]["code"] == rpc.INVALID_PARAMS


def test_xset_validates_and_notifies() -> None:
    core = make_core()
    c = Client(core)
    sub = c.subscribe(["Configuration"])
    assert c.result("xSet", Path="Configuration Bookings AdhocBooking BookingTimeout", Value=120)
    [note] = c.frames() or c.pending
    assert note["params"] == {
        "Id": sub,
        "Configuration": {"Bookings": {"AdhocBooking": {"BookingTimeout": 120}}},
    }
    assert core.calendar.backend.booking_timeout_s == 120
    assert (
        c.call("xSet", Path="Configuration Bookings AdhocBooking BookingTimeout", Value=30)[
            "error"
        ]["code"]
        == rpc.INVALID_PARAMS
    )
    assert (
        c.call("xSet", Path="Configuration Time Zone", Value="Mars/Base")["error"]["code"] == -32602
    )
    assert c.result("xSet", Path="Configuration Time Zone", Value="America/New_York") is True


def test_notify_current_value() -> None:
    c = Client(make_core())
    sub = c.subscribe(["Status", "Bookings", "Availability"], notify=True)
    assert c.pending == [
        {
            "jsonrpc": "2.0",
            "method": "xFeedback/Event",
            "params": {
                "Id": sub,
                "Status": {"Bookings": {"Availability": {"Status": "Free", "TimeStamp": ""}}},
            },
        }
    ]


# ---- calendar ---------------------------------------------------------------------------


def _add(core, start, minutes=30, title="Meeting", **kw):  # type: ignore[no-untyped-def]
    booking = Booking(
        id="",
        meeting_id=kw.pop("meeting_id", "m-" + title),
        title=title,
        start=start,
        end=start + timedelta(minutes=minutes),
        organizer=Organizer("Ola", "Normann", "ola@example.com", "o1"),
        **kw,
    )
    return core.calendar.add(T0, booking, announce=False)


def test_list_is_by_local_day_with_paging() -> None:
    # Oslo is UTC+1 in November: the local day 2026-11-23 is 22-23T23:00Z .. 23-24T23:00Z
    core = make_core(time_zone="Europe/Oslo")
    c = Client(core)
    _add(core, T0.replace(hour=22, minute=30), title="late-yesterday-utc")  # 23:30 local
    _add(core, T0.replace(day=22, hour=22, minute=30), title="early")  # 23:30 on the 22nd local
    _add(core, T0.replace(day=23, hour=23, minute=15), title="tomorrow-local")  # 00:15 the 24th
    _add(core, T0.replace(hour=9), title="today")
    today = c.command("Bookings List", DayOffset=0, Days=1)
    assert [b["Title"] for b in today["Booking"]] == ["today", "late-yesterday-utc"]
    assert today["ResultInfo"] == {"TotalRows": 2} and today["status"] == "OK"
    both = c.command("Bookings List", DayOffset=0, Days=2, Limit=2, Offset=1)
    assert both["ResultInfo"]["TotalRows"] == 3
    assert [(b["id"], b["Title"]) for b in both["Booking"]] == [
        (1, "late-yesterday-utc"),
        (2, "tomorrow-local"),
    ]
    everything = c.command("Bookings List")
    assert everything["ResultInfo"]["TotalRows"] == 4
    empty = c.command("Bookings List", DayOffset=5, Days=1)
    assert "Booking" not in empty and empty["ResultInfo"]["TotalRows"] == 0


def test_list_entry_fields() -> None:
    core = make_core()
    _add(core, T0 + timedelta(hours=1), platform="Webex", number="2612345678@acme.webex.com")
    [entry] = Client(core).command("Bookings List", DayOffset=0, Days=1)["Booking"]
    assert entry["id"] == 1 and entry["Id"] == "1" and entry["MeetingId"] == "m-Meeting"
    assert entry["Organizer"] == {
        "FirstName": "Ola",
        "LastName": "Normann",
        "Email": "ola@example.com",
        "Id": "o1",
    }
    assert entry["Time"]["StartTime"] == "2026-11-23T08:30:00Z"
    assert entry["Webex"]["Enabled"] == "True" and entry["Webex"]["MeetingNumber"] == "2612345678"
    assert entry["DialInfo"]["Calls"]["Call"][0]["Protocol"] == "Spark"
    for key in (
        "Title",
        "Agenda",
        "Privacy",
        "MaximumMeetingExtension",
        "MeetingExtensionAvailability",
        "BookingStatus",
        "BookingStatusMessage",
        "Encryption",
        "Role",
        "Recording",
    ):
        assert key in entry


def test_local_book_creates_at_once() -> None:
    core = make_core()
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    start = T0 + timedelta(hours=2)
    assert c.command(
        "Bookings Book",
        BookingRequestUUID="u-1",
        Duration=30,
        StartTime=utc_iso(start),
        Title="Standup",
    ) == {"status": "OK"}
    names = [n for n, _ in events(c.pending)]
    assert names == ["BookingRequested", "BookingCreated", "Updated"]
    created = events(c.pending)[1][1]
    assert created["BookingRequestUUID"] == "u-1" and created["MeetingId"] == ""
    c.command("Bookings Book", Duration=30)  # no UUID: the device makes one
    requested = events(c.pending)[0][1]
    assert len(requested["BookingRequestUUID"]) == 36


def test_hybrid_confirms_after_the_delay() -> None:
    core = make_core(mode="hybrid", confirm_delay_s=5)
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    c.command("Bookings Book", BookingRequestUUID="u-1", Duration=30, Title="Sync")
    assert [n for n, _ in events(c.pending)] == ["BookingRequested"]
    assert core.calendar.next_due() == T0 + timedelta(seconds=5)
    core.tick(T0 + timedelta(seconds=4))
    assert events(c.frames()) == []
    core.tick(T0 + timedelta(seconds=5))
    got = events(c.frames())
    assert [n for n, _ in got] == ["BookingCreated", "Start", "Updated"] or [n for n, _ in got][
        :1
    ] == ["BookingCreated"]
    assert got[0][1]["BookingRequestUUID"] == "u-1" and got[0][1]["MeetingId"]


def test_hybrid_timeout_and_decline() -> None:
    core = make_core(mode="hybrid", confirm_delay_s=90, booking_timeout_s=60)
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    c.command("Bookings Book", BookingRequestUUID="slow", Duration=30)
    core.tick(T0 + timedelta(seconds=60))
    assert events(c.frames()) == [
        ("BookingFailed", {"BookingRequestUUID": "slow", "FailureCause": "Timeout"})
    ]
    core.calendar.backend.confirm_delay_s = 1
    _add(core, T0 + timedelta(hours=1), minutes=60)
    c.command(
        "Bookings Book",
        BookingRequestUUID="clash",
        Duration=30,
        StartTime=utc_iso(T0 + timedelta(hours=1, minutes=15)),
    )
    core.calendar.backend.decline_next = 1
    c.command(
        "Bookings Book",
        BookingRequestUUID="scripted",
        Duration=15,
        StartTime=utc_iso(T0 + timedelta(hours=4)),
    )
    core.tick(T0 + timedelta(seconds=2))
    failed = {f["BookingRequestUUID"]: f["FailureCause"] for n, f in events(c.frames())}
    assert failed == {"clash": "Decline", "scripted": "Decline"}


def test_clock_drives_start_end_and_availability() -> None:
    core = make_core()
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    s = c.subscribe(["Status", "Bookings"])
    b = _add(core, T0 + timedelta(minutes=10), minutes=30)
    core.flush(T0)
    c.frames()
    assert core.calendar.next_due() == T0 + timedelta(minutes=5)  # StartTimeBuffer
    core.tick(T0 + timedelta(minutes=10))
    frames = c.frames()
    assert [n for n, _ in events(frames)] == ["StartTimeBuffer", "Start"]
    status = [f["params"] for f in frames if "Status" in f["params"]]
    assert status == [
        {
            "Id": s,
            "Status": {
                "Bookings": {
                    "Availability": {"Status": "BookedUntil", "TimeStamp": utc_iso(b.end)},
                    "Current": {"Id": b.id},
                }
            },
        }
    ]
    core.tick(T0 + timedelta(hours=1))  # a jump: every milestone in between fires, in order
    frames = c.frames()
    assert [n for n, _ in events(frames)] == ["TimeRemaining", "End"]
    end = events(frames)[1][1]
    assert end["ScheduledDuration"] == 30 and end["StartTime"] == utc_iso(b.start)
    assert core.produced["Status.Bookings.Availability"] == 3  # FreeUntil, Booked, Free
    assert core.calendar.next_due() is None


def test_outlook_changes_and_legacy_profile() -> None:
    for profile, expected in (
        ("modern", ["BookingCreated", "Updated", "BookingMoved", "Updated", "Deleted", "Updated"]),
        ("legacy", ["Updated", "Updated", "Updated"]),
    ):
        core = make_core(profile=profile)
        c = Client(core)
        c.subscribe(["Event"])
        cal = core.calendar
        b = cal.add(
            T0,
            Booking(
                id="",
                meeting_id="m",
                title="x",
                start=T0 + timedelta(hours=1),
                end=T0 + timedelta(hours=2),
            ),
        )
        cal.move(T0, b.id, T0 + timedelta(hours=3))
        cal.delete(T0, booking_id=b.id)
        core.flush(T0)
        assert [n for n, _ in events(c.frames())] == expected, profile


def test_legacy_start_carries_id_only() -> None:
    core = make_core(profile="legacy")
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    _add(core, T0 + timedelta(minutes=1))
    core.tick(T0 + timedelta(minutes=40))
    assert events(c.frames()) == [("Start", {"Id": "1"}), ("End", {"Id": "1"})]
    assert c.result("xGet", Path="Status SystemUnit Software Version").startswith("ce11.19.1")


def test_reboot_renumbers_hybrid_ids_and_requires_sync() -> None:
    core = make_core(mode="hybrid")
    _add(core, T0 + timedelta(hours=1))
    core.ready = False
    core.rebooted(T0 + timedelta(minutes=1))
    assert [b.id for b in core.calendar.sorted_bookings()] == ["2"]
    c = Client(core)
    sub = c.subscribe(["Event", "Bookings"])
    assert c.pending[0]["params"] == {"Id": sub, "Event": {"Bookings": {"SyncRequired": {}}}}
    c.subscribe(["Event", "Bookings"])
    assert c.pending == []
    assert c.result("xGet", Path="Status SystemUnit Uptime") == 0


def test_delete_by_meeting_id_after_a_reboot_renumbered_the_ids() -> None:
    """The schema's ``Bookings Delete`` takes Id or MeetingId; after a hybrid reboot only the
    MeetingId still names the meeting."""
    core = make_core(mode="hybrid")
    _add(core, T0 + timedelta(hours=1), meeting_id="mtg-1")
    core.ready = False
    core.rebooted(T0 + timedelta(minutes=1))
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    c.frames()
    stale = c.call("xCommand/Bookings/Delete", Id="1")  # the Id before the reboot
    assert stale["error"]["data"]["Cause"] == "NotFound"
    assert c.command("Bookings Delete", MeetingId="mtg-1") == {"status": "OK"}
    assert core.calendar.sorted_bookings() == []
    deleted = [body for name, body in events(c.pending) if name == "Deleted"]
    assert [(d["Id"], d["MeetingId"]) for d in deleted] == [("2", "mtg-1")]
    missing = c.call("xCommand/Bookings/Delete", MeetingId="mtg-1")
    assert missing["error"]["data"]["Cause"] == "NotFound"


def test_edit_extend_checkin_put_clear() -> None:
    core = make_core()
    c = Client(core)
    c.subscribe(["Event", "Bookings"])
    c.command(
        "Bookings Put",
        body=orjson.dumps(
            {
                "Bookings": [
                    {
                        "Id": "7",
                        "Title": "Put",
                        "Number": "x@y",
                        "Protocol": "SIP",
                        "Organizer": {"Name": "John Smith"},
                        "Time": {"StartTime": "2026-11-23T07:00:00Z", "Duration": 60},
                    }
                ]
            }
        ).decode(),
    )
    assert [b.id for b in core.calendar.sorted_bookings()] == ["7"]
    c.command("Bookings Extend", Id="7", Duration=15)
    c.command("Bookings Edit", Id="7", Title="Renamed")
    c.command("Bookings CheckIn", Id="7")
    got = [n for n, _ in c.pending and events(c.pending)]
    assert got == ["CheckedIn"]
    assert core.calendar.bookings["7"].end == T0 + timedelta(minutes=45)
    assert core.calendar.bookings["7"].title == "Renamed"
    assert c.command("Bookings Get", Id="7")["Booking"]["Organizer"]["LastName"] == "Smith"
    c.command("Bookings Clear")
    assert core.calendar.bookings == {}
