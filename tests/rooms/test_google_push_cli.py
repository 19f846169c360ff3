"""Google push through the real CLI: ``[google] notification_url`` -> an ``events.watch``
channel per room at the simulator, whose messages reach the agent's local API through an HTTPS
reverse proxy; a change notification triggers the incremental fetch; the channels are stopped
at shutdown. And the route's rules without a process: wrong token, unknown or stopped channel
ignored; renewal opens a new channel id before the old one expires, then stops the old one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trustme

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.calendars.google.push import WatchManager
from tests.e2e.harness import eventually, of_type
from tests.rooms.google_helpers import at, free_port, write_config
from tests.rooms.test_graph_push_cli import ReverseProxy


@pytest.fixture
async def proxy_and_sim(ca: trustme.CA) -> AsyncIterator[tuple[ReverseProxy, GoogleSim, int]]:
    port = free_port()
    proxy = ReverseProxy(ca, f"http://127.0.0.1:{port}")
    await proxy.start()
    sim = GoogleSim(GoogleSimConfig(rooms=1, notification_ca_pem=ca.cert_pem.bytes()))
    await sim.start()
    yield proxy, sim, port
    await sim.stop()
    await proxy.stop()


@pytest.mark.slow
async def test_a_google_notification_triggers_the_fetch(proxy_and_sim, receiver, tmp_path, spawn):
    proxy, sim, port = proxy_and_sim
    cfg = write_config(
        tmp_path,
        sim,
        receiver,
        google=f'poll_interval_s = 2\nnotification_url = "{proxy.url}"',
        listen=f"127.0.0.1:{port}",
    )
    cfg.write_text(
        cfg.read_text().replace(
            f'listen = "127.0.0.1:{port}"',
            f'listen = "127.0.0.1:{port}"\nallowed_hosts = ["agent.example.com"]',
        )
    )
    proc = await spawn(cfg)
    await eventually(lambda: len(sim.channels.items) == 1, "a watch channel", timeout=30)
    channel = next(iter(sim.channels.items.values()))
    assert channel.token and channel.address == f"{proxy.url}/v1/notifications/google"
    await eventually(
        lambda: any(p.state == "sync" and p.status == 200 for p in sim.channels.pushes)
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def healthy() -> bool:
            # Pushed, and read once: a room's first round reports its window as the snapshot
            # only, so the event must come after it to be a booking.created.
            rooms = (await http.get("/v1/rooms")).json()["rooms"]
            return any(r["id"] == "room-1" and r.get("push") and r["last_sync"] for r in rooms)

        for _ in range(300):
            if await healthy():
                break
            await asyncio.sleep(0.05)
        assert await healthy()
        ev = sim.add_event("room-1@example.com", at(1, 9), 30, "Pushed")
        await eventually(
            lambda: any(
                e["data"]["booking"]["id"] == ev.id
                for e in of_type(receiver.events, "booking.created")
            ),
            "booking.created of the pushed event",
            timeout=20,
        )
        await eventually(
            lambda: any(p.state == "exists" and p.status == 200 for p in sim.channels.pushes)
        )
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert sim.channels.items == {}  # stopped at shutdown


class FakeClock:
    def __init__(self) -> None:
        self.t = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()


class Tokens:
    async def token(self, *, renew: bool = False) -> str:
        return "tok"


async def test_watch_rules_tokens_renewal_stop() -> None:
    clock = FakeClock()
    calls: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content)
        calls.append((request.url.path, body))
        if request.url.path.endswith("/watch"):
            expires = clock.t + timedelta(seconds=float(body["params"]["ttl"]))
            return httpx.Response(
                200,
                json={
                    "id": body["id"],
                    "resourceId": "res-1",
                    "expiration": str(int(expires.timestamp() * 1000)),
                },
            )
        return httpx.Response(204)

    poked: list[str] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        w = WatchManager(
            http,
            Tokens(),
            calendar_url="https://127.0.0.1/calendar/v3",
            notification_url="https://agent.example.com",
            poke=lambda r: poked.append(r) is None,
            ttl_s=7200,
            renew_before_s=600,
            clock=clock,
        )
        w.set_rooms({"room-1": "room-1@example.com"})
        await w._open("room-1", "room-1@example.com")
        first = w._current["room-1"]
        headers = {
            "X-Goog-Channel-ID": first.id,
            "X-Goog-Channel-Token": first.token,
            "X-Goog-Resource-State": "exists",
        }
        assert w.notification({**headers, "X-Goog-Resource-State": "sync"}) is False
        assert w.notification(headers) is True and poked == ["room-1"]
        assert w.notification({**headers, "X-Goog-Channel-Token": "wrong"}) is False
        assert w.notification({**headers, "X-Goog-Channel-ID": "unknown"}) is False
        assert poked == ["room-1"] and w.healthy("room-1")
        assert w.poll_interval_s("room-1", 60) == 600

        # renewal: due renew_before_s before expiration; a new id, then the old one stopped
        clock.t += timedelta(seconds=7200 - 600)
        run = asyncio.create_task(w.run())
        try:
            await eventually(lambda: w._current["room-1"].id != first.id, "a new channel")
            await eventually(lambda: any(p.endswith("/channels/stop") for p, _ in calls))
        finally:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        second = w._current["room-1"]
        stop = next(b for p, b in calls if p.endswith("/channels/stop"))
        assert stop == {"id": first.id, "resourceId": "res-1"}
        assert w.notification(headers) is False  # the stopped channel is ignored
        assert w.notification(
            {**headers, "X-Goog-Channel-ID": second.id, "X-Goog-Channel-Token": second.token}
        )

        await w.stop()
        assert calls[-1][1]["id"] == second.id
        assert (
            w.notification(
                {**headers, "X-Goog-Channel-ID": second.id, "X-Goog-Channel-Token": second.token}
            )
            is False
        )
