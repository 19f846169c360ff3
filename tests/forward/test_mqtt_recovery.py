"""The MQTT sink recovers from what a person fixes and what another client breaks (issue 10, 9).

Against the real mosquitto the tests start (tests/mosquitto.py): a refused credential is
retried at most every ``refused_retry_s`` (60 s by default, was a fixed ~4 min) and at once on
``reconnect_now()`` (the agent's SIGHUP); the refusal's hint names the configured password
source; a retained ``devices/<id>/bookings`` or ``availability`` another client overwrote is
restored on the health timer.
"""

from __future__ import annotations

import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.forward.base import Delivered
from edge_agent.forward.mqtt import MqttSink
from edge_agent.forward.mqtt.sink import PACK_MIN_BYTES
from tests.forward.test_mqtt import (
    BASE,
    FAST,
    event,
    make_sink,
    running,
    snapshot,
    until,
)
from tests.mosquitto import Mosquitto, Subscriber, make_password_file


@pytest.fixture(name="broker")
def plain_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as b:
        yield b


def publish_retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    """Another client (not the agent) overwrites a retained topic."""
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="intruder")
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def retry_delays(logs: list[dict[str, Any]]) -> list[float]:
    return [
        float(m.group(1))
        for e in logs
        if (m := re.search(r"retrying in ([0-9.]+) s", e["event"])) is not None
    ]


async def test_a_refused_credential_is_retried_within_the_cap(tmp_path: Path) -> None:
    """Before: the first retry after a refusal came after 240-360 s (refused_retry_s=300,
    growing to 1200 s); now the delays start at a few seconds and never pass 60 s (+jitter)."""
    pw = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        args = {k: v for k, v in FAST.items() if k != "refused_retry_s"}  # the default cap
        sink = MqttSink(broker.url, site="hq", username="edge", password="wrong", **args)
        with structlog.testing.capture_logs() as logs:
            async with running(sink, wait_ready=False):
                await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
        [first] = retry_delays(logs)
        assert 0 < first <= 60 * 1.2, first
    assert MqttSink.REFUSED_RETRY_MAX_S == 60.0


async def test_reconnect_now_retries_at_once_after_the_broker_is_fixed(tmp_path: Path) -> None:
    """The broker refuses, its password file is fixed and it reloads (SIGHUP), the agent is
    poked (its own SIGHUP): the sink connects without waiting out the refused backoff."""
    pw = make_password_file(tmp_path, {"edge": "old-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        sink = make_sink(broker, username="edge", password="new-password", refused_retry_s=3600)
        async with running(sink, wait_ready=False):
            await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
            assert not sink.ready() and "refused the credentials" in (sink.last_error or "")
            make_password_file(tmp_path, {"edge": "new-password"})
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGHUP)  # mosquitto re-reads it
            sink.reconnect_now()
            await until(sink.ready, what="connected at once after reconnect_now()")
            assert await sink.send([event("room-1")]) == Delivered()


async def test_reconnect_now_takes_the_reloaded_credentials(tmp_path: Path) -> None:
    """The agent's password_file was wrong; the operator fixes it and sends SIGHUP: the
    reload hands the sink the new password and it connects at once."""
    pw = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        sink = make_sink(broker, username="edge", password="wrong", refused_retry_s=3600)
        async with running(sink, wait_ready=False):
            await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
            sink.reconnect_now(credentials=("edge", "right-password"))
            await until(sink.ready, what="connected with the reloaded password")
            sink.reconnect_now()  # while connected: nothing happens, the link stays
            assert sink.ready() and await sink.send([event("room-1")]) == Delivered()


async def test_the_hint_names_the_configured_password_source(tmp_path: Path) -> None:
    """Before: 'check [mqtt] username and password_env' with password_file configured."""
    pw = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        source = "password_file /etc/roomos-edge/mqtt.password"
        sink = make_sink(broker, username="edge", password="wrong", password_source=source)
        async with running(sink, wait_ready=False):
            await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
        error = sink.last_error or ""
        assert "check [mqtt] username and " + source + " in the config" in error, error
        assert "password_env" not in error
        unknown = make_sink(broker, username="edge", password="wrong")
        async with running(unknown, wait_ready=False):
            await until(lambda: unknown.last_error is not None, what="a CONNACK refusal")
        assert "password_env or password_file" in (unknown.last_error or "")


async def test_an_overwritten_retained_window_is_restored_on_the_health_timer(
    broker: Mosquitto,
) -> None:
    """Before: another client's retained bookings stayed until the device's next snapshot."""
    snap = snapshot("room-1", ["standup"])
    bookings = f"{BASE}/devices/room-1/bookings"
    availability = f"{BASE}/devices/room-1/availability"
    with Subscriber(broker, f"{BASE}/devices/room-1/#") as sub:
        async with running(make_sink(broker, health_interval_s=0.2)) as sink:
            assert await sink.send([event("room-1", "device.online"), snap]) == Delivered()
            await until(lambda: sub.on(bookings)[-1:] == [snap.body], what="the window")
            publish_retained(broker, bookings, b'{"forged": true}')
            publish_retained(broker, availability, b"offline")
            await until(lambda: b'{"forged": true}' in sub.on(bookings), what="the overwrite")
            await until(
                lambda: (
                    sub.on(bookings)[-1:] == [snap.body]
                    and sub.on(availability)[-1:] == [b"online"]
                ),
                what="the sink's window and availability restored",
            )
    # What a late subscriber sees now is the agent's, not the intruder's.
    with Subscriber(broker, f"{BASE}/devices/room-1/#") as late:
        await until(lambda: len(late.messages) >= 2, what="retained messages")
        retained = {t: p for t, p, r in late.messages if r}
    assert retained == {bookings: snap.body, availability: b"online"}


async def test_a_large_window_is_kept_deflated_and_restored_as_published(
    broker: Mosquitto,
) -> None:
    """A window past PACK_MIN_BYTES is held deflated (~8 MiB at 1,000 rooms of 13 bookings,
    as sent); the health refresh still publishes the very bytes the device's snapshot did."""
    snap = snapshot("room-1", [f"weekly sync of team {i}" for i in range(100)])
    assert len(snap.body) > 2 * PACK_MIN_BYTES
    bookings = f"{BASE}/devices/room-1/bookings"
    with Subscriber(broker, bookings) as sub:
        async with running(make_sink(broker, health_interval_s=0.2)) as sink:
            assert await sink.send([event("room-1", "device.online"), snap]) == Delivered()
            await until(lambda: sub.on(bookings)[-1:] == [snap.body], what="the window")
            assert len(sink._retained[bookings]) < len(snap.body) / 3  # what memory holds
            assert sink.retained_kept()[bookings] == snap.body
            publish_retained(broker, bookings, b'{"forged": true}')
            await until(lambda: b'{"forged": true}' in sub.on(bookings), what="the overwrite")
            await until(lambda: sub.on(bookings)[-1:] == [snap.body], what="the window restored")


def test_a_small_retained_message_is_kept_as_it_is() -> None:
    sink = MqttSink("mqtt://127.0.0.1:1", site="hq")
    sink.keep_retained(f"{BASE}/devices/room-1/availability", b"online")
    incompressible = random.Random(7).randbytes(2048)  # deflating would not make it smaller
    sink.keep_retained(f"{BASE}/devices/room-1/bookings", incompressible)
    assert sink._retained[f"{BASE}/devices/room-1/availability"] == b"online"
    assert sink._retained[f"{BASE}/devices/room-1/bookings"] is incompressible
    assert sink.retained_kept()[f"{BASE}/devices/room-1/bookings"] == incompressible


def test_the_kept_retained_state_is_bounded(tmp_path: Path) -> None:
    """One entry per device and retained leaf, the latest; bounded even past the cap."""
    sink = MqttSink("mqtt://127.0.0.1:1", site="hq", max_retained_kept=3)
    for i in range(5):
        sink.keep_retained(f"{BASE}/devices/room-{i}/bookings", b"%d" % i)
    sink.keep_retained(f"{BASE}/devices/room-4/bookings", b"newer")
    assert sink.retained_kept() == {
        f"{BASE}/devices/room-2/bookings": b"2",
        f"{BASE}/devices/room-3/bookings": b"3",
        f"{BASE}/devices/room-4/bookings": b"newer",
    }
