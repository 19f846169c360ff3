"""Graph rooms through the real CLI: discovery, changes, resync, throttling, kill -9, secrets."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from typing import Any

import pytest

from tests.calendars.graphfake import Reply, graph_event
from tests.e2e.harness import eventually, of_type
from tests.rooms.conftest import CLIENT_SECRET, day_at, logs, place, rooms_config

pytestmark = pytest.mark.slow

ROOMS = ["Room-A@contoso.com", "room-b@contoso.com", "Room.C@contoso.com"]


def of_room(events: list[dict[str, Any]], room: str, *types: str) -> list[dict[str, Any]]:
    return [e for e in of_type(events, *types) if e["data"]["room_id"] == room]


def created_ids(events: list[dict[str, Any]], room: str) -> Counter[str]:
    return Counter(e["data"]["booking"]["id"] for e in of_room(events, room, "booking.created"))


async def test_discovery_create_move_delete_leave(graph, receiver, ca_file, tmp_path, spawn):
    graph.rooms = [place(m) for m in ROOMS]  # two per page: two pages
    graph.put(ROOMS[0], graph_event("e1", day_at(1, 9), day_at(1, 10), "Standup"))
    proc = await spawn(rooms_config(tmp_path, graph, receiver, ca_file))
    await eventually(
        lambda: (
            {e["data"]["room_id"] for e in of_type(receiver.events, "bookings.snapshot")}
            >= {"room-a", "room-b", "room-c"}
        ),
        "a snapshot of every discovered room",
        timeout=30,
    )
    assert len(graph.of("/places/")) >= 2  # every page of the directory
    snap = of_room(receiver.events, "room-a", "bookings.snapshot")[0]
    assert snap["data"]["source"] == "microsoft"
    assert "device_id" not in snap["data"]
    assert [b["id"] for b in snap["data"]["bookings"]] == ["e1"]
    assert snap["data"]["bookings"][0]["meeting_id"] == "040000008200E00074C5B7101A82E008-e1"
    assert set(snap["data"]["window"]) == {"start", "end"}
    # the first full listing is the room's snapshot alone, as a device's first list
    # (calendars/sync.py): no booking.created for what was already there
    assert created_ids(receiver.events, "room-a") == Counter()

    graph.put(ROOMS[1], graph_event("e2", day_at(2, 13), day_at(2, 14), "Review"))
    await eventually(lambda: of_room(receiver.events, "room-b", "booking.created"), timeout=20)
    created = of_room(receiver.events, "room-b", "booking.created")[0]
    assert created["data"]["booking"]["title"] == "Review"
    assert created["data"]["source"] == "microsoft"

    graph.put(ROOMS[1], graph_event("e2", day_at(2, 15), day_at(2, 16), "Review"))
    await eventually(lambda: of_room(receiver.events, "room-b", "booking.moved"), timeout=20)
    moved = of_room(receiver.events, "room-b", "booking.moved")[0]
    assert moved["data"]["previous"]["start"].startswith(day_at(2, 13)[:16])

    graph.delete(ROOMS[1], "e2")
    await eventually(lambda: of_room(receiver.events, "room-b", "booking.deleted"), timeout=20)

    # an event moved a month out leaves the window: deleted, once
    graph.put(ROOMS[0], graph_event("e1", day_at(30, 9), day_at(30, 10), "Standup"))
    await eventually(lambda: of_room(receiver.events, "room-a", "booking.deleted"), timeout=20)
    # the same round's snapshot follows the deletion on the room's stream
    for room in ("room-a", "room-b"):
        await eventually(
            lambda room=room: (
                of_room(receiver.events, room, "bookings.snapshot")[-1]["data"]["bookings"] == []
            ),
            f"{room}'s empty snapshot",
            timeout=20,
        )
    n_events = len(receiver.events)
    # order per room: created before moved before deleted
    b_types = [e["type"] for e in receiver.events if e["data"]["room_id"] == "room-b"]
    assert b_types.index("booking.created") < b_types.index("booking.moved")
    assert b_types.index("booking.moved") < b_types.index("booking.deleted")
    assert receiver.bad_signatures == 0
    # quiet rounds report nothing more
    rounds = len(graph.delta_requests("room-a@contoso.com"))
    await eventually(
        lambda: len(graph.delta_requests("room-a@contoso.com")) >= rounds + 2, timeout=20
    )
    assert len(receiver.events) == n_events
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_resync_on_410_and_429_honoured(graph, receiver, ca_file, tmp_path, spawn):
    mbox = "room-a@contoso.com"
    graph.rooms = [place(mbox)]
    graph.put(mbox, graph_event("e1", day_at(1, 9), day_at(1, 10)))
    await spawn(rooms_config(tmp_path, graph, receiver, ca_file))
    await eventually(lambda: of_room(receiver.events, "room-a", "bookings.snapshot"), timeout=30)

    # Graph loses the round: 410 SyncStateNotFound -> a full listing that sweeps what is gone
    graph.script(
        "deltatoken",
        Reply(410, {"error": {"code": "SyncStateNotFound", "message": "gone"}}),
    )
    graph.version += 1  # e1 vanishes without a trace in the change log: only a sweep sees it
    graph.events[mbox].pop("e1")
    graph.put(mbox, graph_event("e3", day_at(3, 9), day_at(3, 10)))
    await eventually(
        lambda: (
            of_room(receiver.events, "room-a", "booking.deleted")
            and of_room(receiver.events, "room-a", "booking.created")
        ),
        "e1 swept and e3 created after the 410",
        timeout=30,
    )
    full = [s for s in graph.delta_requests(mbox) if "startDateTime" in s.query]
    assert len(full) >= 2  # the start and the resync
    assert created_ids(receiver.events, "room-a") == Counter({"e3": 1})  # e1: in the first snapshot

    # 429 with Retry-After: 2 -> the mailbox waits at least that long before the next call
    graph.script("deltatoken", Reply(429, {"error": {"code": "TooManyRequests"}}, "2"))
    seen = len(graph.arrived)
    graph.put(mbox, graph_event("e4", day_at(4, 9), day_at(4, 10)))
    await eventually(lambda: created_ids(receiver.events, "room-a")["e4"] == 1, timeout=30)
    calls = [t for t, s in graph.arrived[seen:] if f"/users/{mbox}/calendarView/delta" in s.path]
    throttled_at, after = calls[0], calls[1]
    assert after - throttled_at >= 2.0
    assert max(graph.max_in_flight.values()) <= 4


async def test_kill9_resumes_from_stored_delta_link(graph, receiver, ca_file, tmp_path, spawn):
    mbox = "room-a@contoso.com"
    graph.rooms = [place(mbox)]
    graph.put(mbox, graph_event("e1", day_at(1, 9), day_at(1, 10)))
    cfg = rooms_config(tmp_path, graph, receiver, ca_file)
    proc = await spawn(cfg)
    await eventually(lambda: of_room(receiver.events, "room-a", "bookings.snapshot"), timeout=30)
    graph.put(mbox, graph_event("e2", day_at(2, 9), day_at(2, 10)))
    await eventually(lambda: created_ids(receiver.events, "room-a")["e2"] == 1, timeout=20)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # changes while the agent is dead
    graph.put(mbox, graph_event("e3", day_at(3, 9), day_at(3, 10)))
    graph.delete(mbox, "e2")
    before = len(graph.delta_requests(mbox))
    await spawn(cfg)
    await eventually(lambda: created_ids(receiver.events, "room-a")["e3"] == 1, timeout=30)
    await eventually(lambda: of_room(receiver.events, "room-a", "booking.deleted"), timeout=20)
    resumed = graph.delta_requests(mbox)[before]
    assert "$deltatoken" in resumed.query, "the restart resumed from the stored delta link"
    assert created_ids(receiver.events, "room-a") == Counter({"e2": 1, "e3": 1})  # each once
    deleted = [
        e["data"]["booking"]["id"] for e in of_room(receiver.events, "room-a", "booking.deleted")
    ]
    assert deleted == ["e2"]


async def test_secret_and_tokens_not_in_debug_logs(graph, receiver, ca_file, tmp_path, spawn):
    mbox = "room-a@contoso.com"
    graph.rooms = [place(mbox)]
    proc = await spawn(
        rooms_config(tmp_path, graph, receiver, ca_file), EDGE_AGENT_LOG_LEVEL="debug"
    )
    await eventually(lambda: of_room(receiver.events, "room-a", "bookings.snapshot"), timeout=30)
    graph.revoke_tokens()  # a 401 renews the token: a second one exists
    await eventually(lambda: graph.issued >= 2, timeout=20)
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)
    text = logs(tmp_path)
    assert "graph" in text.lower()  # the debug log has something to say about Graph
    assert CLIENT_SECRET not in text
    for n in range(1, graph.issued + 1):
        assert f"tok-{n}" not in text


async def test_rooms_api_and_status(graph, receiver, ca_file, tmp_path, spawn):
    mbox = "room-a@contoso.com"
    graph.rooms = [place(mbox)]
    graph.put(mbox, graph_event("e1", day_at(1, 9), day_at(1, 10)))
    port_file = tmp_path / "port"
    cfg = rooms_config(tmp_path, graph, receiver, ca_file)
    text = cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{_free_port()}"')
    cfg.write_text(text)
    del port_file
    await spawn(cfg)
    await eventually(lambda: of_room(receiver.events, "room-a", "bookings.snapshot"), timeout=30)
    import httpx

    from edge_agent.config import load_config

    url = f"http://{load_config(cfg).api.listen}"
    async with httpx.AsyncClient(base_url=url) as http:

        async def synced() -> dict[str, Any] | None:
            rooms = (await http.get("/v1/rooms")).json()["rooms"]
            return next((r for r in rooms if r["id"] == "room-a" and r["last_sync"]), None)

        room = None
        for _ in range(200):
            room = await synced()
            if room:
                break
            await asyncio.sleep(0.05)
        assert room is not None
        assert room["source"] == "microsoft" and room["calendar"] == mbox
        assert room["window_size"] == 1 and room["last_error"] is None
        got = (await http.get("/v1/rooms/room-a/bookings")).json()
        assert [b["id"] for b in got["bookings"]] == ["e1"]
        assert (await http.get("/v1/rooms/nope/bookings")).status_code == 404
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent",
        "status",
        "-c",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert b"room-a" in out and b"microsoft" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sighup_says_room_changes_need_a_restart(graph, receiver, ca_file, tmp_path, spawn):
    graph.rooms = [place("room-a@contoso.com")]
    cfg = rooms_config(tmp_path, graph, receiver, ca_file)
    proc = await spawn(cfg)
    await eventually(lambda: of_room(receiver.events, "room-a", "bookings.snapshot"), timeout=30)
    cfg.write_text(cfg.read_text() + '\n[[rooms]]\nid = "extra"\ncalendar = "extra@contoso.com"\n')
    proc.send_signal(signal.SIGHUP)
    await eventually(lambda: "need a restart" in logs(tmp_path), timeout=20)
    assert proc.returncode is None  # still running, with the rooms it had
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
