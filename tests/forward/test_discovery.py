"""Home Assistant MQTT discovery and the clearing of removed rooms, against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config, resolve_secrets
from edge_agent.forward.base import Delivered
from edge_agent.forward.mqtt import Topics, broker_settings, publications, read_retained
from edge_agent.forward.mqtt.discovery import RoomTopics
from tests.forward.test_mqtt import BASE, event, make_sink, running, snapshot, until
from tests.mosquitto import Mosquitto, Subscriber, free_port

NODE = "roomos-edge-hq"
HA = "homeassistant"


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path) as b:
        yield b


def config_topic(component: str, room: str, entity: str, prefix: str = HA) -> str:
    return f"{prefix}/{component}/{NODE}/{room}_{entity}/config"


def configs_of(room: str) -> dict[str, str]:
    return {
        "booked": config_topic("binary_sensor", room, "booked"),
        "next_booking": config_topic("sensor", room, "next_booking"),
        "people_count": config_topic("sensor", room, "people_count"),
    }


async def retained(broker: Mosquitto, topic_filter: str) -> dict[str, bytes]:
    settings = broker_settings(broker.url, client_id="late-subscriber", protocol="3.1.1")
    return await read_retained(settings, topic_filter, quiet_s=0.3)


def assert_documented_config(doc: dict[str, Any], room: str, entity: str) -> None:
    """The keys Home Assistant's MQTT discovery documents for an entity with a device."""
    assert doc["name"] and doc["unique_id"] == f"roomos-edge_hq_{room}_{entity}"
    assert doc["state_topic"] == f"{BASE}/devices/{room}/ha/{entity}"
    assert doc["availability_mode"] == "all"
    assert doc["availability"] == [
        {
            "topic": f"{BASE}/bridge/state",
            "payload_available": "online",
            "payload_not_available": "offline",
        },
        {
            "topic": f"{BASE}/devices/{room}/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
        },
    ]
    device = doc["device"]
    assert device["identifiers"] == [f"roomos-edge_hq_{room}"] and device["name"] == room
    assert device["manufacturer"] == "Cisco"
    assert doc["origin"]["name"] == "roomos-edge-agent" and doc["origin"]["sw_version"]


# --- pure parts --------------------------------------------------------------------------------


def rooms(discovery: bool = True) -> RoomTopics:
    return RoomTopics(Topics(BASE), site="hq", discovery=discovery)


def test_states_from_events() -> None:
    r = rooms()
    r.set_rooms(["room-1"])

    def states(ev: Any) -> dict[str, bytes]:
        pubs = r.publications(ev, publications(ev, Topics(BASE)))
        return {p.topic.removeprefix(f"{BASE}/devices/room-1/"): p.payload for p in pubs}

    booked = states(event("room-1", "room.availability", availability={"status": "BookedUntil"}))
    assert booked["ha/booked"] == b"ON"
    free = states(event("room-1", "room.availability", availability={"status": "FreeUntil"}))
    assert free["ha/booked"] == b"OFF"

    # The snapshot was taken at 09:00 (the event's timestamp): the 08:00 one has started.
    snap = event(
        "room-1",
        "bookings.snapshot",
        bookings=[
            {"title": "Early", "start": "2026-11-23T08:00:00.000Z", "end": "2026-11-23T10:00Z"},
            {
                "title": "Secret board meeting",
                "privacy": "Private",
                "start": "2026-11-23T11:00:00.000Z",
                "end": "2026-11-23T12:00:00.000Z",
                "meeting_id": "m-2",
            },
            {"title": "Late", "start": "2026-11-23T15:00:00.000Z", "end": "2026-11-23T16:00Z"},
        ],
    )
    out = states(snap)
    assert out["ha/next_booking"] == b"2026-11-23T11:00:00.000Z"
    attributes = json.loads(out["ha/next_booking/attributes"])
    assert attributes == {
        "title": None,  # private: no title on the broker
        "start": "2026-11-23T11:00:00.000Z",
        "end": "2026-11-23T12:00:00.000Z",
        "meeting_id": "m-2",
    }
    assert states(event("room-1", "bookings.snapshot", bookings=[]))["ha/next_booking"] == b"None"

    counting = states(event("room-1", "room.occupancy", people_count=3, presence="Yes"))
    assert counting["ha/people_count"] == b"3"
    # The people count entity appears with the first count, not before.
    assert config_topic("sensor", "room-1", "people_count") in counting
    assert states(event("room-1", "room.occupancy", people_count=-1))["ha/people_count"] == b"None"
    assert config_topic("sensor", "room-1", "people_count") not in states(
        event("room-1", "room.occupancy", people_count=2)
    )


def test_without_discovery_nothing_is_added_and_removed_rooms_lose_only_retained() -> None:
    r = rooms(discovery=False)
    assert r.set_rooms(["room-1", "room-2"]) == []
    assert r.due() == []
    ev = event("room-2", "device.offline")
    assert [p.retain for p in r.publications(ev, publications(ev, Topics(BASE)))] == [False, True]
    cleared = r.set_rooms(["room-1"])
    assert cleared == [f"{BASE}/devices/room-2/availability", f"{BASE}/devices/room-2/bookings"]
    assert {(p.topic, p.payload) for p in r.due()} == {(t, b"") for t in cleared}
    # Its last events still reach the events topic, but re-create no retained topic.
    pubs = r.publications(ev, publications(ev, Topics(BASE)))
    assert [(p.topic, p.retain) for p in pubs] == [(f"{BASE}/devices/room-2/events", False)]


def test_a_room_back_before_its_clearing_went_out_keeps_its_state() -> None:
    """Removed, then re-added while the broker was away: the queued clears must not wipe
    what it publishes again."""
    r = rooms()
    r.set_rooms(["room-1", "room-2"])
    r.set_rooms(["room-1"])
    assert any(p.payload == b"" for p in r.due())
    r.set_rooms(["room-1", "room-2"])
    assert [p.topic for p in r.due() if p.payload == b""] == []
    assert r.exists("room-2")


def test_the_start_sweep_clears_every_leaf_the_broker_shows() -> None:
    r = rooms()
    r.set_rooms(["room-1"])
    assert set(r.due()) and r.clear_unknown({}) == []
    seen = {
        f"{BASE}/devices/room-1/bookings": b"{}",
        f"{BASE}/devices/room-9/bookings": b"{}",
        f"{BASE}/devices/room-9/some-later-leaf": b"x",
        f"{BASE}/devices/room-8/bookings": b"",  # already cleared: nothing to do
    }
    cleared = r.clear_unknown(seen)
    assert f"{BASE}/devices/room-9/some-later-leaf" in cleared
    assert config_topic("binary_sensor", "room-9", "booked") in cleared
    assert not [t for t in cleared if "room-1" in t or "room-8" in t]


def test_room_ids_become_discovery_ids() -> None:
    r = rooms()
    r.set_rooms(["Room 4.A"])
    topics = {p.topic for p in r.due()}
    assert f"{HA}/binary_sensor/{NODE}/Room_4_A_booked/config" in topics


# --- against mosquitto -------------------------------------------------------------------------


async def test_discovery_configs_are_retained_and_removed_rooms_cleared(
    broker: Mosquitto,
) -> None:
    with Subscriber(broker, f"{HA}/#") as ha:
        async with running(make_sink(broker, discovery=True)) as sink:
            await sink.set_rooms(["room-1", "room-2"])
            expected = {
                t
                for room in ("room-1", "room-2")
                for e, t in configs_of(room).items()
                if e != "people_count"
            }
            await until(lambda: expected <= {t for t, _, _ in ha.messages}, what="configs")

            events = [
                event("room-1", "device.online"),
                event("room-1", "room.availability", availability={"status": "BookedUntil"}),
                snapshot("room-1", ["standup"]),
                event("room-1", "room.occupancy", people_count=4),
                event("room-2", "device.online"),
                snapshot("room-2", []),
            ]
            assert await sink.send(events) == Delivered()

            seen = await retained(broker, f"{HA}/#")
            assert set(seen) == expected | {configs_of("room-1")["people_count"]}
            for room in ("room-1", "room-2"):
                for entity, topic in configs_of(room).items():
                    if topic in seen:
                        assert_documented_config(json.loads(seen[topic]), room, entity)
            booked = json.loads(seen[configs_of("room-1")["booked"]])
            assert booked["payload_on"] == "ON" and booked["payload_off"] == "OFF"
            nxt = json.loads(seen[configs_of("room-1")["next_booking"]])
            assert nxt["device_class"] == "timestamp"
            assert (
                nxt["json_attributes_topic"] == f"{BASE}/devices/room-1/ha/next_booking/attributes"
            )
            states = await retained(broker, f"{BASE}/devices/+/ha/#")
            assert states[f"{BASE}/devices/room-1/ha/booked"] == b"ON"
            assert states[f"{BASE}/devices/room-1/ha/people_count"] == b"4"

            # room-2 leaves the configuration.
            await sink.set_rooms(["room-1"])
            gone = set(configs_of("room-2").values()) - {configs_of("room-2")["people_count"]}
            await until(
                lambda: {t for t, p, _ in ha.messages if p == b""} >= gone, what="cleared configs"
            )
            # Its offline, delivered after the clearing, re-creates nothing retained.
            assert await sink.send([event("room-2", "device.offline")]) == Delivered()
            after = await retained(broker, f"{BASE}/#")
            assert not [t for t in after if "/room-2/" in t], after
            assert f"{BASE}/devices/room-1/availability" in after
            assert f"{BASE}/devices/room-1/bookings" in after
            ha_after = await retained(broker, f"{HA}/#")
            assert set(ha_after) == set(configs_of("room-1").values())
            # And the health-timer refresh does not bring room-2 back either.
            assert not [t for t in sink.retained_kept() if "/room-2/" in t]


async def test_configs_are_sent_again_after_a_reconnect(tmp_path: Path) -> None:
    """A broker without persistence forgets retained messages when it restarts."""
    port = free_port()
    broker = Mosquitto(tmp_path, port=port).start()
    try:
        async with running(make_sink(broker, discovery=True, discovery_prefix="ha/test")) as sink:
            await sink.set_rooms(["room-1"])
            topic = config_topic("binary_sensor", "room-1", "booked", prefix="ha/test")
            with Subscriber(broker, "ha/test/#") as sub:
                await until(lambda: bool(sub.on(topic)), what="the config")
            broker.stop()
            broker = Mosquitto(tmp_path, port=port).start()
            with Subscriber(broker, "ha/test/#") as sub:
                await until(lambda: bool(sub.on(topic)), timeout=15, what="the config again")
                assert json.loads(sub.on(topic)[-1])["unique_id"] == "roomos-edge_hq_room-1_booked"
    finally:
        broker.stop()


async def test_agent_announces_rooms_on_start_and_clears_them_on_reload(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's hook: the room list on start, and again after a SIGHUP reload."""
    closed = {"room-a": free_port(), "room-b": free_port()}  # never answer: only ids matter

    def write(devices: list[str]) -> Path:
        path = tmp_path / "agent.toml"
        text = (
            f'site = "hq"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
            f'[defaults]\npassword_env = "PW"\ninsecure = true\n'
            f'[mqtt]\nurl = "{broker.url}"\ndiscovery = true\n'
            f'[api]\nlisten = "127.0.0.1:0"\n'
        )
        for d in devices:
            text += f'[[devices]]\nid = "{d}"\nurl = "wss://127.0.0.1:{closed[d]}/ws"\n'
        path.write_text(text)
        return path

    path = write(["room-a", "room-b"])
    monkeypatch.setenv("PW", "pw")  # the reload reads the secrets from the environment
    cfg = load_config(path)
    agent = Agent(cfg, resolve_secrets(cfg), config_path=path, drain_timeout_s=0.5)
    task = asyncio.create_task(agent.run(), name="test-agent")
    with Subscriber(broker, f"{HA}/#") as ha:
        await asyncio.wait_for(agent.ready.wait(), 20)
        want = {configs_of("room-a")["booked"], configs_of("room-b")["booked"]}
        await until(lambda: want <= {t for t, _, _ in ha.messages}, 15, "both rooms")
        write(["room-a"])
        agent.request_reload()
        cleared = configs_of("room-b")["booked"]
        await until(lambda: (cleared, b"") in {(t, p) for t, p, _ in ha.messages}, 15)
    agent.request_stop()
    assert await asyncio.wait_for(task, 30) == 0
    left = await retained(broker, f"{HA}/#")
    assert configs_of("room-a")["booked"] in left and cleared not in left


@pytest.mark.parametrize("prefix", ["", "/", "home/#", "ha/+/x"])
def test_a_bad_discovery_prefix_is_refused_naming_the_key(prefix: str) -> None:
    from edge_agent.config import ConfigError, config_from_dict

    raw = {"site": "hq", "mqtt": {"url": "mqtt://127.0.0.1", "discovery_prefix": prefix}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, env={})
    assert any(line.startswith("mqtt.discovery_prefix") for line in info.value.lines())


def test_discovery_is_off_by_default() -> None:
    from edge_agent.config import config_from_dict

    cfg = config_from_dict({"site": "hq", "mqtt": {"url": "mqtt://127.0.0.1"}}, env={})
    assert cfg.mqtt is not None
    assert cfg.mqtt.discovery is False and cfg.mqtt.discovery_prefix == "homeassistant"


async def test_rooms_removed_while_the_agent_was_stopped_are_cleared_at_start(
    broker: Mosquitto,
) -> None:
    """The common path: edit the config, `systemctl restart`. The new process never knew the
    removed room, so it reads what the broker retains and clears the rooms not configured."""
    async with running(make_sink(broker, discovery=True)) as sink:
        await sink.set_rooms(["room-1", "room-old"])
        ready = [event(r, "device.online") for r in ("room-1", "room-old")]
        snaps = [snapshot(r, ["standup"]) for r in ("room-1", "room-old")]
        assert await sink.send(ready + snaps) == Delivered()
    before = await retained(broker, "#")
    assert f"{BASE}/devices/room-old/bookings" in before
    assert configs_of("room-old")["booked"] in before

    with Subscriber(broker, "#") as sub:
        async with running(make_sink(broker, discovery=True)) as sink:
            await sink.set_rooms(["room-1"])
            old = f"{BASE}/devices/room-old/bookings"
            await until(lambda: b"" in sub.on(old), 10, "room-old's bookings cleared")
            await until(
                lambda: b"" in sub.on(configs_of("room-old")["booked"]), 10, "its config cleared"
            )
    after = await retained(broker, "#")
    assert not [t for t in after if "room-old" in t], after
    assert f"{BASE}/devices/room-1/bookings" in after and configs_of("room-1")["booked"] in after
