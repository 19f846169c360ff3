"""Shutting down the MQTT sink and the request mirror while the broker is unreachable, silent,
or refusing: every close is bounded and every cancellation ends the loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import pytest

from edge_agent.backoff import Backoff
from edge_agent.forward.mqtt import MqttSink, broker_settings
from edge_agent.forward.mqtt.link import raise_if_cancelling
from edge_agent.forward.mqtt.requests import BridgeRequests
from tests.forward.test_mqtt import FAST, until
from tests.mosquitto import Mosquitto, free_port, make_password_file

# Far longer than any bound asserted below: a close that waited for it would fail the test.
SLOW_CONNECT_S = 120.0
BOUND_S = 10.0


class SilentBroker:
    """A TCP listener on loopback that accepts and never answers (a broker mid-restart, or a
    SIGSTOPped one): a connect hangs until its CONNACK timeout."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self.closed_by_peer = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass  # the CONNECT arrives and is never answered
        self.closed_by_peer.set()
        writer.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"mqtt://127.0.0.1:{port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


class Desk:
    def booking_room(self, room_id: str) -> str | None:
        return None

    async def book(self, room_id: str, order: Any) -> Any:
        raise LookupError(room_id)

    async def release(self, room_id: str, booking_id: str) -> Any:
        raise LookupError(room_id)


def mirror(url: str, **kw: Any) -> BridgeRequests:
    settings = broker_settings(
        url,
        client_id="edge-agent-hq-requests",
        connect_timeout_s=kw.pop("connect_timeout_s", SLOW_CONNECT_S),
        **kw,
    )
    return BridgeRequests(
        settings, "roomos-edge/hq", Desk(), lambda: True, backoff=Backoff(initial=0.05, maximum=0.2)
    )


@contextlib.asynccontextmanager
async def started(coro: Any, name: str) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the 3.11 cancellation race ---------------------------------------------------------------


async def test_a_cancellation_that_wait_for_dropped_is_raised_again() -> None:
    """The race behind a rare shutdown hang: the awaited future completes in the same loop
    iteration as the cancel. Python 3.11's wait_for then returns its result and forgets the
    cancel (3.12 raises); the guard raises it in both."""
    loop = asyncio.get_running_loop()

    async def connect_like() -> str:
        fut: asyncio.Future[str] = loop.create_future()
        me = asyncio.current_task()
        assert me is not None

        def answer_and_cancel() -> None:
            fut.set_result("CONNACK")
            me.cancel()

        loop.call_soon(answer_and_cancel)
        with contextlib.suppress(asyncio.CancelledError):  # 3.12: wait_for raises itself
            await asyncio.wait_for(fut, 5)
        raise_if_cancelling()
        return "went on as if not cancelled"

    task = asyncio.create_task(connect_like())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_no_cancellation_nothing_raised() -> None:
    raise_if_cancelling()


# --- the sink -----------------------------------------------------------------------------------


async def test_sink_close_while_connecting_to_a_silent_broker_is_prompt() -> None:
    async with SilentBroker() as broker:
        sink = MqttSink(broker.url, site="hq", **{**FAST, "connect_timeout_s": SLOW_CONNECT_S})
        async with started(sink.run(), "mqtt-sink") as run:
            await asyncio.wait_for(broker.accepted.wait(), BOUND_S)
            await asyncio.wait_for(sink.close(), BOUND_S)
            await asyncio.wait_for(run, BOUND_S)
            # The half-open connection was dropped, not left to the broker's timeout.
            await asyncio.wait_for(broker.closed_by_peer.wait(), BOUND_S)
        assert sink.last_error is None  # closing is not an error


async def test_sink_close_while_the_broker_is_unreachable() -> None:
    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}", site="hq", **FAST)
    async with started(sink.run(), "mqtt-sink") as run:
        await until(lambda: sink.last_error is not None, what="the first refusal")
        await asyncio.wait_for(sink.close(), BOUND_S)
        await asyncio.wait_for(run, BOUND_S)


async def test_sink_cancelled_mid_connect_ends(tmp_path: Path) -> None:
    """What the agent's shutdown does (it cancels the drainer, which runs the sink)."""
    async with SilentBroker() as broker:
        sink = MqttSink(broker.url, site="hq", **{**FAST, "connect_timeout_s": SLOW_CONNECT_S})
        task = asyncio.create_task(sink.run(), name="mqtt-sink")
        await asyncio.wait_for(broker.accepted.wait(), BOUND_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND_S)
        await asyncio.wait_for(sink.close(), BOUND_S)  # after run: returns at once


async def test_sink_close_is_bounded_even_if_the_loop_is_stuck() -> None:
    """A close past its bound returns (logged) instead of waiting for ever."""
    async with SilentBroker() as broker:
        sink = MqttSink(broker.url, site="hq", **{**FAST, "connect_timeout_s": SLOW_CONNECT_S})
        sink._running = True  # a loop that never ends: nothing sets _stopped
        await asyncio.wait_for(sink.close(timeout_s=0.05), BOUND_S)


# --- the request mirror -------------------------------------------------------------------------


async def test_mirror_cancelled_mid_connect_ends() -> None:
    async with SilentBroker() as broker:
        requests = mirror(broker.url)
        task = asyncio.create_task(requests.run(), name="mqtt.requests")
        await asyncio.wait_for(broker.accepted.wait(), BOUND_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND_S)
        await asyncio.wait_for(broker.closed_by_peer.wait(), BOUND_S)


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Any:
    users = make_password_file(tmp_path, {"edge": "right-password"})
    with Mosquitto(tmp_path, password_file=users) as b:
        yield b


async def test_mirror_cancelled_while_refused_ends_and_reload_fixes_its_password(
    refusing_broker: Mosquitto,
) -> None:
    requests = mirror(refusing_broker.url, username="edge", password="wrong", connect_timeout_s=2.0)
    async with started(requests.run(), "mqtt.requests") as task:
        # Refused and backing off; the reload brings the fixed password (as the sink's does).
        requests.reconnect_now(credentials=("edge", "right-password"))
        await asyncio.wait_for(requests.subscribed.wait(), BOUND_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND_S)
    assert not requests.subscribed.is_set()


async def test_mirror_cancelled_at_every_point_of_refused_reconnects_ends(
    refusing_broker: Mosquitto,
) -> None:
    """Cancel after 0, 1, 2, ... loop iterations of a refused reconnect cycle: each one ends the
    task (the cancel lands in connect, in the CONNACK wait, or in the backoff)."""
    for spins in range(0, 60, 3):
        requests = mirror(
            refusing_broker.url, username="edge", password="wrong", connect_timeout_s=2.0
        )
        task = asyncio.create_task(requests.run(), name="mqtt.requests")
        for _ in range(spins):
            await asyncio.sleep(0)  # one loop iteration: a different phase each time
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND_S)
        assert task.done()
