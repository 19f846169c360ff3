"""MQTT topics of rooms through the real CLI and a real broker: a calendar-only room publishes
``<base>/rooms/<room_id>/{events,bookings}``, each event once, its window retained."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from edge_agent import jsoncodec
from tests.calendars.graphfake import graph_event
from tests.e2e.harness import eventually
from tests.mosquitto import Mosquitto, Subscriber
from tests.rooms.conftest import day_at, place, rooms_config

pytestmark = pytest.mark.slow

BASE = "roomos-edge/rooms"


async def test_calendar_only_room_topics(graph, receiver, ca_file, tmp_path: Path, spawn) -> None:
    graph.rooms = [place("room-b@contoso.com")]
    graph.put("room-b@contoso.com", graph_event("e1", day_at(1, 9), day_at(1, 10), "Retro"))
    broker = Mosquitto(tmp_path).start()
    try:
        cfg = rooms_config(
            tmp_path, graph, receiver, ca_file, extra=f'[mqtt]\nurl = "{broker.url}"\n'
        )
        with Subscriber(broker, f"{BASE}/#") as sub:
            proc = await spawn(cfg)
            await eventually(lambda: sub.on(f"{BASE}/rooms/room-b/bookings"), timeout=30)
            graph.put("room-b@contoso.com", graph_event("e2", day_at(2, 9), day_at(2, 10), "Demo"))
            await eventually(lambda: len(sub.on(f"{BASE}/rooms/room-b/bookings")) >= 2, timeout=30)
            await eventually(
                lambda: len(sub.on(f"{BASE}/rooms/room-b/events")) >= 3, timeout=30
            )  # the first snapshot (e1 in it), then created e2 + snapshot
            events = [jsoncodec.loads(p) for p in sub.on(f"{BASE}/rooms/room-b/events")]
            ids = [e["data"]["event_id"] for e in events]
            assert len(ids) == len(set(ids)), "each event published once"
            assert {e["data"]["room_id"] for e in events} == {"room-b"}
            assert not [t for t, _, _ in sub.messages if "/devices/" in t]
            # the webhook got the very same events
            await eventually(lambda: len(receiver.events) >= len(ids), timeout=30)
            assert set(ids) <= {e["data"]["event_id"] for e in receiver.events}
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        # a late subscriber gets the room's current window, retained
        with Subscriber(broker, f"{BASE}/rooms/+/bookings") as late:
            await eventually(lambda: late.on(f"{BASE}/rooms/room-b/bookings"), timeout=10)
            (retained,) = late.on(f"{BASE}/rooms/room-b/bookings")
            snap = jsoncodec.loads(retained)
            assert snap["type"] == "bookings.snapshot"
            assert [b["id"] for b in snap["data"]["bookings"]] == ["e1", "e2"]
    finally:
        broker.stop()
