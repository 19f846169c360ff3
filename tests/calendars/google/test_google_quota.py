"""The per-user request quota, planned: the poll interval the rooms fit in, the poller that
polls no faster, and a booking insert that takes a slot of the same limiter."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.calendars.google.auth import CALENDAR_WRITE_SCOPE, ServiceAccountTokens
from edge_agent.calendars.google.booking import GoogleBooking
from edge_agent.calendars.google.client import GoogleClient
from edge_agent.calendars.google.poller import GooglePoller, QuotaPlan
from edge_agent.calendars.poller import CalendarRoom
from edge_agent.calendars.ratelimit import RequestRateLimiter, quota_poll_interval_s
from tests.calendars.support import MemoryStore, PinnedClock

ADMIN = "admin@example.com"
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")


def test_the_interval_2000_rooms_fit_in_at_the_default_rate() -> None:
    assert quota_poll_interval_s(2000, 500.0) == pytest.approx(2000 * 60 / 450)  # 266.7 s
    assert quota_poll_interval_s(0, 500.0) == 0.0
    assert quota_poll_interval_s(100, 500.0, requests_per_round=2, share=1.0) == 24.0
    with pytest.raises(ValueError):
        quota_poll_interval_s(10, 0.0)
    with pytest.raises(ValueError):
        quota_poll_interval_s(10, 500.0, share=0.0)


def test_the_plan_stretches_only_past_what_the_rate_allows() -> None:
    plan = QuotaPlan(500.0, 60.0, ADMIN)
    plan.set_rooms(300)  # 300 a minute: under the 450 planned
    assert plan.interval_s(60.0) == 60.0
    plan.set_rooms(2000)
    assert plan.interval_s(60.0) == pytest.approx(266.67, abs=0.01)
    assert plan.interval_s(600.0) == 600.0  # push's 10x is slower still: kept
    plan.set_rooms(10)
    assert plan.interval_s(60.0) == 60.0


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


class Frozen:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def sim() -> AsyncIterator[GoogleSim]:
    async with GoogleSim(GoogleSimConfig(start=START, frozen=True, rooms=2)) as running:
        yield running


@pytest.fixture
async def http(sim: GoogleSim, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "ca.pem").write_bytes(sim.cert_pem)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with httpx.AsyncClient(verify=ctx) as client:
        yield client


def tokens(sim: GoogleSim, tmp_path: Path, **kw: Any) -> ServiceAccountTokens:
    key = tmp_path / "key.json"
    key.write_text(json.dumps(sim.key_file()))
    (tmp_path / "ca.pem").write_bytes(sim.cert_pem)
    return ServiceAccountTokens(
        service_account_file=str(key), subject=ADMIN, ca_file=str(tmp_path / "ca.pem"), **kw
    )


async def test_the_poller_asks_for_the_planned_interval_for_its_running_rooms(
    sim: GoogleSim, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    limiter = RequestRateLimiter(per_minute=60.0)  # 54 a minute planned for polling
    client = GoogleClient(
        http,
        tokens(sim, tmp_path),
        subject=ADMIN,
        directory_url=sim.directory_url,
        calendar_url=sim.calendar_url,
        limiter=limiter,
    )
    told: list[int] = []
    rooms = [CalendarRoom(f"r{k}", f"r{k}@example.com", UTC_ZONE) for k in range(108)]
    poller = GooglePoller(
        client,
        MemoryStore(),
        rooms=rooms,
        discover=False,
        default_zone=UTC_ZONE,
        poll_interval_s=60.0,
        clock=PinnedClock(START),
        interval_for=lambda room, base: base * (10.0 if room == "r0" else 1.0),
        on_rooms=lambda running: told.append(len(running)),
    )
    assert client.limiter is limiter is poller.limiter and poller.quota_plan.per_minute == 60.0
    poller.quota_plan.set_rooms(len(rooms))  # what the poller's on_rooms does at start
    # 108 rooms at 54/min: every 120 s, not 60; the caller's push stretch still applies.
    assert poller.quota_plan.interval_s(60.0) == pytest.approx(120.0)
    assert poller._interval_for is not None
    assert poller._interval_for("r1", 60.0) == pytest.approx(120.0)
    assert poller._interval_for("r0", 60.0) == 600.0
    assert poller._on_rooms is not None
    poller._on_rooms({r.room_id: r for r in rooms[:10]})
    assert told == [10] and poller._interval_for("r1", 60.0) == 60.0


async def test_a_booking_insert_takes_a_slot_of_the_shared_limiter(
    sim: GoogleSim, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    waits, now = Sleeps(), Frozen()
    shared = RequestRateLimiter(per_minute=60, burst=1, monotonic=now, sleep=waits)
    await shared.acquire(ADMIN)  # a poll just took the saved-up slot
    booking = GoogleBooking(
        http,
        tokens(sim, tmp_path, scopes=(CALENDAR_WRITE_SCOPE,)),
        calendar_url=sim.calendar_url,
        limiter=shared,
        subject=ADMIN,
    )
    start = START + timedelta(hours=3)
    made = await booking.create_event(
        "room-1",
        "room-1@example.com",
        request_uuid="6f1c1f0e-3a7b-4c1e-9d7e-0a1b2c3d4e5f",
        title="Booked",
        start=start,
        end=start + timedelta(minutes=30),
    )
    assert made["id"] == "6f1c1f0e3a7b4c1e9d7e0a1b2c3d4e5f"
    assert waits.delays == [1.0]  # it waited for the next slot instead of going over
