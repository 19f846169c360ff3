"""The client against the device simulator over real TLS: requests, feedback and every fault."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from device_sim import DeviceFleet, SimConfig
from device_sim.server import Device
from edge_agent.backoff import Backoff
from edge_agent.xapi import DeviceEndpoint, XapiClient, errors
from edge_agent.xapi.protocol import Feedback

FAST = dict(
    request_timeout=1.0,
    open_timeout=1.0,
    ping_interval=None,
    probe_interval=0.1,
    probe_timeout=0.2,
    backoff=Backoff(initial=0.01, maximum=0.05, factor=2.0, jitter=0.2),
    stable_after=0.3,
    not_ready_delay=0.05,
    close_timeout=0.2,
)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@pytest.fixture
async def fleet(cert_files: tuple[str, str]) -> AsyncIterator[DeviceFleet]:
    cert, key = cert_files
    fleet = DeviceFleet(SimConfig(devices=1, cert_file=cert, key_file=key, mode="local"))
    await fleet.start()
    yield fleet
    await fleet.stop()


@pytest.fixture
def device(fleet: DeviceFleet) -> Device:
    return fleet.devices[0]


class Harness:
    """A running client plus what its hooks and handler saw."""

    def __init__(self, device: Device, ca_file: str, **kw: Any) -> None:
        self.device = device
        self.connects = 0
        self.losses: list[BaseException | None] = []
        self.events: list[dict[str, Any]] = []
        opts = {**FAST, **kw}
        self.client = XapiClient(
            DeviceEndpoint(
                "room-4a", url=device.url, username="admin", password="secret", ca_file=ca_file
            ),
            on_connected=self._connected,
            on_disconnected=self.losses.append,
            **opts,
        )
        self.task: asyncio.Task[None] | None = None

    async def _connected(self, client: XapiClient) -> None:
        self.connects += 1

    def handler(self, payload: dict[str, Any]) -> None:
        self.events.append(payload)

    async def start(self) -> None:
        await self.client.subscribe("Event Bookings", self.handler)
        self.task = asyncio.create_task(self.client.run())
        await until(lambda: self.connects >= 1)

    async def stop(self) -> None:
        await self.client.close()
        assert self.task is not None
        await asyncio.wait_for(self.task, 2)
        assert self.client.pending == 0

    def booking_created(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "BookingCreated" in e["Event"]["Bookings"]]

    async def add_booking_and_hear_it(self) -> None:
        before = len(self.booking_created())
        start = self.device.clock.now() + timedelta(hours=1)
        self.device.calendar.add(start, 30, title="Standup")
        await until(lambda: len(self.booking_created()) > before)


@pytest.fixture
async def harness(device: Device, ca_file: str) -> AsyncIterator[Harness]:
    h = Harness(device, ca_file)
    await h.start()
    yield h
    await h.stop()


async def in_flight(client: XapiClient, call: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(call)
    await until(lambda: client.pending >= 1)
    return task


# --- the happy path ---------------------------------------------------------------------------


async def test_requests_and_feedback(harness: Harness) -> None:
    client = harness.client
    assert client.connected
    assert isinstance(await client.get("Status SystemUnit Uptime"), int)
    zone = await client.get(["Configuration", "Time", "Zone"])
    assert isinstance(zone, str)
    listed = await client.command("Bookings List", DayOffset=0, Days=2)
    assert listed["status"] == "OK"
    with pytest.raises(errors.XapiError) as info:
        await client.command("Bookings NoSuchCommand")
    assert info.value.code is not None and "room-4a" in str(info.value)
    await harness.add_booking_and_hear_it()
    created = harness.booking_created()[-1]["Event"]["Bookings"]["BookingCreated"]
    assert created["Title"] == "Standup"
    assert "Id" not in harness.booking_created()[-1]  # the subscription Id is stripped
    assert client.stats()["malformed"] == 0


async def test_command_at_numbers_the_frame_of_its_answer(harness: Harness) -> None:
    """What a caller of ``command_at`` orders against feedback: the answer's frame number, as
    ``frames_read`` counted it for feedback read before (lower) and after (higher) it."""
    client = harness.client
    seen: list[int] = []
    await client.subscribe("Event Bookings", lambda _p: seen.append(client.frames_read))
    await harness.add_booking_and_hear_it()
    before = seen[-1]
    listed, frame = await client.command_at("Bookings List", DayOffset=0, Days=2)
    assert listed["status"] == "OK"
    assert before < frame <= client.frames_read
    await harness.add_booking_and_hear_it()
    assert seen[-1] > frame
    assert not client._answer_frames  # nothing kept per request once it is answered


async def test_handlers_that_raise_are_logged_and_async_handlers_run(
    harness: Harness,
) -> None:
    got: list[Any] = []

    def broken(payload: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    async def slow(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        got.append(payload)

    async def broken_async(payload: dict[str, Any]) -> None:
        raise RuntimeError("async handler bug")

    for h in (broken, slow, broken_async):
        await harness.client.subscribe("Event Bookings", h)
    with structlog.testing.capture_logs() as logs:
        await harness.add_booking_and_hear_it()
        await until(lambda: len(got) >= 1 and harness.client.handler_errors >= 2)
    assert harness.client.connected
    failures = [e for e in logs if e["event"] == "feedback handler failed"]
    assert failures and all(e["device"] == "room-4a" for e in failures)


async def test_subscribe_refused_is_raised_and_forgotten(harness: Harness) -> None:
    with pytest.raises(errors.XapiError):
        await harness.client.subscribe("NoSuchRoot Bookings", harness.handler)
    assert harness.client.stats()["subscriptions"] == 1


# --- faults -----------------------------------------------------------------------------------


async def assert_recovered(h: Harness, connects_before: int) -> None:
    await until(lambda: h.connects > connects_before)
    assert h.client.connected and h.client.pending == 0
    await h.add_booking_and_hear_it()  # re-subscribed: feedback reaches the handler again


async def test_drop_without_close_frame(harness: Harness) -> None:
    client, device = harness.client, harness.device
    device.faults.slow(2000)
    waiting = await in_flight(client, client.command("Bookings List", DayOffset=0, Days=2))
    device.faults.drop()
    with pytest.raises(errors.ConnectionLost):
        await waiting
    assert client.pending == 0
    assert isinstance(harness.losses[-1], errors.ConnectionLost)
    assert "without a close frame" in str(harness.losses[-1])
    device.faults.slow(0)
    await assert_recovered(harness, 1)
    assert client.reconnects >= 1
    assert client.counters.connects >= 2 and client.counters.errors.get("lost", 0) >= 1


async def test_silent_link_is_caught_by_the_probe(harness: Harness) -> None:
    client, device = harness.client, harness.device
    device.faults.silent(0.6)
    waiting = await in_flight(client, client.get("Status SystemUnit Uptime", timeout=5))
    with pytest.raises(errors.ConnectionLost):
        await waiting
    assert "liveness probe" in str(harness.losses[-1])
    assert client.pending == 0
    await assert_recovered(harness, 1)


async def test_silent_link_is_caught_by_websocket_pings(device: Device, ca_file: str) -> None:
    h = Harness(device, ca_file, probe_interval=None, ping_interval=0.1, ping_timeout=0.2)
    await h.start()
    try:
        device.faults.silent(0.6)
        await until(lambda: len(h.losses) >= 1)
        assert "pong" in str(h.losses[-1])
        await assert_recovered(h, 1)
    finally:
        await h.stop()


async def test_reboot_502_then_not_ready_then_ready(harness: Harness) -> None:
    client, device = harness.client, harness.device
    device.faults.reboot(down_s=0.3, not_ready_s=0.3)
    await until(lambda: len(harness.losses) >= 1)
    assert not client.connected or harness.connects == 1
    await assert_recovered(harness, 1)
    assert device.handshakes.get(502, 0) >= 1
    assert client.pending == 0


async def test_rate_limited_503(harness: Harness) -> None:
    device = harness.device
    device.faults.rate_limit(0.3)
    device.faults.drop()
    await until(lambda: device.handshakes.get(503, 0) >= 1)
    await assert_recovered(harness, 1)
    assert "503" in (harness.client.last_error or "") or harness.client.reconnects >= 2


async def test_duplicate_events_are_all_delivered(harness: Harness) -> None:
    harness.device.faults.duplicate(count=5)
    await harness.add_booking_and_hear_it()
    await until(lambda: len(harness.booking_created()) >= 2)
    a, b = harness.booking_created()[-2:]
    assert a == b  # the client passes duplicates on; deduplication is the session's job
    assert harness.client.connected


async def test_malformed_frames_are_skipped(harness: Harness) -> None:
    client = harness.client
    with structlog.testing.capture_logs() as logs:
        harness.device.faults.malformed(count=8)
        await until(lambda: client.malformed >= 8)
    assert client.connected and harness.connects == 1
    skipped = [e for e in logs if e["event"] == "skipped a frame"]
    assert {e["reason"].split(" ")[0] for e in skipped} >= {"binary", "invalid", "neither"}
    assert all(e["device"] == "room-4a" for e in skipped)
    assert isinstance(await client.get("Status SystemUnit Uptime"), int)
    await harness.add_booking_and_hear_it()


async def test_slow_replies_time_out_then_recover(harness: Harness) -> None:
    client, device = harness.client, harness.device
    device.faults.slow(120)  # slower than the request timeout, faster than the probe timeout
    with pytest.raises(errors.RequestTimeout) as info:
        await client.get("Status SystemUnit Uptime", timeout=0.05)
    assert "room-4a" in str(info.value)
    assert client.pending == 0
    await until(lambda: client.malformed >= 1)  # the late answer: logged, skipped
    device.faults.slow(0)
    assert isinstance(await client.get("Status SystemUnit Uptime"), int)
    assert client.connected and harness.connects == 1


async def test_many_requests_in_flight_all_fail_on_loss(harness: Harness) -> None:
    client, device = harness.client, harness.device
    device.faults.slow(2000)
    calls = [asyncio.ensure_future(client.get("Status SystemUnit Uptime")) for _ in range(20)]
    await until(lambda: client.pending >= 20)
    device.faults.drop()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, errors.ConnectionLost) for r in results)
    assert client.pending == 0
    device.faults.slow(0)


# --- life cycle -------------------------------------------------------------------------------


async def test_not_connected_raises_and_close_stops_backoff(ca_file: str) -> None:
    client = XapiClient(
        DeviceEndpoint("room-4a", url="wss://127.0.0.1:9/ws", ca_file=ca_file),
        **{**FAST, "backoff": Backoff(initial=30, maximum=30)},
    )
    with pytest.raises(errors.NotConnected):
        await client.get("Status")
    task = asyncio.create_task(client.run())
    await until(lambda: client.last_exception is not None)
    assert isinstance(client.last_exception, errors.Unreachable)
    await asyncio.wait_for(client.close(), 1)  # does not wait out the 30 s backoff
    await asyncio.wait_for(task, 1)


async def test_cancelling_run_is_safe(harness: Harness) -> None:
    client = harness.client
    harness.device.faults.slow(2000)
    waiting = await in_flight(client, client.get("Status SystemUnit Uptime"))
    assert harness.task is not None
    harness.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await harness.task
    with pytest.raises(errors.ConnectionLost):
        await waiting
    assert not client.connected and client.pending == 0
    harness.device.faults.slow(0)
    harness.task = asyncio.create_task(client.run())  # can be run again
    await until(lambda: harness.connects >= 2)


async def test_backoff_resets_only_after_a_stable_period(device: Device, ca_file: str) -> None:
    h = Harness(
        device,
        ca_file,
        stable_after=10.0,
        backoff=Backoff(initial=0.05, maximum=0.4, factor=2.0, jitter=0.0),
    )
    await h.start()
    try:
        loop = asyncio.get_running_loop()
        gaps = []
        for n in range(1, 4):
            device.faults.drop()
            t = loop.time()
            await until(lambda: h.connects > n)
            gaps.append(loop.time() - t)
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # growing: not stable
    finally:
        await h.stop()


class PinnedClock:
    """Wall time the test sets; real monotonic time for the client's timeouts."""

    def __init__(self, now: datetime) -> None:
        self.wall = now

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()


async def test_feedback_is_stamped_with_its_arrival_by_the_clients_clock(
    device: Device, ca_file: str
) -> None:
    clock = PinnedClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))
    h = Harness(device, ca_file, clock=clock)
    await h.start()
    try:
        clock.wall = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
        await h.add_booking_and_hear_it()
        heard = h.booking_created()[-1]
        assert isinstance(heard, Feedback) and heard.arrived_at == clock.wall
    finally:
        await h.stop()
