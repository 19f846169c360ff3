"""Store -> drainer -> webhook sink -> real loopback receiver."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.backoff import Backoff
from edge_agent.clock import utc_iso
from edge_agent.forward.base import Delivered, Outcome
from edge_agent.forward.drainer import Drainer
from edge_agent.forward.webhook import WebhookSink
from edge_agent.store import Change, Store
from tests.receivers import Delivery, Reply, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
FAST = Backoff(initial=0.01, maximum=0.05, factor=2.0, jitter=0.0)


def env(device: str, n: int) -> dict[str, Any]:
    return {
        "type": "booking.updated",
        "timestamp": utc_iso(datetime.now(UTC)),
        "data": {
            "event_id": f"{device}-{n}",
            "device_id": device,
            "n": n,
            "observed_at": utc_iso(datetime.now(UTC)),
        },
    }


async def commit(store: Store, device: str, n: int) -> None:
    await store.commit(Change(device, events=[env(device, n)]))


@asynccontextmanager
async def running(store: Store, sink: Any, **kw: Any) -> AsyncIterator[Drainer]:
    kw.setdefault("backoff", FAST)
    drainer = Drainer(store, sink, **kw)
    task = asyncio.create_task(drainer.run(), name="test.drainer")
    try:
        yield drainer
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db")
    yield s
    await s.close()


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sink(rx: WebhookReceiver) -> AsyncIterator[WebhookSink]:
    s = WebhookSink(rx.url, [SECRET], timeout_s=2.0)
    yield s
    await s.close()


async def wait_delivered(drainer: Drainer, n: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while drainer.stats().delivered < n:
            await asyncio.sleep(0.005)


def assert_in_order(rx: WebhookReceiver, devices: int, per_device: int) -> None:
    got = rx.by_device()
    assert len(got) == devices
    for evs in got.values():
        assert [e["data"]["n"] for e in evs] == list(range(per_device))


@pytest.mark.parametrize("batch_max", [1, 5])
async def test_order_per_device_under_concurrency(
    store: Store, rx: WebhookReceiver, batch_max: int
) -> None:
    rng = random.Random(3)
    rx.responder = lambda d: Reply(200, delay_s=rng.choice([0, 0, 0.001, 0.005]))
    sink = WebhookSink(rx.url, [SECRET], batch_max=batch_max)
    try:
        async with running(store, sink, max_in_flight=8):
            for n in range(30):
                await asyncio.gather(*(commit(store, f"room-{d}", n) for d in range(20)))
            await rx.wait_events(600, timeout=20)
        assert_in_order(rx, 20, 30)
        assert rx.bad_signatures == 0
        if batch_max > 1:
            assert rx.requests < 600
    finally:
        await sink.close()


async def test_receiver_down_then_back_delivers_everything(
    store: Store, rx: WebhookReceiver
) -> None:
    sink = WebhookSink(rx.url, [SECRET], timeout_s=0.5)
    try:
        async with running(store, sink, max_in_flight=4) as drainer:
            await rx.go_down()
            for n in range(10):
                for d in range(3):
                    await commit(store, f"room-{d}", n)
            await asyncio.sleep(0.2)
            assert drainer.stats().retried > 0 and drainer.stats().last_error
            await rx.come_back()
            await rx.wait_events(30, timeout=10)
            await wait_delivered(drainer, 30)
        assert_in_order(rx, 3, 10)
        await store.flush()
        assert (await store.stats())["sinks"]["webhook"]["depth"] == 0
    finally:
        await sink.close()


async def test_after_an_outage_each_device_sends_its_whole_batch(
    store: Store, rx: WebhookReceiver
) -> None:
    """A Retry (503) does not split the batch: once the receiver answers again each device's
    first request carries its whole batch (only a rejected batch goes one event at a time)."""
    down = True
    rx.responder = lambda d: Reply(503 if down else 200)
    sink = WebhookSink(rx.url, [SECRET], timeout_s=0.5, batch_max=5)
    try:
        async with running(store, sink, max_in_flight=4) as drainer:
            for n in range(5):
                for d in range(3):
                    await commit(store, f"room-{d}", n)
            async with asyncio.timeout(5):
                while drainer.stats().retried < 15:  # every device's batch failed once
                    await asyncio.sleep(0.005)
            down = False
            await rx.wait_events(15, timeout=10)
        accepted = [d for d in rx.deliveries if d.status == 200]
        assert sorted(len(d.event_ids) for d in accepted) == [5, 5, 5]
        assert_in_order(rx, 3, 5)
    finally:
        await sink.close()


async def test_retry_after_is_honoured(
    store: Store, rx: WebhookReceiver, sink: WebhookSink
) -> None:
    rx.script(Reply(503, retry_after="0.3"), Reply(429, retry_after="0.2"))
    async with running(store, sink):
        t0 = time.monotonic()
        await commit(store, "room-1", 0)
        await rx.wait_events(1, timeout=5)
        assert time.monotonic() - t0 >= 0.5  # FAST alone would have retried after ~30 ms
    assert [d.status for d in rx.deliveries] == [503, 429, 204]


async def test_rejected_event_is_dead_lettered_and_the_device_goes_on(
    store: Store, rx: WebhookReceiver, sink: WebhookSink
) -> None:
    rx.responder = lambda d: Reply(422) if d.webhook_id == "room-1-1" else None
    async with running(store, sink) as drainer:
        for n in range(4):
            await commit(store, "room-1", n)
        await rx.wait_events(3, timeout=5)
    await store.flush()
    assert [e["data"]["n"] for e in rx.events] == [0, 2, 3]
    # Dead-lettered at once (DESIGN.md "other 4xx dead letter"): tried once, not again.
    assert sum(d.webhook_id == "room-1-1" for d in rx.deliveries) == 1
    [dead] = await store.dead_letters()
    assert dead["event_id"] == "room-1-1" and dead["reason"] == "rejected: HTTP 422"
    assert dead["attempts"] == 1
    assert drainer.stats().dead_lettered == 1


async def test_rejected_batch_isolates_the_poison_event(store: Store, rx: WebhookReceiver) -> None:
    def poison(d: Delivery) -> Reply | None:
        return Reply(400) if b'"event_id":"room-1-2"' in d.body else None

    rx.responder = poison
    sink = WebhookSink(rx.url, [SECRET], batch_max=10)
    try:
        for n in range(6):
            await commit(store, "room-1", n)
        async with running(store, sink):
            await rx.wait_events(5, timeout=5)
        await store.flush()
        assert [e["data"]["n"] for e in rx.events] == [0, 1, 3, 4, 5]
        assert [d["event_id"] for d in await store.dead_letters()] == ["room-1-2"]
        # Split, then the poison event alone once: no retry of it by itself.
        alone = [d for d in rx.deliveries if d.webhook_id == "room-1-2"]
        assert len(alone) == 1
    finally:
        await sink.close()


async def test_gone_stops_the_sink_and_keeps_events(
    store: Store, rx: WebhookReceiver, sink: WebhookSink, caplog: Any
) -> None:
    rx.default = Reply(410)
    for n in range(3):
        await commit(store, "room-1", n)
    drainer = Drainer(store, sink, backoff=FAST)
    await asyncio.wait_for(drainer.run(), 5)  # returns by itself
    assert drainer.stopped_reason is not None and "gone" in drainer.stopped_reason
    assert not drainer.ready() and drainer.stats().stopped_reason == drainer.stopped_reason
    await store.flush()
    assert (await store.stats())["sinks"]["webhook"]["depth"] == 3
    assert await store.dead_letters() == []


async def test_ttl_expired_events_go_to_the_dead_letter(
    store: Store, rx: WebhookReceiver, sink: WebhookSink
) -> None:
    rx.default = Reply(503)
    async with running(store, sink, ttl_s=0.15) as drainer:
        await commit(store, "room-1", 0)
        await commit(store, "room-1", 1)
        async with asyncio.timeout(5):
            while len(await store.dead_letters()) < 2:
                await asyncio.sleep(0.02)
        rx.default = Reply(204)
        await commit(store, "room-1", 2)
        await rx.wait_events(1, timeout=5)
    assert {d["reason"] for d in await store.dead_letters()} == {"ttl expired"}
    assert [e["data"]["n"] for e in rx.events] == [2]
    assert drainer.stats().dead_lettered == 2


async def test_cancel_loses_nothing_and_a_restart_resumes(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    path = tmp_path / "a.db"
    rx.default = Reply(200, delay_s=0.02)
    store = await Store.open(path)
    sink = WebhookSink(rx.url, [SECRET])
    for n in range(40):
        await commit(store, f"room-{n % 4}", n // 4)
    async with running(store, sink, max_in_flight=2):
        await rx.wait_events(5, timeout=5)
    await store.close()  # cancelled with sends in flight
    store = await Store.open(path)
    rx.default = Reply(204)
    try:
        async with running(store, sink, max_in_flight=4):
            await rx.wait_events(40, timeout=10)
        assert_in_order(rx, 4, 10)
    finally:
        await sink.close()
        await store.close()


async def test_retry_schedule_survives_a_restart(tmp_path: Path, rx: WebhookReceiver) -> None:
    path = tmp_path / "a.db"
    store = await Store.open(path)
    sink = WebhookSink(rx.url, [SECRET])
    rx.default = Reply(503, retry_after="30")
    await commit(store, "room-1", 0)
    async with running(store, sink):
        await rx.wait_requests(1)
        await asyncio.sleep(0.05)
    await store.close()
    store = await Store.open(path)
    rx.default = Reply(204)
    try:
        async with running(store, sink) as drainer:
            await asyncio.sleep(0.3)
            assert drainer.retrying()["room-1"]["attempts"] == 1
        assert rx.requests == 1  # still backing off: the Retry-After of 30 s was stored
        assert (await store.load_progress("webhook")).retries["room-1"].attempts == 1
    finally:
        await sink.close()
        await store.close()


async def test_a_steady_stream_is_delivered_in_order_per_device(
    store: Store, rx: WebhookReceiver, sink: WebhookSink
) -> None:
    # How fast is bench/bench_webhook.py's business; a test asserts only what cannot flake.
    async with running(store, sink):
        await asyncio.sleep(0.05)
        for n in range(100):  # ~200 events/s over 10 devices
            await commit(store, f"room-{n % 10}", n // 10)
            await asyncio.sleep(0.005)
        await rx.wait_events(100, timeout=5)
    assert len(rx.events) == 100 and rx.duplicates == 0
    for device, events in rx.by_device().items():
        assert len(events) == 10, device
        assert [e["data"]["n"] for e in events] == list(range(10)), device


class FlakySink:
    """A sink whose send raises: the drainer treats it as a retry and keeps going."""

    name = "webhook"
    max_batch = 1

    def __init__(self) -> None:
        self.calls = 0

    async def run(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def send(self, events: Any) -> Outcome:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("bug")
        return Delivered()

    async def close(self) -> None:
        return None


async def test_a_sink_that_raises_is_retried(store: Store) -> None:
    sink = FlakySink()
    async with running(store, sink) as drainer:
        await commit(store, "room-1", 0)
        async with asyncio.timeout(5):
            while drainer.stats().delivered < 1:
                await asyncio.sleep(0.01)
    assert sink.calls == 2 and drainer.stats().retried == 1


class AcceptingSink(FlakySink):
    async def send(self, events: Any) -> Outcome:
        self.calls += 1
        return Delivered()


async def test_latency_is_measured_from_the_stored_observed_at(tmp_path: Path) -> None:
    """From the outbox's observed_at column (taken at commit), on the drainer's clock."""
    from edge_agent.metrics import DELIVERY_LATENCY

    t = 2_000_000_000.0
    store = await Store.open(tmp_path / "a.db", sinks=("lat",), clock=lambda: t)
    sink = AcceptingSink()
    sink.name = "lat"
    try:
        e = {
            "type": "t",
            "data": {"event_id": "x", "observed_at": utc_iso(datetime.fromtimestamp(t - 9.0, UTC))},
        }
        await store.commit(Change("room-1", events=[e]))
        hist = DELIVERY_LATENCY.labels(sink="lat")
        before = hist._sum.get()
        async with running(store, sink, clock=lambda: t + 1.0) as drainer:
            async with asyncio.timeout(5):
                while drainer.stats().delivered < 1:
                    await asyncio.sleep(0.01)
        assert hist._sum.get() - before == pytest.approx(10.0, abs=1e-3)
    finally:
        await store.close()
