"""The webhook handlers over real HTTP on 127.0.0.1: validation echo, clientState, 202 at once,
bounded JSON bodies, lifecycle routing."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge_agent.calendars.graph.push import RoomMatch
from edge_agent.calendars.notify import GraphNotifications

SECRET = "client-state-of-room-a"


@dataclass
class Target:
    subs: dict[str, tuple[str, str]] = field(default_factory=lambda: {"sub-a": ("room-a", SECRET)})
    lifecycles: list[tuple[str, str, str]] = field(default_factory=list)

    def match(self, subscription_id: str, client_state: str | None) -> RoomMatch:
        known = self.subs.get(subscription_id)
        if known is None:
            return RoomMatch(None, "unknown_subscription")
        if not hmac.compare_digest(known[1].encode(), (client_state or "").encode()):
            return RoomMatch(None, "client_state_mismatch")
        return RoomMatch(known[0], "ok")

    def lifecycle(self, room_id: str, subscription_id: str, event: str) -> None:
        self.lifecycles.append((room_id, subscription_id, event))


@dataclass
class Served:
    url: str
    session: aiohttp.ClientSession
    endpoint: GraphNotifications
    target: Target
    pokes: list[str]
    on_poke: list[Callable[[str], None]]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    target = Target()
    pokes: list[str] = []
    on_poke: list[Callable[[str], None]] = []

    def poke(room_id: str) -> None:
        pokes.append(room_id)
        for then in on_poke:
            then(room_id)

    endpoint = GraphNotifications(target, poke, max_body_bytes=4096)
    app = web.Application()
    app.add_routes(endpoint.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield Served(f"http://127.0.0.1:{port}", session, endpoint, target, pokes, on_poke)
    await runner.cleanup()


def note(sub_id: str = "sub-a", state: str | None = SECRET, **kw: Any) -> dict[str, Any]:
    return {
        "subscriptionId": sub_id,
        "clientState": state,
        "changeType": "created",
        "resource": "Users/x/Events/AAMk=",
        "resourceData": {"id": "AAMk="},
        "tenantId": "t",
        **kw,
    }


@pytest.mark.parametrize(
    "path", ["/v1/notifications/microsoft", "/v1/notifications/microsoft/lifecycle"]
)
async def test_validation_echoes_the_decoded_token_as_text_plain(served: Served, path: str) -> None:
    # Graph encodes the token's spaces as '+' and its colon as %3a; the echo is decoded.
    raw = "Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+42"
    async with served.session.post(
        f"{served.url}{path}?validationToken={raw}",
        data=b"",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        assert await resp.text() == (
            "Validation: Testing client application reachability for subscription Request-Id: 42"
        )
    assert served.pokes == [] and served.target.lifecycles == []
    assert served.endpoint.counters["validations"] == 1


async def test_a_verified_batch_pokes_its_room_once(served: Served) -> None:
    body = {"value": [note(), note(changeType="updated"), note(changeType="deleted")]}
    async with served.session.post(f"{served.url}/v1/notifications/microsoft", json=body) as resp:
        assert resp.status == 202
    assert served.pokes == ["room-a"]
    assert served.endpoint.counters["notifications"] == 3


@pytest.mark.parametrize(
    ("item", "counter"),
    [
        (note(state="client-state-of-room-b"), "client_state_mismatch"),
        (note(state=None), "client_state_mismatch"),
        (note(sub_id="sub-from-a-previous-run"), "unknown_subscription"),
        (note(sub_id=None), "malformed"),  # type: ignore[arg-type]
    ],
)
async def test_unverified_notifications_are_ignored_and_counted(
    served: Served, item: dict[str, Any], counter: str
) -> None:
    async with served.session.post(
        f"{served.url}/v1/notifications/microsoft", json={"value": [item]}
    ) as resp:
        assert resp.status == 202  # not an error for Graph: it must not retry
    assert served.pokes == []
    assert served.endpoint.counters[counter] == 1


async def test_the_202_does_not_wait_for_the_delta_fetch(served: Served) -> None:
    """The poke only starts the fetch: the answer goes out while the fetch is still held."""
    gate = asyncio.Event()
    fetches: list[asyncio.Task[bool]] = []

    def fetch(room_id: str) -> None:  # what GraphPoller.poke does: wake a task, return at once
        fetches.append(asyncio.create_task(gate.wait(), name=f"fetch[{room_id}]"))

    served.on_poke.append(fetch)
    async with served.session.post(
        f"{served.url}/v1/notifications/microsoft", json={"value": [note()]}
    ) as resp:
        assert resp.status == 202
    (started,) = fetches
    assert not started.done()
    gate.set()
    await started


async def test_an_oversize_body_is_refused_declared_or_chunked(served: Served) -> None:
    big = {"value": [note(pad="x" * 5000)]}
    async with served.session.post(f"{served.url}/v1/notifications/microsoft", json=big) as resp:
        assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"value": [' + b" " * 3000
        yield b" " * 3000 + b"]}"

    async with served.session.post(
        f"{served.url}/v1/notifications/microsoft",
        data=chunks(),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
    assert served.pokes == []
    assert served.endpoint.counters["too_large"] == 2


@pytest.mark.parametrize(
    ("data", "ctype", "status"),
    [
        (b'{"value": []}', "text/plain", 415),
        (b'{"value": [', "application/json", 400),
        (b'{"value": {"subscriptionId": "sub-a"}}', "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
    ],
)
async def test_only_json_notification_collections_are_accepted(
    served: Served, data: bytes, ctype: str, status: int
) -> None:
    async with served.session.post(
        f"{served.url}/v1/notifications/microsoft", data=data, headers={"Content-Type": ctype}
    ) as resp:
        assert resp.status == status
    assert served.pokes == []


async def test_lifecycle_notifications_are_verified_then_routed(served: Served) -> None:
    items = [
        note(lifecycleEvent="missed"),
        note(state="forged", lifecycleEvent="subscriptionRemoved"),
        note(lifecycleEvent=None),
    ]
    async with served.session.post(
        f"{served.url}/v1/notifications/microsoft/lifecycle", json={"value": items}
    ) as resp:
        assert resp.status == 202
    assert served.target.lifecycles == [("room-a", "sub-a", "missed")]
    assert served.endpoint.counters["client_state_mismatch"] == 1
    assert served.endpoint.counters["malformed"] == 1
    assert served.pokes == []  # the manager decides what a lifecycle event means
