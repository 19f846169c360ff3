"""RoomCalendarStore on both stores (SQLite, PostgreSQL): the sync row, the window rows and the
round's events in one commit, read back after a restart; forgetting a room."""

from __future__ import annotations

import pytest

from edge_agent.calendars.poller import RoomUpdate
from edge_agent.calendars.sync import BookingChange, SyncState
from edge_agent.store import Change
from edge_agent.store.calendar import RoomCalendarStore, calendar_window_owner
from tests.rooms.test_units import BOUNDS, NOW, booking
from tests.store.backends import Backend
from tests.store.outbox import drain_all


async def test_a_round_commits_link_window_and_events_together(backend: Backend) -> None:
    store = await backend.open()
    cal = RoomCalendarStore(store, site="hq", source="google")
    assert await cal.load_sync_state("atrium") is None
    a, b = booking("a"), booking("b", 11)
    state = SyncState(BOUNDS, "sync-token-1", {"b": b, "a": a})
    changes = (BookingChange("booking.created", b),)
    update = RoomUpdate("atrium", "google", changes, (a, b), BOUNDS, NOW)
    await cal.save_sync_state("atrium", state, update)
    # another source's room of the same id is apart
    other = RoomCalendarStore(store, site="hq", source="microsoft")
    assert await other.load_sync_state("atrium") is None
    await store.close()

    store = await backend.open()  # a restart: what was committed is there
    cal = RoomCalendarStore(store, site="hq", source="google")
    got = await cal.load_sync_state("atrium")
    assert got is not None and got.window == BOUNDS and got.delta_link == "sync-token-1"
    assert list(got.bookings) == ["a", "b"] and got.bookings["b"] == b
    assert await store.load_window("atrium") == {}  # apart from a device of the same id
    assert set(await store.load_window(calendar_window_owner("atrium", "google"))) == {"a", "b"}
    assert (await cal.rooms()) == {
        "atrium": {"window": BOUNDS.to_dict(), "delta_link": "sync-token-1"}
    }
    events = await drain_all(store)  # type: ignore[arg-type]
    assert [(e.device_id, e.type) for e in events] == [
        ("atrium", "booking.created"),
        ("atrium", "bookings.snapshot"),
    ]
    assert events[0].envelope["data"]["source"] == "google"
    # a refused round stores nothing of itself: the link stays where it was
    with pytest.raises(ValueError):
        await store.commit(Change("atrium", events=[{"type": "booking.created", "data": {}}]))
    got = await cal.load_sync_state("atrium")
    assert got is not None and got.delta_link == "sync-token-1"
    # forgetting the room: row and window gone
    await cal.save_sync_state("atrium", SyncState(), None)
    assert await cal.load_sync_state("atrium") is None
    assert await store.load_window(calendar_window_owner("atrium", "google")) == {}
    assert await cal.rooms() == {}
