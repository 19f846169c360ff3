"""People count and presence in the simulator: from the calendar, seeded, schema-true."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from simtest_helpers import T0, Client, make_core

from device_sim.calendar import Booking
from device_sim.occupancy import PRESENCE_HOLD_S, RoomSensing, SensingSettings
from device_sim.profiles import load_schema
from device_sim.tree import leaves


def _booking(i: int, start_min: int, minutes: int = 30) -> Booking:
    start = T0 + timedelta(minutes=start_min)
    return Booking(str(i), f"m{i}", f"Meeting {i}", start, start + timedelta(minutes=minutes))


def _analytics(client: Client, now: Any = T0) -> dict[str, Any]:
    result: dict[str, Any] = client.result("xGet", now, Path=["Status", "RoomAnalytics"])
    return result


def test_same_seed_same_day_and_no_shows_and_walkins_happen() -> None:
    bookings = [_booking(i, 60 * i) for i in range(40)]
    a = RoomSensing(7, SensingSettings(attendance=0.7, walkin_per_hour=0.3))
    b = RoomSensing(7, SensingSettings(attendance=0.7, walkin_per_hour=0.3))
    va, vb = a.visits(bookings, T0), b.visits(bookings, T0)
    assert va == vb
    came = {v.booking for v in va if v.booking}
    assert 0 < len(came) < 26  # some no-shows among the bookings within the horizon
    assert any(v.booking is None for v in va)  # walk-ins
    late = [v for v in va if v.booking and v.start > T0 and (v.start - T0).seconds % 3600]
    assert late  # late arrivals


def test_count_follows_a_booking_and_presence_lingers() -> None:
    core = make_core(seed=3, sensing=SensingSettings(attendance=1.0, walkin_per_hour=0.0))
    client = Client(core)
    core.add_bookings(T0, [_booking(1, 10)], announce=False)
    assert _analytics(client) == {
        "PeopleCount": {"Current": 0, "Capacity": 10},
        "PeoplePresence": "No",
    }
    visit = core.sensing.visits(core.calendar.bookings.values(), T0)[0]
    inside = visit.start + timedelta(seconds=1)
    got = _analytics(client, inside)
    assert got["PeopleCount"]["Current"] >= 1 and got["PeoplePresence"] == "Yes"
    after = visit.end + timedelta(seconds=PRESENCE_HOLD_S - 1)
    got = _analytics(client, after)
    assert got["PeopleCount"]["Current"] == 0 and got["PeoplePresence"] == "Yes"
    gone = visit.end + timedelta(seconds=PRESENCE_HOLD_S)
    assert _analytics(client, gone)["PeoplePresence"] == "No"
    assert core.next_due() is not None


def test_subscribers_hear_changes_as_the_clock_ticks() -> None:
    core = make_core(seed=3, sensing=SensingSettings(attendance=1.0, walkin_per_hour=0.0))
    client = Client(core)
    core.add_bookings(T0, [_booking(1, 10)], announce=False)
    client.subscribe(["Status", "RoomAnalytics"], notify=True)
    first = client.pending[0]["params"]["Status"]["RoomAnalytics"]
    assert first["PeopleCount"]["Current"] == 0
    visit = core.sensing.visits(core.calendar.bookings.values(), T0)[0]
    frames: list[dict[str, Any]] = []
    for _ in range(5):  # the scheduler's wakeups (StartTimeBuffer comes first)
        due = core.next_due()
        assert due is not None and due <= visit.start
        core.tick(due)
        frames += client.frames()
        if due == visit.start:
            break
    counts = [
        f["params"]["Status"]["RoomAnalytics"]["PeopleCount"]["Current"]
        for f in frames
        if "RoomAnalytics" in f["params"].get("Status", {})
        and "PeopleCount" in f["params"]["Status"]["RoomAnalytics"]
    ]
    assert counts and counts[-1] >= 1


def test_counting_off_and_presence_off() -> None:
    core = make_core(counting=False, presence_detector=False)
    client = Client(core)
    core.set_people(T0, people_count=4)
    got = _analytics(client)
    assert got["PeopleCount"]["Current"] == -1 and got["PeoplePresence"] == "Unknown"
    conf = client.result("xGet", Path=["Configuration", "RoomAnalytics"])
    assert conf == {"PeopleCountOutOfCall": "Off", "PeoplePresenceDetector": "Off"}
    path = ["Configuration", "RoomAnalytics", "PeopleCountOutOfCall"]
    client.result("xSet", Path=path, Value="On")
    assert _analytics(client)["PeopleCount"]["Current"] == 4


def test_forced_count_and_clear() -> None:
    core = make_core()
    client = Client(core)
    core.set_people(T0, people_count=3)
    assert _analytics(client)["PeopleCount"]["Current"] == 3
    assert _analytics(client)["PeoplePresence"] == "Yes"
    core.set_people(T0, people_count=0)
    assert _analytics(client)["PeoplePresence"] == "No"
    core.set_people(T0, clear=True)
    with pytest.raises(ValueError):
        core.set_people(T0, people_count=-2)


def test_a_role_without_roomanalytics_is_refused() -> None:
    core = make_core()
    kiosk = Client(core, role="RoomControl")
    reply = kiosk.call("xFeedback/Subscribe", Query=["Status", "RoomAnalytics"])
    assert reply["error"]["code"] == -31999
    reply = kiosk.call("xGet", Path=["Status", "RoomAnalytics", "PeopleCount", "Current"])
    assert reply["error"]["code"] == -31999
    everything = kiosk.result("xQuery", Query=["Status", "**"])
    assert "RoomAnalytics" not in everything["Status"] and "Bookings" in everything["Status"]
    # Bookings stay readable for it (the simulator's lenient default)
    assert "result" in kiosk.call("xGet", Path=["Status", "Bookings"])
    user = Client(core, role="User")
    assert "result" in user.call("xFeedback/Subscribe", Query=["Status", "RoomAnalytics"])


def test_room_in_use_set_on_26_8_and_refused_before() -> None:
    core = make_core(profile="current")
    client = Client(core)
    assert _analytics(client)["RoomInUse"] == "False"
    client.command("RoomAnalytics RoomInUse Set", State="True", Duration=60, ID="pir-1")
    assert _analytics(client)["RoomInUse"] == "True"
    assert _analytics(client, T0 + timedelta(seconds=61))["RoomInUse"] == "False"
    bad = client.call("xCommand/RoomAnalytics/RoomInUse/Set", State="Maybe")
    assert bad["error"]["code"] == -32602
    for profile in ("modern", "legacy"):
        old = Client(make_core(profile=profile))
        assert "RoomInUse" not in _analytics(old)
        reply = old.call("xCommand/RoomAnalytics/RoomInUse/Set", State="True")
        assert reply["error"]["code"] == -32601, reply


@pytest.mark.parametrize("profile", ["current", "modern", "legacy"])
def test_room_analytics_statuses_validate_against_the_schema(profile: str) -> None:
    schema = {
        o["path"]: o["attributes"]["valuespace"]
        for o in load_schema(profile)["objects"]
        if o["type"] == "Status"
    }
    core = make_core(profile=profile, seed=5)
    core.add_bookings(T0, [_booking(1, 0, 120)], announce=False)
    client = Client(core)
    for minute in (0, 5, 30, 200):
        got = _analytics(client, T0 + timedelta(minutes=minute))
        for path, value in leaves(got, ("RoomAnalytics",)):
            space = schema[" ".join(path)]
            if space["type"] == "Literal":
                assert value in space["Values"]
            else:
                assert isinstance(value, int) and not isinstance(value, bool)


async def test_control_route_forces_counts_and_switches_counting() -> None:
    import aiohttp

    from device_sim import ControlServer, DeviceFleet, SimConfig

    from simtest_helpers import SIM_START

    fleet = DeviceFleet(SimConfig(devices=2, http=True, start=SIM_START))
    await fleet.start()
    control = ControlServer(fleet)
    await control.start()
    base = f"http://127.0.0.1:{control.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/devices/0/occupancy", json={"people_count": 4}) as r:
                assert r.status == 200
                got = await r.json()
            assert got["PeopleCount"]["Current"] == 4 and got["PeoplePresence"] == "Yes"
            async with http.post(f"{base}/devices/1/occupancy", json={"counting": False}) as r:
                assert (await r.json())["PeopleCount"]["Current"] == -1
            async with http.post(f"{base}/devices/0/occupancy", json={"people_count": -3}) as r:
                assert r.status == 400 and "people_count" in (await r.json())["error"]
            async with http.post(f"{base}/devices/all/occupancy", json={"clear": True}) as r:
                assert r.status == 200 and len(await r.json()) == 2
    finally:
        await control.stop()
        await fleet.stop()


def test_cli_flags() -> None:
    from device_sim.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--device-profile", "0=current", "--counting-off", "1", "--presence-off", "1",
         "--extra-user", "kiosk:pw:RoomControl", "--attendance", "0.5", "--no-jitter"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.profiles == {0: "current"} and cfg.counting_off == {1} and cfg.presence_off == {1}
    assert cfg.users == {"kiosk": ("pw", "RoomControl")}
    assert cfg.sensing.attendance == 0.5 and not cfg.sensing.jitter
    for bad in (["--device-profile", "0=ancient"], ["--extra-user", "nobody"],
                ["--attendance", "2"]):  # fmt: skip
        with pytest.raises(SystemExit):
            config_from_args(build_parser().parse_args(bad))
