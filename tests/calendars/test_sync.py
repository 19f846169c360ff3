"""The pure window logic, with pinned times (never the wall clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.sync import (
    DeltaItem,
    Removal,
    RoundPlan,
    SyncState,
    Unreadable,
    Upsert,
    apply_round,
    calendar_window,
    next_roll,
    plan_round,
    resync_required,
    room_removed,
)

OSLO = ZoneInfo("Europe/Oslo")
NOW = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # Monday 09:30 in Oslo


def bk(
    bid: str, h: float, dur_h: float = 1.0, day: int = 23, month: int = 11, **kw: object
) -> CalendarBooking:
    start = datetime(2026, month, day, tzinfo=UTC) + timedelta(hours=h)
    end = start + timedelta(hours=dur_h)
    return CalendarBooking(id=bid, start=start, end=end, **kw)  # type: ignore[arg-type]


def full(now: datetime = NOW, state: SyncState | None = None) -> RoundPlan:
    return plan_round(state or SyncState(), now, OSLO, 7)


def types(result: object) -> list[tuple[str, str]]:
    return [(c.type, c.booking.id) for c in result.changes]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the window


def test_window_is_local_days_in_room_zone() -> None:
    w = calendar_window(NOW, OSLO, 7)
    assert w == WindowBounds(
        datetime(2026, 11, 22, 23, tzinfo=UTC), datetime(2026, 11, 29, 23, tzinfo=UTC)
    )
    # 23:30 UTC is already Tuesday in Oslo.
    late = calendar_window(datetime(2026, 11, 23, 23, 30, tzinfo=UTC), OSLO, 1)
    assert late.start == datetime(2026, 11, 23, 23, tzinfo=UTC)


def test_window_across_spring_dst_is_an_hour_short() -> None:
    # Europe/Oslo springs forward on Sunday 2026-03-29.
    w = calendar_window(datetime(2026, 3, 28, 12, tzinfo=UTC), OSLO, 2)
    assert w.start == datetime(2026, 3, 27, 23, tzinfo=UTC)
    assert w.end == datetime(2026, 3, 29, 22, tzinfo=UTC)
    assert w.end - w.start == timedelta(hours=47)


def test_window_on_autumn_dst_day_is_an_hour_long() -> None:
    w = calendar_window(datetime(2026, 10, 25, 12, tzinfo=UTC), OSLO, 1)
    assert w.end - w.start == timedelta(hours=25)


def test_window_rejects_zero_horizon() -> None:
    with pytest.raises(ValueError, match="horizon_days"):
        calendar_window(NOW, OSLO, 0)


def test_next_roll_is_local_midnight() -> None:
    assert next_roll(NOW, OSLO) == datetime(2026, 11, 23, 23, tzinfo=UTC)


# --------------------------------------------------------------------------- rounds


def test_first_round_is_full_and_reports_the_window_as_its_snapshot_only() -> None:
    """As a device's first list: nothing was reported before, so no booking.created per
    meeting; the snapshot carries the window (DESIGN.md: changes are what was missed)."""
    plan = full()
    assert plan.full
    far = bk("far", 0, day=30)  # after the 7-day window
    r = apply_round(
        SyncState(), plan, [Upsert(bk("a", 9)), Upsert(bk("b", 7)), Upsert(far)], "L1", NOW
    )
    assert types(r) == []
    assert r.snapshot is not None and [b.id for b in r.snapshot] == ["b", "a"]
    assert r.state.delta_link == "L1" and r.state.window == plan.bounds


def test_a_full_listing_after_the_first_reports_what_it_finds_new() -> None:
    """Only the very first round is silent: a resync (410) of a room synced before reports the
    meetings it had not seen as created, and the vanished ones as deleted."""
    first = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    r = apply_round(resync_required(first), full(), [Upsert(bk("b", 11))], "L2", NOW)
    assert types(r) == [("booking.created", "b"), ("booking.deleted", "a")]
    # A state with a window but no bookings (an empty room synced before) is not a first round.
    empty = apply_round(SyncState(), full(), [], "L1", NOW).state
    r = apply_round(resync_required(empty), full(), [Upsert(bk("c", 13))], "L2", NOW)
    assert types(r) == [("booking.created", "c")]


def test_delta_round_continues_from_link() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    plan = plan_round(s, NOW + timedelta(minutes=1), OSLO, 7)
    assert plan.delta_link == "L1" and not plan.full


def test_move_delete_cancel_and_silent_update() -> None:
    s = apply_round(
        SyncState(),
        full(),
        [Upsert(bk("a", 9)), Upsert(bk("b", 11)), Upsert(bk("c", 13)), Upsert(bk("d", 15))],
        "L1",
        NOW,
    ).state
    plan = plan_round(s, NOW, OSLO, 7)
    r = apply_round(
        s,
        plan,
        [
            Upsert(bk("a", 10)),  # moved
            Removal("b", "deleted"),
            Upsert(bk("c", 13, cancelled=True)),
            Upsert(bk("d", 15, title="renamed")),  # silent
        ],
        "L2",
        NOW,
    )
    assert types(r) == [
        ("booking.moved", "a"),
        ("booking.deleted", "b"),
        ("booking.deleted", "c"),
    ]
    moved = r.changes[0]
    assert moved.before is not None and moved.before.start.hour == 9
    assert r.snapshot is not None and [b.id for b in r.snapshot] == ["a", "d"]
    assert r.state.bookings["d"].title == "renamed"


def test_silent_update_alone_still_publishes_a_snapshot() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    r = apply_round(s, plan_round(s, NOW, OSLO, 7), [Upsert(bk("a", 9, title="x"))], "L2", NOW)
    assert r.changes == () and r.snapshot is not None


def test_event_moved_out_of_window_is_deleted_once() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    plan = plan_round(s, NOW, OSLO, 7)
    r = apply_round(s, plan, [Upsert(bk("a", 0, day=30))], "L2", NOW)
    assert types(r) == [("booking.deleted", "a")]
    # Graph then reports it @removed as well: nothing more.
    r2 = apply_round(r.state, plan, [Removal("a", "deleted")], "L3", NOW)
    assert r2.changes == () and r2.snapshot is None


def test_removal_of_unknown_id_is_nothing() -> None:
    s = apply_round(SyncState(), full(), [], "L1", NOW).state
    r = apply_round(s, plan_round(s, NOW, OSLO, 7), [Removal("ghost")], "L2", NOW)
    assert r.changes == () and r.snapshot is None


def test_reapplied_round_reports_nothing_twice() -> None:
    s0 = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    plan = plan_round(s0, NOW, OSLO, 7)
    items: list[DeltaItem] = [Upsert(bk("a", 10)), Upsert(bk("n", 12)), Removal("zz")]
    r1 = apply_round(s0, plan, items, "L2", NOW)
    assert types(r1) == [("booking.created", "n"), ("booking.moved", "a")]
    # kill -9 before the next link was used: the same page again, over the stored state.
    r2 = apply_round(r1.state, plan, items, "L2", NOW)
    assert r2.changes == () and r2.snapshot is None


def test_full_resync_mark_and_sweep() -> None:
    s = apply_round(
        SyncState(),
        full(),
        [Upsert(bk("a", 9)), Upsert(bk("b", 11)), Upsert(bk("c", 13))],
        "L1",
        NOW,
    ).state
    s = resync_required(s)
    assert s.delta_link is None and set(s.bookings) == {"a", "b", "c"}
    plan = plan_round(s, NOW, OSLO, 7)
    assert plan.full
    r = apply_round(
        s, plan, [Upsert(bk("a", 9)), Upsert(bk("c", 14)), Upsert(bk("d", 16))], "L9", NOW
    )
    assert types(r) == [
        ("booking.created", "d"),
        ("booking.moved", "c"),
        ("booking.deleted", "b"),
    ]
    assert r.snapshot is not None and [b.id for b in r.snapshot] == ["a", "c", "d"]


def test_full_listing_with_unreadable_entry_keeps_stored_copy() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9)), Upsert(bk("b", 11))], "L1", NOW).state
    r = apply_round(
        resync_required(s),
        full(state=s),
        [Upsert(bk("a", 9)), Unreadable("b", "bad start")],
        "L2",
        NOW,
    )
    assert r.changes == ()
    assert set(r.state.bookings) == {"a", "b"}
    assert any("bad start" in n for n in r.notes)


def test_same_meeting_new_id_is_not_deleted_and_created() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9, meeting_id="UID1"))], "L1", NOW).state
    plan = plan_round(s, NOW, OSLO, 7)
    r = apply_round(s, plan, [Removal("a"), Upsert(bk("a2", 9, meeting_id="UID1"))], "L2", NOW)
    assert r.changes == ()
    assert set(r.state.bookings) == {"a2"}
    r = apply_round(s, plan, [Removal("a"), Upsert(bk("a2", 10, meeting_id="UID1"))], "L2", NOW)
    assert types(r) == [("booking.moved", "a2")]


def test_midnight_roll_starts_new_round_and_ages_out_silently() -> None:
    yesterday_evening = bk("old", 17)  # Monday 18:00 Oslo
    tomorrow = bk("tue", 8, day=24)
    s = apply_round(
        SyncState(), full(), [Upsert(yesterday_evening), Upsert(tomorrow)], "L1", NOW
    ).state
    after_midnight = datetime(2026, 11, 23, 23, 0, 1, tzinfo=UTC)  # Tuesday 00:00:01 Oslo
    plan = plan_round(s, after_midnight, OSLO, 7)
    assert plan.full and plan.bounds.start == datetime(2026, 11, 23, 23, tzinfo=UTC)
    new_day = bk("mon30", 8, day=30)  # entered the window with the roll
    r = apply_round(s, plan, [Upsert(tomorrow), Upsert(new_day)], "L2", after_midnight)
    assert types(r) == [("booking.created", "mon30")]
    assert r.snapshot is not None and [b.id for b in r.snapshot] == ["tue", "mon30"]


def test_midnight_roll_on_dst_day() -> None:
    # Night to Sunday 2026-10-25: Oslo falls back at 03:00; the day is 25 h long.
    sat = datetime(2026, 10, 24, 12, tzinfo=UTC)
    late_sun = bk("sun-late", 22, day=25, month=10)  # 23:00 local on the long Sunday
    s = apply_round(
        SyncState(), plan_round(SyncState(), sat, OSLO, 2), [Upsert(late_sun)], "L1", sat
    ).state
    sun = datetime(2026, 10, 25, 12, tzinfo=UTC)
    plan = plan_round(s, sun, OSLO, 1)
    assert plan.bounds == WindowBounds(
        datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC)
    )
    r = apply_round(s, plan, [Upsert(late_sun)], "L2", sun)
    assert r.changes == () and set(r.state.bookings) == {"sun-late"}
    # One hour later it would start on Monday local time: outside the 25-hour Sunday.
    r = apply_round(s, plan, [Upsert(bk("sun-late", 23, day=25, month=10))], "L3", sun)
    assert [c.type for c in r.changes] == ["booking.deleted"]


def test_room_removed_reports_empty_window_once() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    r = room_removed(s)
    assert r.snapshot == () and r.changes == () and r.state == SyncState()


def test_later_item_of_a_round_wins() -> None:
    s = apply_round(SyncState(), full(), [Upsert(bk("a", 9))], "L1", NOW).state
    plan = plan_round(s, NOW, OSLO, 7)
    # Created and removed inside one round: never reported.
    r = apply_round(s, plan, [Upsert(bk("n", 12)), Removal("n")], "L2", NOW)
    assert r.changes == () and set(r.state.bookings) == {"a"}
    # Removed then listed again (a page boundary re-sent it): a move, not delete + create.
    r = apply_round(s, plan, [Removal("a"), Upsert(bk("a", 10))], "L3", NOW)
    assert types(r) == [("booking.moved", "a")]


def test_full_listing_that_repeats_an_id_across_pages_keeps_one() -> None:
    r = apply_round(SyncState(), full(), [Upsert(bk("a", 9)), Upsert(bk("a", 11))], "L1", NOW)
    assert r.snapshot is not None and [b.id for b in r.snapshot] == ["a"]
    assert r.state.bookings["a"].start.hour == 11


def test_instances_of_a_series_are_not_paired_at_the_midnight_roll() -> None:
    # Google: every instance of a series carries the series' iCalUID (Event.iCalUID).
    def inst(day: int) -> CalendarBooking:
        return bk(f"s_202611{day}T080000Z", 8, day=day, meeting_id="S@google.com", series_id="s")

    week = [Upsert(inst(d)) for d in range(23, 30)]
    s = apply_round(SyncState(), full(), week, "L1", NOW).state
    after_midnight = datetime(2026, 11, 23, 23, 0, 1, tzinfo=UTC)  # Tuesday 00:00:01 Oslo
    plan = plan_round(s, after_midnight, OSLO, 7)
    r = apply_round(s, plan, [Upsert(inst(d)) for d in range(24, 31)], "L2", after_midnight)
    assert types(r) == [("booking.created", "s_20261130T080000Z")]
    assert "s_20261123T080000Z" not in r.state.bookings


def test_a_vanished_instance_is_not_paired_with_a_new_one_of_its_series() -> None:
    a = bk("s_1", 9, meeting_id="S@google.com", series_id="s")
    s = apply_round(SyncState(), full(), [Upsert(a)], "L1", NOW).state
    plan = plan_round(s, NOW, OSLO, 7)
    new = bk("s_2", 11, day=24, meeting_id="S@google.com", series_id="s")
    r = apply_round(s, plan, [Removal("s_1", "cancelled"), Upsert(new)], "L2", NOW)
    assert types(r) == [("booking.created", "s_2"), ("booking.deleted", "s_1")]


def test_removal_of_a_series_id_deletes_its_stored_instances() -> None:
    inst = [bk(f"s_{d}", 9, day=d, meeting_id="S", series_id="s") for d in (23, 24, 25)]
    other = bk("single", 12)
    s = apply_round(SyncState(), full(), [Upsert(b) for b in (*inst, other)], "L1", NOW).state
    plan = plan_round(s, NOW, OSLO, 7)
    r = apply_round(s, plan, [Removal("s", "cancelled")], "L2", NOW)
    assert types(r) == [("booking.deleted", "s_23"), ("booking.deleted", "s_24")] + [
        ("booking.deleted", "s_25")
    ]
    assert set(r.state.bookings) == {"single"}
    # A later instance in the same round (the series re-created) wins over the removal.
    r = apply_round(s, plan, [Removal("s", "cancelled"), Upsert(inst[2])], "L2", NOW)
    assert set(r.state.bookings) == {"single", "s_25"}


def test_series_id_survives_the_store_row() -> None:
    b = bk("s_1", 9, meeting_id="S", series_id="s")
    assert CalendarBooking.from_row(b.to_row()) == b
    assert "series_id" not in b.to_dict()  # the envelope's booking shape is unchanged
