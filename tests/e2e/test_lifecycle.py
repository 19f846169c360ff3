"""Session and agent life cycle: restarts, stops, reloads, a stuck store."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import structlog
import structlog.testing

from edge_agent import jsoncodec
from edge_agent.session import DeviceSession
from tests.e2e.harness import agent_config, eventually, of_type, start_agent


async def test_supervisor_restart_of_a_session_reconnects(
    make_fleet, receiver, tmp_path, ca_file, env, monkeypatch
):
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        session = next(iter(running.agent._sessions.values()))
        original = DeviceSession._transition
        calls = {"n": 0}

        def fail_once(self, state, item, now):
            # Sessions have slots (no instance attribute to patch): the class, for this one.
            if self is session:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("injected bug in a transition")
            return original(self, state, item, now)

        monkeypatch.setattr(DeviceSession, "_transition", fail_once)
        fleet.devices[0].calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="x")
        # The session dies, the supervisor restarts it (1 s backoff), and the link comes back.
        await eventually(lambda: len(of_type(receiver.events, "device.online")) >= 2, timeout=20)
        await eventually(lambda: session.client.connected, timeout=10)
        await eventually(lambda: of_type(receiver.events, "booking.created"), timeout=10)
    finally:
        await running.stop()


async def test_a_stuck_store_does_not_flood_the_queue_with_ticks(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=1000, booking_timeout_s=60)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        session = next(iter(running.agent._sessions.values()))
        fleet.devices[0].calendar.request(title="pending")
        await eventually(lambda: bool(session.state and session.state.pending))
        store = running.agent.store
        assert store is not None
        pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
        await store._writer.execute(f"PRAGMA max_page_count={pages}")
        fleet.clock.advance(120)  # the request is past its deadline; ticks are due
        fleet.devices[0].calendar.add(
            fleet.clock.now() + timedelta(hours=1), 30, title="x" * 5000
        )  # a step that cannot be committed
        await eventually(lambda: session.store_errors >= 1)
        await asyncio.sleep(0.5)
        assert session._inputs.qsize() < 20, session._inputs.qsize()
        assert session.dropped_feedback == 0
        await store._writer.execute("PRAGMA max_page_count=1073741823")
    finally:
        await running.stop()


async def test_stop_commits_what_the_device_already_sent(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """SIGTERM drains: events received but not yet committed (here: held by a full disk) are
    committed before the agent exits, not left to a re-list."""
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
    await receiver.go_down()  # what is committed stays in the outbox, where we can count it
    store = running.agent.store
    assert store is not None
    session = next(iter(running.agent._sessions.values()))
    pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
    await store._writer.execute(f"PRAGMA max_page_count={pages}")
    now = fleet.clock.now()
    made = {
        fleet.devices[0]
        .calendar.add(now + timedelta(hours=1, minutes=i), 1, title=f"held {i} " + "x" * 2000)
        .meeting_id
        for i in range(10)
    }
    await eventually(lambda: session.store_errors >= 1 and session._inputs.qsize() >= 5)
    stopping = asyncio.create_task(running.stop())
    await asyncio.sleep(0.2)
    await store._writer.execute("PRAGMA max_page_count=1073741823")  # space is back
    assert await stopping == 0

    db = sqlite3.connect(Path(tmp_path) / "agent.db")
    envs = [jsoncodec.loads(body) for (body,) in db.execute("SELECT body FROM outbox")]
    created = {
        e["data"]["booking"]["meeting_id"]
        for e in envs
        if e["type"] == "booking.created" and not e["data"].get("reconciled")
    }
    assert created >= made
    assert [e["data"]["reason"] for e in envs if e["type"] == "device.offline"] == [
        "agent stopping"
    ]


async def test_two_reloads_in_a_row_run_each_device_once(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", devices=3)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file, devices=[0, 1])
    toml = tmp_path / "agent.toml"
    running = await start_agent(cfg, fleet, env=env)
    agent = running.agent
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 2)
        pending = await agent.store.load_pending()  # type: ignore[union-attr]
        assert pending == []
        # the new file: device 1 removed, device 2 added
        d = fleet.devices
        toml.write_text(
            f'site = "test"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
            f'[defaults]\nusername = "{fleet.config.username}"\npassword_env = "SIM_PASSWORD"\n'
            f'ca_file = "{ca_file}"\nbooking_timeout_s = 60\nrequest_grace_s = 5\n'
            f"relist_interval_s = 300\nrequest_timeout_s = 5\n"
            f'[[devices]]\nid = "{d[0].device_id}"\nurl = "{d[0].url}"\n'
            f'[[devices]]\nid = "{d[2].device_id}"\nurl = "{d[2].url}"\n'
            f'[webhook]\nurl = "{receiver.url}"\nsecret_env = "WEBHOOK_SECRET"\ntimeout_s = 5\n'
            f'[api]\nlisten = "127.0.0.1:0"\n'
        )
        agent._config_path = toml
        import os

        os.environ.update(env)
        agent.request_reload()
        agent.request_reload()  # before the first has finished
        await eventually(lambda: sorted(agent._device_tasks) == [d[0].device_id, d[2].device_id])
        await eventually(lambda: all(s.client.connected for s in agent._sessions.values()))
        await asyncio.sleep(0.3)
        assert [len(dev.links) for dev in d] == [1, 0, 1]
        offline = [e["data"] for e in of_type(receiver.events, "device.offline")]
        assert [(o["device_id"], o["reason"]) for o in offline] == [
            (d[1].device_id, "removed from the configuration")
        ]
        assert await agent.store.load_window(d[1].device_id) == {}  # type: ignore[union-attr]
    finally:
        await running.stop()


async def test_a_full_inbox_drops_feedback_then_relists_and_keeps_link_changes(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """With the store stuck, a device's inbox fills: further notifications are dropped (counted,
    said once per episode) and a re-list catches up once the store is back; online/offline
    changes, which no list can bring back, are queued past the bound, in order."""
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    bound = 3
    running = await start_agent(cfg, fleet, env=env, session={"queue_max": bound})
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        session = next(iter(running.agent._sessions.values()))
        store = running.agent.store
        assert store is not None
        device = fleet.devices[0]

        def created() -> set[str]:
            return {
                e["data"]["booking"]["meeting_id"]
                for e in of_type(receiver.events, "booking.created")
            }

        async def stick_store_and_book(tag: str) -> set[str]:
            pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
            await store._writer.execute(f"PRAGMA max_page_count={pages}")
            now = fleet.clock.now()
            return {
                device.calendar.add(
                    now + timedelta(hours=2, minutes=i), 1, title=f"{tag} {i} " + "x" * 2000
                ).meeting_id
                for i in range(8)
            }

        with structlog.testing.capture_logs() as logs:
            made = await stick_store_and_book("held")
            await eventually(lambda: session.dropped_feedback >= 1)
            dropped = session.dropped_feedback
            device.faults.drop()  # the link goes down while the inbox is full...
            # ...and comes back: offline and online both queued, the second past the bound (the
            # worker is still stuck on the item it took).
            await eventually(lambda: session._inputs.qsize() > bound)
            await store._writer.execute("PRAGMA max_page_count=1073741823")  # space is back
            await eventually(lambda: made <= created(), timeout=20)
            await eventually(lambda: len(of_type(receiver.events, "device.online")) >= 2)
            # A second episode is said again: the first one ended once the inbox drained.
            again = await stick_store_and_book("again")
            await eventually(lambda: session.dropped_feedback > dropped)
            await store._writer.execute("PRAGMA max_page_count=1073741823")
            await eventually(lambda: again <= created(), timeout=20)
        links = [e["type"] for e in receiver.events if e["type"].startswith("device.")]
        assert links == ["device.online", "device.offline", "device.online"], links
        full = [e for e in logs if e["event"].startswith("feedback queue full")]
        assert len(full) == 2, full
    finally:
        await running.stop()
