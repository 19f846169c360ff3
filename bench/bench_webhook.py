"""Webhook delivery throughput and latency: store -> drainer -> WebhookSink -> receiver.

Run: ``.venv/bin/python bench/bench_webhook.py [--events 6000]
[--transport aiohttp|httpx-aiohttp|httpx]``. ``aiohttp`` (the default) is the sink as the agent
builds it (aiohttp alone, edge_agent/httpclient.py ``lean_session``); ``httpx-aiohttp`` swaps in
httpx's API on the same pool (what the sink used before, and the calendar sources use), and
``httpx`` httpx's own pool, with the same limits and timeout, to show the reasons for those
choices still hold (bench/bench_http.py: the CPU per POST of each).
The receiver (tests/receivers.py, aiohttp, signature checking on) runs in its own process on
127.0.0.1. Prints events/s for a pre-filled backlog drained with batch_max 1 and 20 at 1, 4, 8
and 16 in flight, then p50/p99 event latency (receiver clock - data.observed_at) at a steady
200 events/s. Every case is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
import structlog

from edge_agent.clock import utc_iso
from edge_agent.forward.drainer import Drainer
from edge_agent.forward.webhook import WebhookSink
from edge_agent.httpclient import USER_AGENT, http_client, request_bounded
from edge_agent.store import Change, Store

SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef").decode()
DEVICES = 100


def envelope(device: str, n: int, tag: str) -> dict[str, Any]:
    now = utc_iso(datetime.now(UTC))
    return {
        "type": "booking.created",
        "timestamp": now,
        "data": {
            "event_id": f"{tag}-{device}-{n}",
            "site": "hq",
            "device_id": device,
            "booking": {
                "id": str(n),
                "title": "Weekly sync",
                "start": now,
                "end": now,
                "organizer": {"name": "A", "email": "a@x"},
            },
            "xevent": "Bookings.BookingCreated",
            "observed_at": now,
        },
    }


def rx_get(port: int, path: str, post: bool = False) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def make_sink(url: str, batch_max: int, in_flight: int, transport: str) -> WebhookSink:
    sink = WebhookSink(url, [SECRET], batch_max=batch_max, max_connections=in_flight)
    if transport == "aiohttp":
        return sink
    # The comparison only: the agent has no way to pick another stack for its webhooks.
    headers = {"user-agent": USER_AGENT, **sink._headers}
    if transport == "httpx-aiohttp":
        client = http_client(timeout_s=10.0, max_connections=in_flight, headers=headers)
    else:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0),
            limits=limits,
            headers=headers,
            follow_redirects=False,
            trust_env=False,
        )

    async def via_httpx(
        method: str, body: bytes | None = None, hdrs: dict[str, str] | None = None
    ) -> Any:
        return await request_bounded(
            client, method, url, content=body, headers=hdrs, deadline_s=10.0
        )

    async def close() -> None:
        await client.aclose()

    sink._request = via_httpx  # type: ignore[method-assign]
    sink.close = close  # type: ignore[method-assign]
    return sink


async def throughput(
    tmp: Path,
    port: int,
    events: int,
    batch_max: int,
    in_flight: int,
    transport: str,
    limit_s: float,
) -> None:
    tag = f"t{batch_max}-{in_flight}-{time.monotonic_ns()}"
    store = await Store.open(tmp / f"{tag}.db")
    per = events // DEVICES
    for n in range(per):
        await asyncio.gather(
            *(
                store.commit(Change(f"room-{d}", events=[envelope(f"room-{d}", n, tag)]))
                for d in range(DEVICES)
            )
        )
    sink = make_sink(f"http://127.0.0.1:{port}/hook", batch_max, in_flight, transport)
    drainer = Drainer(store, sink, max_in_flight=in_flight)
    total = per * DEVICES
    t0 = time.monotonic()
    task = asyncio.create_task(drainer.run(), name="bench.drainer")
    while drainer.stats().delivered < total and time.monotonic() - t0 < limit_s:
        await asyncio.sleep(0.01)
    dt = time.monotonic() - t0
    done = drainer.stats().delivered
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await sink.close()
    await store.close()
    print(
        f"{transport:7} batch_max={batch_max:3} in_flight={in_flight:2}  "
        f"{done / dt:8.0f} events/s  ({done}/{total} in {dt:.1f} s)"
    )


async def latency(tmp: Path, port: int, rate: float, seconds: float, transport: str) -> None:
    store = await Store.open(tmp / "lat.db")
    sink = make_sink(f"http://127.0.0.1:{port}/hook", 1, 8, transport)
    drainer = Drainer(store, sink, max_in_flight=8)
    task = asyncio.create_task(drainer.run(), name="bench.drainer")
    await asyncio.sleep(0.2)
    rx_get(port, "/reset", post=True)
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        target = t0 + n / rate
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        d = n % 20
        await store.commit(Change(f"room-{d}", events=[envelope(f"room-{d}", n, "lat")]))
        n += 1
    while drainer.stats().delivered < n and time.monotonic() - t0 < seconds + 10:
        await asyncio.sleep(0.01)
    st = await asyncio.to_thread(rx_get, port, "/stats")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await sink.close()
    await store.close()
    print(
        f"{transport:7} latency at {rate:.0f} events/s for {seconds:.0f} s (batch_max=1, "
        f"in_flight=8): p50 {st['p50'] * 1000:.1f} ms, p99 {st['p99'] * 1000:.1f} ms, "
        f"delivered {drainer.stats().delivered}/{n}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--transport", choices=["aiohttp", "httpx-aiohttp", "httpx"], default="aiohttp")
    ap.add_argument("--limit-s", type=float, default=30.0)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop is busy
        [sys.executable, str(ROOT / "tests" / "receivers.py"), "--port", "0", "--secret", SECRET],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = 0
        while not port:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("receiver did not start")
            if line.startswith("PORT "):
                port = int(line.split()[1])
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            for batch_max in (1, 20):
                for in_flight in (1, 4, 8, 16):
                    await throughput(
                        tmp, port, args.events, batch_max, in_flight, args.transport, args.limit_s
                    )
            await latency(tmp, port, 200.0, 5.0, args.transport)
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    asyncio.run(main())
