"""Calendar write paths read at most their cap of an answer (STYLE "bounded everything"):
bookings (Graph, Google) and Google watch calls go through the one bounded reader, so a huge
or endless body is never read whole; their HTTP-date Retry-After is read on the injected clock.
In-process transports; the stream counts what was read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from edge_agent.calendars.google import booking as google_booking
from edge_agent.calendars.google.booking import GoogleBooking
from edge_agent.calendars.google.errors import GoogleRequestError
from edge_agent.calendars.google.push import MAX_BODY as WATCH_MAX_BODY
from edge_agent.calendars.google.push import WatchManager
from edge_agent.calendars.graph import booking as graph_booking
from edge_agent.calendars.graph.booking import GraphBooking
from edge_agent.calendars.graph.errors import GraphRequestError

START = datetime(2026, 11, 23, 9, tzinfo=UTC)
CHUNK = 64 * 1024
HUGE = 64 * 1024 * 1024  # what a broken server would send: far past any cap


class Endless(httpx.AsyncByteStream):
    """A body of ``HUGE`` bytes, counting what the client pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < HUGE:
            self.pulled += CHUNK
            yield b" " * CHUNK


class Tokens:
    async def token(self, *, renew: bool = False) -> str:
        return "tok"


def transport(stream: Endless, status: int) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=stream, headers={"content-type": "application/json"})

    return httpx.MockTransport(answer)


async def test_graph_booking_reads_at_most_its_cap() -> None:
    stream = Endless()
    async with httpx.AsyncClient(transport=transport(stream, 201)) as http:
        with pytest.raises(GraphRequestError, match="no event id"):
            await GraphBooking(http, Tokens()).create_event(
                "r", "room@contoso.com", request_uuid="u", title="t", start=START, end=START
            )
    assert stream.pulled <= graph_booking.MAX_BODY + CHUNK


async def test_google_booking_reads_at_most_its_cap() -> None:
    stream = Endless()
    async with httpx.AsyncClient(transport=transport(stream, 200)) as http:
        with pytest.raises(GoogleRequestError, match="no event id"):
            await GoogleBooking(http, Tokens()).create_event(
                "r",
                "c_1@resource.calendar.google.com",
                request_uuid="0123456789abcdef0123456789abcdef",
                title="t",
                start=START,
                end=START + timedelta(hours=1),
            )
    assert stream.pulled <= google_booking.MAX_BODY + CHUNK


async def test_google_watch_call_reads_at_most_its_cap() -> None:
    stream = Endless()
    async with httpx.AsyncClient(transport=transport(stream, 200)) as http:
        push = WatchManager(
            http,
            Tokens(),
            calendar_url="https://www.googleapis.com/calendar/v3",
            notification_url="https://agent.example.com",
            poke=lambda _room: True,
        )
        with pytest.raises(ValueError, match="refused"):
            url = "https://www.googleapis.com/calendar/v3/channels/stop"
            await push._post(url, {})  # noqa: SLF001 - the one request path
    assert stream.pulled <= WATCH_MAX_BODY + CHUNK


# --------------------------------------------------------------------------- Retry-After dates

HTTP_DATE_NOW = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
RETRY_AT = "Mon, 23 Nov 2026 09:00:07 GMT"  # 7 s after HTTP_DATE_NOW


def throttled_then(status: int, body: dict[str, str]) -> httpx.MockTransport:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"Retry-After": RETRY_AT}, json={"error": {}})
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer)


async def test_booking_retry_after_dates_are_read_on_the_injected_clock() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def wall() -> float:
        return HTTP_DATE_NOW.timestamp()

    async with httpx.AsyncClient(transport=throttled_then(201, {"id": "e1"})) as http:
        graph = GraphBooking(http, Tokens(), sleep=sleep, wall=wall)
        await graph.create_event(
            "r", "room@contoso.com", request_uuid="u", title="t", start=START, end=START
        )
    async with httpx.AsyncClient(transport=throttled_then(200, {"id": "e2"})) as http:
        google = GoogleBooking(http, Tokens(), sleep=sleep, wall=wall)
        await google.create_event(
            "r",
            "c_1@resource.calendar.google.com",
            request_uuid="0123456789abcdef0123456789abcdef",
            title="t",
            start=START,
            end=START + timedelta(hours=1),
        )
    assert sleeps == [7.0, 7.0]
