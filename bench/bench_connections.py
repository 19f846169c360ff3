"""Benchmark: one client process holding N TLS device links to a simulator in another process.

    .venv/bin/python bench/bench_connections.py [--devices 1000] [--idle-s 15] [--flood-s 10]
        [--loop asyncio|uvloop]

Prints the time to connect all N (TLS, pinned fingerprint, Basic auth, one subscription
each), the client's RSS per connection (VmRSS delta / N, after ``gc.freeze()`` and after
``malloc_trim``), its idle CPU % with pings and probes running, and the notifications/s it
decodes while the simulator's control API adds bookings on every device (then the RSS and its
peak, and how often a reader waited at the loop's feedback budget). Only 127.0.0.1;
bounded in time (every wait has a timeout), stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.backoff import Backoff  # noqa: E402
from edge_agent.xapi import DeviceEndpoint, XapiClient  # noqa: E402


def rss_kib(field: str = "VmRSS") -> int:
    """``field`` of /proc/self/status in KiB: VmRSS now, VmHWM the peak so far."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def free_port_range(n: int) -> int:
    """A base port P with P..P+n-1 free right now (best effort)."""
    for base in range(20000, 60000 - n, 997):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(port: int, path: str, body: dict[str, Any]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    await reader.read()
    writer.close()
    return status


async def bench(args: argparse.Namespace) -> None:
    n = args.devices
    base = free_port_range(n)
    control = free_port()
    ready = Path(tempfile.mkdtemp()) / "ready.json"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_sim",
            "--devices",
            str(n),
            "--host",
            "127.0.0.1",
            "--port",
            str(base),
            "--control-port",
            str(control),
            "--ready-file",
            str(ready),
            "--user",
            "edge-agent",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if sim.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the simulator did not start")
            await asyncio.sleep(0.1)
        info = json.loads(ready.read_text())
        fingerprint = info["cert_sha256"]
        urls = [d["url"] for d in info["devices"]]
        print(f"simulator: {n} devices on 127.0.0.1:{base}..{base + n - 1} (pid {sim.pid})")

        heard = 0

        def handler(payload: dict[str, Any]) -> None:
            nonlocal heard
            heard += 1

        def make(i: int, url: str) -> XapiClient:
            return XapiClient(
                DeviceEndpoint(
                    f"dev-{i}",
                    url=url,
                    username="edge-agent",
                    password="secret",
                    fingerprint=fingerprint,
                ),
                ping_interval=args.ping_interval,
                probe_interval=args.probe_interval,
                open_timeout=30.0,
                backoff=Backoff(initial=0.5, maximum=5.0),
            )

        # Warm up (imports, the shared TLS context, first-use caches) on one link first.
        warm = make(-1, urls[0])
        warm_task = asyncio.create_task(warm.run())
        await warm.wait_connected(30)
        gc.collect()
        malloc_trim()
        rss0 = rss_kib()

        clients = [make(i, url) for i, url in enumerate(urls)]
        for c in clients:
            await c.subscribe("Event Bookings", handler)
        t0 = time.monotonic()
        tasks = [asyncio.create_task(c.run(), name=f"xapi[{c.device_id}]") for c in clients]
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_connected() for c in clients)), args.connect_timeout
        )
        connect_s = time.monotonic() - t0
        await asyncio.sleep(1)
        rss_plain = rss_kib()
        gc.collect()
        gc.freeze()
        rss_frozen = rss_kib()
        malloc_trim()
        rss_trimmed = rss_kib()
        print(
            f"connect: all {n} connected and subscribed in {connect_s:.2f} s "
            f"({n / connect_s:.0f}/s)"
        )
        print(
            f"memory: {(rss_frozen - rss0) / n:.1f} KiB RSS per connection after gc.freeze "
            f"({(rss_plain - rss0) / n:.1f} before; {(rss_trimmed - rss0) / n:.1f} after "
            f"malloc_trim); total RSS {rss_trimmed / 1024:.0f} MiB"
        )

        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.idle_s)
        idle = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
        print(
            f"idle: {idle:.2f}% CPU over {args.idle_s:g} s (pings every "
            f"{args.ping_interval:g} s, probes every {args.probe_interval:g} s per device)"
        )

        heard0, cpu0, wall0 = heard, time.process_time(), time.monotonic()
        stop_at = wall0 + args.flood_s
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        rounds = 0
        statuses: dict[int, int] = {}

        async def flood() -> None:
            nonlocal rounds
            while time.monotonic() < stop_at:
                k = rounds
                rounds += 1
                at = (start + timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
                s = await post(
                    control,
                    "/devices/all/calendar/add",
                    {"start": at, "duration_min": 5, "title": f"bench {k}"},
                )
                statuses[s] = statuses.get(s, 0) + 1

        await asyncio.wait_for(asyncio.gather(*(flood() for _ in range(2))), args.flood_s + 60)
        await asyncio.sleep(1)  # let the last notifications land
        wall = time.monotonic() - wall0
        got = heard - heard0
        cpu = (time.process_time() - cpu0) / wall * 100
        per_cpu_s = got / max(1e-9, time.process_time() - cpu0)
        print(
            f"notifications: {got} decoded in {wall:.1f} s = {got / wall:,.0f}/s at "
            f"{cpu:.0f}% client CPU (~{per_cpu_s:,.0f} per client CPU-second; "
            f"{rounds} control calls, HTTP {statuses})"
        )
        counters = [c.counters for c in clients]
        print(
            f"malformed: {sum(c.malformed for c in counters)}, reconnects: "
            f"{sum(c.reconnects for c in counters)}, connects: {sum(c.connects for c in counters)}, "
            f"reads held at the feedback budget: {sum(c.budget_waits for c in counters)}"
        )
        print(
            f"memory after the flood: total RSS {rss_kib() / 1024:.0f} MiB, peak "
            f"{rss_kib('VmHWM') / 1024:.0f} MiB"
        )

        await asyncio.wait_for(asyncio.gather(*(c.close() for c in clients), warm.close()), 30)
        await asyncio.wait_for(asyncio.gather(*tasks, warm_task), 30)
    finally:
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--idle-s", type=float, default=15.0)
    p.add_argument("--flood-s", type=float, default=10.0)
    p.add_argument("--ping-interval", type=float, default=10.0)
    p.add_argument("--probe-interval", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(bench(args))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
