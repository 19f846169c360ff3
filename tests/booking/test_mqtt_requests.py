"""The MQTT mirror of the booking routes against a real mosquitto: request/response with the
caller's transaction, only from the configured base topic, never from a retained message."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.e2e.harness import eventually, of_type
from tests.mosquitto import Mosquitto, Subscriber

BASE = "roomos-edge/test"


def _publish(broker: Mosquitto, topic: str, payload: Any, *, retain: bool = False) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="caller")
    client.connect(broker.host, broker.port, keepalive=5)
    client.loop_start()
    try:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        client.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _answers(sub: Subscriber, action: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.on(f"{BASE}/bridge/response/{action}")]


async def test_book_and_release_over_mqtt(booked, receiver, tmp_path) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        fleet, running, _ = await booked(extra={"mqtt": {"url": broker.url, "keepalive": 5}})
        mirror = running.agent.mqtt_requests
        await asyncio.wait_for(mirror.subscribed.wait(), 10)
        await eventually(
            lambda: any(s["name"] == "mqtt" and s["ready"] for s in running.agent.sinks())
        )
        dev = fleet.devices[0]
        with Subscriber(broker, f"{BASE}/bridge/response/+") as sub:
            _publish(
                broker,
                f"{BASE}/bridge/request/book",
                {"room": dev.device_id, "title": "Via MQTT", "duration_min": 10, "transaction": 7},
            )
            await eventually(lambda: _answers(sub, "book"))
            [answer] = _answers(sub, "book")
            assert answer["status"] == "ok" and answer["transaction"] == 7, answer
            uuid = answer["data"]["request_uuid"]
            assert answer["data"]["status"] == "pending"
            await eventually(lambda: [b for b in dev.calendar.bookings() if b.title == "Via MQTT"])
            [made] = dev.calendar.bookings()
            await eventually(lambda: running.agent.devices()[0]["window_size"] == 1)
            store = running.agent.store
            assert store is not None
            row = await store.load_request(uuid)
            assert row is not None and row.status == "created"

            # refusals answer with the transaction and send nothing
            _publish(
                broker,
                f"{BASE}/bridge/request/book",
                {"room": dev.device_id, "title": "Clash", "duration_min": 10, "transaction": "t2"},
            )
            _publish(
                broker,
                f"{BASE}/bridge/request/book",
                {"room": "nope", "title": "T", "duration_min": 10, "transaction": "t3"},
            )
            _publish(
                broker,
                f"{BASE}/bridge/request/book",
                {"room": dev.device_id, "title": "T", "duration_min": 0, "transaction": "t4"},
            )
            _publish(broker, f"{BASE}/bridge/request/book", b"not json")
            await eventually(lambda: len(_answers(sub, "book")) == 5)
            errors = {a.get("transaction"): a for a in _answers(sub, "book")[1:]}
            assert all(a["status"] == "error" for a in errors.values())
            assert "overlaps booking" in errors["t2"]["error"]
            assert "unknown room" in errors["t3"]["error"]
            assert "duration_min" in errors["t4"]["error"]
            assert "not valid JSON" in errors[None]["error"]

            _publish(
                broker,
                f"{BASE}/bridge/request/release",
                {"room": dev.device_id, "id": made.id, "transaction": {"n": 1}},
            )
            await eventually(lambda: _answers(sub, "release"))
            [released] = _answers(sub, "release")
            assert released["status"] == "ok" and released["transaction"] == {"n": 1}
            await eventually(lambda: of_type(receiver.events, "booking.deleted"))
            assert dev.calendar.bookings() == []
    finally:
        broker.stop()


async def test_only_the_base_topic_and_never_retained(booked, receiver, tmp_path) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        # Left retained before the agent starts: the broker hands it over (retain flag set) at
        # every subscribe; taking it would book again after each reconnect.
        order = {"room": "sim-0000", "title": "Must not book", "duration_min": 10}
        _publish(broker, f"{BASE}/bridge/request/book", {**order, "transaction": "r"}, retain=True)
        fleet, running, _ = await booked(extra={"mqtt": {"url": broker.url, "keepalive": 5}})
        await asyncio.wait_for(running.agent.mqtt_requests.subscribed.wait(), 10)
        dev = fleet.devices[0]
        assert dev.device_id == order["room"]
        with Subscriber(broker, f"{BASE}/bridge/response/+") as sub:
            _publish(broker, "roomos-edge/other-site/bridge/request/book", order)
            _publish(broker, f"{BASE}/bridge/request/book/extra", order)
            _publish(broker, f"{BASE}/devices/sim-0000/bridge/request/book", order)
            # a marker request after them: once it is answered, the others were seen and skipped
            _publish(
                broker,
                f"{BASE}/bridge/request/release",
                {"room": "nope", "id": "1", "transaction": "m"},
            )
            await eventually(lambda: _answers(sub, "release"))
            assert _answers(sub, "release")[0]["transaction"] == "m"
            assert _answers(sub, "book") == []
        assert dev.calendar.bookings() == []
        assert not of_type(receiver.events, "booking.requested")
    finally:
        broker.stop()


async def test_requests_wait_for_the_mqtt_sink() -> None:
    """The outcome goes out through the sink: with it down, a request is refused, not queued."""
    import pytest

    from edge_agent.forward.mqtt.link import broker_settings
    from edge_agent.forward.mqtt.requests import BridgeRequests, RequestError

    class Desk:
        def __init__(self) -> None:
            self.booked: list[str] = []

        def booking_room(self, room_id: str) -> str | None:
            return "device"

        async def book(self, room_id: str, order: Any) -> Any:
            self.booked.append(room_id)
            raise AssertionError("must not be called")

        async def release(self, room_id: str, booking_id: str) -> Any:
            raise AssertionError("must not be called")

    desk = Desk()
    mirror = BridgeRequests(
        broker_settings("mqtt://127.0.0.1:1", client_id="t"), BASE, desk, lambda: False
    )
    body = json.dumps({"room": "r", "title": "T", "duration_min": 5}).encode()
    with pytest.raises(RequestError, match="MQTT sink is not connected"):
        await mirror._handle("book", body)
    with pytest.raises(RequestError, match="larger than"):
        await mirror._handle("book", b" " * 20_000)
    assert desk.booked == []
