"""Booking a calendar-only Microsoft 365 room through the agent, over real HTTP.

The agent runs in the test's loop with ``[microsoft]`` pointed at the project's Graph simulator
(``calendar_sim.graph``, HTTPS with the certificate it makes) and one ``[[rooms]]`` entry; the
local API and a signature-checking webhook receiver are real. Both run on the wall clock: every
booking is placed at whole days from today's UTC midnight (the room's zone is UTC), so no
verdict depends on the hour.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from calendar_sim.graph import GraphSim, GraphSimConfig
from edge_agent.agent import Agent
from edge_agent.calendars.graph import booking as graph_booking
from edge_agent.config import config_from_dict, resolve_secrets
from tests.booking.conftest import TOKEN
from tests.e2e.harness import SECRET, eventually, of_type
from tests.receivers import WebhookReceiver

SIM_SECRET = "graph-sim-secret-for-the-booking-tests"
MAILBOX = "room-1@contoso.com"
ROOM = "board"


def at(days: int, hour: int, minute: int = 0) -> datetime:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=days, hours=hour, minutes=minute)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def sim() -> AsyncIterator[GraphSim]:
    g = GraphSim(GraphSimConfig(rooms=1, client_secret=SIM_SECRET, time_zone="UTC"))
    await g.start()
    yield g
    await g.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()


Started = tuple[Agent, httpx.AsyncClient]


@pytest.fixture
async def agent(
    sim: GraphSim, receiver: WebhookReceiver, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """``await agent(**raw_extra)``: the agent, running, its room read once; a client with the
    API token."""
    running: list[tuple[Agent, asyncio.Task[int], httpx.AsyncClient]] = []

    async def start(extra: dict[str, Any] | None = None) -> Started:
        ca = tmp_path / "graph-sim-ca.pem"
        ca.write_bytes(sim.cert_pem)
        raw: dict[str, Any] = {
            "site": "cal",
            "store": {"path": str(tmp_path / "agent.db")},
            "webhook": {"url": receiver.url, "secret_env": "WEBHOOK_SECRET", "timeout_s": 5},
            "api": {"listen": "127.0.0.1:0", "token_env": "API_TOKEN"},
            "microsoft": {
                "tenant_id": sim.config.tenant_id,
                "client_id": sim.config.client_id,
                "client_secret_env": "GRAPH_SECRET",
                "authority_url": sim.authority_url,
                "graph_url": sim.graph_url,
                "ca_file": str(ca),
                "poll_interval_s": 1,
                "discover_rooms": False,
            },
            "rooms": [{"id": ROOM, "calendar": MAILBOX, "time_zone": "UTC"}],
            **(extra or {}),
        }
        env = {"WEBHOOK_SECRET": SECRET, "GRAPH_SECRET": SIM_SECRET, "API_TOKEN": TOKEN}
        cfg = config_from_dict(raw, env=env)
        a = Agent(cfg, resolve_secrets(cfg, env=env), drain_timeout_s=2.0)
        task = asyncio.create_task(a.run(), name="test-agent")
        await asyncio.wait_for(a.ready.wait(), 20)
        assert a.api is not None
        http = httpx.AsyncClient(
            base_url=a.api.url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        running.append((a, task, http))
        await eventually(lambda: _room(a).get("last_sync"), "the room's first round", timeout=20)
        return a, http

    yield start
    for a, task, http in running:
        await http.aclose()
        a.request_stop()
        await asyncio.wait_for(task, 30)


def _room(a: Agent) -> dict[str, Any]:
    return next((r for r in a.rooms() if r["id"] == ROOM), {})


def _ours(sim: GraphSim, uuid: str) -> list[Any]:
    return [e for e in sim.events(MAILBOX) if e.transaction_id == uuid]


async def _follow(http: httpx.AsyncClient, uuid: str, *statuses: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def poll() -> bool:
        nonlocal seen
        seen = (await http.get(f"/v1/requests/{uuid}")).json()
        return seen.get("status") in statuses

    async with asyncio.timeout(20):
        while not await poll():
            await asyncio.sleep(0.05)
    return seen


def _created_for(receiver: WebhookReceiver, uuid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in of_type(receiver.events, "booking.created")
        if e["data"]["booking"].get("booking_request_uuid") == uuid
    ]


def _snapshot_has(receiver: WebhookReceiver, booking_id: str) -> bool:
    snaps = [
        e for e in of_type(receiver.events, "bookings.snapshot") if e["data"]["room_id"] == ROOM
    ]
    return bool(snaps) and any(b["id"] == booking_id for b in snaps[-1]["data"]["bookings"])


async def test_book_a_calendar_room_created_once(agent, sim, receiver) -> None:
    a, http = await agent()
    assert a.booking_room(ROOM) == "calendar"
    start = at(1, 10)
    body = {
        "title": "Kiosk booking",
        "start": iso(start),
        "duration_min": 30,
        "organizer": {"name": "Kari", "email": "kari@example.com"},
    }
    r = await http.post(f"/v1/rooms/{ROOM}/bookings", json=body)
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    assert r.headers["Location"] == f"/v1/requests/{uuid}"
    assert r.json()["status"] == "pending"

    view = await _follow(http, uuid, "created", "failed", "expired")
    assert view["status"] == "created", view
    [event] = _ours(sim, uuid)
    assert event.subject == "Kiosk booking"
    assert "Kari" in event.body
    assert view["booking_id"] == event.id
    assert view["meeting_id"] == event.ical_uid
    assert datetime.fromisoformat(view["booking"]["start"]) == start
    assert datetime.fromisoformat(view["booking"]["end"]) == start + timedelta(minutes=30)

    # The round that sees the event (its snapshot lists it) does not report it again.
    await eventually(lambda: _snapshot_has(receiver, event.id), "a snapshot with the booking")
    [created] = _created_for(receiver, uuid)
    assert created["data"]["room_id"] == ROOM and created["data"]["source"] == "microsoft"
    assert isinstance(created["data"]["pending_ms"], int)
    assert created["data"]["booking_request_uuid"] == uuid
    assert created["data"]["booking"]["meeting_id"] == event.ical_uid
    others = [
        e
        for e in of_type(receiver.events, "booking.created")
        if e["data"]["booking"]["id"] == event.id
    ]
    assert len(others) == 1, others
    requested = [
        e
        for e in of_type(receiver.events, "booking.requested")
        if e["data"].get("booking_request_uuid") == uuid
    ]
    assert len(requested) == 1

    # The booking now holds its slot: an overlapping order is refused before anything is sent.
    again = {"title": "Clash", "start": iso(start + timedelta(minutes=15)), "duration_min": 30}
    r = await http.post(f"/v1/rooms/{ROOM}/bookings", json=again)
    assert r.status_code == 409 and r.json()["conflict"] == event.id, r.text
    assert len(sim.events(MAILBOX)) == 1


async def test_a_create_sent_again_books_once(agent, sim, monkeypatch) -> None:
    # The first create is answered after the agent stopped waiting; the agent sends it again
    # with the same transactionId, and Graph answers with the one event.
    monkeypatch.setattr(graph_booking, "REQUEST_TIMEOUT_S", 0.5)
    a, http = await agent()
    sim.fault("slow", MAILBOX, delay_s=1.5, route="events", count=1)
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Slow answer", "start": iso(at(2, 9)), "duration_min": 20},
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    view = await _follow(http, uuid, "created", "failed", "expired")
    assert view["status"] == "created", view
    await asyncio.sleep(1.5)  # let the slow first create finish on the simulator's side
    [event] = _ours(sim, uuid)
    assert view["booking_id"] == event.id


async def test_the_same_create_twice_is_one_event(sim, tmp_path) -> None:
    from edge_agent.calendars.graph.auth import ClientCredentials
    from edge_agent.httpclient import http_client

    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    tokens = ClientCredentials(
        tenant_id=sim.config.tenant_id,
        client_id=sim.config.client_id,
        secret=SIM_SECRET,
        authority_url=sim.authority_url,
        ca_file=str(ca),
    )
    http = http_client(timeout_s=10.0, max_connections=4, ca_file=str(ca))
    try:
        booker = graph_booking.GraphBooking(http, tokens, graph_url=sim.graph_url)
        args = {
            "request_uuid": "0b8f7c1e-1111-4222-8333-444455556666",
            "title": "Twice",
            "start": at(1, 13),
            "end": at(1, 14),
        }
        first = await booker.create_event(ROOM, MAILBOX, **args)  # type: ignore[arg-type]
        second = await booker.create_event(ROOM, MAILBOX, **args)  # type: ignore[arg-type]
        assert first["id"] == second["id"] and first["iCalUId"] == second["iCalUId"]
        assert len(sim.events(MAILBOX)) == 1
    finally:
        await http.aclose()


async def test_refused_before_anything_is_sent(agent, sim) -> None:
    taken = sim.add_event(MAILBOX, at(1, 10), 60, "Standup")
    a, http = await agent()
    await eventually(lambda: _room(a).get("window_size") == 1)

    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Clash", "start": iso(at(1, 10, 30)), "duration_min": 30},
    )
    assert r.status_code == 409 and r.json()["conflict"] == taken.id, r.text
    r = await http.post(f"/v1/rooms/{ROOM}/bookings", json={"title": "Zero", "duration_min": 0})
    assert r.status_code == 422 and r.json()["field"] == "duration_min", r.text
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Far", "start": iso(at(30, 9)), "duration_min": 30},
    )
    assert r.status_code == 422 and r.json()["field"] == "start", r.text
    r = await http.post("/v1/rooms/nowhere/bookings", json={"title": "X", "duration_min": 5})
    assert r.status_code == 404, r.text
    assert [e.id for e in sim.events(MAILBOX)] == [taken.id]


@pytest.mark.parametrize("status", [403, 503])
async def test_503_when_the_calendar_is_refusing(agent, sim, status) -> None:
    a, http = await agent()
    sim.fault("status", MAILBOX, status=status, route="delta")  # every round from now on
    await eventually(lambda: _room(a).get("last_error"), "a failed round", timeout=30)
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Not now", "start": iso(at(1, 15)), "duration_min": 30},
    )
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After")
    assert "calendar" in r.json()["error"]
    assert sim.events(MAILBOX) == []


async def test_a_refused_create_fails_naming_the_permission(agent, sim, receiver) -> None:
    a, http = await agent()
    sim.fault("status", MAILBOX, status=403, code="ErrorAccessDenied", route="events", count=1)
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "No write", "start": iso(at(1, 16)), "duration_min": 30},
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    view = await _follow(http, uuid, "created", "failed", "expired")
    assert view["status"] == "failed", view
    assert "Calendars.ReadWrite" in view["cause"]
    assert sim.events(MAILBOX) == []
    await eventually(
        lambda: [
            e
            for e in of_type(receiver.events, "booking.failed")
            if e["data"]["booking_request_uuid"] == uuid
        ]
    )


async def test_release_deletes_the_event(agent, sim, receiver) -> None:
    ev = sim.add_event(MAILBOX, at(3, 9), 45, "To go")
    a, http = await agent()
    await eventually(lambda: _room(a).get("window_size") == 1)
    r = await http.delete(f"/v1/rooms/{ROOM}/bookings/{ev.id}")
    assert r.status_code == 202, r.text
    assert r.json() == {"room_id": ROOM, "booking_id": ev.id, "status": "releasing"}
    assert sim.events(MAILBOX) == []
    await eventually(
        lambda: [
            e
            for e in of_type(receiver.events, "booking.deleted")
            if e["data"]["booking"]["id"] == ev.id
        ],
        "booking.deleted from the next round",
    )
    r = await http.delete(f"/v1/rooms/{ROOM}/bookings/no-such-event")
    assert r.status_code == 404, r.text


async def test_book_over_mqtt(agent, sim, tmp_path) -> None:
    from tests.booking.test_mqtt_requests import BASE, _answers, _publish
    from tests.mosquitto import Mosquitto, Subscriber

    broker = Mosquitto(tmp_path).start()
    try:
        a, http = await agent({"mqtt": {"url": broker.url, "keepalive": 5, "base_topic": BASE}})
        await asyncio.wait_for(a.mqtt_requests.subscribed.wait(), 10)
        await eventually(lambda: any(s["name"] == "mqtt" and s["ready"] for s in a.sinks()))
        with Subscriber(broker, f"{BASE}/bridge/response/+") as sub:
            payload = {
                "room": ROOM,
                "title": "Via MQTT",
                "start": iso(at(4, 9)),
                "duration_min": 15,
                "transaction": "t-1",
            }
            _publish(broker, f"{BASE}/bridge/request/book", payload)
            await eventually(lambda: _answers(sub, "book"))
            [answer] = _answers(sub, "book")
        assert answer["status"] == "ok" and answer["transaction"] == "t-1", answer
        view = await _follow(http, answer["data"]["request_uuid"], "created", "failed", "expired")
        assert view["status"] == "created", view
        assert len(_ours(sim, answer["data"]["request_uuid"])) == 1
    finally:
        broker.stop()


async def test_book_with_the_cli(agent, sim, tmp_path) -> None:
    from tests.ops.test_cli import acli

    a, http = await agent()
    assert a.api is not None
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'site = "cal"\n[api]\nlisten = "127.0.0.1:{a.api.port}"\ntoken_env = "API_TOKEN"\n'
    )
    code, out, err = await acli(
        "book",
        ROOM,
        "--title",
        "From the CLI",
        "--minutes",
        "25",
        "--start",
        iso(at(5, 11)),
        "--wait",
        "-c",
        str(cfg),
        env={"API_TOKEN": TOKEN},
    )
    assert code == 0, out + err
    assert "created booking" in out, out
    [event] = sim.events(MAILBOX)
    assert event.transaction_id is not None and event.transaction_id in out, out
    assert event.subject == "From the CLI" and event.end - event.start == timedelta(minutes=25)


async def test_a_request_left_pending_by_a_stopped_agent_is_closed(agent, sim, receiver) -> None:
    from edge_agent.bookings.pending import PendingRequest
    from edge_agent.store.base import Change, PendingRow

    a, http = await agent()
    assert a.store is not None
    made = datetime.now(UTC) - timedelta(minutes=10)
    left = PendingRequest(
        ROOM, "left-behind-uuid", "Lost", at(1, 8), 30, made, made + timedelta(seconds=60)
    )
    row = PendingRow(ROOM, left.booking_request_uuid, left.deadline.timestamp(), left.to_row())
    await a.store.commit(Change(ROOM, pending_upsert=[row]))
    # Same slot as the lapsed request: it no longer holds it, and the booking closes it.
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Lost", "start": iso(at(1, 8)), "duration_min": 30},
    )
    assert r.status_code == 202, r.text
    await eventually(
        lambda: [
            e
            for e in of_type(receiver.events, "booking.request_expired")
            if e["data"]["booking_request_uuid"] == "left-behind-uuid"
        ]
    )
    pending = [p.booking_request_uuid for p in await a.store.load_pending(ROOM)]
    assert "left-behind-uuid" not in pending
