"""A device whose clock is far off lists its own days (issue 10, item 8): an event about a
booking the agent's window lacks asks for a re-list that cannot find it. While the skew lasts,
those re-lists are throttled to one per ``relist_interval_s`` and said once; connects and the
safety net still list.

Reuses the fake link, the recording store and the ``running`` fixture of tests/test_session.py.
"""

from __future__ import annotations

from typing import Any

import structlog

from tests.test_session import (  # noqa: F401  (running is a fixture)
    DEVICE,
    Running,
    running,
    types,
)

SKEWED = "2099-11-23T08:00:00Z"
IN_STEP = "2026-11-23T08:00:03Z"
UNKNOWN = {"Id": "99", "MeetingId": "Z"}  # not in the window: the device listed 2099


def throttle_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] == "warning" and "throttled" in e["event"]]


async def online(r: Running, device_time: str) -> None:
    r.link.settings["Status Time SystemTime"] = device_time
    r.link.bookings = []  # the device's own days hold none of the agent's bookings
    await r.link.go_online()
    assert types(await r.recorder.next()) == ["device.online"]
    await r.recorder.next_with("bookings.snapshot")


async def start_of_unknown(r: Running) -> None:
    r.clock.advance(6)  # sent apart: not a repeat
    r.link.feed("Start", **UNKNOWN)
    assert types(await r.recorder.next_with("booking.started")) == ["booking.started"]


async def test_a_skewed_device_relists_for_its_events_once_per_interval(
    running: Running,
) -> None:
    """Five ``Start`` events about a booking the 2099 device's list cannot hold: the first
    re-lists, the next four do not (before: five lists, the device re-listed on every event),
    and a warning says so once. An interval later one is let through again; a reconnect
    lists whatever the skew."""
    r = running
    await online(r, SKEWED)
    assert r.link.list_calls == 1
    with structlog.testing.capture_logs() as logs:
        await start_of_unknown(r)
        await r.recorder.next_with("bookings.snapshot")  # the one re-list let through
        assert r.link.list_calls == 2
        for i in range(1, 5):
            await start_of_unknown(r)
            assert r.session.relists_throttled == i
    assert not r.session._relist_wanted.is_set()  # nothing asked of the lister...
    assert r.link.list_calls == 2  # ...and nothing listed
    assert r.session.info()["relists_throttled"] == 4
    (warning,) = throttle_warnings(logs)
    assert warning["device"] == DEVICE and warning["skew_s"] > 10**9
    assert warning["at_most_every_s"] == r.session.settings.relist_interval_s
    # An interval passes (the safety net lists too): the next event's re-list is let through.
    r.clock._loop_origin -= r.session.settings.relist_interval_s  # monotonic time moves on
    await start_of_unknown(r)
    assert r.session.relists_throttled == 4
    await r.recorder.next_with("bookings.snapshot")  # listed before the link goes down
    # A reconnect lists, skew or not.
    r.link.go_offline("reset")
    assert types(await r.recorder.next()) == ["device.offline"]
    calls = r.link.list_calls
    await r.link.go_online()
    await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls > calls


async def test_a_device_in_step_relists_for_every_such_event(running: Running) -> None:
    """The control: the same events from a device whose clock is right each re-list."""
    r = running
    await online(r, IN_STEP)
    with structlog.testing.capture_logs() as logs:
        for n in range(3):
            await start_of_unknown(r)
            await r.recorder.next_with("bookings.snapshot")
            assert r.link.list_calls == n + 2
    assert r.session.relists_throttled == 0
    assert throttle_warnings(logs) == []


async def test_the_throttle_ends_when_the_clock_is_fixed(running: Running) -> None:
    r = running
    await online(r, SKEWED)
    await start_of_unknown(r)
    await r.recorder.next_with("bookings.snapshot")
    await start_of_unknown(r)
    assert r.session.relists_throttled == 1
    # NTP fixed the device's clock; it reconnects.
    r.link.go_offline("reset")
    assert types(await r.recorder.next()) == ["device.offline"]
    r.link.settings["Status Time SystemTime"] = IN_STEP
    with structlog.testing.capture_logs() as logs:
        await r.link.go_online()
        await r.recorder.next_with("bookings.snapshot")
        calls = r.link.list_calls
        await start_of_unknown(r)
        await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == calls + 1 and r.session.relists_throttled == 1
    assert [e for e in logs if "back in step" in e["event"]]
    assert abs(r.session.info()["clock_skew_s"]) < 300
