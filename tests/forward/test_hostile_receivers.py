"""The webhook sink against receivers that answer too much or too slowly (issue 10, items 3, 4).

A real receiver on 127.0.0.1 (tests/forward/hostile.py) answers a 200 MiB body, an endless
chunked body, or trickles its answer one byte every 0.5 s. The sink must read a bounded prefix
and drop the connection, and give up on a request after ``timeout_s`` in all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.forward.base import Delivered, OutboxEvent, Reject, Retry
from edge_agent.forward.drainer import Drainer
from edge_agent.forward.webhook import WebhookSink, classify
from edge_agent.httpclient import (
    MAX_ANSWER_BYTES,
    BoundedResponse,
    http_client,
    request_bounded,
)
from edge_agent.store import Change, Store
from tests.forward.hostile import ENDLESS_CAP, HUGE, Answer, HostileReceiver

SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()

# What the kernel may hold in flight on loopback (socket buffers both ways) plus aiohttp's read
# buffer: far below the 200 MiB / 64 MiB bodies, far above the few KiB the client reads.
SENT_BOUND = 24 * 1024 * 1024
RSS_BOUND = 50 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def event(device: str = "room-1", n: int = 0) -> OutboxEvent:
    envelope = {
        "type": "booking.created",
        "data": {"event_id": f"{device}-{n}", "device_id": device},
    }
    return OutboxEvent(
        seq=n + 1,
        device_id=device,
        event_id=f"{device}-{n}",
        type="booking.created",
        envelope=envelope,
        body=jsoncodec.dumpb(envelope),
        created_at=time.time(),
    )


@pytest.fixture
async def hostile() -> AsyncIterator[HostileReceiver]:
    rx = HostileReceiver(lambda body: "ok")
    await rx.start()
    yield rx
    await rx.stop()


@pytest.mark.parametrize("answer", ["huge", "endless"])
async def test_a_huge_or_endless_answer_is_read_only_a_few_kib(
    hostile: HostileReceiver, answer: Answer
) -> None:
    """Before: the whole 200 MiB was read (RSS 58 -> 340 MiB), the endless one never ended."""
    script: list[Answer] = [answer, "ok", "ok"]
    hostile.answer = lambda body: script.pop(0)
    sink = WebhookSink(hostile.url, [SECRET], timeout_s=5.0)
    try:
        before = rss()
        assert await sink.send([event(n=0)]) == Delivered()  # 200 is what counts
        grown = rss() - before
        assert hostile.bytes_sent < SENT_BOUND, (hostile.bytes_sent, HUGE, ENDLESS_CAP)
        assert grown < RSS_BOUND, grown
        # The connection with the unread rest was dropped, not put back in the pool ...
        assert await sink.send([event(n=1)]) == Delivered()
        assert hostile.connections == 2
        # ... while a finished answer keeps its connection (keep-alive is not given up).
        assert await sink.send([event(n=2)]) == Delivered()
        assert hostile.connections == 2 and hostile.requests == 3
    finally:
        await sink.close()


async def test_an_error_answer_keeps_a_short_excerpt(hostile: HostileReceiver) -> None:
    """The reason of a refused delivery quotes the start of the body, bounded, one line."""
    hostile.answer = lambda body: "huge"
    client = http_client(timeout_s=5.0, max_connections=1)
    try:
        got = await request_bounded(client, "POST", hostile.url, content=b"{}", deadline_s=5.0)
        assert got.status == 200 and got.truncated
        assert len(got.body) == MAX_ANSWER_BYTES and set(got.body) == {ord("x")}
    finally:
        await client.aclose()
    assert hostile.bytes_sent < SENT_BOUND


async def test_a_trickling_answer_times_out_in_timeout_s(hostile: HostileReceiver) -> None:
    """Before: one byte every 0.5 s kept a 1 s per-read timeout from ever firing."""
    hostile.answer = lambda body: "trickle"
    sink = WebhookSink(hostile.url, [SECRET], timeout_s=1.0)
    try:
        out = await asyncio.wait_for(sink.send([event()]), 30)  # a guard, not a verdict
        assert isinstance(out, Retry) and "timeout" in out.reason, out
        assert "1 s" in out.reason, out
    finally:
        await sink.close()


async def test_the_deadline_is_an_httpx_timeout_for_every_client(
    hostile: HostileReceiver,
) -> None:
    hostile.answer = lambda body: "trickle"
    client = http_client(timeout_s=1.0, max_connections=1)
    try:
        with pytest.raises(httpx.TimeoutException, match="1 s"):
            await asyncio.wait_for(request_bounded(client, "GET", hostile.url, deadline_s=1.0), 30)
    finally:
        await client.aclose()


async def test_trickling_receivers_do_not_stall_the_other_devices(
    tmp_path: Path, hostile: HostileReceiver
) -> None:
    """Two slow devices with max_in_flight=2: before, both slots were held for good and the
    other devices got nothing; now each slow attempt ends after timeout_s and is retried."""
    slow = {"slow-1", "slow-2"}
    hostile.answer = lambda body: (
        "trickle" if jsoncodec.loads(body)["data"]["device_id"] in slow else "ok"
    )
    store = await Store.open(tmp_path / "agent.db")
    sink = WebhookSink(hostile.url, [SECRET], timeout_s=1.0, max_connections=2)
    drainer = Drainer(
        store, sink, max_in_flight=2, backoff=Backoff(initial=0.05, maximum=0.1, jitter=0.0)
    )
    task = asyncio.create_task(drainer.run(), name="test.drainer")
    try:
        for d in sorted(slow):  # the slow ones first: they take both slots
            await store.commit(Change(d, events=[event(d).envelope]))
        await asyncio.sleep(0)
        for n in range(3):
            for d in ("room-1", "room-2", "room-3"):
                await store.commit(Change(d, events=[event(d, n).envelope]))
        async with asyncio.timeout(30):  # a guard: before the fix this never finished
            while drainer.stats().delivered < 9 or any(
                drainer.retrying().get(d, {}).get("attempts", 0) < 2 for d in slow
            ):
                await asyncio.sleep(0.02)
        retrying = drainer.retrying()
        assert set(retrying) == slow
        assert all("timeout" in (retrying[d]["error"] or "") for d in slow), retrying
        assert drainer.stats().delivered == 9
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.close()
        await store.close()


def test_the_excerpt_is_one_bounded_printable_line() -> None:
    h = httpx.Headers()
    assert BoundedResponse(400, h, b'{"error":\n\t"bad id"}', False).excerpt_text() == (
        '{"error": "bad id"}'
    )
    assert (
        BoundedResponse(500, h, b"\x1b[31m" + b"y" * 5000, True).excerpt_text(20)
        == "[31m" + "y" * 16 + "..."
    )
    assert BoundedResponse(503, h, b"", False).excerpt_text() == ""
    assert classify(400, None, "bad id") == Reject("HTTP 400: bad id", 400)
    assert classify(503, 2.0, "") == Retry("HTTP 503", 2.0)


async def test_decoded_bodies_and_params_for_sources_that_parse_the_answer() -> None:
    """A calendar source reads a gzip JSON answer decoded; the webhook's excerpt stays raw."""
    from aiohttp import web

    doc = b'{"value": [' + b",".join(b'{"n": %d}' % i for i in range(2000)) + b"]}"

    async def handle(request: web.Request) -> web.Response:
        assert request.query["top"] == "5"
        return web.Response(
            body=gzip.compress(doc), headers={"content-encoding": "gzip"}, content_type="text/json"
        )

    app = web.Application()
    app.router.add_get("/events", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = http_client(timeout_s=5.0, max_connections=1)
    url = f"http://127.0.0.1:{port}/events"
    try:
        got = await request_bounded(
            client, "GET", url, params={"top": "5"}, deadline_s=5.0, max_bytes=1 << 20, decoded=True
        )
        assert got.status == 200 and not got.truncated and got.body == doc
        small = await request_bounded(
            client, "GET", url, params={"top": "5"}, deadline_s=5.0, max_bytes=100, decoded=True
        )
        assert small.truncated and small.body == doc[:100]
        raw = await request_bounded(client, "GET", url, params={"top": "5"}, deadline_s=5.0)
        assert raw.body[:2] == b"\x1f\x8b" and len(raw.body) <= MAX_ANSWER_BYTES  # gzip, as sent
    finally:
        await client.aclose()
        await runner.cleanup()
