"""Restarts, reboots, outages, bad frames and time jumps, end to end."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tests.e2e.harness import agent_config, booking_created, eventually, of_type, start_agent
from tests.receivers import Reply, WebhookReceiver


def _for(receiver: WebhookReceiver, device_id: str, *types: str) -> list[dict]:
    return [e for e in of_type(receiver.events, *types) if e["data"]["device_id"] == device_id]


async def test_agent_restart_while_request_pending(make_fleet, receiver, tmp_path, ca_file, env):
    """The request survives the restart in SQLite; the confirmation that arrived while the
    agent was down is found by the re-list and closes it with its pending time."""
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=10.0)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
    uuid = fleet.devices[0].calendar.request(duration_min=30, title="Across a restart")
    await eventually(lambda: of_type(receiver.events, "booking.requested"))
    assert await running.stop() == 0

    fleet.clock.advance(11)  # BookingCreated fires now, with nobody listening
    await eventually(
        lambda: fleet.produced().get("Bookings.BookingCreated"), "the device's BookingCreated"
    )
    running = await start_agent(cfg, fleet, env=env)
    try:
        store = running.agent.store
        assert store is not None
        created = await booking_created(receiver.events, uuid)
        assert created["booking"]["title"] == "Across a restart"
        assert created["pending_ms"] >= 10_000
        assert await store.load_pending() == []
        assert not of_type(receiver.events, "booking.request_expired")
    finally:
        await running.stop()


async def test_device_reboot_missed_changes_are_reconciled(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", generate_day=True, time_zone="America/New_York")
    dev = fleet.devices[0]
    now = fleet.clock.now()
    keep = dev.calendar.add(now + timedelta(hours=3), 60, title="Stays put", announce=False)
    move = dev.calendar.add(now + timedelta(hours=4), 30, title="Will move", announce=False)
    gone = dev.calendar.add(now + timedelta(hours=5), 30, title="Will go", announce=False)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        before = {
            b["meeting_id"]: b["id"]
            for b in of_type(receiver.events, "bookings.snapshot")[-1]["data"]["bookings"]
        }
        receiver.events.clear()
        dev.faults.reboot(down_s=0.5, not_ready_s=0.5)
        await eventually(lambda: of_type(receiver.events, "device.offline"))
        # "in Outlook", while the device reboots: nobody hears these events
        dev.calendar.move(move.id, now + timedelta(hours=6))
        dev.calendar.delete(gone.id)
        added = dev.calendar.add(now + timedelta(hours=7), 45, title="Made while away")
        await eventually(lambda: of_type(receiver.events, "device.online"), timeout=20)
        await eventually(lambda: of_type(receiver.events, "booking.deleted"), timeout=20)
        # the snapshot closes the same list; it may still be on its way
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"), timeout=20)

        created = of_type(receiver.events, "booking.created")
        moved = of_type(receiver.events, "booking.moved")
        deleted = of_type(receiver.events, "booking.deleted")
        assert [e["data"]["booking"]["meeting_id"] for e in created] == [added.meeting_id]
        assert [e["data"]["booking"]["meeting_id"] for e in moved] == [move.meeting_id]
        assert [e["data"]["booking"]["meeting_id"] for e in deleted] == [gone.meeting_id]
        assert all(e["data"]["reconciled"] for e in created + moved + deleted)
        # hybrid Ids changed in the reboot: matched by MeetingId, no spurious delete/create
        after = {
            b["meeting_id"]: b["id"]
            for b in of_type(receiver.events, "bookings.snapshot")[-1]["data"]["bookings"]
        }
        assert keep.meeting_id in after
        assert after[keep.meeting_id] != before[keep.meeting_id]
    finally:
        await running.stop()


async def test_window_rolls_over_at_local_midnight_on_a_dst_day(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """Europe/Oslo leaves summer time at 03:00 on 2026-10-25: that day has 25 hours."""
    start = datetime(2026, 10, 24, 21, 59, 0, tzinfo=UTC)  # 23:59 in Oslo (UTC+2)
    fleet = await make_fleet(mode="hybrid", time_zone="Europe/Oslo", start=start)
    dev = fleet.devices[0]
    # ends before Oslo's midnight: leaves the window at the roll-over, without a deletion
    dev.calendar.add(start - timedelta(hours=2), 30, title="Yesterday evening", announce=False)
    # 07:30 Oslo (CET) on the 26th: outside the first window, inside the next one
    dev.calendar.add(datetime(2026, 10, 26, 6, 30, tzinfo=UTC), 20, title="Monday", announce=False)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        first = of_type(receiver.events, "bookings.snapshot")[-1]["data"]
        assert first["window"] == {
            "start": "2026-10-23T22:00:00.000Z",  # 24 Oct 00:00 CEST
            "end": "2026-10-25T06:00:00.000Z",  # 25 Oct 00:00 CEST + 8 h
        }
        assert [b["title"] for b in first["bookings"]] == ["Yesterday evening"]
        fleet.clock.advance(120)  # past local midnight
        await eventually(
            lambda: (
                of_type(receiver.events, "bookings.snapshot")[-1]["data"]["window"]
                != first["window"]
            )
        )
        second = of_type(receiver.events, "bookings.snapshot")[-1]["data"]
        assert second["window"] == {
            "start": "2026-10-24T22:00:00.000Z",  # 25 Oct 00:00 CEST
            "end": "2026-10-26T07:00:00.000Z",  # 26 Oct 00:00 CET (25 h later) + 8 h
        }
        assert [b["title"] for b in second["bookings"]] == ["Monday"]
        assert not of_type(receiver.events, "booking.deleted")
    finally:
        await running.stop()


async def test_receiver_down_then_back_delivers_everything(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", devices=3)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    drainer = {"backoff": __import__("edge_agent.backoff").backoff.Backoff(0.05, 0.2)}
    running = await start_agent(cfg, fleet, env=env, drainer=drainer)
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 3)
        await receiver.go_down()
        now = fleet.clock.now()
        made = []
        for dev in fleet.devices:
            for h in range(1, 6):
                made.append(
                    dev.calendar.add(now + timedelta(hours=h), 30, title=f"m{h}").meeting_id
                )
        await asyncio.sleep(0.5)  # deliveries fail meanwhile
        await receiver.come_back()
        await eventually(
            lambda: (
                {
                    e["data"]["booking"]["meeting_id"]
                    for e in of_type(receiver.events, "booking.created")
                }
                >= set(made)
            ),
            timeout=30,
        )
        # order is kept per device: each device's created events arrive in the order made
        for dev in fleet.devices:
            titles = [
                e["data"]["booking"]["title"]
                for e in _for(receiver, dev.device_id, "booking.created")
            ]
            assert titles == [f"m{h}" for h in range(1, 6)]
        assert receiver.bad_signatures == 0
    finally:
        await running.stop()


async def test_client_error_goes_to_dead_letter(make_fleet, receiver, tmp_path, ca_file, env):
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    from edge_agent.backoff import Backoff

    rejected = []

    def refuse_created(d):
        if b'"booking.created"' in d.body:
            rejected.append(d.webhook_id)
            return Reply(422)
        return None

    receiver.responder = refuse_created
    running = await start_agent(
        cfg, fleet, env=env, drainer={"backoff": Backoff(0.01, 0.05)}
    )
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        fleet.devices[0].calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="Refused")
        store = running.agent.store
        assert store is not None

        async def dead() -> list[dict]:
            return await store.dead_letters()

        async with asyncio.timeout(15):
            while not await dead():
                await asyncio.sleep(0.05)
        letters = await dead()
        assert len(letters) == 1 and letters[0]["type"] == "booking.created"
        assert len(rejected) == 1  # refused for good: set aside at once, not tried again
        # the device's later events still flow: a poison event does not block the device
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 2)
    finally:
        await running.stop()


async def test_malformed_frames_are_survived(make_fleet, receiver, tmp_path, ca_file, env):
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        dev.faults.malformed(count=8)  # every kind, twice
        dev.calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="After the garbage")
        await eventually(lambda: of_type(receiver.events, "booking.created"))
        info = running.agent.devices()[0]
        assert info["connected"] and info["malformed"] >= 8
        assert len(of_type(receiver.events, "device.online")) == 1  # never reconnected
    finally:
        await running.stop()


async def test_full_disk_holds_events_and_delivers_them_when_space_returns(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        store = running.agent.store
        assert store is not None
        session = next(iter(running.agent._sessions.values()))
        # Cap the database at its current size: every commit now fails as on a full disk.
        pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
        await store._writer.execute(f"PRAGMA max_page_count={pages}")
        now = fleet.clock.now()
        made = [
            fleet.devices[0]
            .calendar.add(
                now + timedelta(hours=1 + i), 30, title=f"during the full disk {i} " + "x" * 3000
            )
            .meeting_id
            for i in range(3)
        ]
        await eventually(lambda: session.store_errors >= 2, timeout=20)
        assert not of_type(receiver.events, "booking.created")
        await store._writer.execute("PRAGMA max_page_count=1073741823")  # space is back
        await eventually(
            lambda: (
                {
                    e["data"]["booking"]["meeting_id"]
                    for e in of_type(receiver.events, "booking.created")
                }
                >= set(made)
            ),
            timeout=30,
        )
        # held and committed as they came, not rebuilt by a re-list
        assert not [
            e for e in of_type(receiver.events, "booking.created") if e["data"].get("reconciled")
        ]
        info = running.agent.devices()[0]
        assert info["connected"]
    finally:
        await running.stop()
