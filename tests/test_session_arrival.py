"""DeviceSession: inputs are judged by when they arrived, not by when the worker gets to them;
every drop is counted and warned about (issue 10, "a backlog becomes silent loss").

Reuses the fake link, the recording store and the ``running`` fixture of tests/test_session.py.
The fake link's feedback carries no stamp of its own unless a test gives it one (``feed_at``,
as the real client's reader does); unstamped, the session reads its clock when the fake's
"reader" hands the frame over, which is the moment the test advanced the clock to.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog

from edge_agent import session as session_module
from edge_agent.clock import utc_iso
from edge_agent.metrics import REGISTRY
from edge_agent.xapi.protocol import Feedback
from tests.bookings.helpers import list_entry
from tests.test_session import (  # noqa: F401  (running is a fixture)
    DEVICE,
    WAIT_S,
    FakeLink,
    Running,
    online_and_listed,
    outbox,
    running,
)

START = {"Id": "1", "MeetingId": "A"}  # every Start of booking A looks the same


def feed_at(link: FakeLink, arrived_at: datetime, name: str, **body: Any) -> None:
    """An ``Event Bookings <name>`` notification stamped as the real client's reader does."""
    for query, handler, _ in link.handlers:
        if query == "Event Bookings":
            handler(Feedback({"Event": {"Bookings": {name: body}}}, arrived_at))


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "edge_agent_feedback_dropped_total", {"device": DEVICE, "reason": reason}
    )
    return value or 0.0


async def with_booking_a(r: Running) -> None:
    r.link.bookings = [
        list_entry(
            Id="1", MeetingId="A", StartTime="2026-11-23T09:00:00Z", EndTime="2026-11-23T10:00:00Z"
        )
    ]
    await online_and_listed(r)


async def test_events_sent_apart_survive_a_stuck_store(running: Running) -> None:
    """The store is on a full disk while the device sends the same-looking event five times,
    6 s apart: once space is back the worker applies them milliseconds apart, and all five are
    delivered (before: judged by processing time, four were dropped as duplicates)."""
    r = running
    await with_booking_a(r)
    r.recorder.gate.clear()  # every commit blocks: the disk is full
    r.link.feed("Start", **START)
    r.recorder.entered.clear()
    await asyncio.wait_for(r.recorder.entered.wait(), WAIT_S)  # the worker is stuck on #1
    arrivals = [r.clock.now()]
    for _ in range(4):
        r.clock.advance(6)
        arrivals.append(r.clock.now())
        r.link.feed("Start", **START)
    r.clock.advance(120)  # the store stays stuck two minutes more
    r.recorder.gate.set()
    started = [await r.recorder.next_with("booking.started") for _ in arrivals]
    observed = [c.events[0]["data"]["observed_at"] for c in started]
    assert observed == [utc_iso(t) for t in arrivals]
    assert r.session.duplicates_dropped == 0 and r.session.info()["duplicates_dropped"] == 0
    assert [e["type"] for e in outbox(r.path)].count("booking.started") == 5


async def test_observed_at_is_the_arrival_stamp_not_the_processing_time(running: Running) -> None:
    r = running
    await with_booking_a(r)
    arrived = r.clock.now() + timedelta(seconds=1)
    r.clock.advance(180)  # processed three minutes after the frame arrived
    feed_at(r.link, arrived, "Start", **START)
    (env,) = (await r.recorder.next_with("booking.started")).events
    assert env["data"]["observed_at"] == utc_iso(arrived)
    assert env["timestamp"] == utc_iso(r.clock.now())
    # A request's deadline runs from when the device sent it, not from when it was processed.
    feed_at(r.link, arrived, "BookingRequested", BookingRequestUUID="u-1", Duration=30)
    (req,) = (await r.recorder.next_with("booking.requested")).events
    deadline = arrived + timedelta(seconds=60 + 30)  # BookingTimeout + request_grace_s
    assert req["data"]["request"]["deadline"] == utc_iso(deadline)
    assert req["data"]["observed_at"] == utc_iso(arrived)


async def test_link_changes_and_lists_carry_when_they_were_seen(running: Running) -> None:
    r = running
    await online_and_listed(r)
    r.recorder.gate.clear()
    seen = r.clock.now()
    r.link.go_offline("connection reset")
    r.clock.advance(30)  # the store holds the offline for 30 s
    r.recorder.gate.set()
    (off,) = (await r.recorder.next_with("device.offline")).events
    assert off["data"]["observed_at"] == utc_iso(seen)
    assert off["timestamp"] == utc_iso(r.clock.now())


async def test_real_duplicates_are_dropped_counted_and_warned_about(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = running
    await with_booking_a(r)
    before = dropped("duplicate")
    with structlog.testing.capture_logs() as logs:
        at = r.clock.now()
        for i in range(3):  # the device (or a proxy) repeats the frame within the same second
            feed_at(r.link, at + timedelta(milliseconds=300 * i), "Start", **START)
        r.link.feed("End", **START)  # a different event: once it is stored, the repeats are done
        await r.recorder.next_with("booking.ended")
        assert r.session.duplicates_dropped == 2
        assert r.session.info()["duplicates_dropped"] == 2
        assert dropped("duplicate") == before + 2
        # One warning for the first; the second waits out the interval (rate-limited)...
        warned = [e for e in logs if e["event"].startswith("dropped device events as duplic")]
        assert [(e["log_level"], e["dropped"]) for e in warned] == [("warning", 1)]
        assert "Bookings" in warned[0]["last"]
        # ...and is said, with how many, at the first input after it.
        monkeypatch.setattr(session_module, "DUPLICATE_WARNING_INTERVAL_S", 0.0)
        r.clock.advance(10)
        r.link.feed("Start", **START)
        await r.recorder.next_with("booking.started")
        warned = [e for e in logs if e["event"].startswith("dropped device events as duplic")]
        assert [(e["dropped"], e["dropped_total"]) for e in warned] == [(1, 1), (1, 2)]
    started = [e for e in outbox(r.path) if e["type"] == "booking.started"]
    assert len(started) == 2  # the first and the one 10 s later; the repeats were not stored


@pytest.mark.parametrize("running", [{"queue_max": 4}], indirect=True)
async def test_overflow_drops_are_counted_and_warned_about(running: Running) -> None:
    r = running
    await online_and_listed(r)
    before = dropped("queue_full")
    with structlog.testing.capture_logs() as logs:
        r.recorder.gate.clear()
        r.link.feed("BookingRequested", BookingRequestUUID="u-0", Duration=30)
        r.recorder.entered.clear()
        await asyncio.wait_for(r.recorder.entered.wait(), WAIT_S)
        for i in range(1, 11):
            r.link.feed("BookingRequested", BookingRequestUUID=f"u-{i}", Duration=30)
        assert r.session.dropped_feedback == 6 and dropped("queue_full") == before + 6
        r.recorder.gate.set()
        await r.recorder.next_with("bookings.snapshot")  # the catch-up list
    full = [e for e in logs if e["event"].startswith("feedback queue full")]
    drained = [e for e in logs if e["event"].startswith("feedback queue drained")]
    assert len(full) == 1 and full[0]["log_level"] == "warning"
    assert [(e["log_level"], e["dropped"]) for e in drained] == [("warning", 6)]

