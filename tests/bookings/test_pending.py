from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from zoneinfo import ZoneInfo

from edge_agent.bookings.on_status import on_tick
from edge_agent.bookings.pending import (
    PendingRequest,
    Resolution,
    clamp_booking_timeout,
    deadline_for,
    match_in_list,
    open_request,
    resolve_by_list,
)
from edge_agent.bookings.state import DeviceBookings

from .helpers import booking, utc

T0 = utc(2026, 11, 23, 9, 0, 0)


def req(
    uuid: str = "u-1",
    *,
    title: str | None = "Ad hoc",
    start_h: int | None = 10,
    timeout: int = 60,
    grace: float = 15,
) -> PendingRequest:
    return open_request(
        device_id="room-4a",
        booking_request_uuid=uuid,
        title=title,
        start=utc(2026, 11, 23, start_h) if start_h is not None else None,
        duration_min=30,
        requested_at=T0,
        booking_timeout_s=timeout,
        grace_s=grace,
    )


def test_deadline_clamps_timeout() -> None:
    assert clamp_booking_timeout(None) == 60
    assert clamp_booking_timeout(10) == 60
    assert clamp_booking_timeout(900) == 300
    assert deadline_for(T0, 120, 15) == T0 + timedelta(seconds=135)
    assert req(timeout=30).deadline == T0 + timedelta(seconds=75)
    assert req(timeout=1000).deadline == T0 + timedelta(seconds=315)


def test_a_tick_flags_exactly_the_requests_past_their_deadline() -> None:
    a, b = req("a"), req("b", timeout=300)
    state = DeviceBookings(
        site="s", device_id="room-4a", tz=ZoneInfo("UTC"), pending={"a": a, "b": b}
    )
    assert not on_tick(state, T0 + timedelta(seconds=74)).relist
    step = on_tick(state, T0 + timedelta(seconds=75))
    assert step.relist and [p.booking_request_uuid for p in step.pending_upsert] == ["a"]
    later = on_tick(step.state, T0 + timedelta(seconds=400))
    assert [p.booking_request_uuid for p in later.pending_upsert] == ["b"]


def test_pending_ms_is_the_time_since_the_request() -> None:
    r = req()
    assert Resolution("created", r, T0 + timedelta(milliseconds=4321)).pending_ms == 4321
    # a device clock a little behind the agent's never yields a negative figure
    assert Resolution("failed", r, T0 - timedelta(seconds=1)).pending_ms == 0


def test_resolved_by_list_title_and_start_within_a_minute() -> None:
    r = req()
    near = booking(
        "7", title="Ad hoc", start=utc(2026, 11, 23, 10, 0, 40), end=utc(2026, 11, 23, 10, 30)
    )
    far = booking(
        "8", title="Ad hoc", start=utc(2026, 11, 23, 10, 2), end=utc(2026, 11, 23, 10, 30)
    )
    other = booking("9", title="Other", start=utc(2026, 11, 23, 10), end=utc(2026, 11, 23, 10, 30))
    assert match_in_list(r, [far, other]) is None
    assert match_in_list(r, [far, other, near]) == near
    res = resolve_by_list(r, [near], T0 + timedelta(seconds=20))
    assert res is not None and res.outcome == "created"
    assert res.booking is not None and res.booking.booking_request_uuid == "u-1"
    assert res.pending_ms == 20_000


def test_no_start_time_matches_within_confirmation_window() -> None:
    r = req(start_h=None, title=None)  # "book now", default title
    now_booking = booking(
        "7", title="Room booking", start=utc(2026, 11, 23, 9, 0), end=utc(2026, 11, 23, 9, 30)
    )
    later = booking(
        "8", title="Room booking", start=utc(2026, 11, 23, 9, 5), end=utc(2026, 11, 23, 9, 30)
    )
    assert match_in_list(r, [later]) is None
    assert match_in_list(r, [later, now_booking]) == now_booking


def test_booking_tied_to_another_request_never_matches() -> None:
    r = req()
    taken = booking(
        "7",
        title="Ad hoc",
        start=utc(2026, 11, 23, 10),
        end=utc(2026, 11, 23, 10, 30),
        booking_request_uuid="someone-else",
    )
    assert match_in_list(r, [taken]) is None
    mine = replace(taken, booking_request_uuid="u-1", title="renamed")
    assert match_in_list(r, [mine]) == mine


def test_legacy_expired_only_after_deadline() -> None:
    r = req()
    assert resolve_by_list(r, [], T0 + timedelta(seconds=30)) is None  # still pending
    res = resolve_by_list(r, [], r.deadline)
    assert res is not None and res.outcome == "expired"


def test_row_round_trip() -> None:
    r = req()
    assert PendingRequest.from_row(r.to_row()) == r
    r2 = req(start_h=None, title=None)
    assert PendingRequest.from_row(r2.to_row()) == r2
