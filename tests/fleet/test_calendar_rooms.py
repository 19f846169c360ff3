"""Calendar rooms in a fleet, on a real PostgreSQL: the sync state in the database, each room
held by one member (calendar-only rooms under ``room:<id>``, linked rooms with their device),
and a calendar round committed only behind the room's current lease."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge_agent.calendars.poller import RoomUpdate
from edge_agent.calendars.sync import BookingChange, SyncState
from edge_agent.fleet import FleetMember, assign
from edge_agent.fleet.keys import room_key, room_of
from edge_agent.store.calendar import RoomCalendarStore, calendar_window_owner
from edge_agent.store.postgres import PostgresStore, StaleLease
from tests import pg
from tests.fleet.test_member import LEASE_S, until
from tests.rooms.test_units import BOUNDS, NOW, booking
from tests.store.outbox import drain_all

DEVICES = ["room-4a", "room-4b"]  # room-4a is linked to a calendar: one lease for both
ROOMS = [f"cal-{i}" for i in range(8)]  # calendar-only rooms


class Running:
    """What the agent would run per member: device sessions and polled rooms."""

    def __init__(self) -> None:
        self.sessions: dict[str, set[str]] = {}
        self.rooms: dict[str, set[str]] = {}

    def member_kwargs(self, name: str) -> dict[str, Any]:
        sessions = self.sessions.setdefault(name, set())
        rooms = self.rooms.setdefault(name, set())

        async def stop_session(d: str, lost: bool) -> None:
            sessions.discard(d)

        async def stop_room(r: str, lost: bool) -> None:
            rooms.discard(r)

        return {
            "start_session": sessions.add,
            "stop_session": stop_session,
            "start_room": rooms.add,
            "stop_room": stop_room,
        }


class CalFleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.running = Running()
        self.stores: list[PostgresStore] = []

    async def member(self, name: str, *, clock: Callable[[], float] | None = None) -> FleetMember:
        store = await PostgresStore.open(self.url, password=pg.PASSWORD, member_id=name)
        self.stores.append(store)
        m = FleetMember(
            store,
            member_id=name,
            lease_s=LEASE_S,
            devices=DEVICES,
            **self.running.member_kwargs(name),
            **({} if clock is None else {"clock": clock}),
        )
        m.set_rooms("microsoft", ROOMS)
        return m


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[CalFleet]:
    f = CalFleet(pg_url)
    yield f
    for s in f.stores:
        await s.close()


def state(link: str, *ids: str) -> SyncState:
    return SyncState(BOUNDS, link, {i: booking(i) for i in ids})


def created(room: str, bid: str) -> RoomUpdate:
    return RoomUpdate(
        room, "microsoft", (BookingChange("booking.created", booking(bid)),), None, BOUNDS, NOW
    )


def test_lease_keys_cannot_collide_with_device_ids() -> None:
    assert room_key("boardroom") == "room:boardroom" and room_of("room:boardroom") == "boardroom"
    assert room_of("boardroom") is None and room_of("room-4a") is None


async def test_rooms_are_split_by_rendezvous_and_polled_once(fleet: CalFleet) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    everything = set(DEVICES) | {room_key(r) for r in ROOMS}
    expected = assign(sorted(everything), ["a", "b"])
    await until(
        lambda: set(a.held) == set(expected["a"]) and set(b.held) == set(expected["b"]), a, b
    )
    assert expected["a"] and expected["b"]
    rooms = fleet.running.rooms
    # every calendar-only room polled by exactly one member; a device's lease also lets its
    # member poll the linked room of the same id
    assert rooms["a"] | rooms["b"] == set(ROOMS) | set(DEVICES) and not rooms["a"] & rooms["b"]
    assert fleet.running.sessions["a"] == {d for d in a.held if room_of(d) is None}
    assert a.rooms_held() == rooms["a"] and all(a.holds_room(r) for r in rooms["a"])
    # a room's outbox stream (its room id) is drained by its lease holder only
    for r in ROOMS + DEVICES:
        assert a.drains(r) != b.drains(r) and a.drains(r) == (r in rooms["a"])
    snap = await a.snapshot()
    listed = {x["room_id"] for m in snap["members"] for x in m["rooms"]}
    assert listed == set(ROOMS) and snap["unowned_rooms"] == []
    assert {x["device_id"] for m in snap["members"] for x in m["devices"]} == set(DEVICES)
    # a room that left every directory is given up (and its lease released)
    gone = next(r for r in ROOMS if room_key(r) in a.held)
    a.set_rooms("microsoft", [r for r in ROOMS if r != gone])
    await a.round()
    assert room_key(gone) not in a.held and gone not in rooms["a"]


async def test_the_sync_state_lives_in_postgres_and_the_next_owner_resumes(
    fleet: CalFleet,
) -> None:
    a = await fleet.member("a")
    await a.round()
    room = ROOMS[0]
    cal_a = RoomCalendarStore(a.store, site="hq", source="microsoft")
    await cal_a.save_sync_state(room, state("link-1", "x"), created(room, "x"))
    await a.leave()  # SIGTERM: leases released at once
    b = await fleet.member("b")
    await b.round()
    assert room_key(room) in b.held
    cal_b = RoomCalendarStore(b.store, site="hq", source="microsoft")
    got = await cal_b.load_sync_state(room)
    assert got is not None and got.delta_link == "link-1" and list(got.bookings) == ["x"]
    assert set(await b.store.load_window(calendar_window_owner(room, "microsoft"))) == {"x"}
    assert (await cal_b.rooms())[room]["delta_link"] == "link-1"
    await cal_b.save_sync_state(room, state("link-2", "x", "y"), created(room, "y"))
    events = await drain_all(b.store)  # type: ignore[arg-type]
    assert [(e.device_id, e.envelope["data"]["booking"]["id"]) for e in events] == [
        (room, "x"),
        (room, "y"),
    ]
    # forgetting the room (it left the directory): row and window gone
    await cal_b.save_sync_state(room, SyncState(), None)
    assert await cal_b.load_sync_state(room) is None


async def test_a_frozen_member_cannot_store_a_calendar_round_after_losing_the_room(
    fleet: CalFleet,
) -> None:
    now = [0.0]
    a = await fleet.member("a", clock=lambda: now[0])
    await a.round()
    room = ROOMS[1]
    linked = DEVICES[0]  # a linked room is fenced by its device's lease
    cal_a = RoomCalendarStore(a.store, site="hq", source="microsoft")
    await cal_a.save_sync_state(room, state("link-1", "x"), created(room, "x"))
    await cal_a.save_sync_state(linked, state("link-L", "l"), created(linked, "l"))
    b = await fleet.member("b")
    # a is frozen (no rounds); b takes the room once a's leases run out in the database
    await until(lambda: room_key(room) in b.held and linked in b.held, b)
    # a wakes up with a round it fetched after losing the room: the database refuses it
    with pytest.raises(StaleLease):
        await cal_a.save_sync_state(room, state("link-2", "x", "late"), created(room, "late"))
    with pytest.raises(StaleLease):
        await cal_a.save_sync_state(linked, state("link-L2"), created(linked, "late"))
    cal_b = RoomCalendarStore(b.store, site="hq", source="microsoft")
    got = await cal_b.load_sync_state(room)
    assert got is not None and got.delta_link == "link-1" and list(got.bookings) == ["x"]
    got = await cal_b.load_sync_state(linked)
    assert got is not None and got.delta_link == "link-L"
    # and a's first look at its deadlines stops its polling of both, before any round
    now[0] += LEASE_S
    await a.check_deadlines()
    assert fleet.running.rooms["a"] == set()
    with pytest.raises(StaleLease, match="does not hold"):
        await cal_a.save_sync_state(room, state("link-3"), None)
    drained = await drain_all(b.store)  # type: ignore[arg-type]
    ids = [e.envelope["data"]["booking"]["id"] for e in drained]
    assert sorted(ids) == ["l", "x"]


async def test_committed_events_reach_the_members_own_listeners(fleet: CalFleet) -> None:
    a = await fleet.member("a")
    await a.round()
    seen: list[Any] = []
    a.store.on_committed.append(seen.extend)
    room = next(r for r in ROOMS if room_key(r) in a.held)
    await RoomCalendarStore(a.store, site="hq", source="microsoft").save_sync_state(
        room, state("l", "x"), created(room, "x")
    )
    assert [e["type"] for e in seen] == ["booking.created"]
    assert seen[0]["data"]["room_id"] == room and "device_id" not in seen[0]["data"]
