"""Home Assistant discovery for calendar-only rooms (``rooms/<id>/...``), against a real mosquitto.

A calendar-only room (a Microsoft 365 or Google resource without a device) has no
``room.availability``: its "booked" state is computed from its latest window, at the snapshot's
time and again whenever the agent tells the sink the time (``set_rooms(..., now=...)``).
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent import jsoncodec
from edge_agent.forward.base import Delivered, OutboxEvent
from edge_agent.forward.mqtt import Topics, publications
from edge_agent.forward.mqtt.discovery import RoomTopics
from tests.forward.test_discovery import HA, config_topic, configs_of, retained
from tests.forward.test_mqtt import BASE, event, make_sink, running, snapshot, until
from tests.mosquitto import Mosquitto, Subscriber

_seq = itertools.count(10_000)
AT_9 = "2026-11-23T09:00:00.000Z"


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path) as b:
        yield b


def room_event(room: str, type_: str, timestamp: str = AT_9, **data: Any) -> OutboxEvent:
    """An event of a calendar-only room: ``data.room_id`` and no ``data.device_id``."""
    seq = next(_seq)
    envelope = {
        "type": type_,
        "timestamp": timestamp,
        "data": {"event_id": f"ev-{seq}", "site": "hq", "room_id": room, "source": "microsoft"}
        | data,
    }
    return OutboxEvent(
        seq=seq,
        device_id=room,
        event_id=f"ev-{seq}",
        type=type_,
        envelope=envelope,
        body=jsoncodec.dumpb(envelope),
        created_at=time.time(),
    )


def window(*bookings: tuple[str, str, str], private: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i, (title, start, end) in enumerate(bookings):
        b: dict[str, Any] = {"id": f"b{i}", "title": title, "start": start, "end": end}
        if private == title:
            b["privacy"] = "private"
        out.append(b)
    return out


STANDUP = ("Standup", "2026-11-23T08:30:00Z", "2026-11-23T09:30:00Z")
REVIEW = ("Review", "2026-11-23T11:00:00Z", "2026-11-23T12:00:00Z")


def at(hh_mm: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-23T{hh_mm}:00+00:00").astimezone(UTC)


def state(room: str, entity: str) -> str:
    return f"{BASE}/rooms/{room}/ha/{entity}"


# --- pure parts --------------------------------------------------------------------------------


def topics_of(r: RoomTopics, ev: OutboxEvent) -> dict[str, bytes]:
    return {p.topic: p.payload for p in r.publications(ev, publications(ev, Topics(BASE)))}


def test_calendar_room_states_follow_its_window_and_the_clock() -> None:
    r = RoomTopics(Topics(BASE), site="hq", discovery=True)
    r.set_rooms(["room-dev"], {"board": "microsoft"})
    configs = {p.topic: json.loads(p.payload) for p in r.due()}
    booked = configs[config_topic("binary_sensor", "board", "booked")]
    assert booked["state_topic"] == state("board", "booked")
    # No device: available while the agent is.
    assert [a["topic"] for a in booked["availability"]] == [f"{BASE}/bridge/state"]
    assert booked["device"]["manufacturer"] == "Microsoft"
    assert config_topic("sensor", "board", "people_count") not in configs  # nothing counts

    ev = room_event(
        "board", "bookings.snapshot", bookings=window(STANDUP, REVIEW, private="Review")
    )
    out = topics_of(r, ev)
    assert out[f"{BASE}/rooms/board/bookings"] == ev.body  # the window stays retained
    assert out[state("board", "booked")] == b"ON"  # 09:00 is inside the standup
    assert out[state("board", "next_booking")] == b"2026-11-23T11:00:00Z"
    attributes = json.loads(out[state("board", "next_booking") + "/attributes"])
    assert attributes["title"] is None  # private: no title on the broker

    assert r.next_change() == at("09:30")
    assert r.tick(at("09:10")) == []  # nothing changed
    changed = {p.topic: p.payload for p in r.tick(at("09:30"))}
    assert changed == {state("board", "booked"): b"OFF"}
    assert {p.topic: p.payload for p in r.due()}[state("board", "booked")] == b"OFF"
    changed = {p.topic: p.payload for p in r.tick(at("11:00"))}
    assert changed[state("board", "booked")] == b"ON"
    assert changed[state("board", "next_booking")] == b"None"
    assert r.tick(at("10:00")) == []  # time never goes back


def test_calendar_rooms_untold_keep_the_old_behaviour_and_removed_ones_are_cleared() -> None:
    r = RoomTopics(Topics(BASE), site="hq", discovery=True)
    r.set_rooms(["room-dev"])  # the calendar rooms are not known yet
    ev = room_event("board", "bookings.snapshot", bookings=window(STANDUP))
    assert set(topics_of(r, ev)) == {f"{BASE}/rooms/board/events", f"{BASE}/rooms/board/bookings"}

    # Told later: the first tick publishes the states of the window it already saw.
    r.set_rooms(["room-dev"], {"board": "google", "huddle": "google"})
    ticked = {p.topic: p.payload for p in r.tick(at("09:05"))}
    assert ticked[state("board", "booked")] == b"ON"
    assert ticked[state("board", "next_booking")] == b"None"
    assert state("huddle", "booked") not in ticked  # no window seen: nothing to say yet
    cleared = r.set_rooms(["room-dev"], {"huddle": "google"})
    assert f"{BASE}/rooms/board/bookings" in cleared
    assert state("board", "booked") in cleared
    assert config_topic("binary_sensor", "board", "booked") in cleared
    assert not [t for t in cleared if "huddle" in t or "room-dev" in t]
    # Its last (empty) snapshot, delivered after the clearing, re-creates nothing retained.
    late = room_event("board", "bookings.snapshot", bookings=None)
    assert [
        (p.topic, p.retain) for p in r.publications(late, publications(late, Topics(BASE)))
    ] == [(f"{BASE}/rooms/board/events", False)]
    # A room the poller found before the agent told the sink keeps its window.
    new = room_event("new-room", "bookings.snapshot", bookings=window(REVIEW))
    assert f"{BASE}/rooms/new-room/bookings" in topics_of(r, new)


def test_a_calendar_room_that_gets_a_device_keeps_its_configs() -> None:
    r = RoomTopics(Topics(BASE), site="hq", discovery=True)
    r.set_rooms([], {"board": "microsoft"})
    while r.due():
        for pub in r.due():
            r.acknowledged(pub)
    r.set_rooms(["board"], {})  # now linked: a device room with the same id
    due = {p.topic: p.payload for p in r.due()}
    topic = config_topic("binary_sensor", "board", "booked")
    assert json.loads(due[topic])["state_topic"] == f"{BASE}/devices/board/ha/booked"
    assert due[f"{BASE}/rooms/board/bookings"] == b""  # the calendar room's own topics go


def test_the_start_sweep_covers_calendar_rooms_once_told() -> None:
    r = RoomTopics(Topics(BASE), site="hq", discovery=True)
    r.set_rooms(["room-1"])
    assert r.sweep_filter == f"{BASE}/devices/#"
    seen = {
        f"{BASE}/rooms/gone/bookings": b"{}",
        f"{BASE}/rooms/gone/ha/booked": b"ON",
        f"{BASE}/rooms/room-1/occupancy/set": b'{"in_use": true}',  # a sensor's, not ours
        f"{BASE}/rooms/board/bookings": b"{}",
    }
    assert r.clear_unknown(seen) == []  # calendar rooms untold: not swept
    r.set_rooms(["room-1"], {"board": "microsoft"})
    assert r.sweep_filter == f"{BASE}/#"
    cleared = r.clear_unknown(seen)
    assert f"{BASE}/rooms/gone/bookings" in cleared and state("gone", "booked") in cleared
    assert config_topic("binary_sensor", "gone", "booked") in cleared
    assert not [t for t in cleared if "/board/" in t or "room-1" in t]


# --- against mosquitto -------------------------------------------------------------------------


async def test_calendar_rooms_get_entities_and_removed_ones_are_cleared(broker: Mosquitto) -> None:
    with Subscriber(broker, f"{HA}/#") as ha, Subscriber(broker, f"{BASE}/rooms/+/ha/#") as st:
        async with running(make_sink(broker, discovery=True)) as sink:
            await sink.set_rooms(["room-1"], {"board": "microsoft", "huddle": "google"})
            want = {
                configs_of(r)[e]
                for r in ("room-1", "board", "huddle")
                for e in ("booked", "next_booking")
            }
            await until(lambda: want <= {t for t, _, _ in ha.messages}, what="configs")
            events = [
                room_event("board", "bookings.snapshot", bookings=window(STANDUP, REVIEW)),
                room_event("huddle", "bookings.snapshot", bookings=window(REVIEW)),
                event("room-1", "device.online"),
                snapshot("room-1", ["standup"]),
            ]
            assert await sink.send(events) == Delivered()
            states = await retained(broker, f"{BASE}/rooms/+/ha/#")
            assert states[state("board", "booked")] == b"ON"
            assert states[state("huddle", "booked")] == b"OFF"
            assert states[state("huddle", "next_booking")] == b"2026-11-23T11:00:00Z"

            # The review starts: no snapshot, the agent tells the time.
            nxt = await sink.set_rooms(
                ["room-1"], {"board": "microsoft", "huddle": "google"}, now=at("11:00")
            )
            assert nxt == at("12:00")
            await until(lambda: b"ON" in st.on(state("huddle", "booked")), what="booked ON")
            assert sink.retained_kept()[state("huddle", "booked")] == b"ON"  # for the refresh

            # huddle leaves the directory.
            await sink.set_rooms(["room-1"], {"board": "microsoft"})
            gone = {configs_of("huddle")["booked"], configs_of("huddle")["next_booking"]}
            await until(lambda: {t for t, p, _ in ha.messages if p == b""} >= gone, what="clear")
            late = room_event("huddle", "bookings.snapshot", bookings=None)
            assert await sink.send([late]) == Delivered()
            after = await retained(broker, f"{BASE}/#")
            assert not [t for t in after if "/huddle/" in t], after
            assert f"{BASE}/rooms/board/bookings" in after
            assert f"{BASE}/devices/room-1/bookings" in after
            assert not [t for t in sink.retained_kept() if "/huddle/" in t]
            ha_after = await retained(broker, f"{HA}/#")
            assert configs_of("huddle")["booked"] not in ha_after
            assert configs_of("board")["booked"] in ha_after


async def test_calendar_rooms_removed_while_stopped_are_cleared_at_start(
    broker: Mosquitto,
) -> None:
    async with running(make_sink(broker, discovery=True)) as sink:
        await sink.set_rooms(["room-1"], {"board": "microsoft", "old": "microsoft"})
        snaps = [
            room_event(r, "bookings.snapshot", bookings=window(STANDUP)) for r in ("board", "old")
        ]
        assert await sink.send(snaps) == Delivered()
    before = await retained(broker, "#")
    assert f"{BASE}/rooms/old/bookings" in before and configs_of("old")["booked"] in before

    with Subscriber(broker, "#") as sub:
        async with running(make_sink(broker, discovery=True)) as sink:
            # On start the agent knows only its devices; the calendar list comes later.
            await sink.set_rooms(["room-1"])
            await sink.set_rooms(["room-1"], {"board": "microsoft"})
            old = f"{BASE}/rooms/old/bookings"
            await until(lambda: b"" in sub.on(old), 10, "old's bookings cleared")
            await until(lambda: b"" in sub.on(configs_of("old")["booked"]), 10, "its config")
    after = await retained(broker, "#")
    assert not [t for t in after if "/old/" in t or "_old_" in t], after
    assert f"{BASE}/rooms/board/bookings" in after and configs_of("board")["booked"] in after
