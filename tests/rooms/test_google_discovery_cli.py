"""Google room discovery through the real CLI: the simulator's 501 resource calendars (the
Directory answers at most 500 a page, so every page is followed), each a room of source
google in ``/v1/rooms`` and ``edge-agent status``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.config import load_config
from tests.e2e.harness import eventually, of_type
from tests.rooms.google_helpers import StampedGoogle, at, free_port, write_config

# 501 rooms: their first full syncs are spread over poll_interval_s (jitter) and paced by the
# agent's own quota (500 requests/min per subject), so they take 1 to 2 minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOMS = 501


@pytest.fixture
async def gsim() -> AsyncIterator[StampedGoogle]:
    g = GoogleSim(GoogleSimConfig(rooms=ROOMS))
    stamped = StampedGoogle(g)
    await g.start()
    yield stamped
    await g.stop()


async def test_google_discovery_across_pages(gsim, receiver, tmp_path: Path, spawn) -> None:
    g = gsim.sim
    ev = g.add_event("room-501@example.com", at(1, 9), 30, "On the second page")
    cfg = write_config(
        tmp_path, g, receiver, google="poll_interval_s = 90", listen=f"127.0.0.1:{free_port()}"
    )
    await spawn(cfg)
    await eventually(
        lambda: (
            len({e["data"]["room_id"] for e in of_type(receiver.events, "bookings.snapshot")})
            >= ROOMS
        ),
        f"a snapshot of each of the {ROOMS} rooms",
        timeout=240,
    )
    pages = gsim.directory()
    assert len(pages) >= 2 and "pageToken" in pages[1], pages
    last = [
        e
        for e in of_type(receiver.events, "bookings.snapshot")
        if e["data"]["room_id"] == "room-501"
    ]
    assert [b["id"] for b in last[0]["data"]["bookings"]] == [ev.id]
    assert last[0]["data"]["source"] == "google"

    url = f"http://{load_config(cfg).api.listen}"
    async with httpx.AsyncClient(base_url=url) as http:

        async def synced() -> list[dict[str, Any]]:
            rooms: list[dict[str, Any]] = (await http.get("/v1/rooms")).json()["rooms"]
            return [r for r in rooms if r["last_sync"]]

        rooms: list[dict[str, Any]] = []
        for _ in range(400):
            rooms = await synced()
            if len(rooms) >= ROOMS:
                break
            await asyncio.sleep(0.05)
        assert len(rooms) == ROOMS
        assert {r["source"] for r in rooms} == {"google"}
        r501 = next(r for r in rooms if r["id"] == "room-501")
        assert r501["calendar"] == "room-501@example.com" and r501["window_size"] == 1
        assert r501["discovered"] is True and r501["last_error"] is None
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
    assert b"room-501" in out and b"google" in out
