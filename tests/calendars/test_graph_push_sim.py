"""Push end to end, in process: the Graph simulator (HTTPS, msal tokens) subscribes the agent's
webhook handler (real HTTP on 127.0.0.1), the real GraphPoller does the delta fetches a
notification triggers, and lifecycle notifications drive renewal and recreation.

Both clocks are pinned (the simulator's frozen, the agent's a PinnedClock) and moved together."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import httpx
import structlog.testing
from aiohttp import web

from calendar_sim.graph import GraphSim, GraphSimConfig
from edge_agent.calendars.graph.auth import ClientCredentials
from edge_agent.calendars.graph.client import GraphClient
from edge_agent.calendars.graph.poller import CalendarRoom, GraphPoller
from edge_agent.calendars.graph.push import HEALTHY_POLL_FACTOR, PushManager
from edge_agent.calendars.notify import GraphNotifications
from tests.calendars.test_graph_poller import MemoryStore, PinnedClock

OSLO = ZoneInfo("Europe/Oslo")
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # a Monday, 08:00 in Oslo
ROOM, MBX = "room-1", "room-1@contoso.com"
LIFETIME = timedelta(days=3)


@dataclass
class Rig:
    sim: GraphSim
    clock: PinnedClock
    store: MemoryStore
    poller: GraphPoller
    push: PushManager
    endpoint: GraphNotifications
    pokes: list[str]
    base_url: str
    http: httpx.AsyncClient
    tokens: ClientCredentials

    def advance(self, delta: timedelta) -> None:
        self.sim.clock.advance(delta.total_seconds())
        self.clock.t += delta

    def subs(self) -> list[Any]:
        return self.sim.subscriptions.active()

    def rounds(self) -> int:
        return self.poller.status()[ROOM].rounds

    def created(self) -> list[str]:
        return [bid for t, bid in self.store.changes(ROOM) if t == "booking.created"]

    def reported(self) -> list[str]:
        """Every booking the room reported: created, or in a snapshot (the room's first
        round, which the push may be, reports its window as the snapshot alone)."""
        return self.created() + [b for snap in self.store.snapshots(ROOM) for b in snap]


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    roles: tuple[str, ...] | None = None,
    serve: bool = True,
    start_rooms: bool = True,
) -> AsyncIterator[Rig]:
    cfg = GraphSimConfig(start=START, frozen=True, rooms=2, allow_http_notifications=True)
    if roles is not None:
        cfg.roles = roles
    async with GraphSim(cfg) as sim:
        ca_file = tmp_path / "graph-sim-ca.pem"
        ca_file.write_bytes(sim.cert_pem)
        verify = ssl.create_default_context(cafile=str(ca_file))
        async with httpx.AsyncClient(verify=verify) as http:
            tokens = ClientCredentials(
                tenant_id=cfg.tenant_id,
                client_id=cfg.client_id,
                secret=cfg.client_secret,
                authority_url=sim.authority_url,
                ca_file=str(ca_file),
            )
            clock = PinnedClock(START)
            store = MemoryStore()
            poller = GraphPoller(
                GraphClient(http, tokens, graph_url=sim.graph_url),
                store,
                rooms=[CalendarRoom(ROOM, MBX, OSLO)],
                discover=False,
                default_zone=OSLO,
                poll_interval_s=3600.0,  # no round but the ones a poke asks for
                clock=clock,
                rng=random.Random(3),
            )
            pokes: list[str] = []

            def poke(room_id: str) -> None:
                pokes.append(room_id)
                poller.poke(room_id)

            sock = _free_socket()
            base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            push = PushManager(
                http,
                tokens,
                notification_url=base_url,
                poke=poke,
                graph_url=sim.graph_url,
                lifetime=LIFETIME,
                require_https=False,  # the simulator's allow_http_notifications
                clock=clock,
            )
            endpoint = GraphNotifications(push, poke)
            app = web.Application()
            app.add_routes(endpoint.routes())
            runner = web.AppRunner(app)
            await runner.setup()
            if serve:
                await web.SockSite(runner, sock).start()
            else:
                sock.close()  # nobody answers there: Graph's validation must fail
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(poller.run(), name="graph-poller"),
                        tg.create_task(push.run(), name="graph-push"),
                    ]
                    if start_rooms:
                        push.set_rooms({ROOM: MBX})
                    yield Rig(
                        sim, clock, store, poller, push, endpoint, pokes, base_url, http, tokens
                    )
                    for t in tasks:
                        t.cancel()
            finally:
                await push.stop()
                await runner.cleanup()


async def test_subscribe_validate_then_a_change_in_outlook_pokes_a_delta_fetch(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        (sub,) = r.subs()
        assert sub.mailbox == MBX
        assert sub.change_types == ("created", "updated", "deleted")
        assert sub.notification_url == r.base_url + "/v1/notifications/microsoft"
        assert sub.lifecycle_url == r.base_url + "/v1/notifications/microsoft/lifecycle"
        assert sub.expiration == START + LIFETIME
        assert sub.client_state and len(sub.client_state) <= 128
        # Graph validated both URLs against the handler before it answered 201
        validations = [d for d in r.sim.subscriptions.deliveries if d.kind == "validation"]
        assert [d.status for d in validations] == [200, 200]
        assert r.endpoint.counters["validations"] == 2
        assert r.push.healthy(ROOM)
        assert r.push.poll_interval_s(ROOM, 60.0) == 60.0 * HEALTHY_POLL_FACTOR
        assert not r.push.healthy("room-2")
        assert r.push.poll_interval_s("room-2", 60.0) == 60.0

        event = r.sim.add_event(MBX, START.replace(hour=9), 30, "Pushed")
        await r.store.wait_for(lambda: event.id in r.reported())
        assert r.pokes == [ROOM]
        (note,) = await r.sim.subscriptions.wait_deliveries(1, "created")
        assert note.status == 202

        r.sim.add_event("room-2@contoso.com", START.replace(hour=10), 30, "Not subscribed")
        assert r.endpoint.counters["notifications"] == 1


async def test_a_forged_notification_for_a_real_subscription_is_ignored(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, aiohttp.ClientSession() as session:
        await r.push.settle()
        (sub,) = r.subs()
        forged = {
            "value": [{"subscriptionId": sub.id, "clientState": "guess", "changeType": "created"}]
        }
        async with session.post(f"{r.base_url}/v1/notifications/microsoft", json=forged) as resp:
            assert resp.status == 202
        assert r.endpoint.counters["client_state_mismatch"] == 1
        assert r.pokes == []


async def test_the_202_goes_out_while_the_delta_fetch_is_held(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        hold = r.sim.fault("hold", MBX, route="delta")
        event = r.sim.add_event(MBX, START.replace(hour=9), 30, "Pushed")
        (note,) = await r.sim.subscriptions.wait_deliveries(1, "created")
        assert note.status == 202
        assert r.rounds() == 0  # the fetch it triggered cannot have finished: Graph holds it
        hold.release()
        await r.store.wait_for(lambda: event.id in r.reported())


async def test_reauthorization_required_renews_the_subscription(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        (sub,) = r.subs()
        r.advance(timedelta(hours=1))
        r.sim.lifecycle(sub.id, "reauthorizationRequired")
        (note,) = await r.sim.subscriptions.wait_deliveries(1, "reauthorizationRequired")
        assert note.status == 202
        await r.push.settle()
        (renewed,) = r.subs()
        assert renewed.id == sub.id
        assert not renewed.needs_reauthorization
        assert renewed.expiration == START + timedelta(hours=1) + LIFETIME
        assert r.push.counters["renewed"] == 1
        assert r.push.healthy(ROOM)


async def test_subscription_removed_recreates_it_and_fetches(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        (sub,) = r.subs()
        r.sim.lifecycle(sub.id, "subscriptionRemoved")
        await r.sim.subscriptions.wait_deliveries(1, "subscriptionRemoved")
        await r.push.settle()
        (again,) = r.subs()
        assert again.id != sub.id
        assert again.client_state != sub.client_state
        assert r.push.counters["recreated"] == 1
        assert r.pokes == [ROOM]  # changes made while it was gone are fetched
        await r.store.wait_for(lambda: r.rounds() >= 1)
        assert r.push.healthy(ROOM)


async def test_missed_triggers_a_delta_fetch_of_that_room(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        r.poller.poke(ROOM)
        await r.store.wait_for(lambda: r.rounds() == 1)
        before = r.sim.api.requests["delta"]
        (sub,) = r.subs()
        r.sim.lifecycle(sub.id, "missed")
        await r.sim.subscriptions.wait_deliveries(1, "missed")
        await r.store.wait_for(lambda: r.rounds() == 2)
        assert r.pokes == [ROOM]
        assert r.sim.api.requests["delta"] > before
        assert r.push.counters["renewed"] == r.push.counters["recreated"] == 0


async def test_renewed_before_expiry_as_the_clock_moves(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        (sub,) = r.subs()
        r.advance(timedelta(days=1, hours=23))  # one day and an hour left: not yet
        await r.push.settle()
        assert r.push.counters["renewed"] == 0
        r.advance(timedelta(hours=2))  # inside the one-day margin (the token expired too)
        await r.push.settle()
        (renewed,) = r.subs()
        assert renewed.id == sub.id
        assert renewed.expiration == START + timedelta(days=2, hours=1) + LIFETIME
        assert r.push.counters["renewed"] == 1


async def test_stop_deletes_the_subscriptions(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        assert len(r.subs()) == 1
        await r.push.stop()
        assert r.subs() == []
        assert not r.push.healthy(ROOM)


async def test_a_restart_deletes_the_previous_runs_subscriptions(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.push.settle()
        (old,) = r.subs()
        # a second process (after a kill -9) with the same notification_url
        again = PushManager(
            r.http,
            r.tokens,
            notification_url=r.base_url,
            poke=r.pokes.append,
            graph_url=r.sim.graph_url,
            lifetime=LIFETIME,
            require_https=False,
            clock=r.clock,
        )
        again.set_rooms({ROOM: MBX})
        task = asyncio.create_task(again.run(), name="graph-push-2")
        await again.settle()
        (new,) = r.subs()
        assert new.id != old.id
        task.cancel()
        await asyncio.wait([task])
        await again.stop()


async def test_a_fleet_member_starting_leaves_the_others_subscriptions_alone(
    tmp_path: Path,
) -> None:
    """Fleet members share one notificationUrl: a member that starts (sweep_previous=False)
    must not delete another member's live subscription; it creates its own for its room."""
    async with rig(tmp_path) as r:
        await r.push.settle()
        (theirs,) = r.subs()
        member = PushManager(
            r.http,
            r.tokens,
            notification_url=r.base_url,
            poke=r.pokes.append,
            graph_url=r.sim.graph_url,
            lifetime=LIFETIME,
            require_https=False,
            clock=r.clock,
            sweep_previous=False,
        )
        member.set_rooms({"other-room": MBX})
        task = asyncio.create_task(member.run(), name="graph-push-member")
        await member.settle()
        assert theirs.id in {s.id for s in r.subs()} and len(r.subs()) == 2
        task.cancel()
        await asyncio.wait([task])
        await member.stop()


async def test_missing_permission_says_which_and_polling_keeps_its_pace(tmp_path: Path) -> None:
    async with rig(tmp_path, roles=("Place.Read.All",)) as r:
        await r.push.settle()
        assert r.subs() == []
        err = r.push.status(ROOM)["push_error"]
        assert "403" in err and "Calendars.Read" in err and "application access policy" in err
        assert not r.push.healthy(ROOM)
        assert r.push.poll_interval_s(ROOM, 60.0) == 60.0


async def test_an_unreachable_notification_url_says_what_to_fix(tmp_path: Path) -> None:
    async with rig(tmp_path, serve=False) as r:
        await r.push.settle()
        assert r.subs() == []
        err = r.push.status(ROOM)["push_error"]
        assert (
            "validate" in err and "public HTTPS URL" in err and "/v1/notifications/microsoft" in err
        )
        assert r.push.poll_interval_s(ROOM, 60.0) == 60.0
        # the room waits for its backoff instead of asking Graph again at once
        await r.push.settle()
        assert r.push.counters["failed"] == 1


async def test_throttled_subscription_waits_for_retry_after(tmp_path: Path) -> None:
    async with rig(tmp_path, start_rooms=False) as r:
        await r.push.settle()  # the startup sweep of old subscriptions is done
        r.sim.fault("throttle", None, route="subscriptions", count=1, retry_after=900)
        r.push.set_rooms({ROOM: MBX})
        await r.push.settle()
        assert r.subs() == []
        assert "429" in r.push.status(ROOM)["push_error"]
        r.advance(timedelta(seconds=899))
        await r.push.settle()
        assert r.subs() == []  # Retry-After not over yet
        r.advance(timedelta(seconds=2))
        await r.push.settle()
        assert len(r.subs()) == 1
        assert r.push.status(ROOM)["push_error"] is None
        assert r.push.healthy(ROOM)


async def test_the_client_state_is_never_logged(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with rig(tmp_path) as r:
            await r.push.settle()
            (sub,) = r.subs()
            r.sim.lifecycle(sub.id, "subscriptionRemoved")
            await r.sim.subscriptions.wait_deliveries(1, "subscriptionRemoved")
            await r.push.settle()
            states = [sub.client_state, *(s.client_state for s in r.subs())]
    assert len(logs) >= 4  # created, lifecycle, created again: the lines were captured
    assert not any(state in repr(line) for state in states for line in logs)
