"""Booking a calendar-only Google Workspace room through the agent, over real HTTP.

As ``test_calendar_rooms`` does for Graph: the agent runs in the test's loop with ``[google]``
pointed at the project's Google simulator (``calendar_sim.google``, HTTPS with the certificate
it makes) and one ``[[rooms]]`` entry of source google; the local API and a signature-checking
webhook receiver are real. Every booking is placed at whole days from today's UTC midnight
(the room's zone is UTC), so no verdict depends on the hour.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from calendar_sim.common.faults import Fault
from calendar_sim.google import GoogleSim
from calendar_sim.google.sim import GoogleSimConfig
from edge_agent.agent import Agent
from edge_agent.calendars.google import booking as google_booking
from edge_agent.config import config_from_dict, resolve_secrets
from tests.booking.conftest import TOKEN
from tests.e2e.harness import SECRET, eventually, of_type
from tests.receivers import WebhookReceiver

CALENDAR = "c_board@resource.calendar.google.com"
ROOM = "board"


def at(days: int, hour: int, minute: int = 0) -> datetime:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=days, hours=hour, minutes=minute)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def sim() -> AsyncIterator[GoogleSim]:
    g = GoogleSim(GoogleSimConfig())
    g.add_room(CALENDAR, "Board room")
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
    sim: GoogleSim, receiver: WebhookReceiver, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """``await agent()``: the agent, running, its room read once; a client with the API token."""
    running: list[tuple[Agent, asyncio.Task[int], httpx.AsyncClient]] = []

    async def start() -> Started:
        ca = tmp_path / "google-sim-ca.pem"
        ca.write_bytes(sim.cert_pem)
        key = tmp_path / "sa-key.json"
        key.write_text(json.dumps(sim.key_file()))
        key.chmod(0o600)
        raw: dict[str, Any] = {
            "site": "gcal",
            "store": {"path": str(tmp_path / "agent.db")},
            "webhook": {"url": receiver.url, "secret_env": "WEBHOOK_SECRET", "timeout_s": 5},
            "api": {"listen": "127.0.0.1:0", "token_env": "API_TOKEN"},
            "google": {
                "service_account_file": str(key),
                "subject": sim.config.admin,
                "directory_url": sim.directory_url,
                "calendar_url": sim.calendar_url,
                "ca_file": str(ca),
                "time_zone": "UTC",
                "poll_interval_s": 1,
                "discover_rooms": False,
            },
            "rooms": [{"id": ROOM, "calendar": CALENDAR, "source": "google", "time_zone": "UTC"}],
        }
        env = {"WEBHOOK_SECRET": SECRET, "API_TOKEN": TOKEN}
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


def _live(sim: GoogleSim) -> list[Any]:
    return [e for e in sim.calendars[CALENDAR].events.values() if e.status != "cancelled"]


async def _follow(http: httpx.AsyncClient, uuid: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while seen.get("status") not in ("created", "failed", "expired"):
            seen = (await http.get(f"/v1/requests/{uuid}")).json()
            if seen.get("status") not in ("created", "failed", "expired"):
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


def test_event_id_is_base32hex_from_the_request_uuid() -> None:
    eid = google_booking.event_id("0B8F7C1E-1111-4222-8333-444455556666")
    assert eid == "0b8f7c1e111142228333444455556666"
    with pytest.raises(ValueError):
        google_booking.event_id("not-a-uuid")


async def test_book_a_google_room_created_once(agent, sim, receiver) -> None:
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

    view = await _follow(http, uuid)
    assert view["status"] == "created", view
    [event] = _live(sim)
    assert event.id == google_booking.event_id(uuid)
    assert event.summary == "Kiosk booking"
    assert view["booking_id"] == event.id
    assert view["meeting_id"] == f"{event.id}@google.com"  # the event's iCalUID
    assert datetime.fromisoformat(view["booking"]["start"]) == start
    assert datetime.fromisoformat(view["booking"]["end"]) == start + timedelta(minutes=30)

    # The round that sees the event (its snapshot lists it) does not report it again.
    await eventually(lambda: _snapshot_has(receiver, event.id), "a snapshot with the booking")
    [created] = _created_for(receiver, uuid)
    assert created["data"]["room_id"] == ROOM and created["data"]["source"] == "google"
    assert isinstance(created["data"]["pending_ms"], int)
    assert created["data"]["booking"]["meeting_id"] == f"{event.id}@google.com"
    others = [
        e
        for e in of_type(receiver.events, "booking.created")
        if e["data"]["booking"]["id"] == event.id
    ]
    assert len(others) == 1, others

    # The booking holds its slot: an overlapping order is refused before anything is sent.
    again = {"title": "Clash", "start": iso(start + timedelta(minutes=15)), "duration_min": 30}
    r = await http.post(f"/v1/rooms/{ROOM}/bookings", json=again)
    assert r.status_code == 409 and r.json()["conflict"] == event.id, r.text
    assert len(_live(sim)) == 1


async def test_an_insert_sent_again_books_once(agent, sim, monkeypatch) -> None:
    # The first insert is answered after the agent stopped waiting; the agent sends it again
    # with the same event id: one of the two is answered 409 duplicate, and one event exists.
    monkeypatch.setattr(google_booking, "REQUEST_TIMEOUT_S", 0.5)
    a, http = await agent()
    sim.faults.add(Fault("slow", mailbox=CALENDAR, route="insert", delay_s=1.5, count=1))
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Slow answer", "start": iso(at(2, 9)), "duration_min": 20},
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    view = await _follow(http, uuid)
    assert view["status"] == "created", view
    await asyncio.sleep(1.5)  # let the slow first insert finish on the simulator's side
    [event] = _live(sim)
    assert view["booking_id"] == event.id == google_booking.event_id(uuid)


async def test_the_same_insert_twice_reads_back_the_one_event(sim, tmp_path) -> None:
    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.httpclient import http_client

    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    key = tmp_path / "sa-key.json"
    key.write_text(json.dumps(sim.key_file()))
    key.chmod(0o600)
    tokens = ServiceAccountTokens(
        service_account_file=str(key),
        subject=sim.config.admin,
        scopes=(google_booking.BOOKING_SCOPE,),
        ca_file=str(ca),
    )
    http = http_client(timeout_s=10.0, max_connections=4, ca_file=str(ca))
    try:
        booker = google_booking.GoogleBooking(http, tokens, calendar_url=sim.calendar_url)
        args: dict[str, Any] = {
            "request_uuid": "0b8f7c1e-1111-4222-8333-444455556666",
            "title": "Twice",
            "start": at(1, 13),
            "end": at(1, 14),
        }
        first = await booker.create_event(ROOM, CALENDAR, **args)
        second = await booker.create_event(ROOM, CALENDAR, **args)  # 409 duplicate, then GET
        assert first["id"] == second["id"] and first["iCalUID"] == second["iCalUID"]
        assert len(_live(sim)) == 1
        await booker.delete_event(ROOM, CALENDAR, first["id"])
        assert _live(sim) == []
        with pytest.raises(LookupError):  # 410 deleted
            await booker.delete_event(ROOM, CALENDAR, first["id"])
        with pytest.raises(LookupError):  # 404 notFound
            await booker.delete_event(ROOM, CALENDAR, "nosuchevent")
    finally:
        await http.aclose()


async def test_a_refused_insert_fails_naming_the_scope(agent, sim, receiver) -> None:
    a, http = await agent()
    sim.faults.add(
        Fault(
            "status", mailbox=CALENDAR, route="insert", status=403, code="forbidden", count=1
        )
    )
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "No write", "start": iso(at(1, 16)), "duration_min": 30},
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    view = await _follow(http, uuid)
    assert view["status"] == "failed", view
    assert google_booking.BOOKING_SCOPE in view["cause"]
    assert "Domain-wide delegation" in view["cause"]
    assert _live(sim) == []
    await eventually(
        lambda: [
            e
            for e in of_type(receiver.events, "booking.failed")
            if e["data"]["booking_request_uuid"] == uuid and e["data"]["source"] == "google"
        ]
    )


async def test_release_deletes_the_event(agent, sim, receiver) -> None:
    ev = sim.add_event(CALENDAR, at(3, 9), 45, "To go")
    a, http = await agent()
    await eventually(lambda: _room(a).get("window_size") == 1)
    r = await http.delete(f"/v1/rooms/{ROOM}/bookings/{ev.id}")
    assert r.status_code == 202, r.text
    assert r.json() == {"room_id": ROOM, "booking_id": ev.id, "status": "releasing"}
    assert _live(sim) == []
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


async def test_503_naming_the_scope_when_write_is_not_delegated(agent, sim) -> None:
    # The poller reads with calendar.readonly; an insert needs the write scope, whose token
    # Google refuses (unauthorized_client) when it is not delegated: refused, nothing sent.
    sim.identity.account.delegated_scopes -= {google_booking.BOOKING_SCOPE}
    a, http = await agent()
    r = await http.post(
        f"/v1/rooms/{ROOM}/bookings",
        json={"title": "Read only", "start": iso(at(1, 15)), "duration_min": 30},
    )
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After")
    assert google_booking.BOOKING_SCOPE in r.json()["error"]
    assert _live(sim) == []
