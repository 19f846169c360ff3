"""Precedence for a linked room, through the real CLI: a simulated device linked to a room
mailbox of the Graph simulator (``[[devices]] calendar``). The window forwarded for the room is
the calendar's; the device's own signals still flow; no meeting is reported created twice.

Both simulators and the agent run on the wall clock; the meetings lie hours to days ahead of
the run, inside both windows whatever the hour (DESIGN.md: device today + 8 h, calendar 7 days).
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from calendar_sim.graph import GraphSim, GraphSimConfig
from edge_agent.clock import parse_utc
from tests.e2e.harness import PASSWORD, booking_created, eventually, of_type

pytestmark = pytest.mark.slow

SIM_SECRET = "graph-sim-secret-linked"
MAILBOX = "room-4a@contoso.com"


def of_room(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in of_type(events, *types) if e["data"]["room_id"] == "room-4a"]


async def test_linked_room_calendar_wins_device_signals_flow(
    make_fleet,
    receiver,
    tmp_path: Path,
    ca_file: Path,
    spawn,
):
    # The calendar backend confirms a panel request only when the test moves the device's
    # clock past this delay: the test decides which side sees a meeting first.
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=30.0, start=datetime.now(UTC))
    dev = fleet.devices[0]
    graph = GraphSim(GraphSimConfig(client_secret=SIM_SECRET, time_zone="UTC"))
    graph.add_room(MAILBOX, "Room 4A")
    graph.add_room("room-b@contoso.com", "Room B")
    await graph.start()
    try:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        board = graph.add_event(MAILBOX, midnight + timedelta(days=2, hours=9), 60, "Board")
        gca = tmp_path / "graph-ca.pem"
        gca.write_bytes(graph.cert_pem)
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
[microsoft]
tenant_id = "{graph.config.tenant_id}"
client_id = "{graph.config.client_id}"
client_secret_env = "GRAPH_SECRET"
authority_url = "{graph.authority_url}"
graph_url = "{graph.graph_url}"
ca_file = "{gca}"
poll_interval_s = 2
[[devices]]
id = "room-4a"
url = "{dev.url}"
calendar = "{MAILBOX}"
"""
        )
        proc = await spawn(cfg, SIM_PASSWORD=PASSWORD, GRAPH_SECRET=SIM_SECRET)

        # one room per mailbox: the linked one under the device id, the other calendar-only
        await eventually(lambda: of_room(receiver.events, "bookings.snapshot"), timeout=30)
        await eventually(
            lambda: any(
                e["data"]["room_id"] == "room-b"
                for e in of_type(receiver.events, "bookings.snapshot")
            ),
            timeout=30,
        )
        await eventually(lambda: of_room(receiver.events, "device.online"), timeout=30)
        online = of_room(receiver.events, "device.online")[0]["data"]
        assert (online["source"], online["device_id"]) == ("device", "room-4a")

        # a meeting that reaches the device through Hybrid Calendar is not the room's news
        soon = datetime.now(UTC) + timedelta(hours=1)
        dev.calendar.add(soon, 30, title="Hybrid only")
        # a request made on the panel: its requested/created flow, as the device's signals
        uuid = dev.calendar.request(duration_min=30, title="Ad hoc")
        await eventually(lambda: of_room(receiver.events, "booking.requested"), timeout=30)
        fleet.clock.advance(31)
        created = await booking_created(receiver.events, uuid, timeout=30)
        assert created["source"] == "device" and created["pending_ms"] >= 0
        assert of_room(receiver.events, "booking.requested")

        # the room's window is the calendar's, from the start and always
        snaps = of_room(receiver.events, "bookings.snapshot")
        assert {s["data"]["source"] for s in snaps} == {"microsoft"}
        assert all(s["data"]["device_id"] == "room-4a" for s in snaps)
        assert [b["id"] for b in snaps[0]["data"]["bookings"]] == [board.id]
        titles = {
            e["data"]["booking"].get("title") for e in of_room(receiver.events, "booking.created")
        }
        assert "Hybrid only" not in titles

        # Hybrid Calendar writes the panel's meeting into the mailbox: the calendar has it in
        # its window, but does not report it created a second time
        start = parse_utc(created["booking"]["start"])
        minutes = int((parse_utc(created["booking"]["end"]) - start).total_seconds() // 60)
        graph.add_event(MAILBOX, start, minutes, "Ad hoc")
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

        # the other order: the mailbox has the panel's meeting while the request is pending
        early = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
        uuid2 = dev.calendar.request(duration_min=30, start=early, title="Early bird")
        await eventually(
            lambda: len(of_room(receiver.events, "booking.requested")) == 2, timeout=30
        )
        graph.add_event(MAILBOX, early, 30, "Early bird")
        await eventually(
            lambda: any(
                b.get("title") == "Early bird"
                for b in of_room(receiver.events, "bookings.snapshot")[-1]["data"]["bookings"]
            ),
            "the calendar's snapshot with the pending request's meeting",
            timeout=30,
        )
        fleet.clock.advance(31)
        early_created = await booking_created(receiver.events, uuid2, timeout=30)
        assert early_created["source"] == "device"
        early_ones = [
            e
            for e in of_room(receiver.events, "booking.created")
            if e["data"]["booking"].get("title") == "Early bird"
        ]
        assert len(early_ones) == 1

        # calendar changes of the linked room carry the device id too
        graph.move_event(MAILBOX, board.id, midnight + timedelta(days=3, hours=9))
        await eventually(lambda: of_room(receiver.events, "booking.moved"), timeout=30)
        moved = of_room(receiver.events, "booking.moved")
        assert [(m["data"]["source"], m["data"]["device_id"]) for m in moved] == [
            ("microsoft", "room-4a")
        ]
        assert receiver.bad_signatures == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await graph.stop()
