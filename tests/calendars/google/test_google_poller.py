"""GooglePoller end to end on loopback: the HTTPS fake, google-auth, httpx, the shared poller
and an in-memory store, on a pinned clock."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from edge_agent.backoff import Backoff
from edge_agent.calendars.google.auth import ServiceAccountTokens
from edge_agent.calendars.google.client import GoogleClient
from edge_agent.calendars.google.poller import GooglePoller
from edge_agent.calendars.poller import CalendarRoom
from tests.calendars.google.conftest import ADMIN, KeyPair
from tests.calendars.google.googlefake import FakeGoogle, Reply, google_event, rate_limited
from tests.calendars.support import MemoryStore, PinnedClock

OSLO = ZoneInfo("Europe/Oslo")
T0 = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # 09:30 in Oslo
A = "c_1888a1@resource.calendar.google.com"
B = "c_1888b2@resource.calendar.google.com"
C = "c_1888c3@resource.calendar.google.com"
RA, RB, RC = "c-1888a1", "c-1888b2", "c-1888c3"


def ev(eid: str, start: str, end: str, **kw: Any) -> dict[str, Any]:
    return google_event(eid, f"2026-11-{start}+01:00", f"2026-11-{end}+01:00", **kw)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock(T0)


@pytest.fixture
def client(
    gfake: FakeGoogle, http: httpx.AsyncClient, key_file: Path, ca_file: str
) -> GoogleClient:
    tokens = ServiceAccountTokens(
        service_account_file=str(key_file), subject=ADMIN, ca_file=ca_file
    )
    return GoogleClient(
        http,
        tokens,
        subject=ADMIN,
        directory_url=gfake.base,
        calendar_url=gfake.calendar_url,
        max_results=2,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )


def make_poller(
    client: GoogleClient, store: MemoryStore, clock: PinnedClock, **kw: Any
) -> GooglePoller:
    args: dict[str, Any] = {
        "default_zone": OSLO,
        "poll_interval_s": 0.05,
        "refresh_rooms_s": 3600.0,
        "horizon_days": 7,
        "error_backoff": Backoff(initial=0.05, maximum=0.2),
        "clock": clock,
        "rng": random.Random(7),
    }
    args.update(kw)
    return GooglePoller(client, store, **args)


@pytest.fixture
def directory(gfake: FakeGoogle) -> None:
    gfake.rooms = [
        {"resourceId": f"r{i}", "resourceName": f"Room {i}", "resourceEmail": m}
        for i, m in enumerate((A, B, C))
    ]
    gfake.rooms_page = 2
    gfake.put(A, ev("a1", "23T09:00:00", "23T10:00:00"))
    gfake.put(A, ev("a2", "24T09:00:00", "24T10:00:00"))
    gfake.put(A, ev("a3", "25T09:00:00", "25T10:00:00"))
    gfake.put(B, ev("b1", "23T12:00:00", "23T13:00:00"))
    gfake.events.setdefault(C, {})


async def run_until(poller: GooglePoller) -> asyncio.Task[None]:
    return asyncio.create_task(poller.run(), name="google-poller")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


@pytest.mark.usefixtures("directory")
async def test_discovery_full_sync_then_incremental(
    gfake: FakeGoogle, client: GoogleClient, store: MemoryStore, clock: PinnedClock
) -> None:
    task = await run_until(make_poller(client, store, clock))
    try:
        await store.wait_for(lambda: {RA, RB, RC} <= set(store.states))
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"google-rooms", f"google[{RA}]"} <= names
        # The first round of a room is its snapshot alone, as a device's first list.
        assert store.changes(RA) == [] and store.snapshots(RA) == [["a1", "a2", "a3"]]
        assert store.snapshots(RB) == [["b1"]] and store.snapshots(RC) == [[]]
        first = next(u for u in store.updates if u.room_id == RA)
        assert first.source == "google" and first.window is not None
        assert first.window.start == datetime(2026, 11, 22, 23, tzinfo=UTC)
        assert len([s for s in gfake.of(f"/{A}/events") if "syncToken" not in s.query]) == 2

        gfake.put(A, ev("a1", "23T11:00:00", "23T12:00:00"))  # moved
        gfake.cancel(A, "a2")  # status: cancelled
        gfake.put(A, ev("a4", "23T14:00:00", "23T15:00:00"))  # new
        gfake.put(A, ev("far", "30T09:00:00", "30T10:00:00"))  # outside the window: ignored
        gfake.put(A, ev("a3", "30T12:00:00", "30T13:00:00"))  # moved out of the window
        await store.wait_for(lambda: len(store.changes(RA)) == 4)
        assert store.changes(RA) == [
            ("booking.created", "a4"),
            ("booking.moved", "a1"),
            ("booking.deleted", "a2"),
            ("booking.deleted", "a3"),
        ]
        assert list(store.states[RA].bookings) == ["a1", "a4"]
        for s in gfake.of(f"/{A}/events"):
            if "syncToken" in s.query:
                assert "timeMin" not in s.query and "timeMax" not in s.query
                assert s.query["singleEvents"] == "true"
        assert store.changes(RA).count(("booking.deleted", "a2")) == 1
    finally:
        await stop(task)


@pytest.mark.usefixtures("directory")
async def test_410_full_resync_sweeps_what_vanished_without_a_tombstone(
    gfake: FakeGoogle, client: GoogleClient, store: MemoryStore, clock: PinnedClock
) -> None:
    rooms = [CalendarRoom(RA, A, OSLO)]
    task = await run_until(make_poller(client, store, clock, rooms=rooms, discover=False))
    try:
        await store.wait_for(lambda: store.snapshots(RA) == [["a1", "a2", "a3"]])
        gfake.purge(A, "a2")  # gone, and a full listing will not say so
        gfake.put(A, ev("a5", "26T09:00:00", "26T10:00:00"))
        gfake.forget_sync_tokens()  # the next incremental call gets 410 fullSyncRequired
        await store.wait_for(lambda: len(store.changes(RA)) == 2)
        assert store.changes(RA) == [("booking.created", "a5"), ("booking.deleted", "a2")]
        starts = [s for s in gfake.of(f"/{A}/events") if "pageToken" not in s.query]
        gone = [i for i, s in enumerate(starts) if "syncToken" in s.query][-1]
        assert "timeMin" in starts[gone + 1].query  # the 410 was followed by a full listing
        assert list(store.states[RA].bookings) == ["a1", "a3", "a5"]
        assert store.snapshots(RA)[-1] == ["a1", "a3", "a5"]
    finally:
        await stop(task)


@pytest.mark.usefixtures("directory")
async def test_restart_resumes_from_the_stored_sync_token(
    gfake: FakeGoogle, client: GoogleClient, store: MemoryStore, clock: PinnedClock
) -> None:
    rooms = [CalendarRoom(RA, A, OSLO)]
    task = await run_until(make_poller(client, store, clock, rooms=rooms, discover=False))
    await store.wait_for(lambda: store.snapshots(RA) == [["a1", "a2", "a3"]])
    await stop(task)
    token = store.states[RA].delta_link
    assert token is not None and token.startswith("sync-")
    before = len(gfake.requests)
    gfake.cancel(A, "a1")
    task = await run_until(make_poller(client, store, clock, rooms=rooms, discover=False))
    try:
        await store.wait_for(lambda: ("booking.deleted", "a1") in store.changes(RA))
        resumed = next(s for s in gfake.requests[before:] if "/events" in s.path)
        assert resumed.query.get("syncToken") == token and "timeMin" not in resumed.query
        assert store.changes(RA) == [("booking.deleted", "a1")]  # nothing else, nothing twice
    finally:
        await stop(task)


@pytest.mark.usefixtures("directory")
async def test_rate_limited_room_backs_off_and_catches_up(
    gfake: FakeGoogle, client: GoogleClient, store: MemoryStore, clock: PinnedClock
) -> None:
    gfake.script(f"/{A}/events", *[Reply(403, rate_limited())] * 2, Reply(429, rate_limited(429)))
    rooms = [CalendarRoom(RA, A, OSLO)]
    task = await run_until(make_poller(client, store, clock, rooms=rooms, discover=False))
    try:
        await store.wait_for(lambda: store.snapshots(RA) == [["a1", "a2", "a3"]])
        assert len([s for s in gfake.of(f"/{A}/events") if "syncToken" not in s.query]) == 5
    finally:
        await stop(task)


@pytest.mark.usefixtures("directory")
async def test_debug_logs_of_a_full_run_hold_no_part_of_the_key(
    gfake: FakeGoogle,
    client: GoogleClient,
    store: MemoryStore,
    clock: PinnedClock,
    keys: KeyPair,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's debug logging, google-auth's included
    gfake.script(f"/{B}/events", Reply(401, {"error": {"code": 401, "message": "expired"}}))
    task = await run_until(make_poller(client, store, clock))
    try:
        await store.wait_for(lambda: {RA, RB, RC} <= set(store.states))
        gfake.put(A, ev("a9", "27T09:00:00", "27T10:00:00"))
        await store.wait_for(lambda: ("booking.created", "a9") in store.changes(RA))
    finally:
        await stop(task)
    out = capsys.readouterr()
    logs = f"{caplog.text}\n{out.out}\n{out.err}"
    assert "google token acquired" in logs  # the logs were captured at all
    body = [ln for ln in keys.private_pem.splitlines() if not ln.startswith("-----")]
    assert len(body) > 10
    leaked = [ln for ln in body if ln[:24] in logs]
    assert leaked == []
    assert "PRIVATE KEY" not in logs
    assert "ya29.fake" not in logs  # nor a token


@pytest.mark.usefixtures("directory")
async def test_poke_fetches_the_changes_now(
    gfake: FakeGoogle, client: GoogleClient, store: MemoryStore, clock: PinnedClock
) -> None:
    rooms = [CalendarRoom(RA, A, OSLO)]
    poller = make_poller(client, store, clock, rooms=rooms, discover=False, poll_interval_s=3600.0)
    task = await run_until(poller)
    try:
        await poller.rooms_ready.wait()
        assert poller.poke(RA) and not poller.poke("no-such-room")
        await store.wait_for(lambda: store.snapshots(RA) == [["a1", "a2", "a3"]])
        gfake.put(A, ev("a7", "27T09:00:00", "27T10:00:00"))
        assert poller.poke(RA)
        await store.wait_for(lambda: ("booking.created", "a7") in store.changes(RA))
        assert "syncToken" in gfake.of(f"/{A}/events")[-1].query
        assert poller.status()[RA].rounds == 2
    finally:
        await stop(task)
