"""The pure occupancy logic, with pinned times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge_agent.bookings.occupancy import (
    OccupancyPolicy,
    Reading,
    RoomOccupancy,
    on_booking_ended,
    on_booking_started,
    on_reading,
    on_released,
    on_tick,
    parse_feedback,
    restore,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BOOKING = {"id": "7", "title": "Standup", "start": "2026-11-23T09:00:00.000Z"}


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def room(**policy: float | None) -> RoomOccupancy:
    return RoomOccupancy(
        site="hq",
        device_id="room-1",
        policy=OccupancyPolicy(**policy),  # type: ignore[arg-type]
    )


def feed(count: int | None = None, presence: str | None = None, in_use: bool | None = None):
    ra: dict[str, object] = {}
    if count is not None:
        ra["PeopleCount"] = {"Current": count}
    if presence is not None:
        ra["PeoplePresence"] = presence
    if in_use is not None:
        ra["RoomInUse"] = "True" if in_use else "False"
    return {"Status": {"RoomAnalytics": ra}}


def read(st: RoomOccupancy, now: datetime, **kw):
    r = parse_feedback(feed(**kw), st.reading)
    assert r is not None
    return on_reading(st, r, now)


def test_states_from_readings() -> None:
    assert Reading(3, "Yes").state == "occupied"
    assert Reading(0, "Yes").state == "occupied"  # presence outlives the count by design
    assert Reading(0, "No").state == "empty"
    assert Reading(-1, "No").state == "empty"
    assert Reading(-1, "Unknown").state == "unknown"
    assert Reading(-1, "Unknown", in_use=True).state == "occupied"
    assert Reading(None, None).state == "unknown"
    assert Reading(-1, "Yes").public() == {"people_count": None, "presence": "Yes", "in_use": None}


def test_parse_feedback_merges_partial_updates() -> None:
    r = parse_feedback(feed(count=2, presence="Yes"), Reading())
    assert r == Reading(2, "Yes", None)
    r2 = parse_feedback({"Status": {"RoomAnalytics": {"PeopleCount": {"Current": "3"}}}}, r)
    assert r2 == Reading(3, "Yes", None)
    assert parse_feedback({"Status": {"Bookings": {}}}, r2) is None
    weird = parse_feedback({"Status": {"RoomAnalytics": {"PeoplePresence": "Maybe"}}}, r2)
    assert weird is not None and weird.presence == "Unknown"


def test_occupancy_sent_on_change_only_and_rate_limited() -> None:
    st = room(min_interval_s=10)
    step = read(st, at(0), count=2, presence="Yes")
    assert [e["type"] for e in step.events] == ["room.occupancy"]
    assert step.events[0]["data"]["people_count"] == 2
    st = step.state
    step = read(st, at(1), count=2, presence="Yes")  # repeated value: nothing
    assert step.events == ()
    step = read(step.state, at(2), count=3)  # inside the interval: held back
    assert step.events == () and step.state.unsent
    assert step.state.next_wakeup() == at(10)
    step = read(step.state, at(3), count=2)  # flapped back: nothing to send at all
    assert not step.state.unsent or on_tick(step.state, at(10)).events == ()
    step = read(step.state, at(4), count=4)
    tick = on_tick(step.state, at(10))
    assert [e["data"]["people_count"] for e in tick.events] == [4]
    assert on_tick(tick.state, at(11)).events == ()


def test_ghost_once_then_release() -> None:
    st = read(room(ghost_after_s=600, release_after_s=900), at(-60), count=0, presence="No").state
    st = on_booking_started(st, BOOKING, at(0)).state
    assert st.next_wakeup() == at(600)
    assert on_tick(st, at(599)).events == ()
    step = on_tick(st, at(600))
    assert [e["type"] for e in step.events] == ["booking.ghost"]
    assert step.events[0]["data"]["empty_s"] == 600
    assert step.events[0]["data"]["booking"]["id"] == "7"
    assert step.release == ()
    st = step.state
    assert on_tick(st, at(700)).events == ()  # once
    step = on_tick(st, at(900))
    assert [b["id"] for b in step.release] == ["7"]
    assert on_tick(step.state, at(901)).release == ()  # asked once
    # The device's Deleted may come before the command's reply: the release closes it.
    from edge_agent.bookings.occupancy import on_booking_deleted

    assert on_booking_deleted(step.state, "7", at(901)).state is step.state
    rel = on_released(step.state, "7", at(901))
    assert [e["type"] for e in rel.events] == ["booking.released"]
    assert rel.events[0]["data"]["empty_s"] == 901
    assert rel.rows.bookings[0].released and rel.state.bookings == {}


def test_no_ghost_when_someone_came_or_unknown() -> None:
    st = read(room(ghost_after_s=60), at(-1), count=0, presence="No").state
    st = on_booking_started(st, BOOKING, at(0)).state
    st = read(st, at(30), count=1, presence="Yes").state
    st = read(st, at(40), count=0, presence="No").state
    assert on_tick(st, at(500)).events == ()  # used once: not a ghost
    st2 = read(room(ghost_after_s=60), at(-1), count=-1, presence="Unknown").state
    st2 = on_booking_started(st2, BOOKING, at(0)).state
    assert st2.next_wakeup() is None
    assert on_tick(st2, at(500)).events == ()


def test_ended_summary_counts_time_and_peak() -> None:
    st = read(room(), at(-10), count=0, presence="No").state
    st = on_booking_started(st, BOOKING, at(0)).state
    st = read(st, at(300), count=3, presence="Yes").state  # late arrival after 5 min
    st = read(st, at(600), count=5).state
    st = read(st, at(1500), count=0, presence="No").state  # left 10 min early... of 30
    step, summary = on_booking_ended(st, BOOKING, at(1800))
    assert summary == {"occupied_s": 1200.0, "empty_s": 600.0, "people_max": 5}
    assert step.state.bookings == {}
    assert step.rows.bookings[0].ended_at == at(1800)


def test_restart_mid_meeting_keeps_the_intervals() -> None:
    st = read(room(), at(-10), count=0, presence="No").state
    s1 = on_booking_started(st, BOOKING, at(0))
    s2 = read(s1.state, at(120), count=2, presence="Yes")
    # What the store holds: the open interval and the track.
    open_row = s2.rows.open.to_row() if s2.rows.open else None
    track_row = s2.rows.bookings[0].to_row()
    again = restore("hq", "room-1", OccupancyPolicy(), open_row, [track_row])
    again = read(again, at(900), count=2, presence="Yes").state  # same state after the restart
    again = read(again, at(1200), count=0, presence="No").state
    _, summary = on_booking_ended(again, BOOKING, at(1800))
    assert summary == {"occupied_s": 1080.0, "empty_s": 720.0, "people_max": 2}


def test_ended_without_a_seen_start_uses_the_scheduled_start() -> None:
    st = read(room(), at(-3600), count=2, presence="Yes").state
    _, summary = on_booking_ended(st, BOOKING, at(1800))
    assert summary == {"occupied_s": 1800.0, "empty_s": 0.0, "people_max": 2}


def test_release_failure_sends_nothing() -> None:
    st = read(room(ghost_after_s=1, release_after_s=1), at(-1), count=0, presence="No").state
    st = on_booking_started(st, BOOKING, at(0)).state
    step = on_tick(st, at(1))
    assert [e["type"] for e in step.events] == ["booking.ghost"] and step.release
    failed = on_released(step.state, "7", at(2), error="refused")
    assert failed.events == () and not failed.state.bookings["7"].releasing
    from edge_agent.bookings.occupancy import on_booking_deleted

    assert on_booking_deleted(failed.state, "7", at(3)).state.bookings == {}


def test_deleted_closes_a_started_booking_only() -> None:
    from edge_agent.bookings.occupancy import on_booking_deleted

    st = read(room(), at(-1), count=0, presence="No").state
    assert on_booking_deleted(st, "7", at(0)).rows.bookings == ()
    st = on_booking_started(st, BOOKING, at(0)).state
    step = on_booking_deleted(st, "7", at(60))
    assert step.state.bookings == {} and step.rows.bookings[0].ended_at == at(60)
