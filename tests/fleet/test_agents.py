"""Agents in a fleet, in process: devices split between members, handover on a clean stop,
the shared outbox delivered, /v1/fleet."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from tests import pg
from tests.e2e.harness import agent_config, eventually, of_type, start_agent


def fleet_config(fleet: Any, tmp_path: Path, name: str, url: str, **kw: Any) -> Any:
    return agent_config(
        fleet,
        tmp_path,
        extra={
            "store": {"path": None, "url": url, "password_env": "PG_PASSWORD"},
            "fleet": {"member_id": name, "lease_s": 2},
        },
        **kw,
    )


def sessions(agent: Agent) -> set[str]:
    return {d["id"] for d in agent.devices()}


async def test_two_agents_split_the_devices_and_hand_over_on_stop(
    make_fleet: Any, receiver: Any, tmp_path: Path, ca_file: Path, env: dict[str, str], pg_url: str
) -> None:
    fleet = await make_fleet(mode="hybrid", devices=6)
    env = {**env, "PG_PASSWORD": pg.PASSWORD}
    a = await start_agent(
        fleet_config(fleet, tmp_path, "a", pg_url, webhook_url=receiver.url, ca_file=ca_file),
        fleet,
        env=env,
    )
    b = await start_agent(
        fleet_config(fleet, tmp_path, "b", pg_url, webhook_url=receiver.url, ca_file=ca_file),
        fleet,
        env=env,
    )
    ids = {d.device_id for d in fleet.devices}
    try:
        await eventually(
            lambda: (
                sessions(a.agent) | sessions(b.agent) == ids
                and not sessions(a.agent) & sessions(b.agent)
                and sessions(a.agent)
                and sessions(b.agent)
            ),
            timeout=20,
        )
        await eventually(
            lambda: (
                {e["data"]["device_id"] for e in of_type(receiver.events, "bookings.snapshot")}
                == ids
            ),
            timeout=20,
        )
        status = await a.agent.fleet_status()
        assert status is not None
        assert {m["member_id"] for m in status["members"]} == {"a", "b"}
        held = {d["device_id"] for m in status["members"] for d in m["devices"]}
        assert held == ids
        a_share = sessions(a.agent)
        assert await a.stop() == 0  # SIGTERM: sessions stopped, leases released
        await eventually(lambda: sessions(b.agent) == ids, timeout=10)
        # a device a held now reports through b, into the shared outbox
        moved = next(d for d in fleet.devices if d.device_id in a_share)
        meeting = moved.calendar.add(
            fleet.clock.now() + timedelta(hours=2), 30, title="after"
        ).meeting_id
        await eventually(
            lambda: any(
                e["data"]["booking"]["meeting_id"] == meeting
                for e in of_type(receiver.events, "booking.created")
            ),
            timeout=20,
        )
        assert receiver.bad_signatures == 0
    finally:
        for r in (a, b):
            if not r.task.done():
                await r.stop()


async def test_tail_streams_what_a_fleet_member_commits(
    make_fleet: Any, receiver: Any, tmp_path: Path, ca_file: Path, env: dict[str, str], pg_url: str
) -> None:
    """The local event stream on the PostgreSQL store: `edge-agent tail` against a member
    shows the events that member commits (its own devices')."""
    import asyncio

    from tests.ops.test_cli import acli

    fleet = await make_fleet(mode="hybrid", devices=2)
    env = {**env, "PG_PASSWORD": pg.PASSWORD}
    a = await start_agent(
        fleet_config(fleet, tmp_path, "a", pg_url, webhook_url=receiver.url, ca_file=ca_file),
        fleet,
        env=env,
    )
    try:
        ids = {d.device_id for d in fleet.devices}
        await eventually(lambda: sessions(a.agent) == ids, timeout=20)
        assert a.agent.api is not None
        tail = asyncio.create_task(
            acli("tail", "--api", a.agent.api.url, "--type", "booking.created", "--count", "1")
        )
        await eventually(lambda: a.agent.event_feed.subscribers == 1 or tail.done(), timeout=20)
        device = fleet.devices[0]
        device.calendar.add(fleet.clock.now() + timedelta(hours=3), 30, title="Streamed")
        code, out, err = await asyncio.wait_for(tail, 30)
        assert code == 0, out + err
        assert device.device_id in out and "booking.created" in out and "Streamed" in out
    finally:
        await a.stop()
