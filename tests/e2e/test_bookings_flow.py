"""Simulator -> agent -> webhook receiver: the booking life cycle, end to end."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tests.e2e.harness import agent_config, booking_created, eventually, of_type, start_agent
from tests.receivers import WebhookReceiver


def _types(receiver: WebhookReceiver) -> list[str]:
    return [e["type"] for e in receiver.events]


async def test_snapshot_and_online_on_connect(make_fleet, receiver, tmp_path, ca_file, env):
    fleet = await make_fleet(devices=2, mode="hybrid", generate_day=True, time_zone="Europe/Oslo")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 2)
        assert receiver.bad_signatures == 0
        for dev in fleet.devices:
            snaps = [
                e
                for e in of_type(receiver.events, "bookings.snapshot")
                if e["data"]["device_id"] == dev.device_id
            ]
            snap = snaps[-1]["data"]
            listed = dev.calendar.list()
            in_list = {b["Id"] for b in listed.get("Booking", [])}
            got = {b["id"] for b in snap["bookings"]}
            assert got and got <= in_list
            assert set(snap["window"]) == {"start", "end"}
            for b in snap["bookings"]:
                assert b["start"].endswith("Z") and b["end"].endswith("Z")
                assert set(b) >= {
                    "id",
                    "meeting_id",
                    "title",
                    "start",
                    "end",
                    "organizer",
                    "privacy",
                    "platform",
                    "join_url",
                }
        online = of_type(receiver.events, "device.online")
        assert {e["data"]["device_id"] for e in online} == {d.device_id for d in fleet.devices}
        # the window is also readable from the local API's source, the store
        store = running.agent.store
        assert store is not None
        assert await store.load_window(fleet.devices[0].device_id)
    finally:
        assert await running.stop() == 0


async def test_requested_then_created_carries_uuid_and_pending_ms(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=2.0)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        uuid = dev.calendar.request(duration_min=30, title="Ad hoc")
        await eventually(lambda: of_type(receiver.events, "booking.requested"))
        # the request is pending in the store until the meeting ID arrives
        store = running.agent.store
        assert store is not None
        await eventually(lambda: bool(running.agent.devices()[0]["pending_requests"]))
        assert [p.booking_request_uuid for p in await store.load_pending()] == [uuid]
        fleet.clock.advance(3)
        created = await booking_created(receiver.events, uuid)
        requested = of_type(receiver.events, "booking.requested")[0]["data"]
        assert requested["booking"]["booking_request_uuid"] == uuid
        assert created["booking"]["booking_request_uuid"] == uuid
        assert created["booking"]["meeting_id"]
        assert created["pending_ms"] >= 2000
        assert created["xevent"] == "Bookings.BookingCreated"
        await eventually(lambda: not running.agent.devices()[0]["pending_requests"])
        assert await store.load_pending() == []
    finally:
        await running.stop()


async def test_requested_then_declined_is_failed(make_fleet, receiver, tmp_path, ca_file, env):
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=1.0)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        dev.calendar.decline_next()
        uuid = dev.calendar.request(title="Will be declined")
        fleet.clock.advance(2)
        await eventually(lambda: of_type(receiver.events, "booking.failed"))
        failed = of_type(receiver.events, "booking.failed")[0]["data"]
        assert failed["booking_request_uuid"] == uuid
        assert failed["cause"] == "Decline"
        assert not of_type(receiver.events, "booking.created")
    finally:
        await running.stop()


async def test_confirmation_slower_than_timeout_fails_with_timeout(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", confirm_delay_s=90.0, booking_timeout_s=60)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        uuid = fleet.devices[0].calendar.request(title="Slow Exchange")
        await eventually(lambda: of_type(receiver.events, "booking.requested"))
        fleet.clock.advance(61)
        await eventually(lambda: of_type(receiver.events, "booking.failed"))
        failed = of_type(receiver.events, "booking.failed")[0]["data"]
        assert (failed["booking_request_uuid"], failed["cause"]) == (uuid, "Timeout")
    finally:
        await running.stop()


async def test_request_without_answer_expires_after_deadline(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """Legacy software never sends BookingCreated/Failed; a declined request leaves no booking,
    so only the deadline (BookingTimeout + grace) and a re-list can close it: expired."""
    fleet = await make_fleet(mode="hybrid", profile="legacy", confirm_delay_s=1.0)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        dev.calendar.decline_next()
        uuid = dev.calendar.request(title="Nobody answers")
        await eventually(lambda: of_type(receiver.events, "booking.requested"))
        fleet.clock.advance(30)
        await asyncio.sleep(0.5)
        assert not of_type(receiver.events, "booking.request_expired")  # not before the deadline
        fleet.clock.advance(40)  # past 60 s BookingTimeout + 5 s grace
        await eventually(lambda: of_type(receiver.events, "booking.request_expired"))
        expired = of_type(receiver.events, "booking.request_expired")[0]["data"]
        assert expired["booking_request_uuid"] == uuid
        assert not of_type(receiver.events, "booking.created", "booking.failed")
    finally:
        await running.stop()


async def test_legacy_device_request_closed_by_relisting(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", profile="legacy", confirm_delay_s=2.0)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        start = (fleet.clock.now() + timedelta(minutes=5)).replace(second=0, microsecond=0)
        uuid = dev.calendar.request(duration_min=30, start=start, title="Legacy ad hoc")
        await eventually(lambda: of_type(receiver.events, "booking.requested"))
        fleet.clock.advance(3)  # the calendar confirms; a legacy device says only "Updated"
        created = await booking_created(receiver.events, uuid, timeout=20)
        assert created["booking"]["booking_request_uuid"] == uuid
        assert created["booking"]["title"] == "Legacy ad hoc"
        # pending from the request until the re-list found it: at least the calendar's 2 s
        assert created["pending_ms"] >= 2000
    finally:
        await running.stop()


async def test_outlook_changes_are_forwarded(make_fleet, receiver, tmp_path, ca_file, env):
    fleet = await make_fleet(mode="hybrid")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        dev = fleet.devices[0]
        now = fleet.clock.now()
        b = dev.calendar.add(now + timedelta(hours=1), 30, title="Board meeting")
        await eventually(lambda: of_type(receiver.events, "booking.created"))
        dev.calendar.move(b.id, now + timedelta(hours=2))
        await eventually(lambda: of_type(receiver.events, "booking.moved"))
        dev.calendar.delete(b.id)
        await eventually(lambda: of_type(receiver.events, "booking.deleted"))
        moved = of_type(receiver.events, "booking.moved")[0]["data"]["booking"]
        assert moved["meeting_id"] == b.meeting_id
        await eventually(
            lambda: of_type(receiver.events, "bookings.snapshot")[-1]["data"]["bookings"] == []
        )
    finally:
        await running.stop()
