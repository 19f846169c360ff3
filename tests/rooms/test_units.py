"""The pure parts of rooms: precedence filter, calendar envelopes, MQTT routing; and the
calendar store (one transaction, the migration, restart)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent import jsoncodec
from edge_agent.bookings.events import make_envelope
from edge_agent.bookings.precedence import already_reported, awaited_by_request, forwarded
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.envelopes import room_update_envelopes
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.poller import RoomUpdate
from edge_agent.calendars.sync import BookingChange, SyncState
from edge_agent.forward.base import OutboxEvent
from edge_agent.forward.mqtt.topics import Topics, publications
from edge_agent.store import SCHEMA_VERSION, Change, Store
from edge_agent.store.calendar import RoomCalendarStore
from edge_agent.store.schema import calendar_window_owner

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
BOUNDS = WindowBounds(datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))


def env(type: str, **extra: Any) -> dict[str, Any]:
    return make_envelope(type, site="hq", device_id="room-4a", now=NOW, extra=extra or None)


def booking(
    bid: str, hour: int = 9, title: str = "Standup", mid: str | None = None
) -> CalendarBooking:
    start = datetime(2026, 11, 24, hour, tzinfo=UTC)
    return CalendarBooking(bid, start, start + timedelta(hours=1), title=title, meeting_id=mid)


# --- envelopes --------------------------------------------------------------------------------


def test_device_envelopes_carry_room_id_and_source() -> None:
    data = env("booking.started")["data"]
    assert (data["device_id"], data["room_id"], data["source"]) == ("room-4a", "room-4a", "device")
    calendar_only = make_envelope(
        "bookings.snapshot",
        site="hq",
        device_id=None,
        room_id="room-b",
        source="microsoft",
        now=NOW,
    )["data"]
    assert "device_id" not in calendar_only
    assert (calendar_only["room_id"], calendar_only["source"]) == ("room-b", "microsoft")
    with pytest.raises(ValueError):
        make_envelope("booking.started", site="hq", device_id=None, now=NOW)
    with pytest.raises(ValueError):
        make_envelope("booking.started", site="hq", device_id="d", now=NOW, extra={"source": "x"})


# --- precedence -------------------------------------------------------------------------------


def test_a_linked_device_forwards_its_own_signals_only() -> None:
    events = [
        env("booking.requested"),
        env("booking.created", pending_ms=1200),  # resolves a request made on the device
        env("booking.created"),  # someone else's meeting arriving through Hybrid Calendar
        env("booking.created", reconciled=True),
        env("booking.moved"),
        env("booking.deleted"),
        env("bookings.snapshot", bookings=[], window=BOUNDS.to_dict()),
        env("booking.failed"),
        env("booking.request_expired"),
        env("booking.started"),
        env("booking.ended"),
        env("booking.checked_in"),
        env("booking.extension_failed"),
        env("booking.edit_failed"),
        env("room.availability"),
        env("device.online"),
        env("device.offline"),
    ]
    kept = [(e["type"], "pending_ms" in e["data"]) for e in forwarded(events, linked=True)]
    assert kept == [
        ("booking.requested", False),
        ("booking.created", True),
        ("booking.failed", False),
        ("booking.request_expired", False),
        ("booking.started", False),
        ("booking.ended", False),
        ("booking.checked_in", False),
        ("booking.extension_failed", False),
        ("booking.edit_failed", False),
        ("room.availability", False),
        ("device.online", False),
        ("device.offline", False),
    ]
    assert forwarded(events, linked=False) == events


def test_already_reported_by_meeting_id_or_start_and_title() -> None:
    b = booking("graph-1", mid="UID-1").to_dict()
    requested = {"booking_request_uuid": "u1", "meeting_id": "UID-1", "start": "x", "title": "y"}
    assert already_reported(b, [requested])
    same_slot = {
        "booking_request_uuid": "u1",
        "meeting_id": "dev-9",
        "start": b["start"],
        "title": " standup ",
    }
    assert already_reported(b, [same_slot])
    # not a request made on the device: the calendar reports it
    assert not already_reported(b, [{**same_slot, "booking_request_uuid": None}])
    assert not already_reported(b, [{**same_slot, "title": "Other"}])
    assert not already_reported(b, [])


def test_awaited_by_a_pending_request() -> None:
    b = booking("graph-1", hour=9, title="Ad hoc").to_dict()
    at_start = {"title": "Ad hoc", "start": b["start"], "requested_at": "2026-11-24T08:00:00Z"}
    assert awaited_by_request(b, [at_start])
    assert not awaited_by_request(b, [{**at_start, "title": "Other"}])
    assert not awaited_by_request(b, [{**at_start, "start": "2026-11-24T10:00:00Z"}])
    book_now = {"title": None, "start": None, "requested_at": "2026-11-24T08:57:00Z"}
    assert awaited_by_request(b, [book_now])
    assert not awaited_by_request(b, [{**book_now, "requested_at": "2026-11-24T08:00:00Z"}])
    assert not awaited_by_request(b, [])


def test_calendar_envelopes_in_order_and_deduplicated() -> None:
    a, moved_to, gone = booking("a"), booking("m", 14), booking("g", 16)
    update = RoomUpdate(
        "room-4a",
        "microsoft",
        (
            BookingChange("booking.created", a),
            BookingChange("booking.moved", moved_to, booking("m", 11)),
            BookingChange("booking.deleted", gone, gone),
        ),
        (a, moved_to),
        BOUNDS,
        NOW,
        device_id="room-4a",
    )
    out = room_update_envelopes(update, site="hq")
    assert [e["type"] for e in out] == [
        "booking.created",
        "booking.moved",
        "booking.deleted",
        "bookings.snapshot",
    ]
    for e in out:
        assert (e["data"]["room_id"], e["data"]["source"], e["data"]["device_id"]) == (
            "room-4a",
            "microsoft",
            "room-4a",
        )
        assert e["data"]["xevent"] is None
    assert out[1]["data"]["previous"]["start"] == "2026-11-24T11:00:00.000Z"
    assert out[3]["data"]["window"] == BOUNDS.to_dict()
    assert [b["id"] for b in out[3]["data"]["bookings"]] == ["a", "m"]
    device_row = {"booking_request_uuid": "u", "start": a.to_dict()["start"], "title": "Standup"}
    deduped = room_update_envelopes(update, site="hq", device_window=[device_row])
    assert [e["type"] for e in deduped] == ["booking.moved", "booking.deleted", "bookings.snapshot"]
    waiting = {"title": "Standup", "start": a.to_dict()["start"], "requested_at": "x"}
    deduped = room_update_envelopes(update, site="hq", device_pending=[waiting])
    assert [e["type"] for e in deduped] == ["booking.moved", "booking.deleted", "bookings.snapshot"]
    removed = RoomUpdate("room-b", "microsoft", (), (), None, NOW)
    (snap,) = room_update_envelopes(removed, site="hq")
    assert snap["data"]["bookings"] == [] and snap["data"]["window"] is None
    assert "device_id" not in snap["data"]


# --- MQTT -------------------------------------------------------------------------------------


def outbox_event(envelope: dict[str, Any], stream: str) -> OutboxEvent:
    return OutboxEvent(
        1,
        stream,
        envelope["data"]["event_id"],
        envelope["type"],
        envelope,
        jsoncodec.dumpb(envelope),
        0.0,
    )


def test_calendar_only_rooms_publish_under_rooms_once() -> None:
    t = Topics("roomos-edge/hq")
    snap = make_envelope(
        "bookings.snapshot",
        site="hq",
        device_id=None,
        room_id="room-b",
        source="microsoft",
        now=NOW,
        extra={"bookings": [], "window": None},
    )
    got = [(p.topic, p.retain) for p in publications(outbox_event(snap, "room-b"), t)]
    assert got == [
        ("roomos-edge/hq/rooms/room-b/events", False),
        ("roomos-edge/hq/rooms/room-b/bookings", True),
    ]
    linked = make_envelope(
        "bookings.snapshot",
        site="hq",
        device_id="room-4a",
        room_id="room-4a",
        source="microsoft",
        now=NOW,
        extra={"bookings": [], "window": None},
    )
    got = [(p.topic, p.retain) for p in publications(outbox_event(linked, "room-4a"), t)]
    assert got == [
        ("roomos-edge/hq/devices/room-4a/events", False),
        ("roomos-edge/hq/devices/room-4a/bookings", True),
    ]
    created = make_envelope(
        "booking.created", site="hq", device_id=None, room_id="room-b", source="microsoft", now=NOW
    )
    got = [p.topic for p in publications(outbox_event(created, "room-b"), t)]
    assert got == ["roomos-edge/hq/rooms/room-b/events"]


# --- the store --------------------------------------------------------------------------------


async def test_save_and_load_sync_state_in_one_change(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        cal = RoomCalendarStore(store, site="hq", source="microsoft")
        assert await cal.load_sync_state("room-b") is None
        a, b = booking("a"), booking("b", 11)
        state = SyncState(BOUNDS, "https://graph/delta?$deltatoken=1", {"b": b, "a": a})
        update = RoomUpdate(
            "room-b", "microsoft", (BookingChange("booking.created", b),), (a, b), BOUNDS, NOW
        )
        await cal.save_sync_state("room-b", state, update)
        got = await cal.load_sync_state("room-b")
        assert got is not None
        assert got.window == BOUNDS and got.delta_link == state.delta_link
        assert list(got.bookings) == ["a", "b"] and got.bookings["a"] == a
        # the room's window rows are apart from a device of the same id
        assert await store.load_window("room-b") == {}
        assert set(await store.load_window(calendar_window_owner("room-b", "microsoft"))) == {
            "a",
            "b",
        }
        stats = await store.stats()
        assert stats["outbox_total"] == 2
        # forgetting the room: row and window gone, its empty snapshot stored
        await cal.save_sync_state(
            "room-b", SyncState(), RoomUpdate("room-b", "microsoft", (), (), None, NOW)
        )
        assert await cal.load_sync_state("room-b") is None
        assert await store.load_window(calendar_window_owner("room-b", "microsoft")) == {}
    finally:
        await store.close()


async def test_a_failed_commit_stores_neither_link_nor_window_nor_events(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        cal = RoomCalendarStore(store, site="hq", source="microsoft")
        good = SyncState(BOUNDS, "link-1", {"a": booking("a")})
        await cal.save_sync_state("room-b", good, None)
        # an event envelope without an id is refused before anything is written
        bad = Change("room-b", events=[{"type": "booking.created", "data": {}}])
        with pytest.raises(ValueError):
            await store.commit(bad)
        got = await cal.load_sync_state("room-b")
        assert got is not None and got.delta_link == "link-1"
    finally:
        await store.close()
    # reopened (a restart): the same state
    store = await Store.open(tmp_path / "agent.db")
    try:
        got = await RoomCalendarStore(store, site="hq", source="microsoft").load_sync_state(
            "room-b"
        )
        assert got is not None and got.delta_link == "link-1" and list(got.bookings) == ["a"]
    finally:
        await store.close()


async def test_migration_adds_calendar_sync_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("DROP TABLE calendar_sync")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    store = await Store.open(path)
    try:
        cal = RoomCalendarStore(store, site="hq", source="microsoft")
        await cal.save_sync_state("r", SyncState(BOUNDS, "l", {}), None)
        assert (await cal.rooms())["r"]["delta_link"] == "l"
    finally:
        await store.close()


async def test_an_unreadable_stored_row_means_a_full_listing_not_a_stuck_room(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        cal = RoomCalendarStore(store, site="hq", source="microsoft")
        await cal.save_sync_state("r", SyncState(BOUNDS, "link", {"a": booking("a")}), None)
        owner = calendar_window_owner("r", "microsoft")
        await store.commit(Change(owner, window_upsert={"bad": {"id": "bad", "start": "soon"}}))
        got = await cal.load_sync_state("r")
        assert got is not None
        assert got.delta_link is None  # the next round lists in full and sweeps
        assert list(got.bookings) == ["a"] and got.window == BOUNDS
    finally:
        await store.close()
