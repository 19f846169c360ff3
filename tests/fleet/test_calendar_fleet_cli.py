"""Calendar rooms across a fleet, end to end: three ``edge-agent run`` processes on one
PostgreSQL, twelve calendar-only rooms on the Graph simulator (``calendar_sim.graph``, HTTPS
with the certificate it makes), a signature-checking receiver.

Each room is polled by exactly one member (its lease holder): one full listing per room across
the fleet, each member's ``/v1/rooms`` disjoint, ``/v1/fleet`` listing every room under its
holder. kill -9 of a member that holds rooms: its rooms move to the others within the lease and
resume from the delta link it committed (no second full listing); every change made in the
rooms, before and while it was dead, is delivered, and none twice under two event ids.

Everything runs on the wall clock; events sit at whole days from today's UTC midnight (the
rooms' zone is UTC), so no verdict depends on the hour.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from calendar_sim.graph import GraphSim, GraphSimConfig
from edge_agent.fleet import assign
from edge_agent.fleet.keys import room_key
from tests import pg
from tests.e2e.harness import SECRET, eventually, of_type
from tests.mosquitto import free_port
from tests.receivers import WebhookReceiver
from tests.rooms.conftest import agent_env

pytestmark = pytest.mark.slow

SIM_SECRET = "graph-sim-secret-for-the-fleet-tests"
MEMBERS = ("a", "b", "c")
ROOMS = [f"room-{k}" for k in range(1, 13)]
LEASE_S = 2


def at(days: int, hour: int) -> datetime:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=days, hours=hour)


class Watched:
    """The simulator, with the query of every delta request per mailbox (full or resumed)."""

    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim
        self.deltas: dict[str, list[dict[str, str]]] = defaultdict(list)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            parts = request.path.split("/")
            if request.path.endswith("/calendarView/delta") and len(parts) > 3:
                self.deltas[parts[3].split("@")[0].lower()].append(dict(request.query))
            return await handler(request)

        sim.api.app.middlewares.insert(0, record)

    def full_listings(self, room: str) -> int:
        return sum(1 for q in self.deltas[room] if "startDateTime" in q)


@pytest.fixture
async def sim() -> AsyncIterator[Watched]:
    g = GraphSim(GraphSimConfig(rooms=len(ROOMS), client_secret=SIM_SECRET, time_zone="UTC"))
    watched = Watched(g)
    await g.start()
    yield watched
    await g.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()


class Member:
    def __init__(self, name: str, cfg: Path, api: str, log: Path) -> None:
        self.name, self.cfg, self.api, self.log = name, cfg, api, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            "-c",
            str(self.cfg),
            env=agent_env(PG_PASSWORD=pg.PASSWORD),
            stdout=out,
            stderr=out,
        )
        out.close()

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.api, timeout=5) as http:
            resp = await http.get(path)
            resp.raise_for_status()
            return resp.json()

    async def polled(self) -> set[str]:
        """The calendar rooms this member polls now (``/v1/rooms``)."""
        try:
            body = await self.get("/v1/rooms")
        except httpx.HTTPError:
            return set()
        return {r["id"] for r in body["rooms"] if r.get("source") == "microsoft"}


def member_config(
    tmp_path: Path, name: str, url: str, sim: GraphSim, rx: WebhookReceiver
) -> Member:
    ca = tmp_path / "graph-sim-ca.pem"
    ca.write_bytes(sim.cert_pem)
    (tmp_path / "graph-secret").write_text(SIM_SECRET + "\n")
    port = free_port()
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f"""site = "fleet"
[store]
url = "{url}"
password_env = "PG_PASSWORD"
[fleet]
member_id = "{name}"
lease_s = {LEASE_S}
[webhook]
url = "{rx.url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:{port}"
[microsoft]
tenant_id = "{sim.config.tenant_id}"
client_id = "{sim.config.client_id}"
client_secret_file = "{tmp_path / "graph-secret"}"
authority_url = "{sim.authority_url}"
graph_url = "{sim.graph_url}"
ca_file = "{ca}"
poll_interval_s = 1
"""
    )
    return Member(name, cfg, f"http://127.0.0.1:{port}", tmp_path / f"{name}.log")


def created_ids(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    """booking id -> the event ids it was reported created under."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in of_type(events, "booking.created"):
        out[e["data"]["booking"]["id"]].add(e["data"]["event_id"])
    return out


def snapshotted(events: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(the rooms that sent a snapshot, the booking ids any snapshot carried). A room's first
    sync sends only its snapshot: what was there before is never a booking.created."""
    rooms: set[str] = set()
    bookings: set[str] = set()
    for e in of_type(events, "bookings.snapshot"):
        rooms.add(e["data"]["room_id"])
        bookings.update(b["id"] for b in e["data"]["bookings"])
    return rooms, bookings


async def until(cond: Callable[[], Any], what: str, timeout: float = 60) -> None:
    try:
        await eventually(cond, timeout=timeout)
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(f"waited {timeout} s for {what}") from exc


async def test_rooms_split_across_members_move_on_kill9_and_resume_from_the_delta_link(
    sim: Watched, receiver: WebhookReceiver, tmp_path: Path, pg_url: str
) -> None:
    g = sim.sim
    members = {n: member_config(tmp_path, n, pg_url, g, receiver) for n in MEMBERS}
    def add(room: str, days: int, hour: int, title: str) -> Any:
        return g.add_event(f"{room}@contoso.com", at(days, hour), 30, title)

    first = {r: add(r, 1, 9, f"First {r}") for r in ROOMS}
    # Rendezvous hashing is deterministic: who should hold what once all three are live.
    share = assign([room_key(r) for r in ROOMS], MEMBERS)
    victim = max(MEMBERS, key=lambda m: len(share[m]))
    victims_rooms = sorted(k.split(":", 1)[1] for k in share[victim])
    try:
        for m in members.values():
            await m.start()

        async def split() -> bool:
            polled = {n: await m.polled() for n, m in members.items()}
            return all(
                polled[n] == {k.split(":", 1)[1] for k in share[n]} for n in MEMBERS
            )

        deadline = time.monotonic() + 90
        while not await split():
            assert time.monotonic() < deadline, "the rooms never settled on their owners"
            await asyncio.sleep(0.2)
        await until(
            lambda: {e.id for e in first.values()} <= snapshotted(receiver.events)[1],
            "every room's first snapshot, with the booking made before the start",
        )
        fleet = await members["a"].get("/v1/fleet")
        held = {x["room_id"]: m["member_id"] for m in fleet["members"] for x in m["rooms"]}
        assert held == {k.split(":", 1)[1]: n for n in MEMBERS for k in share[n]}
        # a full listing per room, more only where a member that was alone for a moment
        # handed the room over in the middle of its first listing (nothing was committed)
        assert all(sim.full_listings(r) >= 1 for r in ROOMS)

        # changes in the victim's rooms, then kill -9, then more changes while it is dead
        before = {r: add(r, 2, 10, "Before") for r in victims_rooms}
        await until(
            lambda: all(created_ids(receiver.events)[before[r].id] for r in victims_rooms),
            "the changes before the kill",
        )
        listed = {r: sim.full_listings(r) for r in victims_rooms}
        proc = members[victim].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        during = {r: add(r, 3, 11, "While dead") for r in victims_rooms}
        survivors = [n for n in MEMBERS if n != victim]
        await until(
            lambda: all(created_ids(receiver.events)[during[r].id] for r in victims_rooms),
            "the changes made while the holder was dead, from the members that took over",
        )
        polled = {n: await members[n].polled() for n in survivors}
        assert polled[survivors[0]] | polled[survivors[1]] == set(ROOMS)
        assert not polled[survivors[0]] & polled[survivors[1]]
        # resumed from the committed delta link: no new full listing of a moved room
        assert {r: sim.full_listings(r) for r in victims_rooms} == listed
        # every change delivered, none under two event ids
        ids = created_ids(receiver.events)
        every = [*before.values(), *during.values()]
        assert all(len(ids[e.id]) == 1 for e in every), {e.id: ids[e.id] for e in every}
        assert all(not ids[e.id] for e in first.values())  # in the first snapshot only
        assert receiver.bad_signatures == 0
    finally:
        for m in members.values():
            if m.proc is not None and m.proc.returncode is None:
                m.proc.terminate()
                try:
                    await asyncio.wait_for(m.proc.wait(), 15)
                except TimeoutError:
                    m.proc.kill()
                    await m.proc.wait()


async def test_a_frozen_member_gets_its_rooms_back_without_reporting_anything_twice(
    sim: Watched, receiver: WebhookReceiver, tmp_path: Path, pg_url: str
) -> None:
    """SIGSTOP a member past its lease: the other takes its rooms and delivers what changed;
    SIGCONT: the frozen member drops the rooms before anything else (its late rounds are
    refused by the fence), then takes its share back and resumes from the links the other
    committed. Every change once, under one event id."""
    g = sim.sim
    names = ("a", "b")
    members = {n: member_config(tmp_path, n, pg_url, g, receiver) for n in names}
    share = assign([room_key(r) for r in ROOMS], names)
    mine = {n: {k.split(":", 1)[1] for k in share[n]} for n in names}
    frozen, other = ("a", "b") if mine["a"] else ("b", "a")

    def add(room: str, days: int, hour: int, title: str) -> Any:
        return g.add_event(f"{room}@contoso.com", at(days, hour), 30, title)

    async def settled(expect: dict[str, set[str]]) -> None:
        deadline = time.monotonic() + 90
        while {n: await members[n].polled() for n in expect} != expect:
            assert time.monotonic() < deadline, f"the rooms never settled as {expect}"
            await asyncio.sleep(0.2)

    try:
        for m in members.values():
            await m.start()
        await settled(mine)
        # each room's first sync done (its snapshot sent): what is added now is a change
        await until(lambda: snapshotted(receiver.events)[0] >= set(ROOMS), "first snapshots")
        first = {r: add(r, 1, 9, "First") for r in ROOMS}
        await until(
            lambda: all(created_ids(receiver.events)[first[r].id] for r in ROOMS), "first"
        )
        proc = members[frozen].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            meanwhile = {r: add(r, 2, 10, "While frozen") for r in mine[frozen]}
            await until(
                lambda: all(created_ids(receiver.events)[meanwhile[r].id] for r in mine[frozen]),
                "the frozen member's rooms, delivered by the other",
            )
            assert await members[other].polled() == set(ROOMS)
            listed = {r: sim.full_listings(r) for r in ROOMS}
        finally:
            proc.send_signal(signal.SIGCONT)
        await settled(mine)  # live again: its share comes back to it
        after = {r: add(r, 3, 11, "After") for r in mine[frozen]}
        await until(
            lambda: all(created_ids(receiver.events)[after[r].id] for r in mine[frozen]),
            "the rooms back with the member that was frozen",
        )
        assert {r: sim.full_listings(r) for r in ROOMS} == listed  # resumed, never relisted
        ids = created_ids(receiver.events)
        every = [*first.values(), *meanwhile.values(), *after.values()]
        assert all(len(ids[e.id]) == 1 for e in every), {e.id: ids[e.id] for e in every}
        assert receiver.bad_signatures == 0
        log = members[frozen].log.read_text(errors="replace")
        assert "lost leases" in log
    finally:
        for m in members.values():
            if m.proc is not None and m.proc.returncode is None:
                m.proc.send_signal(signal.SIGCONT)
                m.proc.terminate()
                try:
                    await asyncio.wait_for(m.proc.wait(), 15)
                except TimeoutError:
                    m.proc.kill()
                    await m.proc.wait()
