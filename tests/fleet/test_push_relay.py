"""A push notification that reaches a member not holding the room: answered as usual, relayed
on the fleet's PostgreSQL, acted on only by the member that holds the subscription (after its
own clientState / token check). Real HTTP on 127.0.0.1, a real database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge_agent.calendars.google.push import NOTIFY_PATH as GOOGLE_PATH
from edge_agent.calendars.notify import GraphNotifications
from edge_agent.fleet.relay import PushRelay, RelayedGraphTarget, relayed_google_routes
from edge_agent.store.postgres import PostgresStore
from tests import pg
from tests.calendars.test_graph_push_notify import Target, note


@dataclass
class Member:
    name: str
    store: PostgresStore
    relay: PushRelay
    task: asyncio.Task[None]
    pokes: list[str] = field(default_factory=list)


@dataclass
class Watch:
    """Stands for WatchManager: its channels and the check it makes."""

    channels: dict[str, tuple[str, str]]
    poke: Callable[[str], object]

    def notification(self, headers: Mapping[str, str]) -> bool:
        ch = self.channels.get(headers.get("X-Goog-Channel-ID", ""))
        if ch is None or ch[1] != headers.get("X-Goog-Channel-Token"):
            return False
        if headers.get("X-Goog-Resource-State") == "sync":
            return False
        self.poke(ch[0])
        return True


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.members: list[Member] = []
        self.runners: list[web.AppRunner] = []

    async def member(self, name: str) -> Member:
        store = await PostgresStore.open(self.url, password=pg.PASSWORD, member_id=name)
        relay = PushRelay(store, name)
        m = Member(name, store, relay, asyncio.create_task(relay.run(), name=f"relay-{name}"))
        self.members.append(m)
        async with asyncio.timeout(10):
            await relay.listening.wait()
        return m

    async def serve(self, routes: list[web.RouteDef]) -> str:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()
        for m in self.members:
            m.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await m.task
            await m.store.close()


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    await f.close()


async def settle(*relays: PushRelay, sent: int) -> None:
    """Until ``sent`` relays went out and every other member has seen each of them."""
    async with asyncio.timeout(10):
        while sum(r.counters["sent"] for r in relays) < sent or any(
            r.counters["received"] < sent - r.counters["sent"] for r in relays
        ):
            await asyncio.sleep(0.02)


async def test_a_graph_notification_for_another_members_room_reaches_its_holder(
    fleet: Fleet,
) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    targets = {
        "a": Target(subs={"sub-a": ("room-a", "state-a")}),
        "b": Target(subs={"sub-b": ("room-b", "state-b")}),
    }
    urls = {}
    for m in (a, b):
        relayed = RelayedGraphTarget(targets[m.name], m.relay, m.pokes.append)
        urls[m.name] = await fleet.serve(GraphNotifications(relayed, m.pokes.append).routes())
    async with aiohttp.ClientSession() as http:
        # the proxy sent b's notification to a: 202 from a, a pokes nothing, b pokes room-b
        body = {"value": [note("sub-b", "state-b")]}
        async with http.post(f"{urls['a']}/v1/notifications/microsoft", json=body) as resp:
            assert resp.status == 202
        await settle(a.relay, b.relay, sent=1)
        assert a.pokes == [] and b.pokes == ["room-b"]
        # a forged clientState is relayed too, and ignored by the holder as it would be alone
        body = {"value": [note("sub-b", "forged")]}
        async with http.post(f"{urls['a']}/v1/notifications/microsoft", json=body) as resp:
            assert resp.status == 202
        await settle(a.relay, b.relay, sent=2)
        assert b.pokes == ["room-b"] and b.relay.counters["ignored"] == 1
        # a's own room: poked where it arrived, nothing relayed
        body = {"value": [note("sub-a", "state-a")]}
        async with http.post(f"{urls['a']}/v1/notifications/microsoft", json=body) as resp:
            assert resp.status == 202
        assert a.pokes == ["room-a"] and a.relay.counters["sent"] == 2


async def test_a_google_notification_for_another_members_room_reaches_its_holder(
    fleet: Fleet,
) -> None:
    a, b = await fleet.member("a"), await fleet.member("b")
    watches = {
        "a": Watch({"ch-a": ("room-a", "tok-a")}, a.pokes.append),
        "b": Watch({"ch-b": ("room-b", "tok-b")}, b.pokes.append),
    }
    urls = {
        m.name: await fleet.serve(relayed_google_routes(watches[m.name], m.relay, GOOGLE_PATH))
        for m in (a, b)
    }

    def headers(channel: str, token: str, state: str = "exists") -> dict[str, Any]:
        return {
            "X-Goog-Channel-ID": channel,
            "X-Goog-Channel-Token": token,
            "X-Goog-Resource-State": state,
        }

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{urls['b']}{GOOGLE_PATH}", headers=headers("ch-a", "tok-a")) as r:
            assert r.status == 200
        await settle(a.relay, b.relay, sent=1)
        assert a.pokes == ["room-a"] and b.pokes == []
        # a channel's first message ("sync") changes nothing: not relayed
        async with http.post(
            f"{urls['b']}{GOOGLE_PATH}", headers=headers("ch-a", "tok-a", "sync")
        ) as r:
            assert r.status == 200
        # a wrong token: relayed, ignored by the holder
        async with http.post(f"{urls['b']}{GOOGLE_PATH}", headers=headers("ch-a", "nope")) as r:
            assert r.status == 200
        await settle(a.relay, b.relay, sent=2)
        assert a.pokes == ["room-a"] and a.relay.counters["ignored"] == 1
        # exactly two relays were published (the sync was not): none is left to send
        assert b.relay.counters["sent"] == 2 and not b.relay._outgoing


def test_the_relay_queue_is_bounded_and_dedupes() -> None:
    relay = PushRelay(None, "a")  # type: ignore[arg-type] - publish needs no database
    for i in range(1500):
        relay.publish("microsoft", {"subscriptionId": f"s{i}", "clientState": "x"})
    relay.publish("microsoft", {"subscriptionId": "s1499", "clientState": "x"})
    assert len(relay._outgoing) == 1000 and relay.counters["dropped"] == 500
    relay.publish("microsoft", {"subscriptionId": "s", "clientState": "x" * 5000})
    assert relay.counters["dropped"] == 501
    relay.deliver("not json")
    relay.deliver('{"from": "b", "source": "google", "item": {"a": 1}}')
    assert relay.counters["malformed"] == 2


async def test_a_fleet_members_graph_route_relays_what_it_cannot_match(pg_url: str) -> None:
    """The agent's wiring (agent/calendars.py): with [store] url and a notification_url, the
    Graph notification route matches through the relay."""
    from edge_agent.agent.calendars import CalendarSources
    from edge_agent.clock import system_clock
    from edge_agent.config import config_from_dict, resolve_secrets

    env = {"WH": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "PG": pg.PASSWORD, "GS": "secret"}
    cfg = config_from_dict(
        {
            "site": "hq",
            "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "WH"},
            "store": {"url": pg_url, "password_env": "PG"},
            "fleet": {"member_id": "a"},
            "microsoft": {
                "tenant_id": "t",
                "client_id": "c",
                "client_secret_env": "GS",
                "notification_url": "https://edge.example.com",
            },
        },
        env=env,
    )
    secrets = resolve_secrets(cfg, env=env)
    store = await PostgresStore.open(pg_url, password=pg.PASSWORD, member_id="a")
    sources = CalendarSources(cfg, lambda: secrets, clock=system_clock)
    runner: web.AppRunner | None = None
    try:
        routes, paths = sources.setup(store)
        assert sources.relay is not None and "/v1/notifications/microsoft" in paths
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/notifications/microsoft"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"value": [note("sub-elsewhere", "s")]}) as resp:
                assert resp.status == 202
        assert len(sources.relay._outgoing) == 1  # queued for the other members
    finally:
        if runner is not None:
            await runner.cleanup()
        await sources.close()
        await store.close()
