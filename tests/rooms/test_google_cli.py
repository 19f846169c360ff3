"""Google rooms through the real CLI (``edge-agent run -c FILE`` in a subprocess) against the
project's Google simulator (``calendar_sim.google``) over HTTPS with its CA: create, move,
cancel, all-day, 410 resync, 429 honoured, kill -9 resume, no key material in debug logs.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from tests.e2e.harness import eventually, of_type
from tests.rooms.google_helpers import StampedGoogle, at, created, of_room, write_config

pytestmark = pytest.mark.slow

MBOX = "room-2@example.com"


@pytest.fixture
async def gsim() -> AsyncIterator[StampedGoogle]:
    g = GoogleSim(GoogleSimConfig(rooms=3))
    stamped = StampedGoogle(g)
    await g.start()
    yield stamped
    await g.stop()


async def test_google_changes_resync_throttle_kill9(gsim, receiver, tmp_path: Path, spawn):
    g = gsim.sim
    first = g.add_event(MBOX, at(1, 9), 60, "Planning")
    cfg = write_config(tmp_path, g, receiver)
    proc = await spawn(cfg, EDGE_AGENT_LOG_LEVEL="debug")

    await eventually(
        lambda: (
            len({e["data"]["room_id"] for e in of_type(receiver.events, "bookings.snapshot")}) >= 3
        ),
        "a snapshot of each of the 3 rooms",
        timeout=60,
    )
    snap = of_room(receiver.events, "room-2", "bookings.snapshot")[0]
    assert snap["data"]["source"] == "google" and "device_id" not in snap["data"]
    assert [b["id"] for b in snap["data"]["bookings"]] == [first.id]
    assert snap["data"]["bookings"][0]["title"] == "Planning"
    full = gsim.events(MBOX)[0][1]
    assert full["singleEvents"] == "true" and "timeMin" in full and "timeMax" in full

    # create, move, cancel
    ev = g.add_event(MBOX, at(2, 13), 30, "Review")
    await eventually(lambda: created(receiver.events, "room-2")[ev.id] == 1, timeout=20)
    g.move_event(MBOX, ev.id, at(2, 15))
    await eventually(lambda: of_room(receiver.events, "room-2", "booking.moved"), timeout=20)
    g.cancel_event(MBOX, ev.id)
    await eventually(lambda: of_room(receiver.events, "room-2", "booking.deleted"), timeout=20)
    incremental = [q for _, q in gsim.events(MBOX) if "syncToken" in q]
    assert incremental and all("timeMin" not in q and "timeMax" not in q for q in incremental)

    # an all-day event: the whole local (UTC) day
    day = at(3, 0).date()
    allday = g.add_all_day(MBOX, day, 1, "Offsite")
    await eventually(lambda: created(receiver.events, "room-2")[allday.id] == 1, timeout=20)
    made = next(
        e
        for e in of_room(receiver.events, "room-2", "booking.created")
        if e["data"]["booking"]["id"] == allday.id
    )
    booking = made["data"]["booking"]
    assert booking["start"].startswith(at(3, 0).strftime("%Y-%m-%dT00:00:00"))
    assert booking["end"].startswith(at(4, 0).strftime("%Y-%m-%dT00:00:00"))

    # 410: the simulator forgets the sync tokens; the agent lists in full and sweeps what was
    # removed meanwhile (a full listing returns no tombstones)
    gone = g.add_event(MBOX, at(4, 9), 30, "Gone soon")
    await eventually(lambda: created(receiver.events, "room-2")[gone.id] == 1, timeout=20)
    seen = len(gsim.events(MBOX))
    g.expire_sync_tokens(MBOX)
    g.calendars[MBOX].events.pop(gone.id)  # deleted outright: no tombstone left
    fresh = g.add_event(MBOX, at(4, 11), 30, "After the reset")
    await eventually(lambda: created(receiver.events, "room-2")[fresh.id] == 1, timeout=30)
    await eventually(
        lambda: (
            gone.id
            in [
                e["data"]["booking"]["id"]
                for e in of_room(receiver.events, "room-2", "booking.deleted")
            ]
        ),
        timeout=20,
    )
    assert any("timeMin" in q for _, q in gsim.events(MBOX)[seen:])  # a second full listing

    # 429 with Retry-After 2: the calendar waits before its next call
    seen = len(gsim.events(MBOX))
    g.fault("throttle", MBOX, retry_after=2.0, count=1)
    later = g.add_event(MBOX, at(5, 9), 30, "After the throttle")
    await eventually(lambda: created(receiver.events, "room-2")[later.id] == 1, timeout=30)
    calls = [t for t, _ in gsim.events(MBOX)[seen:]]
    assert len(calls) >= 2 and calls[1] - calls[0] >= 2.0

    # kill -9, a change meanwhile, restart: resumed from the stored sync token, nothing twice
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    while_dead = g.add_event(MBOX, at(6, 9), 30, "While dead")
    before = len(gsim.events(MBOX))
    await spawn(cfg)
    await eventually(lambda: created(receiver.events, "room-2")[while_dead.id] == 1, timeout=30)
    assert "syncToken" in gsim.events(MBOX)[before][1]  # no full listing after the restart
    counts = created(receiver.events, "room-2")
    assert set(counts.values()) == {1}, counts
    assert receiver.bad_signatures == 0

    # no key material (nor an access token) in the debug log
    text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("agent-*.log"))
    assert "google" in text.lower()
    pem = g.key_file()["private_key"]
    assert "PRIVATE KEY" not in text
    for line in pem.splitlines()[1:-1]:
        assert line not in text
    assert "ya29." not in text and "eyJ" not in text
