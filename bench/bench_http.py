"""CPU per POST of the agent's HTTP client stacks, side by side in one run.

Run: ``.venv/bin/python bench/bench_http.py [--posts 3000] [--in-flight 8] [--rounds 2]``.

A receiver (aiohttp, answers 204 after reading the body) runs in its own process on
127.0.0.1; this process POSTs a 20-event batch body (~15 KiB) ``--posts`` times with
``--in-flight`` requests at once, through each stack in turn, and prints the CPU seconds this
process spent per POST (user + system, so the client side only) and the wall time per POST:

- ``lean``: :func:`edge_agent.httpclient.post_bounded` on a ``lean_session`` (aiohttp alone:
  what the webhook sink sends with);
- ``httpx-aiohttp``: :func:`edge_agent.httpclient.request_bounded` on ``http_client`` (httpx's
  API on aiohttp's pool: what the calendar sources use, and the webhook sink used before);
- ``httpx-aiohttp post``: plain ``client.post()`` on the same client (no bounded read, no
  deadline: what ``bench_reference.py`` does).

Machines differ 2-3x: compare the rows of one run, not figures across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.httpclient import http_client, lean_session, post_bounded, request_bounded

RECEIVER = """
import sys
from aiohttp import web
async def hook(request):
    await request.read()
    return web.Response(status=204)
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/hook", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

EVENT = b'{"type":"booking.started","data":{"x":"' + b"a" * 700 + b'"}}'
BODY = b'{"type":"batch","data":{"events":[' + b",".join([EVENT] * 20) + b"]}}"
HEADERS = {"webhook-id": "batch_x_20", "webhook-timestamp": "1", "webhook-signature": "v1,abc"}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            return


async def measure(
    name: str, post: Callable[[], Awaitable[None]], posts: int, in_flight: int
) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await post()

    for _ in range(200):  # connections up, caches warm
        await post()
    c0, t0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(posts)))
    cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    per_cpu, per_wall = cpu / posts * 1e6, wall / posts * 1e6
    print(f"{name:20s} {per_cpu:6.0f} us CPU/POST  {per_wall:6.0f} us wall/POST")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        await wait_listening(port)
        headers = {"content-type": "application/json"}
        lean = lean_session(timeout_s=10.0, max_connections=args.in_flight, headers=headers)
        client = http_client(timeout_s=10.0, max_connections=args.in_flight, headers=headers)

        async def via_lean() -> None:
            r = await post_bounded(lean, "POST", url, content=BODY, headers=HEADERS, deadline_s=10)
            assert r.status == 204, r.status

        async def via_httpx() -> None:
            r = await request_bounded(
                client, "POST", url, content=BODY, headers=HEADERS, deadline_s=10
            )
            assert r.status == 204, r.status

        async def via_post() -> None:
            r = await client.post(url, content=BODY, headers=HEADERS)
            assert r.status_code == 204, r.status_code

        print(f"{args.posts} POSTs of {len(BODY)} bytes, {args.in_flight} in flight, per round")
        try:
            for _ in range(args.rounds):
                await measure("lean", via_lean, args.posts, args.in_flight)
                await measure("httpx-aiohttp", via_httpx, args.posts, args.in_flight)
                await measure("httpx-aiohttp post", via_post, args.posts, args.in_flight)
        finally:
            await lean.close()
            await client.aclose()
    finally:
        rx.terminate()
        rx.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
