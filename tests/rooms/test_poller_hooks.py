# ruff: noqa: F811 - the fixtures are imported from tests/calendars
"""The poller hooks the agent uses: reserved ids (devices), the running-room callback (push),
the per-room interval (push stretches it)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from edge_agent.calendars.graph.client import GraphClient
from edge_agent.calendars.poller import CalendarRoom
from tests.calendars.conftest import ca, ca_file, fake, http  # noqa: F401 - fixtures
from tests.calendars.graphfake import FakeGraph
from tests.calendars.support import MemoryStore, PinnedClock
from tests.calendars.test_graph_poller import (  # noqa: F401 - fixtures
    client,
    clock,
    directory,
    make_poller,
    start,
    stop,
    store,
)


@pytest.mark.usefixtures("directory")
async def test_reserved_ids_interval_and_room_callback(
    fake: FakeGraph,
    client: GraphClient,
    store: MemoryStore,
    clock: PinnedClock,
) -> None:
    told: list[set[str]] = []
    asked: list[str] = []

    def on_rooms(rooms: Mapping[str, CalendarRoom]) -> None:
        told.append(set(rooms))

    def interval_for(room_id: str, base: float) -> float:
        asked.append(room_id)
        return base

    # room-b is a device's id (a device without a calendar): the directory cannot take it
    poller = make_poller(
        client, store, clock, reserved_ids=["room-b"], on_rooms=on_rooms, interval_for=interval_for
    )
    task = await start(poller)
    try:
        await store.wait_for(lambda: {"room-a", "room-c"} <= set(store.states))
        await store.wait_for(lambda: "room-a" in asked and "room-c" in asked)
        assert "room-b" not in store.states and "room-b" not in poller.status()
        assert told[-1] == {"room-a", "room-c"}
        assert "room-b" not in asked
    finally:
        await stop(task)
