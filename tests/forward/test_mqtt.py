"""The MQTT sink against a real mosquitto on loopback (tests/mosquitto.py starts it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge_agent import jsoncodec
from edge_agent.forward.base import Delivered, OutboxEvent, Reject, Retry
from edge_agent.forward.mqtt import (
    BrokerAddress,
    BrokerError,
    MqttSink,
    Topics,
    broker_settings,
    parse_broker_url,
    publications,
    read_retained,
)
from tests.mosquitto import BrokerTls, Mosquitto, Subscriber, make_password_file

REPO = Path(__file__).resolve().parents[2]
BASE = "roomos-edge/hq"

# Millisecond timing so reconnects and timeouts run fast.
FAST = {
    "keepalive": 2,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
    "refused_retry_s": 0.3,
    "connect_timeout_s": 2.0,
    "publish_timeout_s": 5.0,
}


# --- helpers ---------------------------------------------------------------------------------


_seq = iter(range(1, 10**9))


def event(device: str, type_: str = "booking.created", **data: Any) -> OutboxEvent:
    seq = next(_seq)
    envelope = {
        "type": type_,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": f"ev-{seq}", "site": "hq", "device_id": device, **data},
    }
    return OutboxEvent(
        seq=seq,
        device_id=device,
        event_id=f"ev-{seq}",
        type=type_,
        envelope=envelope,
        body=jsoncodec.dumpb(envelope),
        created_at=time.time(),
    )


def snapshot(device: str, titles: Sequence[str]) -> OutboxEvent:
    return event(
        device,
        "bookings.snapshot",
        window={"start": "2026-11-23T00:00:00Z", "end": "2026-11-24T08:00:00Z"},
        bookings=[{"id": str(i), "title": t} for i, t in enumerate(titles)],
    )


def event_ids(payloads: Sequence[bytes]) -> list[str]:
    return [jsoncodec.loads(p)["data"]["event_id"] for p in payloads]


def first_occurrences(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(sink: MqttSink, wait_ready: bool = True) -> AsyncIterator[MqttSink]:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sink.run(), name="mqtt-sink")
        try:
            if wait_ready:
                await until(sink.ready, what=f"sink ready (last_error={sink.last_error})")
            yield sink
        finally:
            await asyncio.wait_for(sink.close(), 10)


async def deliver(sink: MqttSink, events: Sequence[OutboxEvent], deadline_s: float = 20.0) -> int:
    """What the drainer does: send batches in order, each until Delivered. Returns retries."""
    retries = 0
    deadline = time.monotonic() + deadline_s
    for i in range(0, len(events), sink.max_batch):
        batch = events[i : i + sink.max_batch]
        while True:
            outcome = await sink.send(batch)
            if isinstance(outcome, Delivered):
                break
            assert isinstance(outcome, Retry), outcome
            retries += 1
            assert time.monotonic() < deadline, f"not delivered in time: {outcome}"
            await asyncio.sleep(0.02)
    return retries


def make_sink(broker: Mosquitto, **kw: Any) -> MqttSink:
    args: dict[str, Any] = dict(FAST, site="hq")
    args.update(kw)
    return MqttSink(broker.url, **args)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path) as b:
        yield b


# --- pure parts --------------------------------------------------------------------------------


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://10.0.0.5") == BrokerAddress("10.0.0.5", 1883, False)
    assert parse_broker_url("mqtts://broker.example") == BrokerAddress("broker.example", 8883, True)
    assert parse_broker_url("MQTTS://h:1") == BrokerAddress("h", 1, True)
    for bad in ("http://h", "mqtt://", "mqtt://u:p@h", "mqtt://h/x"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_what_each_event_becomes() -> None:
    t = Topics(BASE)
    created, online, offline, snap = (
        event("r1"),
        event("r1", "device.online"),
        event("r1", "device.offline"),
        snapshot("r1", ["a"]),
    )
    assert [(p.topic, p.payload, p.retain) for p in publications(created, t)] == [
        (f"{BASE}/devices/r1/events", created.body, False)
    ]
    assert [(p.topic, p.payload, p.retain) for p in publications(online, t)][1] == (
        f"{BASE}/devices/r1/availability",
        b"online",
        True,
    )
    assert publications(offline, t)[1].payload == b"offline"
    assert [(p.topic, p.payload, p.retain) for p in publications(snap, t)] == [
        (f"{BASE}/devices/r1/events", snap.body, False),
        (f"{BASE}/devices/r1/bookings", snap.body, True),
    ]


async def test_a_device_id_that_cannot_be_a_topic_level_is_rejected(broker: Mosquitto) -> None:
    async with running(make_sink(broker)) as sink:
        assert isinstance(await sink.send([event("a/b")]), Reject)
        assert isinstance(await sink.send([event("room-#")]), Reject)


# --- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_events_arrive_in_order_per_device(broker: Mosquitto, protocol: str) -> None:
    devices = ["room-1", "room-2", "room-3"]
    sent = {d: [event(d) for _ in range(120)] for d in devices}
    with Subscriber(broker, f"{BASE}/devices/+/events", protocol=protocol) as sub:
        async with running(make_sink(broker, protocol=protocol, max_in_flight=20)) as sink:
            async with asyncio.TaskGroup() as tg:
                for d in devices:
                    tg.create_task(deliver(sink, sent[d]))
            assert sink.stats.delivered == 360
            await until(lambda: len(sub.messages) >= 360, what="360 events at the subscriber")
    for d in devices:
        got = event_ids(sub.on(f"{BASE}/devices/{d}/events"))
        assert got == [e.event_id for e in sent[d]]


async def test_a_late_subscriber_sees_the_retained_state(broker: Mosquitto) -> None:
    snap_old, snap_new = snapshot("room-1", ["old"]), snapshot("room-1", ["standup", "1:1"])
    async with running(make_sink(broker)) as sink:
        assert (
            await sink.send([event("room-1", "device.online"), snap_old, snap_new]) == Delivered()
        )
        assert (
            await sink.send([event("room-2", "device.online"), event("room-2", "device.offline")])
            == Delivered()
        )
        with Subscriber(broker, f"{BASE}/#") as late:
            await until(lambda: len(late.messages) >= 4, what="retained messages")
            retained = {t: p for t, p, r in late.messages if r}
    assert retained[f"{BASE}/bridge/state"] == b"online"
    assert retained[f"{BASE}/devices/room-1/availability"] == b"online"
    assert retained[f"{BASE}/devices/room-2/availability"] == b"offline"
    # The whole envelope of the latest snapshot: the window, with its event_id and timestamp.
    assert retained[f"{BASE}/devices/room-1/bookings"] == snap_new.body
    assert jsoncodec.loads(snap_new.body)["data"]["bookings"][1]["title"] == "1:1"
    assert f"{BASE}/devices/room-1/events" not in retained


class PinnedClock:
    """The agent's injected clock, stopped at a time no wall clock shows."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic()


async def test_clean_close_says_offline_and_health_is_published(broker: Mosquitto) -> None:
    calls = 0
    clock = PinnedClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))

    def health() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"devices_connected": 2, "outbox_depth": 7, "deliveries": {"mqtt": 3}}

    with Subscriber(broker, f"{BASE}/bridge/#") as sub:
        sink_under_test = make_sink(broker, health=health, health_interval_s=0.1, clock=clock)
        async with running(sink_under_test) as sink:
            await sink.send([event("room-1")])
            await until(lambda: len(sub.on(f"{BASE}/bridge/health")) >= 2, what="2 health messages")
        await until(lambda: sub.on(f"{BASE}/bridge/state")[-1:] == [b"offline"], what="offline")
    doc = jsoncodec.loads(sub.on(f"{BASE}/bridge/health")[-1])
    assert doc["devices_connected"] == 2 and doc["outbox_depth"] == 7
    assert doc["site"] == "hq" and doc["uptime_s"] >= 0 and doc["timestamp"].endswith("Z")
    assert doc["mqtt"]["connects"] == 1 and doc["mqtt"]["delivered"] == 1
    # Both wall times come from the injected clock (STYLE: time is an input).
    assert doc["timestamp"] == "2026-11-23T08:00:00.000Z"
    assert doc["mqtt"]["connected_since"] == "2026-11-23T08:00:00.000Z"
    assert sub.on(f"{BASE}/bridge/state") == [b"online", b"offline"]
    assert sink.ready() is False


async def test_send_while_disconnected_is_a_retry(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # not started
    async with running(make_sink(broker), wait_ready=False) as sink:
        await until(lambda: sink.last_error is not None, what="a connect error")
        assert "cannot reach broker 127.0.0.1:" in (sink.last_error or "")
        assert not sink.ready()
        outcome = await sink.send([event("room-1")])
        assert isinstance(outcome, Retry) and "not connected" in outcome.reason


CHILD = """
import asyncio, sys
from edge_agent.forward.mqtt import MqttSink

async def main():
    sink = MqttSink(sys.argv[1], site="hq", client_id="child", keepalive=1)
    task = asyncio.ensure_future(sink.run())
    while not sink.ready():
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


async def test_kill_9_fires_the_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with Subscriber(broker, f"{BASE}/bridge/state") as sub:
        child = subprocess.Popen(  # noqa: ASYNC220 - a quick fork; the test awaits its output
            [sys.executable, str(script), broker.url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path[1:]])},
        )
        try:
            assert child.stdout is not None
            stdout = child.stdout

            def wait_ready() -> None:  # skip structlog's lines (stdout by default)
                for line in stdout:
                    if line.strip() == b"ready":
                        return
                raise AssertionError("the child exited before it was ready")

            await asyncio.wait_for(asyncio.to_thread(wait_ready), 15)
            await until(lambda: sub.on(f"{BASE}/bridge/state")[-1:] == [b"online"], what="online")
            os.kill(child.pid, signal.SIGKILL)
            # The broker publishes the will once the dead client's keepalive runs out.
            await until(
                lambda: sub.on(f"{BASE}/bridge/state")[-1:] == [b"offline"],
                timeout=10,
                what="the will (offline)",
            )
        finally:
            child.kill()
            child.wait()


async def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    # Persistence on, and a persistent subscriber session: the broker keeps what it PUBACKed
    # across a clean restart, so any loss would be the sink's.
    broker = Mosquitto(tmp_path, persistence=True).start()
    sub = Subscriber(broker, f"{BASE}/devices/+/events", client_id="cloud", clean=False).start()
    devices = ["room-1", "room-2"]
    # Enough that the restart lands mid-stream however fast the link is (600 per device were
    # all PUBACKed before the subscriber had reported its first 200 once the link batched).
    n = 4000
    sent = {d: [event(d) for _ in range(n)] for d in devices}
    try:
        async with running(make_sink(broker, max_batch=25)) as sink:

            async def bounce() -> None:
                await until(lambda: len(sub.messages) >= 200, what="some traffic first")
                broker.stop()
                await asyncio.sleep(0.3)
                broker.start()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(bounce())
                retries = [tg.create_task(deliver(sink, sent[d])) for d in devices]
            assert sum(r.result() for r in retries) >= 1, "the restart did not hit a batch"
            await until(sink.ready, what="reconnected")
            await until(
                lambda: (
                    len(
                        {
                            i
                            for d in devices
                            for i in event_ids(sub.on(f"{BASE}/devices/{d}/events"))
                        }
                    )
                    >= n * len(devices)
                ),
                timeout=30,
                what="every event at the subscriber",
            )
        for d in devices:
            got = event_ids(sub.on(f"{BASE}/devices/{d}/events"))
            # Duplicates are allowed (at least once), loss and reordering are not.
            assert first_occurrences(got) == [e.event_id for e in sent[d]]
    finally:
        sub.stop()
        broker.stop()


async def test_link_lost_with_pubacks_outstanding_is_a_retry(broker: Mosquitto) -> None:
    async with running(make_sink(broker, keepalive=30)) as sink:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # the broker takes the bytes but never PUBACKs
        try:
            sending = asyncio.create_task(sink.send([event("room-1") for _ in range(10)]))
            await asyncio.sleep(0.2)
            assert not sending.done()
        finally:
            broker.kill()  # the kernel resets the connection: every PUBACK is now missing
        outcome = await asyncio.wait_for(sending, 5)
        assert isinstance(outcome, Retry) and "lost before PUBACK" in outcome.reason
        assert sink.stats.delivered == 0
        broker.start()
        await until(sink.ready, what="reconnected")
        assert await sink.send([event("room-1")]) == Delivered()


async def test_with_the_real_store_and_drainer_a_broker_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    from edge_agent.backoff import Backoff
    from edge_agent.forward.drainer import Drainer
    from edge_agent.store import Change, Store

    broker = Mosquitto(tmp_path, persistence=True).start()
    sub = Subscriber(broker, f"{BASE}/devices/+/events", client_id="cloud2", clean=False).start()
    store = await Store.open(tmp_path / "outbox.db", sinks=("mqtt",))
    sink = make_sink(broker, max_batch=20)
    drainer = Drainer(store, sink, max_in_flight=4, backoff=Backoff(initial=0.05, maximum=0.2))
    envelopes = {d: [event(d).envelope for _ in range(300)] for d in ("room-1", "room-2", "room-3")}
    try:
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(drainer.run(), name="drainer[mqtt]")
            for i in range(0, 300, 30):
                for d, envs in envelopes.items():
                    await store.commit(Change(d, events=envs[i : i + 30]))
                if i == 150:
                    await until(lambda: len(sub.messages) >= 100, what="some traffic first")
                    broker.stop()
                    await asyncio.sleep(0.3)
                    broker.start()

            async def drained() -> bool:
                return (await store.stats())["sinks"]["mqtt"]["depth"] == 0

            deadline = time.monotonic() + 15
            while not await drained():
                assert time.monotonic() < deadline, "the outbox did not drain"
                await asyncio.sleep(0.05)
            await until(
                lambda: len(set(event_ids([p for _, p, _ in sub.messages]))) >= 900,
                timeout=10,
                what="every event at the subscriber",
            )
            run.cancel()
        await sink.close()
        for d, envs in envelopes.items():
            got = event_ids(sub.on(f"{BASE}/devices/{d}/events"))
            assert first_occurrences(got) == [e["data"]["event_id"] for e in envs]
    finally:
        await store.close()
        sub.stop()
        broker.stop()


async def test_online_is_published_again_after_the_broker_comes_back(broker: Mosquitto) -> None:
    async with running(make_sink(broker)) as sink:
        broker.kill()  # no persistence: the retained "online" is gone with it
        await until(lambda: not sink.ready(), what="link loss noticed")
        broker.start()
        await until(sink.ready, what="reconnected")
        with Subscriber(broker, f"{BASE}/bridge/state") as sub:
            await until(lambda: sub.messages[-1:] == [(f"{BASE}/bridge/state", b"online", True)])


# --- TLS and credentials -----------------------------------------------------------------------


@pytest.mark.parametrize("client_cert", [False, True], ids=["server-auth", "mutual-tls"])
async def test_tls_with_a_custom_ca(tmp_path: Path, client_cert: bool) -> None:
    tls = BrokerTls.make(tmp_path, require_certificate=client_cert)
    with Mosquitto(tmp_path, tls=tls) as broker, Subscriber(broker, f"{BASE}/#") as sub:
        assert broker.url.startswith("mqtts://")
        extra = (
            {"cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
            if client_cert
            else {}
        )
        async with running(make_sink(broker, ca_file=str(tls.ca_file), **extra)) as sink:
            assert await sink.send([event("room-1")]) == Delivered()
            await until(lambda: len(sub.on(f"{BASE}/devices/room-1/events")) == 1)


async def test_tls_client_certificate_missing(tmp_path: Path) -> None:
    tls = BrokerTls.make(tmp_path, require_certificate=True)
    with Mosquitto(tmp_path, tls=tls) as broker:
        async with running(make_sink(broker, ca_file=str(tls.ca_file)), wait_ready=False) as sink:
            await until(lambda: sink.last_error is not None, what="a TLS error")
            assert not sink.ready()
            assert f"mqtt: broker 127.0.0.1:{broker.port}" in (sink.last_error or "")
            assert "client certificate" in (sink.last_error or "")


@pytest.mark.parametrize(
    ("server_names", "ca", "expect"),
    [
        (("127.0.0.1",), "system", "certificate verify failed"),
        (("broker.example",), "custom", "not valid for '127.0.0.1'"),
    ],
    ids=["unknown-ca", "hostname-mismatch"],
)
async def test_tls_verification_failures_are_clear(
    tmp_path: Path, server_names: tuple[str, ...], ca: str, expect: str
) -> None:
    tls = BrokerTls.make(tmp_path, server_names=server_names)
    with Mosquitto(tmp_path, tls=tls) as broker:
        sink = make_sink(broker, ca_file=str(tls.ca_file) if ca == "custom" else None)
        with structlog.testing.capture_logs() as logs:
            async with running(sink, wait_ready=False):
                await until(lambda: sink.last_error is not None, what="a TLS error")
        error = sink.last_error or ""
        assert error.startswith(f"mqtt: TLS to broker 127.0.0.1:{broker.port} failed")
        assert expect in error and "check [mqtt] ca_file" in error and "retrying in" in error
        assert any(e["log_level"] == "error" and "TLS" in e["event"] for e in logs)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_refused_credentials_give_a_clear_error(tmp_path: Path, protocol: str) -> None:
    pw = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        sink = make_sink(
            broker,
            username="edge",
            password="wrong-password",
            password_source="password_env MQTT_PASSWORD",
            protocol=protocol,
        )
        with structlog.testing.capture_logs() as logs:
            async with running(sink, wait_ready=False):
                await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
                assert not sink.ready()
        error = sink.last_error or ""
        assert error.startswith(
            f"mqtt: broker 127.0.0.1:{broker.port} refused the credentials for user 'edge' ("
        ), error
        assert (
            "check [mqtt] username and password_env MQTT_PASSWORD in the config; retrying in"
        ) in error
        errors = [e for e in logs if e["log_level"] == "error"]
        assert errors and "refused the credentials" in errors[0]["event"]
        assert "wrong-password" not in repr(logs)

        async with running(
            make_sink(broker, username="edge", password="right-password", protocol=protocol)
        ) as ok:
            assert await ok.send([event("room-1")]) == Delivered()


async def test_anonymous_refused_says_to_set_credentials(tmp_path: Path) -> None:
    pw = make_password_file(tmp_path, {"edge": "pw"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        sink = make_sink(broker)
        async with running(sink, wait_ready=False):
            await until(lambda: sink.last_error is not None, what="a CONNACK refusal")
        assert "refused the connection without credentials" in (sink.last_error or "")
        assert "set [mqtt] username and password_env" in (sink.last_error or "")


# --- the one link, used by check-config and a late subscriber ------------------------------------


async def test_read_retained_sees_what_a_late_subscriber_sees(broker: Mosquitto) -> None:
    snap = snapshot("room-1", ["standup"])
    async with running(make_sink(broker)) as sink:
        assert await sink.send([event("room-1", "device.online"), snap]) == Delivered()
        settings = broker_settings(broker.url, client_id="late-subscriber", protocol="3.1.1")
        retained = await read_retained(settings, f"{BASE}/#", quiet_s=0.3)
    assert retained == {
        f"{BASE}/bridge/state": b"online",
        f"{BASE}/devices/room-1/availability": b"online",
        f"{BASE}/devices/room-1/bookings": snap.body,
    }


async def test_read_retained_says_why_it_cannot_connect(tmp_path: Path) -> None:
    from tests.mosquitto import free_port

    settings = broker_settings(f"mqtt://127.0.0.1:{free_port()}", client_id="late")
    with pytest.raises(BrokerError, match="cannot reach broker 127.0.0.1:.*connection refused"):
        await read_retained(settings, f"{BASE}/#")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_probe_connects_like_the_sink_and_publishes_nothing(
    broker: Mosquitto, protocol: str
) -> None:
    with Subscriber(broker, f"{BASE}/#") as sub:
        sink = make_sink(broker, protocol=protocol)
        version = "MQTT 5" if protocol == "5" else "MQTT 3.1.1"
        assert await sink.probe(client_id="check-1", timeout_s=2.0) == f"CONNACK ({version})"
        # A running agent's sink stays connected: the probe used an id of its own.
        async with running(make_sink(broker)) as live:
            assert await live.probe(client_id="check-2", timeout_s=2.0)
            assert live.ready() and await live.send([event("room-1")]) == Delivered()
        await until(lambda: sub.on(f"{BASE}/bridge/state")[-1:] == [b"offline"], what="offline")
    # Only the running sink's online/offline: the probes sent no will and published nothing.
    assert sub.on(f"{BASE}/bridge/state") == [b"online", b"offline"]


async def test_probe_failures_are_the_sinks_errors(tmp_path: Path) -> None:
    pw = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=pw) as broker:
        sink = make_sink(broker, username="edge", password="wrong-password")
        with pytest.raises(BrokerError) as refused:
            await sink.probe(client_id="check", timeout_s=2.0)
        assert refused.value.kind == "auth"
        assert str(refused.value).startswith(
            f"mqtt: broker 127.0.0.1:{broker.port} refused the credentials for user 'edge' ("
        )
        assert str(refused.value).endswith(
            "check [mqtt] username and password_env or password_file in the config"
        )
    tls = BrokerTls.make(tmp_path, require_certificate=True)
    with Mosquitto(tmp_path, tls=tls) as broker:
        sink = make_sink(broker, ca_file=str(tls.ca_file))
        with pytest.raises(BrokerError, match="client certificate") as no_cert:
            await sink.probe(client_id="check", timeout_s=2.0)
        assert no_cert.value.kind == "tls"
        missing = make_sink(broker, ca_file=str(tmp_path / "no-such-ca.pem"))
        with pytest.raises(BrokerError, match="cannot load the TLS files") as files:
            await missing.probe(client_id="check", timeout_s=2.0)
        assert files.value.kind == "config"
