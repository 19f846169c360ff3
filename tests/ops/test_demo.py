"""`edge-agent demo` through the real CLI: it runs, scripts its faults, says what each scripted
outcome was, and fails (exit 1) when one of them did not happen."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from typing import Any

import pytest

from edge_agent.ops.demo import Scripted, _details, _free_slot, _verdict

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports_a_clean_summary() -> None:
    # More devices than the webhook's 8 deliveries in flight, so the drainer has to queue.
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--devices", "12", "--duration", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "bad signatures 0" in out and "dead letters 0" in out
    assert re.search(r"booking\.request_expired\s+1\b", out), out[-2000:]
    assert "(reconciled: missed while disconnected)" in out
    assert re.search(r"latency device event -> receiver: p50 \d+ ms, p99 \d+ ms", out)
    # the three touch-panel requests are confirmed, each with a meeting id
    confirmed = re.findall(r'booking\.created\s+"Ad hoc in [^"]+".*meeting \w{8}.*confirmed', out)
    assert len(confirmed) == 3, out[-3000:]
    assert len(re.findall(r"ok\s+touch-panel request \w+ on \S+ confirmed with meeting", out)) == 3
    # the scripted failure and expiry say what they are
    assert re.search(r"booking\.failed\s+request \w{8}: declined by the calendar", out), out
    assert "no answer within BookingTimeout + grace: expired" in out
    assert "confirmed after 30s  cause" not in out and "cause Decline" not in out
    # calendar-only rooms (Microsoft 365 simulator) and the linked room, printed by room
    assert re.search(r"rooms/room-2 +booking\.created +\"Added in Outlook\".*source microsoft", out)
    assert re.search(r"rooms/room-1 +booking\.moved +\"Planning\".*source microsoft", out)
    assert re.search(
        r"ok\s+calendar-only room room-2: Outlook change delivered as booking\.created", out
    )
    assert re.search(
        r"ok\s+calendar-only room room-1: Outlook change delivered as booking\.moved", out
    )
    assert re.search(r"ok\s+linked room sim-0011: its window came from the calendar", out)
    assert re.search(r"sim-0011 +bookings\.snapshot +source microsoft", out)
    assert "MISSING" not in out
    assert out.rstrip().endswith("OK")


def _env(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": {"device_id": "sim-0001", **data}}


SCRIPT = Scripted(
    confirmed={"u-panel": "sim-0001"},
    declined="u-declined",
    expired="u-expired",
    reconciled_title="Booked during the reboot",
    outlook=[("room-2", "ev-added", "booking.created"), ("room-1", "ev-moved", "booking.moved")],
    linked="sim-0011",
)


def _room(kind: str, room: str, booking_id: str) -> dict[str, Any]:
    """A calendar-only room's event: no device_id, the room and its source."""
    return {
        "type": kind,
        "data": {"room_id": room, "source": "microsoft", "booking": {"id": booking_id}},
    }


def _linked_snapshot(source: str) -> dict[str, Any]:
    return {
        "type": "bookings.snapshot",
        "data": {"device_id": "sim-0011", "room_id": "sim-0011", "source": source, "bookings": []},
    }


ALL_HAPPENED = [
    _env(
        "booking.created",
        booking={"booking_request_uuid": "u-panel", "meeting_id": "m-1"},
        pending_ms=30000,
    ),
    _env("booking.failed", booking_request_uuid="u-declined", cause="Decline", pending_ms=30000),
    _env("booking.request_expired", booking_request_uuid="u-expired"),
    _env(
        "booking.created",
        booking={"title": "Booked during the reboot", "meeting_id": "m-2"},
        reconciled=True,
    ),
    _room("booking.created", "room-2", "ev-added"),
    _room("booking.moved", "room-1", "ev-moved"),
    _linked_snapshot("microsoft"),
]


def test_verdict_all_scripted_outcomes_happened() -> None:
    checks = _verdict(SCRIPT, ALL_HAPPENED)
    assert len(checks) == 7 and all(ok for ok, _ in checks), checks


def test_verdict_fails_when_a_room_change_came_from_another_room_or_source() -> None:
    rest = [e for e in ALL_HAPPENED if e["type"] not in ("booking.moved",)]
    wrong_room = _room("booking.moved", "room-3", "ev-moved")
    from_device = _room("booking.moved", "room-1", "ev-moved")
    from_device["data"]["source"] = "device"
    for stray in (wrong_room, from_device):
        bad = [what for ok, what in _verdict(SCRIPT, [*rest, stray]) if not ok]
        assert bad == [
            (
                "calendar-only room room-1: Outlook change delivered as booking.moved: "
                "no booking.moved from microsoft"
            )
        ]


def test_verdict_fails_when_the_linked_room_window_came_from_the_device() -> None:
    events = [*ALL_HAPPENED, _linked_snapshot("device")]
    bad = [what for ok, what in _verdict(SCRIPT, events) if not ok]
    assert bad == [
        (
            "linked room sim-0011: its window came from the calendar: snapshots from "
            "['device', 'microsoft']"
        )
    ]


@pytest.mark.parametrize("missing", range(len(ALL_HAPPENED)))
def test_verdict_fails_when_a_scripted_outcome_is_missing(missing: int) -> None:
    events = [e for i, e in enumerate(ALL_HAPPENED) if i != missing]
    checks = _verdict(SCRIPT, events)
    assert [ok for ok, _ in checks].count(False) == 1, checks


def test_verdict_fails_when_the_request_was_declined_for_another_cause() -> None:
    events = [e for e in ALL_HAPPENED if e["type"] != "booking.failed"]
    events.append(_env("booking.failed", booking_request_uuid="u-declined", cause="Timeout"))
    bad = [what for ok, what in _verdict(SCRIPT, events) if not ok]
    assert bad == ["request u-declin declined by the calendar: got cause 'Timeout'"]


def test_verdict_fails_when_a_panel_request_was_declined() -> None:
    events = ALL_HAPPENED[1:] + [
        _env("booking.failed", booking_request_uuid="u-panel", cause="Decline")
    ]
    bad = [what for ok, what in _verdict(SCRIPT, events) if not ok]
    assert bad == ["touch-panel request u-panel on sim-0001 confirmed: no booking.created"]


def test_summary_exits_non_zero_when_a_scripted_outcome_is_missing() -> None:
    from edge_agent.ops import demo

    class Fleet:
        def produced(self) -> dict[str, int]:
            return {}

    receiver = demo.Receiver("whsec_", lambda env: None)
    receiver.events = ALL_HAPPENED[1:]  # the panel request was never confirmed
    printer = demo.Printer(Fleet(), 60.0, io.StringIO(), quiet=True)
    out = io.StringIO()
    code = demo._summary(Fleet(), receiver, printer, {}, 0, None, SCRIPT, out)
    assert code == 1
    assert "MISSING touch-panel request u-panel" in out.getvalue()
    assert out.getvalue().rstrip().endswith("PROBLEMS: see above")


def test_failure_lines_say_what_happened() -> None:
    declined = _env("booking.failed", booking_request_uuid="abcdef123", cause="Decline")
    declined["data"]["pending_ms"] = 30000
    assert _details(declined) == "request abcdef12: declined by the calendar"
    timeout = _env("booking.failed", booking_request_uuid="abcdef123", cause="Timeout")
    assert "did not answer within BookingTimeout" in _details(timeout)
    expired = _env("booking.request_expired", booking_request_uuid="abcdef123")
    assert _details(expired) == (
        "request abcdef12: no answer within BookingTimeout + grace: expired"
    )


def test_free_slot_skips_the_bookings_in_the_way() -> None:
    from datetime import UTC, datetime, timedelta

    from device_sim import Booking

    t = datetime(2026, 11, 23, 8, 0, 30, tzinfo=UTC)

    def b(start_min: int, minutes: int) -> Booking:
        start = t.replace(second=0) + timedelta(minutes=start_min)
        return Booking("1", "", "x", start, start + timedelta(minutes=minutes))

    assert _free_slot([], t, 30) == datetime(2026, 11, 23, 8, 1, tzinfo=UTC)
    # busy back to back 08:00-09:00, 09:00-09:20, 09:20-10:00 (given out of order): 10:00
    assert _free_slot([b(60, 20), b(0, 60), b(80, 40)], t, 30) == datetime(
        2026, 11, 23, 10, 0, tzinfo=UTC
    )
    # a gap long enough between two bookings is taken
    assert _free_slot([b(0, 60), b(120, 30)], t, 30) == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_a_bad_start_time_is_refused_with_its_format() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--start", "Monday"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "'Monday' is not an ISO time such as 2026-11-23T07:50:00Z" in r.stderr
