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
