"""Arrival known only as a span (issue 10 item 1, the SIGSTOP case).

After a stall the frames the kernel buffered are read back to back on resume: the reader marks
them ``arrived_after`` (the stall's start) .. ``arrived_at`` (the read). The dedupe drops an
event only when it surely arrived within the horizon of its twin; the reader's
:class:`CatchUp` says which frames were read in the catch-up.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from edge_agent.bookings import DeviceBookings, on_event
from edge_agent.bookings.on_event import DUPLICATE_HORIZON
from edge_agent.xapi.protocol import CATCH_UP_QUIET_S, STALL_AFTER_S, CatchUp

from .helpers import list_entry
from .test_device import NOW, ev, listed, state, types  # noqa: F401 (state is a fixture)

START = ev("Start", Id="1", MeetingId="A")
S = timedelta(seconds=1)
MS = timedelta(milliseconds=1)


def with_a(state: DeviceBookings) -> DeviceBookings:
    return listed(state, list_entry(Id="1", MeetingId="A")).state


def test_identical_events_read_in_a_catch_up_are_all_kept(state: DeviceBookings) -> None:
    """Stopped 20 s: the device sent Start at 1 s, 7 s and 13 s (the kernel buffered them);
    on resume all three are read within 2 ms, each known only to have arrived since the stall
    began. None is dropped, and each after the first says it was kept (before: 1 of 3)."""
    s = with_a(state)
    stall_began = NOW
    resumed = NOW + 20 * S
    steps = []
    for i in range(3):
        step = on_event(
            s, START, resumed + i * MS, arrived_at=resumed + i * MS, arrived_after=stall_began
        )
        steps.append(step)
        s = step.state
    assert [types(x) for x in steps] == [["booking.started"]] * 3
    assert not any(x.duplicate for x in steps)
    assert [x.kept_uncertain for x in steps] == [False, True, True]
    assert "arrival uncertain" in steps[1].notes[-1]


def test_a_short_stall_still_dedupes_true_repeats(state: DeviceBookings) -> None:
    """A 1.5 s stall: two identical frames read in its catch-up arrived at most 1.5 s apart,
    surely within the 5 s horizon, so the second is the device's repeat and is dropped."""
    s = with_a(state)
    first = on_event(s, START, NOW + 2 * S, arrived_at=NOW + 1500 * MS, arrived_after=NOW)
    second = on_event(
        first.state, START, NOW + 2 * S, arrived_at=NOW + 1501 * MS, arrived_after=NOW
    )
    assert types(first) == ["booking.started"]
    assert second.duplicate and second.events == () and not second.kept_uncertain


def test_a_certain_twin_after_a_catch_up_is_kept(state: DeviceBookings) -> None:
    """Start read in the catch-up after a 20 s stop, then its twin 1 s later, after the
    catch-up: the first may have been sent 20 s before the second; the second is kept."""
    s = with_a(state)
    resumed = NOW + 20 * S
    buffered = on_event(s, START, resumed, arrived_at=resumed, arrived_after=NOW)
    fresh = on_event(buffered.state, START, resumed + S, arrived_at=resumed + S)
    assert types(fresh) == ["booking.started"] and fresh.kept_uncertain and not fresh.duplicate


def test_an_uncertain_twin_read_soon_after_a_certain_event_is_a_repeat(
    state: DeviceBookings,
) -> None:
    """Start read just before a 3 s stall, its twin in the catch-up: the read bounds the twin's
    arrival, surely within 5 s of the first, so it is the device's repeat."""
    s = with_a(state)
    before = on_event(s, START, NOW, arrived_at=NOW)
    twin = on_event(
        before.state, START, NOW + 3 * S, arrived_at=NOW + 3 * S, arrived_after=NOW + 10 * MS
    )
    assert twin.duplicate and not twin.kept_uncertain


def test_events_farther_apart_than_the_horizon_are_neither_dropped_nor_flagged(
    state: DeviceBookings,
) -> None:
    s = with_a(state)
    first = on_event(s, START, NOW, arrived_at=NOW)
    later = NOW + DUPLICATE_HORIZON + MS
    second = on_event(first.state, START, later, arrived_at=later, arrived_after=NOW + S)
    assert not second.duplicate and not second.kept_uncertain
    assert types(second) == ["booking.started"]


def test_an_arrived_after_later_than_arrived_at_is_clamped(state: DeviceBookings) -> None:
    """A wall clock stepped back mid-stall may give a span upside down: taken as the point."""
    s = with_a(state)
    first = on_event(s, START, NOW, arrived_at=NOW)
    repeat = on_event(first.state, START, NOW, arrived_at=NOW + S, arrived_after=NOW + 60 * S)
    assert repeat.duplicate


# --- the reader's catch-up -------------------------------------------------------------------

BEAT = 0.25


def test_frames_read_while_the_heartbeat_is_overdue_are_uncertain() -> None:
    """Stopped at loop time 100 (the heartbeat's last turn), resumed at 108: the frames read
    before the heartbeat has turned again are marked from 100; the catch-up goes on while they
    come back to back, and ends at the first frame after a quiet gap."""
    c = CatchUp()
    assert c.read(99.9, beat=99.9, beat_interval=BEAT, stall=None) is None
    assert c.read(108.0, beat=100.0, beat_interval=BEAT, stall=None) == 100.0
    assert c.read(108.001, beat=100.0, beat_interval=BEAT, stall=None) == 100.0
    # the heartbeat turned and saw the stall; the burst goes on
    assert c.read(108.01, beat=108.005, beat_interval=BEAT, stall=(100.0, 108.005)) == 100.0
    assert c.read(108.02, beat=108.005, beat_interval=BEAT, stall=(100.0, 108.005)) == 100.0
    quiet = 108.02 + CATCH_UP_QUIET_S
    assert c.read(quiet, beat=quiet, beat_interval=BEAT, stall=(100.0, 108.005)) is None
    assert c.read(quiet + 0.001, beat=quiet, beat_interval=BEAT, stall=(100.0, 108.005)) is None


def test_a_link_first_read_right_after_a_stall_is_in_the_catch_up() -> None:
    c = CatchUp()
    assert c.read(50.0, beat=50.0, beat_interval=BEAT, stall=None) is None
    # the heartbeat saw the stall (60..70) before this link's buffered frame was read
    assert c.read(70.01, beat=70.0, beat_interval=BEAT, stall=(60.0, 70.0)) == 60.0


def test_a_link_quiet_through_and_after_a_stall_is_certain() -> None:
    c = CatchUp()
    assert c.read(50.0, beat=50.0, beat_interval=BEAT, stall=None) is None
    late = 70.0 + CATCH_UP_QUIET_S + 1
    assert c.read(late, beat=late, beat_interval=BEAT, stall=(60.0, 70.0)) is None


def test_a_heartbeat_late_by_less_than_the_bound_is_no_stall() -> None:
    c = CatchUp()
    beat = 10.0 - BEAT - STALL_AFTER_S + 0.01
    assert c.read(10.0, beat=beat, beat_interval=BEAT, stall=None) is None


def test_a_second_stall_during_a_catch_up_keeps_the_earliest_start() -> None:
    c = CatchUp()
    assert c.read(108.0, beat=100.0, beat_interval=BEAT, stall=None) == 100.0
    assert c.read(110.0, beat=108.1, beat_interval=BEAT, stall=(100.0, 108.1)) == 100.0


# --- the loop's heartbeat (the client's, one per loop) ----------------------------------------


async def test_the_heartbeat_sees_a_blocked_loop_as_a_stall() -> None:
    """The loop is blocked 1.5 s (past BEAT_INTERVAL_S + STALL_AFTER_S): until the heartbeat
    turns again a reader sees it overdue, and then it records the stall's span."""
    from edge_agent.xapi.client import BEAT_INTERVAL_S, _LoopBeat

    beat = _LoopBeat.acquire()
    try:
        before = beat.last
        time.sleep(BEAT_INTERVAL_S + STALL_AFTER_S + 0.25)  # the stall itself, not a wait
        c = CatchUp()
        assert c.read(beat.time(), beat.last, BEAT_INTERVAL_S, beat.stall) == before
        for _ in range(100):  # the overdue turn runs within a loop iteration or two
            if beat.stalls:
                break
            await asyncio.sleep(0)
        assert beat.stalls == 1 and beat.stall is not None and beat.stall[0] == before
        assert c.read(beat.time(), beat.last, BEAT_INTERVAL_S, beat.stall) == before
    finally:
        _LoopBeat.release()
