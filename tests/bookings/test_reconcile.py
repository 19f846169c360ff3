from __future__ import annotations

from dataclasses import replace

from edge_agent.bookings.models import Booking, Organizer, booking_key
from edge_agent.bookings.reconcile import reconcile
from edge_agent.bookings.window import WindowBounds

from .helpers import booking, utc

BOUNDS = WindowBounds(utc(2026, 11, 23), utc(2026, 11, 24, 8))


def window_of(*bs: Booking) -> dict[str, Booking]:
    return {booking_key(b): b for b in bs}


def test_unchanged() -> None:
    a = booking("1", meeting_id="A")
    rec = reconcile(window_of(a), [a], BOUNDS)
    assert rec.window == {"A": a}
    assert not rec.changed and rec.updated == () and rec.aged_out == ()


def test_created_moved_deleted() -> None:
    a = booking("1", meeting_id="A")
    b = booking("2", meeting_id="B", start=utc(2026, 11, 23, 11), end=utc(2026, 11, 23, 12))
    c = booking("3", meeting_id="C", start=utc(2026, 11, 23, 13), end=utc(2026, 11, 23, 14))
    b2 = replace(b, start=utc(2026, 11, 23, 15), end=utc(2026, 11, 23, 16))
    d = booking("4", meeting_id="D", start=utc(2026, 11, 24, 7), end=utc(2026, 11, 24, 9))
    rec = reconcile(window_of(a, b, c), [a, b2, d], BOUNDS)
    assert rec.created == (d,)
    assert [(m.before, m.after) for m in rec.moved] == [(b, b2)]
    assert rec.deleted == (c,)
    assert list(rec.window) == ["A", "B", "D"]  # start order
    assert rec.window["B"] == b2


def test_title_change_is_a_silent_update() -> None:
    a = booking("1", meeting_id="A")
    a2 = replace(a, title="Renamed", organizer=Organizer("Bob", None, None))
    rec = reconcile(window_of(a), [a2], BOUNDS)
    assert not rec.changed
    assert rec.updated == (a2,)
    assert rec.window["A"].title == "Renamed"


def test_fresh_outside_window_ignored_and_move_out_reported() -> None:
    a = booking("1", meeting_id="A")
    later = booking("2", meeting_id="Z", start=utc(2026, 11, 24, 10), end=utc(2026, 11, 24, 11))
    a_out = replace(a, start=utc(2026, 11, 24, 12), end=utc(2026, 11, 24, 13))
    rec = reconcile(window_of(a), [a_out, later], BOUNDS)
    assert rec.created == ()
    assert [m.after for m in rec.moved] == [a_out]
    assert rec.window == {}
    assert rec.deleted == ()


def test_aged_out_is_not_deleted() -> None:
    old_bounds = WindowBounds(utc(2026, 11, 22), utc(2026, 11, 23, 8))
    yesterday = booking("1", meeting_id="Y", start=utc(2026, 11, 22, 9), end=utc(2026, 11, 22, 10))
    spill = booking("2", meeting_id="S", start=utc(2026, 11, 23, 7), end=utc(2026, 11, 23, 7, 30))
    assert old_bounds  # yesterday's window held both
    # New day: the device no longer lists yesterday's booking; it's not a deletion.
    rec = reconcile(window_of(yesterday, spill), [spill], BOUNDS)
    assert rec.deleted == ()
    assert rec.aged_out == (yesterday,)
    assert rec.window == {"S": spill}
    # still listed but out of the window: dropped silently too
    rec2 = reconcile(window_of(yesterday, spill), [yesterday, spill], BOUNDS)
    assert rec2.deleted == () and rec2.moved == () and "Y" not in rec2.window


def test_ended_earlier_today_and_missing_is_aged_out_when_now_given() -> None:
    morning = booking("1", meeting_id="M", start=utc(2026, 11, 23, 8), end=utc(2026, 11, 23, 9))
    rec = reconcile(window_of(morning), [], BOUNDS, now=utc(2026, 11, 23, 12))
    assert rec.deleted == () and rec.aged_out == (morning,)
    rec = reconcile(window_of(morning), [], BOUNDS, now=utc(2026, 11, 23, 8, 30))
    assert rec.deleted == (morning,)


def test_id_changed_after_reboot_matches_by_slot() -> None:
    org = Organizer("Ada", "ada@x", "o1")
    a = booking("17", organizer=org)  # no MeetingId: keyed by Id
    after_reboot = replace(a, id="3")
    rec = reconcile(window_of(a), [after_reboot], BOUNDS)
    assert not rec.changed
    assert rec.rekeyed == (("id:17", "id:3"),)
    assert rec.window == {"id:3": after_reboot}


def test_id_change_with_different_organizer_is_delete_and_create() -> None:
    a = booking("17", organizer=Organizer("Ada", "ada@x", None))
    other = replace(a, id="3", organizer=Organizer("Bob", "bob@x", None))
    rec = reconcile(window_of(a), [other], BOUNDS)
    assert rec.deleted == (a,) and rec.created == (other,)


def test_ambiguous_slot_match_is_not_guessed() -> None:
    a = booking("1")
    b = booking("2")  # same title/start/end as a (two identical bookings)
    fresh = [replace(a, id="8"), replace(a, id="9")]
    rec = reconcile(window_of(a, b), fresh, BOUNDS)
    assert len(rec.deleted) == 2 and len(rec.created) == 2


def test_meeting_id_learned_later_rekeys_by_device_id() -> None:
    a = booking("5")  # keyed id:5
    with_mid = replace(a, meeting_id="M5", start=utc(2026, 11, 23, 10), end=utc(2026, 11, 23, 11))
    rec = reconcile(window_of(a), [with_mid], BOUNDS)
    assert rec.rekeyed == (("id:5", "M5"),)
    assert [m.after for m in rec.moved] == [with_mid]
    assert rec.created == () and rec.deleted == ()


def test_request_uuid_and_checkin_carried_over() -> None:
    a = booking("1", meeting_id="A", booking_request_uuid="u-1", checked_in=True)
    listed = replace(a, booking_request_uuid=None, checked_in=None)
    rec = reconcile(window_of(a), [listed], BOUNDS)
    assert rec.window["A"].booking_request_uuid == "u-1"
    assert rec.window["A"].checked_in is True
    assert rec.updated == ()


def test_duplicate_key_in_list_keeps_first_and_notes() -> None:
    a = booking("1", meeting_id="A")
    dup = booking("2", meeting_id="A", start=utc(2026, 11, 23, 12), end=utc(2026, 11, 23, 13))
    rec = reconcile({}, [a, dup], BOUNDS)
    assert rec.window == {"A": a}
    assert rec.notes


def test_booking_whose_entry_was_skipped_is_kept_as_stored() -> None:
    a = booking("1", meeting_id="A")
    b = booking("2", meeting_id="B", start=utc(2026, 11, 23, 11), end=utc(2026, 11, 23, 12))
    c = booking("3", meeting_id="C", start=utc(2026, 11, 23, 13), end=utc(2026, 11, 23, 14))
    rec = reconcile(window_of(a, b, c), [a], BOUNDS, skipped_ids={"2"})
    assert rec.kept == (b,)
    assert rec.deleted == (c,)  # the list is otherwise complete: C really went
    assert rec.window == {"A": a, "B": b}
    assert rec.moved == () and rec.rekeyed == ()


def test_skipped_booking_out_of_the_new_window_ages_out() -> None:
    y = booking("1", meeting_id="Y", start=utc(2026, 11, 22, 9), end=utc(2026, 11, 22, 10))
    rec = reconcile(window_of(y), [], BOUNDS, skipped_ids={"1"})
    assert rec.kept == () and rec.deleted == () and rec.aged_out == (y,)
    assert rec.window == {}


def test_incomplete_list_deletes_nothing_but_reports_the_rest() -> None:
    a = booking("1", meeting_id="A")
    b = booking("2", meeting_id="B", start=utc(2026, 11, 23, 11), end=utc(2026, 11, 23, 12))
    a2 = replace(a, start=utc(2026, 11, 23, 9, 30))
    d = booking("4", meeting_id="D", start=utc(2026, 11, 23, 15), end=utc(2026, 11, 23, 16))
    ended = booking("5", meeting_id="E", start=utc(2026, 11, 23, 7), end=utc(2026, 11, 23, 8))
    rec = reconcile(
        window_of(a, b, ended), [a2, d], BOUNDS, now=utc(2026, 11, 23, 10), complete=False
    )
    assert rec.deleted == ()
    assert rec.kept == (b,)
    assert rec.aged_out == (ended,)  # time passing is still not a deletion, nor kept
    assert rec.created == (d,) and [m.after for m in rec.moved] == [a2]
    assert set(rec.window) == {"A", "B", "D"}
