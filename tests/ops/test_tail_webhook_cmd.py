"""``edge-agent webhook test``, ``edge-agent tail`` (and ``GET /v1/events/stream`` under it), and
``edge-agent status --problems``: the commands run as real processes against real servers on
127.0.0.1 (a signature-checking receiver, the local API over a real Store)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from edge_agent.ops import event_stream
from edge_agent.ops.api import LocalApi
from edge_agent.ops.event_stream import EventFeed, EventFilter
from edge_agent.store import Change, Store
from tests.ops.test_cli import WHSEC, acli

SECRET_TITLE = "Layoffs planning"


# --- a receiver that checks the signature and says something back ------------------------------


@dataclass
class Receiver:
    status: int = 200
    got: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(WHSEC).verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - any failure is a bad signature
            return web.Response(status=401, text="bad signature")
        self.got.append(json.loads(body))
        return web.Response(status=self.status, text=f"stored {request.headers['webhook-id']}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    rx.runner = web.AppRunner(app)
    await rx.runner.setup()
    site = web.TCPSite(rx.runner, "127.0.0.1", 0)
    await site.start()
    port = rx.runner.addresses[0][1]
    rx.url = f"http://127.0.0.1:{port}/hook"
    yield rx
    await rx.runner.cleanup()


def config(tmp_path: Path, webhook_url: str | None) -> Path:
    toml = tmp_path / "agent.toml"
    text = (
        f'site = "hq"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
        '[[devices]]\nid = "room-4a"\nurl = "wss://127.0.0.1:1/ws"\nusername = "u"\n'
        'password_env = "EDGE_AGENT_DEVICE_PASSWORD"\n'
    )
    if webhook_url:
        text += f'[webhook]\nurl = "{webhook_url}"\nsecret_env = "EDGE_AGENT_WEBHOOK_SECRET"\n'
    toml.write_text(text)
    return toml


ENV = {"EDGE_AGENT_DEVICE_PASSWORD": "pw", "EDGE_AGENT_WEBHOOK_SECRET": WHSEC}


async def test_webhook_test_sends_one_signed_event_and_prints_the_answer(
    receiver: Receiver, tmp_path: Path
) -> None:
    code, out, err = await acli(
        "webhook", "test", "-c", str(config(tmp_path, receiver.url)), env=ENV
    )
    assert code == 0, out + err
    assert len(receiver.got) == 1
    event = receiver.got[0]
    assert event["type"] == "agent.test" and event["data"]["site"] == "hq"
    assert f"answer: HTTP 200  stored {event['data']['event_id']}" in out
    assert not (tmp_path / "agent.db").exists()  # nothing went through the store


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(410, "stop the webhook sink"), (400, "dead-letter"), (503, "retry")],
)
async def test_webhook_test_says_what_a_refusal_means(
    receiver: Receiver, tmp_path: Path, status: int, verdict: str
) -> None:
    receiver.status = status
    code, out, _ = await acli("webhook", "test", "-c", str(config(tmp_path, receiver.url)), env=ENV)
    assert code == 1
    assert f"answer: HTTP {status}  stored " in out and "FAILED: HTTP" in out and verdict in out


async def test_webhook_test_with_the_wrong_secret(receiver: Receiver, tmp_path: Path) -> None:
    env = {**ENV, "EDGE_AGENT_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8}
    code, out, _ = await acli("webhook", "test", "-c", str(config(tmp_path, receiver.url)), env=env)
    assert code == 1 and "answer: HTTP 401  bad signature" in out and receiver.got == []


async def test_webhook_test_unreachable_and_unconfigured(tmp_path: Path) -> None:
    from tests.mosquitto import free_port

    url = f"http://127.0.0.1:{free_port()}/hook"
    code, out, _ = await acli("webhook", "test", "-c", str(config(tmp_path, url)), env=ENV)
    assert code == 1 and "FAILED" in out and "retry" in out
    code, _, err = await acli("webhook", "test", "-c", str(config(tmp_path, None)), env=ENV)
    assert code == 78 and "no [webhook] section" in err


# --- the event stream ------------------------------------------------------------------------------


def envelope(device: str, etype: str, **data: Any) -> dict[str, Any]:
    return {
        "type": etype,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": str(uuid.uuid4()), "site": "hq", "device_id": device, **data},
    }


def booking(title: str, privacy: str | None = None) -> dict[str, Any]:
    return {
        "id": "b1",
        "title": title,
        "start": "2026-11-23T10:00:00.000Z",
        "end": "2026-11-23T10:30:00.000Z",
        "organizer": {"name": "Catbert", "email": "hr@example.com", "id": None},
        "privacy": privacy,
    }


@dataclass
class StreamingAgent:
    store: Store | None
    event_feed: EventFeed = field(default_factory=EventFeed)

    def devices(self) -> list[dict[str, Any]]:
        return [
            {"id": "room-4a", "connected": True, "down_since": None, "last_seen": None},
            {
                "id": "room-4b",
                "connected": False,
                "down_since": "2026-11-23T08:00:00.000Z",
                "last_seen": "2026-11-23T07:59:58.000Z",
                "last_error": "HTTP 403",
            },
        ]

    def sinks(self) -> list[dict[str, Any]]:
        return [{"name": "webhook", "state": "running", "ready": True, "last_error": None}]


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[StreamingAgent]:
    store = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    a = StreamingAgent(store)
    store.on_committed.append(a.event_feed.publish)
    yield a
    await store.close()


async def until(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not pred():
            await asyncio.sleep(0.01)


async def test_tail_streams_stored_events_filtered_and_private_hidden(
    agent: StreamingAgent,
) -> None:
    assert agent.store is not None
    async with LocalApi(agent, "127.0.0.1:0") as api:  # type: ignore[arg-type]
        tail = asyncio.create_task(
            acli(
                "tail", "--api", api.url, "--room", "room-4a", "--type", "booking.*", "--count", "2"
            )
        )
        await until(lambda: agent.event_feed.subscribers == 1 or tail.done())
        await agent.store.commit(
            Change(
                "room-4b",
                events=[envelope("room-4b", "booking.created", booking=booking("other room"))],
            )
        )
        await agent.store.commit(Change("room-4a", events=[envelope("room-4a", "device.online")]))
        await agent.store.commit(
            Change(
                "room-4a",
                events=[
                    envelope(
                        "room-4a", "booking.created", booking=booking(SECRET_TITLE, "Private")
                    ),
                    envelope("room-4a", "booking.deleted", booking=booking("Standup")),
                ],
            )
        )
        code, out, err = await tail
    assert code == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert "room-4a  booking.created  10:00-10:30Z  (private)" in lines[0]
    assert 'room-4a  booking.deleted  10:00-10:30Z  "Standup"' in lines[1]
    assert SECRET_TITLE not in out and "Catbert" not in out and "other room" not in out


async def test_tail_json_and_show_private(agent: StreamingAgent) -> None:
    assert agent.store is not None
    async with LocalApi(agent, "127.0.0.1:0", show_private=True) as api:  # type: ignore[arg-type]
        tail = asyncio.create_task(acli("tail", "--api", api.url, "--json", "--count", "1"))
        await until(lambda: agent.event_feed.subscribers == 1 or tail.done())
        sent = envelope("room-4a", "booking.created", booking=booking(SECRET_TITLE, "Private"))
        await agent.store.commit(Change("room-4a", events=[sent]))
        code, out, err = await tail
    assert code == 0, err
    assert json.loads(out) == sent


async def test_a_slow_reader_is_cut_off_not_waited_for(agent: StreamingAgent) -> None:
    feed = agent.event_feed
    async with (
        LocalApi(agent, "127.0.0.1:0") as api,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
        http.stream("GET", "/v1/events/stream") as resp,
    ):
        assert resp.status_code == 200
        await until(lambda: feed.subscribers == 1)
        # publish() never blocks: all of this is offered before the stream sends one line.
        feed.publish(
            [envelope("room-4a", "room.availability") for _ in range(event_stream.QUEUE_MAX + 5)]
        )
        lines = [line async for line in resp.aiter_lines() if line.strip()]
    assert len(lines) == event_stream.QUEUE_MAX + 1
    assert json.loads(lines[-1])["dropped"] == 5
    assert feed.subscribers == 0


async def test_stream_limits_and_close(agent: StreamingAgent) -> None:
    feed = agent.event_feed
    held = [feed.subscribe(EventFilter()) for _ in range(event_stream.MAX_SUBSCRIBERS)]
    async with (
        LocalApi(agent, "127.0.0.1:0") as api,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
    ):
        r = await http.get("/v1/events/stream")
        assert r.status_code == 503 and "are open already" in r.json()["error"]
        for sub in held:
            assert sub is not None
            feed.unsubscribe(sub)
        async with http.stream("GET", "/v1/events/stream") as resp:
            await until(lambda: feed.subscribers == 1)
            feed.close()  # what the agent does before stopping the API
            assert [line async for line in resp.aiter_lines() if line.strip()] == []
    assert feed.subscribe(EventFilter()) is None


async def test_stream_keepalive_and_404_without_a_feed(agent: StreamingAgent) -> None:
    @dataclass
    class NoFeed:
        store: Store | None = None

        def devices(self) -> list[Any]:
            return []

        def sinks(self) -> list[Any]:
            return []

    async with (
        LocalApi(NoFeed(), "127.0.0.1:0") as api,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
    ):
        r = await http.get("/v1/events/stream")
        assert r.status_code == 404
    # The keepalive: a blank line after keepalive_s of silence (a short one, via the handler).
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await event_stream.stream_response(
            request, agent.event_feed, show_private=False, keepalive_s=0.01
        )

    app.router.add_get("/s", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            httpx.AsyncClient(timeout=10) as http,
            http.stream("GET", f"http://127.0.0.1:{port}/s") as resp,
        ):
            chunk = await anext(resp.aiter_bytes())
            assert chunk.strip() == b""
    finally:
        agent.event_feed.close()
        await runner.cleanup()


def room_envelope(room: str, etype: str, **data: Any) -> dict[str, Any]:
    """An event of a calendar-only room: ``room_id``, no ``device_id`` (DESIGN.md)."""
    env = envelope("-", etype, **data)
    env["data"] |= {"device_id": None, "room_id": room, "source": "microsoft"}
    return env


def test_the_filter_matches_rooms_by_room_id_calendar_only_ones_too() -> None:
    only = EventFilter(devices=frozenset({"boardroom"}))
    assert only.matches(room_envelope("boardroom", "booking.deleted"))
    assert not only.matches(room_envelope("other", "booking.deleted"))
    # A linked room: room_id is the device id, and device events without room_id still match.
    linked = envelope("room-4a", "booking.created", room_id="room-4a", source="microsoft")
    assert EventFilter(devices=frozenset({"room-4a"})).matches(linked)
    assert EventFilter(devices=frozenset({"room-4a"})).matches(envelope("room-4a", "x"))


def test_describe_names_the_room_of_a_calendar_only_event() -> None:
    from edge_agent.ops.cli.tail import describe

    line = describe(room_envelope("boardroom", "booking.deleted", booking=booking("Standup")))
    assert line.split("  ")[1:3] == ["boardroom", "booking.deleted"], line


async def test_tail_room_and_the_stream_room_filter_find_a_calendar_only_room(
    agent: StreamingAgent,
) -> None:
    assert agent.store is not None
    async with (
        LocalApi(agent, "127.0.0.1:0") as api,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=api.url, timeout=10) as http,
        # ?device= stays an alias of ?room= (the parameter the stream had first).
        http.stream("GET", "/v1/events/stream", params={"device": "boardroom"}) as by_device,
    ):
        tail = asyncio.create_task(
            acli("tail", "--api", api.url, "--room", "boardroom", "--count", "1")
        )
        await until(lambda: agent.event_feed.subscribers == 2 or tail.done())
        await agent.store.commit(
            Change("room-4a", events=[envelope("room-4a", "booking.created", booking=booking("a"))])
        )
        mine = room_envelope("boardroom", "booking.deleted", booking=booking("Standup"))
        await agent.store.commit(Change("boardroom", events=[mine]))
        code, out, err = await tail
        lines = by_device.aiter_lines()
        line = await anext(lines)
        while not line.strip():  # keepalives
            line = await anext(lines)
    assert code == 0, out + err
    assert 'boardroom  booking.deleted  10:00-10:30Z  "Standup"' in out, out
    assert json.loads(line)["data"]["event_id"] == mine["data"]["event_id"]


def test_filter() -> None:
    only = EventFilter(devices=frozenset({"room-4a"}), types=("booking.*", "device.online"))
    assert only.matches(envelope("room-4a", "booking.created"))
    assert only.matches(envelope("room-4a", "device.online"))
    assert not only.matches(envelope("room-4a", "device.offline"))
    assert not only.matches(envelope("room-4b", "booking.created"))
    assert EventFilter().matches({"type": "x"})


async def test_tail_unreachable_and_bad_count() -> None:
    from tests.mosquitto import free_port

    code, _, err = await acli("tail", "--api", f"http://127.0.0.1:{free_port()}")
    assert code == 69 and "cannot reach" in err
    code, _, err = await acli("tail", "--api", "http://127.0.0.1:1", "--count", "0")
    assert code == 1 and "--count" in err


# --- status --problems -------------------------------------------------------------------------


async def test_status_problems_lists_only_what_is_wrong(agent: StreamingAgent) -> None:
    async with LocalApi(agent, "127.0.0.1:0") as api:  # type: ignore[arg-type]
        code, out, err = await acli("status", "--api", api.url)
        assert code == 0, err
        header = next(line for line in out.splitlines() if line.startswith("DEVICE"))
        assert "DOWN SINCE" in header and "LAST SEEN" in header
        assert "2026-11-23T08:00:00.000Z" in out
        code, out, _ = await acli("status", "--api", api.url, "--problems")
        assert code == 1
        assert "room-4b" in out and "room-4a" not in out
        assert not [line for line in out.splitlines() if line.startswith("webhook")]
        agent.devices = lambda: [{"id": "room-4a", "connected": True}]  # type: ignore[method-assign]
        code, out, _ = await acli("status", "--api", api.url, "--problems")
        assert code == 0 and "no problems" in out
