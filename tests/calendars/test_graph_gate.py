"""One per-mailbox gate for every Graph call to a mailbox: polls, bookings, subscriptions.

Outlook allows 4 concurrent requests per mailbox; a 429's Retry-After seen by one caller holds
back the others. In-process transports (httpx.MockTransport), a pinned monotonic clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from edge_agent.calendars.graph.booking import GraphBooking
from edge_agent.calendars.graph.client import GraphClient
from edge_agent.calendars.graph.errors import GraphUnavailable
from edge_agent.calendars.graph.gate import MailboxBusy, MailboxGates
from edge_agent.calendars.graph.push import PushManager

MB = "Room-A@contoso.com"
START = datetime(2026, 11, 23, 9, tzinfo=UTC)


class Tokens:
    async def token(self, *, renew: bool = False) -> str:
        return "tok"


class Clockwork:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def gates_on(clock: Clockwork) -> MailboxGates:
    return MailboxGates(monotonic=clock.monotonic, sleep=clock.sleep)


async def test_a_mailbox_has_four_slots_and_a_fifth_caller_waits() -> None:
    gates = MailboxGates()
    entered = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal entered
        async with gates.slot(MB):
            entered += 1
            await release.wait()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(call(), name=f"call-{i}") for i in range(5)]
        while entered < 4:
            await asyncio.sleep(0)
        assert gates.gate(MB).slots.locked() and entered == 4  # the fifth is queued
        assert gates.gate(MB.lower()) is gates.gate(MB)  # keyed case-insensitively
        release.set()
    assert entered == 5 and all(t.done() for t in tasks)


async def test_a_throttled_mailbox_waits_or_refuses_past_max_wait() -> None:
    clock = Clockwork()
    gates = gates_on(clock)
    gates.throttled(MB, 7)
    with pytest.raises(MailboxBusy):
        async with gates.slot(MB, max_wait_s=5):
            pass
    async with gates.slot(MB):
        pass
    assert clock.sleeps == [7]
    gates.forget(MB)
    assert len(gates) == 0


async def test_a_booking_429_holds_back_the_pollers_calls_to_that_mailbox() -> None:
    clock = Clockwork()
    gates = gates_on(clock)
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {}})
        if request.method == "POST":
            return httpx.Response(201, json={"id": "ev1"})
        return httpx.Response(200, json={"value": [], "@odata.deltaLink": _link(request)})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        poller = GraphClient(
            http, Tokens(), monotonic=clock.monotonic, sleep=clock.sleep, gates=gates
        )
        booker = GraphBooking(http, Tokens(), gates=poller.gates, sleep=clock.sleep)
        made = await booker.create_event(
            "room-a", MB, request_uuid="u1", title="t", start=START, end=START + timedelta(hours=1)
        )
        assert made["id"] == "ev1"
        assert clock.sleeps == [7]  # the booking's own retry after Retry-After
        assert gates.gate(MB).not_before == 1007.0  # the 429 (at 1000) is the mailbox's
        # ... so the poller's next call waits for what is left of a mailbox hold-back.
        gates.throttled(MB, 3)
        before = len(clock.sleeps)
        await poller.calendar_delta("room-a", MB, _bounds(), None)
        assert clock.sleeps[before:] == [3]


async def test_a_booking_fails_at_once_when_the_mailbox_is_throttled_for_long() -> None:
    clock = Clockwork()
    gates = gates_on(clock)
    gates.throttled(MB, 60)  # a poll's 429: Retry-After 60
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "x"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        booker = GraphBooking(http, Tokens(), gates=gates, sleep=clock.sleep)
        with pytest.raises(GraphUnavailable, match="throttled"):
            await booker.create_event(
                "room-a", MB, request_uuid="u", title="t", start=START, end=START
            )
    assert sent == []


async def test_creating_a_subscription_takes_a_slot_of_the_mailbox() -> None:
    clock = Clockwork()
    gates = gates_on(clock)
    gates.throttled(MB, 5)

    def answer(request: httpx.Request) -> httpx.Response:
        expires = (START + timedelta(days=2)).isoformat().replace("+00:00", "Z")
        return httpx.Response(201, json={"id": "sub1", "expirationDateTime": expires})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        push = PushManager(
            http,
            Tokens(),
            notification_url="https://agent.example.com",
            poke=lambda _room: None,
            gates=gates,
        )
        doc: dict[str, Any] = await push._call(  # noqa: SLF001 - the one request path
            "POST", "/subscriptions", "room-a", {"resource": "x"}, mailbox=MB
        )
    assert doc["id"] == "sub1" and clock.sleeps == [5]


def _bounds() -> Any:
    from edge_agent.bookings.window import WindowBounds

    return WindowBounds(START, START + timedelta(days=1))


def _link(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.host}/v1.0/users/{MB}/calendarView/delta?t=1"
