"""A configured ``time_zone`` the device overrides is flagged (issue 15): one warning naming the
device, both zones and the one used; ``/v1/devices`` says where the zone came from."""

from __future__ import annotations

import structlog

from tests.test_session import (  # noqa: F401 - the fixture
    DEVICE,
    Running,
    online_and_listed,
    running,
    settings,
    types,
    warnings_of,
)


async def test_a_configured_zone_the_device_overrides_is_flagged_once(running: Running) -> None:
    r = running
    r.session.settings = settings(time_zone="America/New_York")
    r.link.settings["Configuration Time Zone"] = "Europe/Oslo"
    assert r.session.info()["time_zone_source"] == "config"  # not read yet
    with structlog.testing.capture_logs() as logs:
        await online_and_listed(r)
        r.link.go_offline("blip")
        assert types(await r.recorder.next()) == ["device.offline"]
        await online_and_listed(r)  # the same pair of zones: said once
    (warning,) = warnings_of(logs, "differs from the configured time_zone")
    assert warning["device"] == DEVICE
    assert warning["device_time_zone"] == "Europe/Oslo"
    assert warning["configured_time_zone"] == "America/New_York"
    assert warning["using"] == "Europe/Oslo"
    info = r.session.info()
    assert info["time_zone"] == "Europe/Oslo" and info["time_zone_source"] == "device"


async def test_a_matching_or_default_zone_is_not_flagged(running: Running) -> None:
    r = running
    r.link.settings["Configuration Time Zone"] = "Europe/Oslo"  # time_zone left at its default
    with structlog.testing.capture_logs() as logs:
        await online_and_listed(r)
    assert warnings_of(logs, "time_zone") == []
    assert r.session.info()["time_zone_source"] == "device"


async def test_an_unreadable_device_zone_uses_the_config(running: Running) -> None:
    r = running
    r.session.settings = settings(time_zone="America/New_York")
    r.link.settings["Configuration Time Zone"] = "Mars/Olympus_Mons"  # not a zone: not used
    with structlog.testing.capture_logs() as logs:
        await online_and_listed(r)
    assert warnings_of(logs, "differs from the configured") == []
    info = r.session.info()
    assert info["time_zone_source"] == "config"
