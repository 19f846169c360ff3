"""Arrival, not processing, decides what a device event means (issue 10, "a backlog becomes
silent loss"): the simulator -> the real client's reader (which stamps each frame) -> the
session -> a store on a full disk -> the receiver."""

from __future__ import annotations

from datetime import timedelta

from edge_agent.clock import parse_utc
from edge_agent.metrics import REGISTRY
from tests.e2e.harness import agent_config, eventually, of_type, start_agent

SENT = 10


def started(events: list[dict], meeting_id: str) -> list[dict]:
    return [
        e
        for e in of_type(events, "booking.started")
        if (e["data"].get("booking") or {}).get("meeting_id") == meeting_id
    ]


async def test_a_full_disk_does_not_turn_events_sent_apart_into_duplicates(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """The device sends the same-looking ``Start`` ten times, 6 s apart, while every commit
    fails (full disk). Once space is back the session applies them milliseconds apart: all ten
    are delivered, each observed when it arrived (before: 1 of 10, the rest "duplicates")."""
    fleet = await make_fleet(mode="local")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        device = fleet.devices[0]
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        booking = device.calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="Standup")
        session = next(iter(running.agent._sessions.values()))
        await eventually(lambda: booking_key_in(session, booking.meeting_id))
        store = running.agent.store
        assert store is not None
        pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
        await store._writer.execute(f"PRAGMA max_page_count={pages}")  # the disk is full...
        for i in range(8):  # ...which big bookings soon find out: the worker is stuck
            start = fleet.clock.now() + timedelta(hours=2, minutes=i)
            device.calendar.add(start, 1, title=f"fill {i} " + "x" * 2000)
        await eventually(lambda: session.store_errors >= 1)
        queued = session._inputs.qsize()
        fields = {"Id": booking.id, "MeetingId": booking.meeting_id}
        sent = []
        for _ in range(SENT):
            frames = session.client.counters.frames
            sent.append(fleet.clock.now())
            device.core.emit_event("Start", fields)
            await eventually(lambda: session.client.counters.frames > frames)  # it arrived
            fleet.clock.advance(6)
        assert session._inputs.qsize() >= queued + SENT  # all held behind the stuck store
        await store._writer.execute("PRAGMA max_page_count=1073741823")  # space is back
        await eventually(lambda: len(started(receiver.events, booking.meeting_id)) >= SENT)
        got = started(receiver.events, booking.meeting_id)
        observed = sorted(parse_utc(e["data"]["observed_at"]) for e in got)
        # Each observed when its frame arrived: after it was sent, before the clock moved on.
        ms = timedelta(milliseconds=1)
        assert all(t - ms <= o < t + timedelta(seconds=6) for t, o in zip(sent, observed))
        # ...and all processed after the store recovered, close together.
        assert all(parse_utc(e["timestamp"]) >= sent[-1] for e in got)
        assert session.duplicates_dropped == 0
    finally:
        await running.stop()


async def test_a_repeated_frame_is_dropped_counted_and_warned_about(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """The device sends one event twice (the simulator's ``duplicate`` fault): the copy is
    dropped, and /v1/devices, the metric and a warning say so."""
    fleet = await make_fleet(mode="local")
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        device = fleet.devices[0]
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        booking = device.calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="x")
        session = next(iter(running.agent._sessions.values()))
        await eventually(lambda: booking_key_in(session, booking.meeting_id))
        labels = {"device": session.device_id, "reason": "duplicate"}
        before = REGISTRY.get_sample_value("edge_agent_feedback_dropped_total", labels) or 0.0
        device.faults.duplicate(count=1)
        device.core.emit_event("Start", {"Id": booking.id, "MeetingId": booking.meeting_id})
        await eventually(lambda: session.duplicates_dropped == 1)
        assert len(started(receiver.events, booking.meeting_id)) == 1
        (info,) = [d for d in running.agent.devices() if d["id"] == session.device_id]
        assert info["duplicates_dropped"] == 1
        after = REGISTRY.get_sample_value("edge_agent_feedback_dropped_total", labels)
        assert after == before + 1
    finally:
        await running.stop()


def booking_key_in(session, meeting_id: str) -> bool:
    return session.state is not None and meeting_id in session.state.window
