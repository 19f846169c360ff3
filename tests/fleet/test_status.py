"""`edge-agent status` in fleet mode: the members, their devices and lease ages."""

from __future__ import annotations

import io

from edge_agent.ops.cli.status import print_fleet


def test_print_fleet_lists_members_with_their_devices_and_lease_ages() -> None:
    out = io.StringIO()
    print_fleet(
        {
            "member_id": "edge-1",
            "lease_s": 15.0,
            "members": [
                {
                    "member_id": "edge-1",
                    "self": True,
                    "live": True,
                    "last_seen_age_s": 0.4,
                    "devices": [
                        {"device_id": "room-1", "token": 3, "held_s": 12.5, "expires_in_s": 14.0},
                        {"device_id": "room-2", "token": 1, "held_s": 700.0, "expires_in_s": 9.0},
                    ],
                },
                {
                    "member_id": "edge-2",
                    "self": False,
                    "live": False,
                    "last_seen_age_s": 31.0,
                    "devices": [],
                },
            ],
            "unowned": ["room-9"],
        },
        out=out,
    )
    text = out.getvalue()
    assert "fleet: member edge-1, lease 15.0 s" in text
    [me] = [line for line in text.splitlines() if line.startswith("edge-1 (this)")]
    assert "live" in me and "12s" in me and "700s" in me  # newest and oldest lease
    [other] = [line for line in text.splitlines() if line.startswith("edge-2")]
    assert "stale" in other
    assert "unowned devices (1): room-9" in text


def test_print_fleet_shows_each_members_calendar_rooms() -> None:
    out = io.StringIO()
    lease = {"token": 1, "held_s": 30.0, "expires_in_s": 10.0}
    print_fleet(
        {
            "member_id": "edge-1",
            "lease_s": 15.0,
            "members": [
                {
                    "member_id": "edge-1",
                    "self": True,
                    "live": True,
                    "last_seen_age_s": 0.2,
                    "devices": [{"device_id": "room-1", **lease}],
                    "rooms": [{"room_id": "boardroom", **lease}, {"room_id": "atrium", **lease}],
                },
                {
                    "member_id": "edge-2",
                    "self": False,
                    "live": True,
                    "last_seen_age_s": 1.0,
                    "devices": [],
                    "rooms": [{"room_id": "library", **{**lease, "held_s": 900.0}}],
                },
            ],
            "unowned": [],
            "unowned_rooms": ["cellar"],
        },
        out=out,
    )
    text = out.getvalue()
    assert "ROOMS" in text.splitlines()[1]
    [me] = [line for line in text.splitlines() if line.startswith("edge-1 (this)")]
    assert me.split()[4:6] == ["1", "2"]  # one device, two calendar rooms
    [other] = [line for line in text.splitlines() if line.startswith("edge-2 ")]
    assert "900s" in other
    assert "calendar rooms of edge-1 (2): boardroom, atrium" in text
    assert "calendar rooms of edge-2 (1): library" in text
    assert "unowned calendar rooms (1): cellar" in text
    assert "unowned devices" not in text
