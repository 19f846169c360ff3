"""Push through the real CLI: ``[microsoft] notification_url`` -> subscriptions at the Graph
simulator, its validation and change notifications reach the agent's local API through an
HTTPS reverse proxy (as a site would run it), and a notification triggers the delta fetch."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web

from calendar_sim.graph import GraphSim, GraphSimConfig
from tests.e2e.harness import eventually, of_type
from tests.rooms.test_graph_cli import _free_port
from tests.rooms.test_graph_sim_cli import SIM_SECRET, at, write_config

pytestmark = pytest.mark.slow


HOP_BY_HOP = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"}
)


class ReverseProxy:
    """HTTPS on 127.0.0.1 -> the agent's loopback API, with a public ``Host`` header."""

    def __init__(self, ca: trustme.CA, upstream: str) -> None:
        self.upstream = upstream
        self.forwarded: list[str] = []
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self._ssl)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        self.forwarded.append(request.path_qs)
        body = await request.read()
        # As a reverse proxy does: the request's own headers go on (Google's notifications are
        # nothing but headers: X-Goog-Channel-ID, -Token, -Resource-State), with the public
        # Host; hop-by-hop and framing headers are the proxy's own.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = "agent.example.com"
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.upstream + request.path_qs, data=body, headers=headers) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )


@pytest.fixture
async def proxy_and_sim(ca: trustme.CA) -> AsyncIterator[tuple[ReverseProxy, GraphSim, int]]:
    port = _free_port()
    proxy = ReverseProxy(ca, f"http://127.0.0.1:{port}")
    await proxy.start()
    sim = GraphSim(
        GraphSimConfig(rooms=1, client_secret=SIM_SECRET, notification_ca_pem=ca.cert_pem.bytes())
    )
    await sim.start()
    yield proxy, sim, port
    await sim.stop()
    await proxy.stop()


async def test_a_notification_triggers_the_delta_fetch(proxy_and_sim, receiver, tmp_path, spawn):
    proxy, sim, port = proxy_and_sim
    cfg = write_config(tmp_path, sim, receiver, extra=f'notification_url = "{proxy.url}"')
    text = cfg.read_text().replace("poll_interval_s = 3", "poll_interval_s = 2")
    # the proxy forwards with the public name: the local API must know it
    text = text.replace(
        'listen = "127.0.0.1:0"',
        f'listen = "127.0.0.1:{port}"\nallowed_hosts = ["agent.example.com"]',
    )
    cfg.write_text(text)
    proc = await spawn(cfg)
    mbox = "room-1@contoso.com"

    def snapshots() -> list[dict]:
        return [
            e
            for e in of_type(receiver.events, "bookings.snapshot")
            if e["data"]["room_id"] == "room-1"
        ]

    await eventually(snapshots, timeout=30)
    # the subscription: created with both URLs validated through the proxy
    await eventually(lambda: len(sim.subscriptions.active()) == 1, timeout=30)
    assert any("validationToken" in p for p in proxy.forwarded)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def healthy() -> bool:
            rooms = (await http.get("/v1/rooms")).json()["rooms"]
            return any(r["id"] == "room-1" and r.get("push") for r in rooms)

        for _ in range(300):
            if await healthy():
                break
            await asyncio.sleep(0.05)
        assert await healthy()
        # polling is now the safety net (every 20 s: 2 s x 10); the change comes by notification
        before = len(proxy.forwarded)
        ev = sim.add_event(mbox, at(1, 9), 30, "Pushed")
        await eventually(
            lambda: any(
                e["data"]["booking"]["id"] == ev.id
                for e in of_type(receiver.events, "booking.created")
            ),
            "booking.created of the pushed event",
            timeout=20,
        )
        await eventually(lambda: len(proxy.forwarded) > before, "the change notification")
        assert not any("validationToken" in p for p in proxy.forwarded[before:])
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert sim.subscriptions.active() == []  # deleted at shutdown
