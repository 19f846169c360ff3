"""The calendar poller in a fleet: every room discovered on every member, only the owned ones
run; start_room / stop_room follow the member's leases, a stopped room keeps its state and the
next owner resumes from its delta link (HTTPS fake, the MemoryStore standing for the store)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from edge_agent.calendars.graph.client import GraphClient
from edge_agent.calendars.poller import CalendarRoom
from tests.calendars.graphfake import FakeGraph
from tests.calendars.support import MemoryStore, PinnedClock
from tests.calendars.test_graph_poller import (  # noqa: F401 - fixtures
    A,
    B,
    client,
    clock,
    directory,
    ev,
    make_poller,
    start,
    stop,
    store,
)


def deltas(fake: FakeGraph, mailbox: str) -> list[Any]:
    want = f"/users/{mailbox}/calendarview/delta".lower()
    return [s for s in fake.requests if want in s.path.lower()]


@pytest.mark.usefixtures("directory")
async def test_only_owned_rooms_run_and_the_directory_is_told_every_room(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    seen: list[Mapping[str, CalendarRoom]] = []
    running: list[set[str]] = []
    poller = make_poller(
        client,
        store,
        clock,
        owned={"room-a"},
        on_directory=seen.append,
        on_rooms=lambda rooms: running.append(set(rooms)),
    )
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        assert set(seen[-1]) == {"room-a", "room-b", "room-c"}  # owned or not
        assert set(poller.status()) == {"room-a"}
        assert running[-1] == {"room-a"}  # push subscribes only what this member runs
        assert deltas(fake, B) == [] and "room-b" not in store.states
        assert poller.poke("room-b") is False  # a notification for another member's room

        poller.start_room("room-b")  # the member took room-b's lease
        await store.wait_for(lambda: "room-b" in store.states)
        assert set(poller.status()) == {"room-a", "room-b"}
        assert running[-1] == {"room-a", "room-b"}
    finally:
        await stop(task)


@pytest.mark.usefixtures("directory")
async def test_a_room_stopped_on_lease_loss_keeps_its_state_and_the_next_owner_resumes(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    first = make_poller(client, store, clock, owned={"room-a"})
    task = await start(first)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        snapshots = len(store.snapshots("room-a"))
        await first.stop_room("room-a")  # lost the lease
        assert "room-a" not in first.status()
        # No empty snapshot, no forgetting: the room did not leave the directory.
        assert "room-a" in store.states and len(store.snapshots("room-a")) == snapshots
        link = store.states["room-a"].delta_link
        assert link is not None
        polled = len(deltas(fake, A))
        fake.put(A, ev("a9", "25T09:00:00", "25T10:00:00"))
        first.start_room("room-c")
        await store.wait_for(lambda: "room-c" in store.states)
        assert polled and len(deltas(fake, A)) == polled  # stopped means stopped
    finally:
        await stop(task)

    # The next owner (another member's poller on the same store) resumes from the link: the
    # change made meanwhile is reported once, nothing before it again.
    second = make_poller(client, store, clock, owned={"room-a"})
    task = await start(second)
    try:
        await store.wait_for(lambda: ("booking.created", "a9") in store.changes("room-a"))
        resumed = deltas(fake, A)[polled]
        assert "startDateTime" not in resumed.query  # from the delta link, not a full listing
    finally:
        await stop(task)
    # a1 was there before the room's first sync: in its snapshot, never a change
    assert ("booking.created", "a1") not in store.changes("room-a")
    assert store.changes("room-a").count(("booking.created", "a9")) == 1


async def test_alone_start_and_stop_room_do_nothing(
    fake: FakeGraph, client: GraphClient, store: MemoryStore, clock: PinnedClock
) -> None:
    fake.rooms = [{"id": "pa", "displayName": "Room A", "emailAddress": A}]
    poller = make_poller(client, store, clock)
    task = await start(poller)
    try:
        await store.wait_for(lambda: "room-a" in store.states)
        await poller.stop_room("room-a")
        assert set(poller.status()) == {"room-a"}
    finally:
        await stop(task)
