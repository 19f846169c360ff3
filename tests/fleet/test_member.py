"""Fleet members on one PostgreSQL: one owner per device, handover, expiry, fencing, the shared
outbox. Rounds are driven by the test (``member.round()``); only lease expiry waits for the
database's clock (leases of 2 s, the shortest accepted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from edge_agent.fleet import FleetMember, assign
from edge_agent.store import Change
from edge_agent.store.postgres import PostgresStore, StaleLease
from tests import pg
from tests.store.outbox import drain_all, env, next_batches

DEVICES = [f"room-{i}" for i in range(12)]
LEASE_S = 2.0


class Sessions:
    """What the agent would run: the devices with a session, per member."""

    def __init__(self) -> None:
        self.running: dict[str, set[str]] = {}
        self.stopped: list[tuple[str, str]] = []

    def of(self, member: str) -> set[str]:
        return self.running.setdefault(member, set())

    def start(self, member: str) -> Callable[[str], None]:
        return lambda d: self.of(member).add(d)

    def stop(self, member: str) -> Any:
        async def stop(d: str, lost: bool) -> None:
            self.of(member).discard(d)
            self.stopped.append((member, d))

        return stop


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions = Sessions()
        self.stores: list[PostgresStore] = []

    async def member(self, name: str, *, clock: Callable[[], float] | None = None) -> FleetMember:
        store = await PostgresStore.open(self.url, password=pg.PASSWORD, member_id=name)
        self.stores.append(store)
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        return FleetMember(
            store,
            member_id=name,
            lease_s=LEASE_S,
            devices=DEVICES,
            start_session=self.sessions.start(name),
            stop_session=self.sessions.stop(name),
            **kwargs,
        )


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    for s in f.stores:
        await s.close()


async def until(cond: Callable[[], Any], *steps: FleetMember, limit_s: float = 20.0) -> None:
    """Run the members' rounds until ``cond()`` holds (lease expiry runs on the database's
    clock, so some conditions need a few rounds)."""
    async with asyncio.timeout(limit_s):
        while not cond():
            for m in steps:
                try:
                    await m.round()
                except TimeoutError:
                    # As FleetMember.run does: a round whose database calls ran out of time (a
                    # lock held by a frozen member, a loaded machine) is simply run again.
                    pass
            await asyncio.sleep(0.05)


def owned(*members: FleetMember) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in members:
        for d in m.held:
            out.setdefault(d, []).append(m.member_id)
    return out


async def test_each_device_is_held_by_its_rendezvous_owner(fleet: Fleet) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    await a.round()
    await b.round()  # b sees a and b; takes its share
    await a.round()  # a sees b; gives up b's share, keeps its own
    await b.round()  # b takes what a released
    expected = assign(DEVICES, ["a", "b"])
    assert sorted(a.held) == sorted(expected["a"]) and sorted(b.held) == sorted(expected["b"])
    assert all(len(v) == 1 for v in owned(a, b).values()) and len(owned(a, b)) == len(DEVICES)
    assert fleet.sessions.of("a") == set(a.held) and fleet.sessions.of("b") == set(b.held)
    snap = await a.snapshot()
    assert [m["member_id"] for m in snap["members"]] == ["a", "b"]
    assert sorted(x["device_id"] for x in snap["members"][1]["devices"]) == sorted(b.held)
    assert snap["unowned"] == []


async def test_leaving_hands_devices_over_without_waiting_for_the_lease(fleet: Fleet) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    await until(lambda: len(owned(a, b)) == len(DEVICES), a, b)
    share = set(a.held)
    await a.leave()
    assert a.held == {} and fleet.sessions.of("a") == set()
    await b.round()  # a is gone from the members and its leases are free: no expiry wait
    assert set(b.held) == set(DEVICES) and share <= fleet.sessions.of("b")


async def test_a_dead_members_devices_move_within_the_lease(fleet: Fleet) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    await until(lambda: len(owned(a, b)) == len(DEVICES), a, b)
    # a stops running rounds (killed): b takes everything once a's heartbeat and leases age out.
    await until(lambda: set(b.held) == set(DEVICES), b)


async def test_a_frozen_member_cannot_commit_after_losing_the_lease(fleet: Fleet) -> None:
    now = [0.0]
    a = await fleet.member("a", clock=lambda: now[0])
    await a.round()
    assert set(a.held) == set(DEVICES)
    device = DEVICES[0]
    await a.store.commit(Change(device, window_upsert={"k": {"v": 1}}, events=[env(device, 1)]))
    b = await fleet.member("b")
    # a is frozen (no rounds); b takes its devices once the leases run out in the database.
    await until(lambda: device in b.held, b)
    # a wakes up: its store still has the old token, the database refuses the commit.
    with pytest.raises(StaleLease):
        await a.store.commit(Change(device, window_upsert={"k": {"v": 2}}, events=[env(device, 2)]))
    assert await b.store.load_window(device) == {"k": {"v": 1}}
    # and a's first look at its deadlines closes the session, before any round.
    now[0] += LEASE_S
    await a.check_deadlines()
    assert a.held == {} and fleet.sessions.of("a") == set()
    with pytest.raises(StaleLease, match="does not hold"):
        await a.store.commit(Change(device, events=[env(device, 3)]))
    ids = [e.event_id for e in await drain_all(b.store)]  # type: ignore[arg-type]
    assert f"{device}-1" in ids and f"{device}-2" not in ids and f"{device}-3" not in ids


async def test_a_refused_renewal_closes_the_session(fleet: Fleet) -> None:
    a = await fleet.member("a")
    await a.round()
    b = await fleet.member("b")
    await until(lambda: len(b.held) == len(DEVICES), b)
    await a.round()  # the database refuses a's renewals: every session closes
    assert a.held == {} and fleet.sessions.of("a") == set()
    assert {d for m, d in fleet.sessions.stopped if m == "a"} == set(DEVICES)


async def test_the_outbox_is_shared_and_a_dead_members_events_are_delivered(
    fleet: Fleet,
) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    await until(lambda: len(owned(a, b)) == len(DEVICES), a, b)
    for d in DEVICES:
        holder = a if d in a.held else b
        await holder.store.commit(Change(d, events=[env(d, 0), env(d, 1)]))
    # each member drains only the rooms it holds
    got_b = await drain_all(b.store)  # type: ignore[arg-type]
    assert {e.device_id for e in got_b} == set(b.held)
    # a delivers one event of one room, then dies (no leave: kill -9)
    mine = sorted(a.held)
    [[first]] = await next_batches(a.store, "webhook", now=0, max_devices=1, max_batch=1)  # type: ignore[arg-type]
    await a.store.mark_delivered("webhook", [first])
    await a.store.flush()
    await until(lambda: set(b.held) == set(DEVICES), b)
    got = await drain_all(b.store)  # type: ignore[arg-type]
    per_room: dict[str, list[int]] = {}
    for e in got:
        per_room.setdefault(e.device_id, []).append(e.envelope["data"]["n"])
    assert set(per_room) == set(mine)
    assert all(ns == ([1] if d == first.device_id else [0, 1]) for d, ns in per_room.items())
    assert first.event_id not in {e.event_id for e in got}  # what a delivered is not sent again
    assert not {e.event_id for e in got_b} & {e.event_id for e in got}


async def test_a_member_frozen_mid_commit_does_not_block_the_takeover(fleet: Fleet) -> None:
    a = await fleet.member("a")
    await a.round()
    # a's commit froze inside its transaction: the lease rows stay locked FOR SHARE and the
    # server's idle timeout does not apply (a client frozen mid-pipeline is not idle).
    frozen = await psycopg.AsyncConnection.connect(
        fleet.url, password=pg.PASSWORD, application_name="edge-agent a", autocommit=True
    )
    try:
        await frozen.execute("BEGIN")
        await frozen.execute(
            "SELECT token FROM edge_lease WHERE device_id = ANY(%s) FOR SHARE", (DEVICES,)
        )
        b = await fleet.member("b")
        # once a's heartbeat is older than a lease, b ends a's transaction and takes over
        await until(lambda: set(b.held) == set(DEVICES), b)
        assert frozen.broken or frozen.closed or await _is_gone(frozen)
    finally:
        await frozen.close()


async def _is_gone(conn: psycopg.AsyncConnection[Any]) -> bool:
    try:
        await conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


async def test_a_member_frozen_mid_commit_does_not_stall_the_new_owners_writes(
    fleet: Fleet,
) -> None:
    a = await fleet.member("a")
    await a.round()
    device = DEVICES[0]
    await a.store.commit(Change(device, events=[env(device, 0)]))
    # a froze inside a group that was writing its delivery progress: the cursor row is locked
    frozen = await psycopg.AsyncConnection.connect(
        fleet.url, password=pg.PASSWORD, application_name="edge-agent a", autocommit=True
    )
    try:
        await frozen.execute("BEGIN")
        await frozen.execute(
            "INSERT INTO edge_sink_cursor (sink, device_id, done_seq) VALUES ('webhook', %s, 0)",
            (device,),
        )
        b = await fleet.member("b")
        await until(lambda: device in b.held, b)
        # b delivers the event and writes the cursor row a had locked
        async with asyncio.timeout(10):
            [e] = await drain_all(b.store)  # type: ignore[arg-type]
        assert e.event_id == f"{device}-0"
    finally:
        await frozen.close()
