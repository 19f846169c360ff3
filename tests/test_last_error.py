"""Last errors are what is wrong now, with their time (issue 15): once a device link is up again
``last_error`` is null and the error shows as ``previous_error``; each has its ``*_at`` (UTC
ISO, from the injected clock). The same for a sink after its next delivery."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sim import DeviceFleet, SimConfig
from edge_agent.backoff import Backoff
from edge_agent.forward.drainer import Drainer
from edge_agent.forward.webhook import WebhookSink
from edge_agent.store import Store
from edge_agent.xapi import DeviceEndpoint, XapiClient
from tests.forward.test_drainer import commit
from tests.receivers import Reply, WebhookReceiver

FAST = Backoff(initial=0.01, maximum=0.05, factor=2.0, jitter=0.0)
ERROR_AT = datetime(2026, 11, 23, 9, 15, 0, 250000, tzinfo=UTC)


class PinnedClock:
    """Wall time stands at ERROR_AT (the stamp is checked exactly); monotonic time runs, for
    the client's backoff and timeouts."""

    def now(self) -> datetime:
        return ERROR_AT

    def monotonic(self) -> float:
        return time.monotonic()


async def until_true(cond: object, timeout: float = 10.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def fleet() -> AsyncIterator[DeviceFleet]:
    f = DeviceFleet(SimConfig(devices=1, password="pw"))
    await f.start()
    yield f
    await f.stop()


async def test_a_device_error_moves_to_previous_once_connected(fleet: DeviceFleet) -> None:
    device = fleet.devices[0]
    connected = asyncio.Queue[None]()

    async def on_connected(client: XapiClient) -> None:
        connected.put_nowait(None)

    client = XapiClient(
        DeviceEndpoint(
            "room-1", url=device.url, username="admin", password="pw",
            fingerprint=fleet.cert_sha256,
        ),
        clock=PinnedClock(), backoff=FAST, on_connected=on_connected, probe_interval=None,
        request_timeout=2.0, open_timeout=2.0,
    )  # fmt: skip
    runner = asyncio.create_task(client.run(), name="test.xapi")
    try:
        await asyncio.wait_for(connected.get(), 10)
        fresh = client.stats()
        assert fresh["last_error"] is None and fresh["last_error_at"] is None
        assert fresh["previous_error"] is None and fresh["previous_error_at"] is None

        device.faults.state.down = True  # rebooting: the link drops, handshakes get 502
        device.faults.drop()
        await until_true(lambda: not client.connected and client.last_error is not None)
        down = client.stats()
        assert down["connected"] is False
        assert down["last_error"] and down["last_error_at"] == "2026-11-23T09:15:00.250Z"
        assert down["previous_error"] is None

        device.faults.state.down = False
        await asyncio.wait_for(connected.get(), 10)
        up = client.stats()
        assert up["connected"] is True
        assert up["last_error"] is None and up["last_error_at"] is None
        assert up["previous_error"] == client.last_error  # the latest error, kept for the record
        assert up["previous_error_at"] == "2026-11-23T09:15:00.250Z"
    finally:
        await client.close()
        await asyncio.wait_for(runner, 5)


def running_from(start: datetime) -> Callable[[], float]:
    """A drainer clock (unix seconds) that starts at ``start`` and runs: retries fall due."""
    t0 = time.monotonic()
    return lambda: start.timestamp() + (time.monotonic() - t0)


def assert_stamped(at: str | None) -> None:
    """``at`` is the UTC ISO form, taken from the drainer's clock (not the wall clock)."""
    assert at is not None and at.endswith("Z"), at
    stamp = datetime.fromisoformat(at[:-1] + "+00:00")
    assert ERROR_AT <= stamp < ERROR_AT + timedelta(minutes=1), at


SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


async def test_a_sink_error_moves_to_previous_after_a_delivery(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    rx = WebhookReceiver(SECRET)
    await rx.start()
    sink = WebhookSink(rx.url, [SECRET], timeout_s=2.0)
    rx.script(Reply(503))  # the first attempt fails, the retry is delivered
    drainer = Drainer(store, sink, backoff=FAST, clock=running_from(ERROR_AT))
    task = asyncio.create_task(drainer.run(), name="test.drainer")
    try:
        await commit(store, "room-1", 0)
        await rx.wait_events(1)
        await until_true(lambda: drainer.stats().delivered >= 1)
        st = drainer.stats()
        assert st.last_error is None and st.last_error_at is None
        assert st.previous_error is not None and "503" in st.previous_error
        assert_stamped(st.previous_error_at)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sink.close()
        await rx.stop()
        await store.close()


async def test_a_sink_error_stays_while_it_fails(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    rx = WebhookReceiver(SECRET)
    await rx.start()
    rx.default = Reply(503)
    sink = WebhookSink(rx.url, [SECRET], timeout_s=2.0)
    drainer = Drainer(store, sink, backoff=FAST, clock=running_from(ERROR_AT))
    task = asyncio.create_task(drainer.run(), name="test.drainer")
    try:
        await commit(store, "room-1", 0)
        await rx.wait_requests(2)
        await until_true(lambda: drainer.stats().last_error is not None)
        st = drainer.stats()
        assert "503" in (st.last_error or "")
        assert_stamped(st.last_error_at)
        assert st.previous_error is None and st.delivered == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sink.close()
        await rx.stop()
        await store.close()
