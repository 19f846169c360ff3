"""Chaos: three `edge-agent run` processes, two dozen simulated devices, one PostgreSQL.

kill -9 one agent, SIGSTOP another past its lease and wake it, restart the database. Invariants:

- never two links on one device, except while an agent is frozen (from its SIGSTOP until its
  stale links are gone after the SIGCONT): sampled on the devices' side all along;
- every booking the devices announced is delivered as ``booking.created`` (heard directly, or
  rebuilt by the new owner's re-list when the session that heard it died before committing),
  and those announced while the fleet was settled are delivered as heard;
- no booking is reported under two event ids (the frozen agent's commits are fenced off).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge_agent.fleet import assign
from tests import pg
from tests.e2e.harness import PASSWORD, SECRET, eventually, of_type

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_S = 3
DEVICES = 24


def _write_config(path: Path, name: str, fleet: Any, receiver_url: str, ca: Path, url: str) -> None:
    devices = "\n".join(
        f'[[devices]]\nid = "{d.device_id}"\nurl = "{d.url}"\n' for d in fleet.devices
    )
    path.write_text(
        f"""site = "chaos"
[store]
url = "{url}"
password_env = "PG_PASSWORD"
[fleet]
member_id = "{name}"
lease_s = {LEASE_S}
[defaults]
username = "{fleet.config.username}"
password_env = "SIM_PASSWORD"
ca_file = "{ca}"
request_grace_s = 5
[webhook]
url = "{receiver_url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:0"
{devices}"""
    )


class Agents:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def spawn(self, name: str) -> None:
        env = {
            **os.environ,
            "SIM_PASSWORD": PASSWORD,
            "WEBHOOK_SECRET": SECRET,
            "PG_PASSWORD": pg.PASSWORD,
            "EDGE_AGENT_LOG_LEVEL": "info",
        }
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: ASYNC230, SIM115 - the child writes it
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            "-c",
            str(self.tmp / f"{name}.toml"),
            env=env,
            stdout=log,
            stderr=log,
        )
        log.close()

    async def close(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                os.kill(p.pid, signal.SIGCONT)  # a frozen one cannot act on SIGTERM
                p.terminate()
        for p in self.procs.values():
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        await a.close()


class LinkWatch:
    """Samples every device's open links; a second link is a violation unless one agent is
    frozen (``excused``)."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.excused = False
        self.violations: list[tuple[str, int]] = []
        self.samples = 0

    def counts(self) -> dict[str, int]:
        return {d.device_id: len(d.links) for d in self.fleet.devices}

    def settled(self) -> bool:
        """Every device has exactly one link, subscribed to the Bookings events (a link that
        is up but not yet subscribed would miss an announcement; the re-list rebuilds it)."""
        for d in self.fleet.devices:
            links = list(d.links)
            if len(links) != 1:
                return False
            paths = [str(p) for p in links[0].session.subscriptions.values()]
            if not any("Event" in p and "Bookings" in p for p in paths):
                return False
        return True

    async def run(self) -> None:
        while True:
            self.samples += 1
            if not self.excused:
                self.violations += [(d, n) for d, n in self.counts().items() if n > 1]
            await asyncio.sleep(0.02)


async def test_kill9_sigstop_and_a_database_restart(
    make_fleet: Any, receiver: Any, tmp_path: Path, ca_file: Path, pg_url: str, agents: Agents
) -> None:
    # The agents run on the wall clock, so the devices must too. The verdict does not depend on
    # the hour: bookings lie 1-3 h ahead, always inside the window (today + 8 h of tomorrow).
    fleet = await make_fleet(devices=DEVICES, mode="hybrid", start=datetime.now(UTC))
    cluster = pg.cluster()
    for name in ("a", "b", "c"):
        _write_config(tmp_path / f"{name}.toml", name, fleet, receiver.url, ca_file, pg_url)
        await agents.spawn(name)
    watch = LinkWatch(fleet)
    watcher = asyncio.create_task(watch.run(), name="chaos.links")
    t0 = fleet.clock.now()
    made: list[str] = []  # every booking announced
    calm: set[str] = set()  # announced while the fleet was settled: must arrive as heard
    slot = iter(range(10_000))

    def announce(settled: bool) -> set[str]:
        out = set()
        for dev in fleet.devices:
            b = dev.calendar.add(t0 + timedelta(hours=1, minutes=next(slot) % 110), 1, title="x")
            out.add(b.meeting_id)
        made.extend(out)
        if settled:
            calm.update(out)
        return out

    def created() -> list[dict[str, Any]]:
        return of_type(receiver.events, "booking.created")

    def delivered() -> set[str]:
        return {e["data"]["booking"]["meeting_id"] for e in created()}

    db: list[psycopg.Connection[Any]] = []

    def leases_of(member: str) -> int:
        """Devices whose lease ``member`` holds, as the database has it (0 while the database
        is down or not yet migrated)."""
        try:
            if not db or db[0].closed or db[0].broken:
                db[:] = [psycopg.connect(pg_url, password=pg.PASSWORD, autocommit=True)]
            row = (
                db[0]
                .execute(
                    "SELECT count(*) FROM edge_lease WHERE member_id = %s "
                    "AND expires_at > clock_timestamp()",
                    (member,),
                )
                .fetchone()
            )
        except psycopg.Error:
            db.clear()
            return 0
        return int(row[0]) if row else 0

    def lease_map() -> dict[str, str]:
        try:
            if not db or db[0].closed or db[0].broken:
                db[:] = [psycopg.connect(pg_url, password=pg.PASSWORD, autocommit=True)]
            rows = (
                db[0]
                .execute(
                    "SELECT device_id, member_id FROM edge_lease WHERE member_id IS NOT NULL "
                    "AND expires_at > clock_timestamp()"
                )
                .fetchall()
            )
        except psycopg.Error:
            db.clear()
            return {}
        return {str(d): str(m) for d, m in rows}

    ids = [d.device_id for d in fleet.devices]

    def balanced(*members: str) -> bool:
        """The fleet is at rest: each device leased to its rendezvous owner among ``members``
        and connected by exactly one subscribed link."""
        want = {d: m for m, ds in assign(ids, members).items() for d in ds}
        return lease_map() == want and watch.settled()

    try:
        await eventually(
            lambda: balanced("a", "b", "c"), "the devices split three ways", timeout=60
        )
        await eventually(
            lambda: (
                len({e["data"]["device_id"] for e in of_type(receiver.events, "bookings.snapshot")})
                == DEVICES
            ),
            timeout=60,
        )
        batch = announce(settled=True)
        await eventually(lambda: delivered() >= batch, "the first bookings", timeout=60)

        # 1. kill -9 one agent; the devices keep producing; the others take its devices
        agents.procs["a"].send_signal(signal.SIGKILL)
        await agents.procs["a"].wait()
        announce(settled=False)
        await eventually(lambda: balanced("b", "c"), "a's devices taken over", timeout=60)
        batch = announce(settled=True)
        await eventually(lambda: delivered() >= set(made), "bookings after the kill", timeout=90)

        # 2. freeze another past its lease: its devices move while its sockets stay open
        b_share = leases_of("b")
        assert 0 < b_share < DEVICES
        watch.excused = True
        agents.procs["b"].send_signal(signal.SIGSTOP)
        # c ends up holding every device (a is dead, b is frozen): c's links are up beside b's
        # frozen ones on b's devices
        await eventually(
            lambda: leases_of("c") == DEVICES and sum(watch.counts().values()) == DEVICES + b_share,
            "b's devices taken over while b is frozen",
            timeout=60,
        )
        frozen_batch = announce(settled=False)
        await eventually(
            lambda: delivered() >= frozen_batch, "bookings while b is frozen", timeout=60
        )
        agents.procs["b"].send_signal(signal.SIGCONT)
        await eventually(
            lambda: all(n <= 1 for n in watch.counts().values()),
            "b dropped its stale links after waking",
            timeout=60,
        )
        watch.excused = False
        await eventually(lambda: delivered() >= set(made), "bookings after b woke", timeout=90)

        # 3. restart the database under the fleet
        await asyncio.to_thread(cluster.restart)
        announce(settled=False)
        await eventually(lambda: balanced("b", "c"), "at rest after the restart", timeout=90)
        batch = announce(settled=True)
        await eventually(lambda: delivered() >= set(made), "bookings after the restart", timeout=90)
        # a comes back
        await agents.spawn("a")
        await eventually(lambda: balanced("a", "b", "c"), "at rest with a back", timeout=60)
        batch = announce(settled=True)
        await eventually(lambda: delivered() >= set(made), "bookings with a back", timeout=90)
    finally:
        watcher.cancel()
        for conn in db:
            conn.close()

    assert watch.samples > 0 and watch.violations == [], watch.violations[:10]
    ids: dict[str, set[str]] = {}
    for e in created():
        ids.setdefault(e["data"]["booking"]["meeting_id"], set()).add(e["data"]["event_id"])
    twice = {m: v for m, v in ids.items() if len(v) > 1}
    assert twice == {}, f"bookings reported under two event ids: {list(twice.items())[:5]}"
    heard = {
        e["data"]["booking"]["meeting_id"] for e in created() if not e["data"].get("reconciled")
    }
    assert calm <= heard, f"{len(calm - heard)} bookings announced while settled were not heard"
    assert set(made) <= delivered()
    assert receiver.bad_signatures == 0
    print(
        f"chaos: {len(made)} bookings, all delivered; {receiver.duplicates} duplicate "
        f"deliveries (same event id); {watch.samples} link samples"
    )
