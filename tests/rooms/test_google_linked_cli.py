"""Precedence for a linked room with Google as the source, through the real CLI: a simulated
device linked to a resource calendar of the Google simulator (``[[devices]] calendar``). The
room's window is the calendar's; the device's own signals still flow; a meeting is not
reported created twice. Wall clock for all three; meetings hours to days ahead (as
test_linked_room_cli.py).
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.clock import parse_utc
from tests.e2e.harness import PASSWORD, booking_created, eventually, of_type

pytestmark = pytest.mark.slow

MAILBOX = "room-4a@example.com"


def of_room(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in of_type(events, *types) if e["data"].get("room_id") == "room-4a"]


async def test_google_linked_room_calendar_wins(
    make_fleet, receiver, tmp_path: Path, ca_file: Path, spawn
):
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=30.0, start=datetime.now(UTC))
    dev = fleet.devices[0]
    google = GoogleSim(GoogleSimConfig())
    google.add_room(MAILBOX, "Room 4A")
    google.add_room("room-b@example.com", "Room B")
    await google.start()
    try:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        board = google.add_event(MAILBOX, midnight + timedelta(days=2, hours=9), 60, "Board")
        gca = tmp_path / "google-ca.pem"
        gca.write_bytes(google.cert_pem)
        import json

        key = tmp_path / "sa.json"
        key.write_text(json.dumps(google.key_file()))
        key.chmod(0o600)
        cfg = tmp_path / "agent.toml"
        cfg.write_text(
            f"""site = "linked"
[store]
path = "{tmp_path / "agent.db"}"
[defaults]
username = "{fleet.config.username}"
password_env = "SIM_PASSWORD"
ca_file = "{ca_file}"
request_grace_s = 5
[webhook]
url = "{receiver.url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:0"
[google]
service_account_file = "{key}"
subject = "{google.config.admin}"
directory_url = "{google.directory_url}"
calendar_url = "{google.calendar_url}"
ca_file = "{gca}"
time_zone = "UTC"
poll_interval_s = 2
[[devices]]
id = "room-4a"
url = "{dev.url}"
calendar = "{MAILBOX}"
"""
        )
        proc = await spawn(cfg, SIM_PASSWORD=PASSWORD)

        await eventually(lambda: of_room(receiver.events, "bookings.snapshot"), timeout=30)
        await eventually(
            lambda: any(
                e["data"].get("room_id") == "room-b"
                for e in of_type(receiver.events, "bookings.snapshot")
            ),
            timeout=30,
        )
        await eventually(lambda: of_room(receiver.events, "device.online"), timeout=30)

        soon = datetime.now(UTC) + timedelta(hours=1)
        dev.calendar.add(soon, 30, title="Hybrid only")
        uuid = dev.calendar.request(duration_min=30, title="Ad hoc")
        await eventually(lambda: of_room(receiver.events, "booking.requested"), timeout=30)
        fleet.clock.advance(31)
        created = await booking_created(receiver.events, uuid, timeout=30)
        assert created["source"] == "device"

        snaps = of_room(receiver.events, "bookings.snapshot")
        assert {s["data"]["source"] for s in snaps} == {"google"}
        assert all(s["data"]["device_id"] == "room-4a" for s in snaps)
        assert [b["id"] for b in snaps[0]["data"]["bookings"]] == [board.id]
        titles = {
            e["data"]["booking"].get("title") for e in of_room(receiver.events, "booking.created")
        }
        assert "Hybrid only" not in titles

        # the panel's meeting lands in the resource calendar: in the window, not created twice
        start = parse_utc(created["booking"]["start"])
        minutes = int((parse_utc(created["booking"]["end"]) - start).total_seconds() // 60)
        google.add_event(MAILBOX, start, minutes, "Ad hoc")
        await eventually(
            lambda: any(
                b.get("title") == "Ad hoc"
                for b in of_room(receiver.events, "bookings.snapshot")[-1]["data"]["bookings"]
            ),
            "the calendar's snapshot with the panel's meeting",
            timeout=30,
        )
        ad_hoc = [
            e
            for e in of_room(receiver.events, "booking.created")
            if e["data"]["booking"].get("title") == "Ad hoc"
        ]
        assert len(ad_hoc) == 1 and ad_hoc[0]["data"]["source"] == "device"

        google.move_event(MAILBOX, board.id, midnight + timedelta(days=3, hours=9))
        await eventually(lambda: of_room(receiver.events, "booking.moved"), timeout=30)
        moved = of_room(receiver.events, "booking.moved")
        assert [(m["data"]["source"], m["data"]["device_id"]) for m in moved] == [
            ("google", "room-4a")
        ]
        assert receiver.bad_signatures == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await google.stop()
