"""GraphPoller end to end on loopback: the HTTPS fake, msal, httpx, and an in-memory store
implementing the CalendarStore Protocol the way the agent's store must (one call, one commit)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from edge_agent.backoff import Backoff
from edge_agent.calendars.graph.auth import ClientCredentials
from edge_agent.calendars.graph.client import GraphClient
from edge_agent.calendars.graph.poller import (
    CalendarRoom,
    GraphPoller,
    first_poll_delay,
    next_poll_delay,
)
from tests.calendars.graphfake import FakeGraph, Reply, graph_event
from tests.calendars.support import MemoryStore, PinnedClock

OSLO = ZoneInfo("Europe/Oslo")
T0 = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # 09:30 in Oslo
A, B = "Room-A@contoso.com", "Room-B@contoso.com"


def ev(eid: str, start: str, end: str, **kw: Any) -> dict[str, Any]:
    return graph_event(eid, "2026-11-" + start, "2026-11-" + end, **kw)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock(T0)


@pytest.fixture
def client(fake: FakeGraph, http: httpx.AsyncClient, ca_file: str) -> GraphClient:
    tokens = ClientCredentials(
        tenant_id=fake.tenant,
        client_id="app-1",
        secret="s3cret",
        authority_url=fake.authority_url,
        ca_file=ca_file,
    )
    return GraphClient(http, tokens, graph_url=fake.graph_url, max_page_size=2)


def make_poller(
    client: GraphClient, store: MemoryStore, clock: PinnedClock, **kw: object
) -> GraphPoller:
    args: dict[str, object] = {
        "default_zone": OSLO,
        "poll_interval_s": 0.05,
        "refresh_rooms_s": 3600.0,
        "horizon_days": 7,
        "error_backoff": Backoff(initial=0.05, maximum=0.2),
        "clock": clock,
        "rng": random.Random(7),
    }
    args.update(kw)
    return GraphPoller(client, store, **args)


@pytest.fixture
def directory(fake: FakeGraph) -> None:
    fake.rooms = [
        {"id": "pa", "displayName": "Room A", "emailAddress": A},
        {"id": "pb", "displayName": "Room B", "emailAddress": B},
        {"id": "pc", "displayName": "Room C", "emailAddress": "room.c@contoso.com"},
    ]
    fake.rooms_page = 2
    fake.put(A, ev("a1", "23T09:00:00", "23T10:00:00"))
    fake.put(A, ev("a2", "24T09:00:00", "24T10:00:00"))
    fake.put(B, ev("b1", "23T12:00:00", "23T13:00:00"))


async def start(poller: GraphPoller) -> asyncio.Task[None]:
    return asyncio.create_task(poller.run(), name="graph-poller")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


# --------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("directory")
async def test_discovery_full_sync_then_deltas(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    task = await start(make_poller(client, store, clock))
    try:
        await store.wait_for(lambda: {"room-a", "room-b", "room-c"} <= set(store.states))
        # The first round of a room is its snapshot alone, as a device's first list.
        assert store.changes("room-a") == [] and store.snapshots("room-a") == [["a1", "a2"]]
        assert store.snapshots("room-b") == [["b1"]] and store.snapshots("room-c") == [[]]
        first = next(u for u in store.updates if u.room_id == "room-a")
        assert first.source == "microsoft" and first.window is not None
        assert first.window.start == datetime(2026, 11, 22, 23, tzinfo=UTC)

        fake.put(A, ev("a1", "23T11:00:00", "23T12:00:00"))  # moved
        fake.delete(A, "a2")  # @removed
        fake.put(A, ev("a3", "23T14:00:00", "23T15:00:00"))
        fake.put(B, ev("b1", "30T12:00:00", "30T13:00:00"))  # left the window
        await store.wait_for(lambda: len(store.changes("room-a")) == 3)
        await store.wait_for(lambda: len(store.changes("room-b")) == 1)
        assert store.changes("room-a") == [
            ("booking.created", "a3"),
            ("booking.moved", "a1"),
            ("booking.deleted", "a2"),
        ]
        assert store.changes("room-b") == [("booking.deleted", "b1")]
        assert set(store.states["room-a"].bookings) == {"a1", "a3"}
    finally:
        await stop(task)
    # Quiet polls: nothing reported twice.
    assert len(store.changes("room-a")) == 3


@pytest.mark.usefixtures("directory")
async def test_restart_resumes_from_the_stored_delta_link(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    task = await start(
        make_poller(client, store, clock, discover=False, rooms=[CalendarRoom("room-a", A, OSLO)])
    )
    await store.wait_for(lambda: "room-a" in store.states)
    await stop(task)  # as good as kill -9 for the poller: the store has what it committed
    link = store.states["room-a"].delta_link
    assert link is not None and "$deltatoken" in link
    fake.put(A, ev("a4", "25T09:00:00", "25T10:00:00"))
    seen = len(fake.requests)
    task = await start(
        make_poller(client, store, clock, discover=False, rooms=[CalendarRoom("room-a", A, OSLO)])
    )
    try:
        await store.wait_for(lambda: ("booking.created", "a4") in store.changes("room-a"))
    finally:
        await stop(task)
    first_after = next(s for s in fake.requests[seen:] if "calendarView" in s.path)
    assert "$deltatoken" in first_after.query
    assert store.changes("room-a") == [("booking.created", "a4")]  # a1, a2 not again


@pytest.mark.usefixtures("directory")
async def test_410_resync_sweeps_what_was_deleted_meanwhile(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    task = await start(
        make_poller(client, store, clock, discover=False, rooms=[CalendarRoom("room-a", A, OSLO)])
    )
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        # The change log is lost with the round: only a full listing can tell a2 is gone.
        fake.events[A.lower()].pop("a2")
        fake.script("deltatoken", Reply(410, {"error": {"code": "SyncStateNotFound"}}))
        await store.wait_for(lambda: ("booking.deleted", "a2") in store.changes("room-a"))
    finally:
        await stop(task)
    assert store.changes("room-a") == [("booking.deleted", "a2")]  # a1 not created again
    assert set(store.states["room-a"].bookings) == {"a1"}


@pytest.mark.usefixtures("directory")
async def test_room_leaving_directory_reports_empty_window_once(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    poller = make_poller(client, store, clock, refresh_rooms_s=0.1)
    task = await start(poller)
    try:
        await store.wait_for(lambda: {"room-a", "room-b", "room-c"} <= set(store.states))
        fake.rooms = [r for r in fake.rooms if r["emailAddress"] != B]
        await store.wait_for(lambda: "room-b" not in store.states)
        assert store.snapshots("room-b")[-1] == []
        assert "room-b" not in poller.status()
        n = len(store.snapshots("room-b"))
        await store.wait_for(lambda: len(fake.of("/places/")) >= 8)  # more refreshes
        assert len(store.snapshots("room-b")) == n
    finally:
        await stop(task)


async def test_midnight_roll_lists_the_new_range(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    fake.put(A, ev("mon", "23T09:00:00", "23T10:00:00"))
    fake.put(A, ev("tue", "24T09:00:00", "24T10:00:00"))
    fake.put(A, ev("next-mon", "30T09:00:00", "30T10:00:00"))
    poller = make_poller(
        client, store, clock, discover=False, rooms=[CalendarRoom("room-a", A, OSLO)]
    )
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        assert store.changes("room-a") == [] and store.snapshots("room-a") == [["mon", "tue"]]
        clock.t = datetime(2026, 11, 23, 23, 0, 1, tzinfo=UTC)  # Tuesday 00:00:01 in Oslo
        poller.poke("room-a")
        await store.wait_for(lambda: ("booking.created", "next-mon") in store.changes("room-a"))
    finally:
        await stop(task)
    # Monday's meeting aged out silently; nothing deleted, nothing twice.
    assert store.changes("room-a") == [("booking.created", "next-mon")]
    assert store.snapshots("room-a")[-1] == ["tue", "next-mon"]
    assert set(store.states["room-a"].bookings) == {"tue", "next-mon"}
    starts = {
        s.query["startDateTime"]
        for s in fake.of("/calendarView/delta")
        if "startDateTime" in s.query
    }
    assert starts == {"2026-11-22T23:00:00.000Z", "2026-11-23T23:00:00.000Z"}


@pytest.mark.usefixtures("directory")
async def test_a_refused_room_does_not_stop_the_others(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    fake.script("Room-A", *[Reply(403, {"error": {"code": "ErrorAccessDenied"}})] * 3)
    poller = make_poller(
        client,
        store,
        clock,
        discover=False,
        rooms=[CalendarRoom("room-a", A, OSLO), CalendarRoom("room-b", B, OSLO)],
    )
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-b" in store.states)
        await store.wait_for(lambda: "room-a" in store.states)  # after the 403s, it recovers
    finally:
        await stop(task)
    assert store.snapshots("room-b") == [["b1"]]
    assert store.snapshots("room-a") == [["a1", "a2"]]  # once, after the 403s
    assert poller.status()["room-a"].last_error is None  # cleared by the good round


def test_first_rounds_are_spread_over_the_interval() -> None:
    # 2,000 rooms at 60 s: their first rounds fall across the minute, not in one second.
    rng = random.Random(1)
    phases = [first_poll_delay(60.0, rng) for _ in range(2000)]
    per_second = [sum(1 for p in phases if s <= p < s + 1) for s in range(60)]
    assert all(0 <= p < 60 for p in phases)
    assert max(per_second) < 60 and min(per_second) > 10


def test_next_poll_is_jittered_and_stops_at_local_midnight() -> None:
    rng = random.Random(2)
    delays = [next_poll_delay(T0, 60.0, OSLO, rng) for _ in range(200)]
    assert all(54.0 <= d <= 66.0 for d in delays) and len(set(delays)) > 100
    just_before = datetime(2026, 11, 23, 22, 59, 30, tzinfo=UTC)  # 23:59:30 in Oslo
    assert next_poll_delay(just_before, 60.0, OSLO, rng) == pytest.approx(30.001)


@pytest.mark.usefixtures("directory")
async def test_a_failed_commit_loses_nothing_and_reports_nothing_twice(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    store.fail_saves = 2
    rooms = [CalendarRoom("room-a", A, OSLO)]
    poller = make_poller(client, store, clock, discover=False, rooms=rooms)
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        fake.put(A, ev("a5", "26T09:00:00", "26T10:00:00"))
        await store.wait_for(lambda: ("booking.created", "a5") in store.changes("room-a"))
    finally:
        await stop(task)
    assert store.failed == 2
    assert store.changes("room-a") == [("booking.created", "a5")]
    assert store.snapshots("room-a") == [["a1", "a2"], ["a1", "a2", "a5"]]  # each round once


@pytest.mark.usefixtures("directory")
async def test_a_room_whose_mailbox_changes_is_listed_in_full(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    fake.rooms = [{"id": "pa", "displayName": "Room A", "emailAddress": A}]
    poller = make_poller(client, store, clock, refresh_rooms_s=0.05)
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        # The directory now names the room by another address with the same local part.
        fake.rooms = [{"id": "pa", "displayName": "Room A", "emailAddress": "room-a@fabrikam.com"}]
        fake.put("room-a@fabrikam.com", ev("f1", "23T09:00:00", "23T10:00:00"))
        await store.wait_for(lambda: ("booking.created", "f1") in store.changes("room-a"))
    finally:
        await stop(task)
    assert ("booking.deleted", "a1") in store.changes("room-a")
    fab = [s for s in fake.of("/calendarView/delta") if "fabrikam" in s.path]
    assert "startDateTime" in fab[0].query  # a full listing, not the old mailbox's link
