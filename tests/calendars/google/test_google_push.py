"""Google watch channels against the Google simulator: every events.watch and channels.stop
takes a slot of the subject's request limiter (the quota the poller's requests count against)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.calendars.google.auth import ServiceAccountTokens
from edge_agent.calendars.google.push import WatchManager
from edge_agent.calendars.ratelimit import RequestRateLimiter

ADMIN = "admin@example.com"
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Pinned:
    def now(self) -> datetime:
        return START

    def monotonic(self) -> float:
        return 0.0


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


@pytest.fixture
async def sim() -> AsyncIterator[GoogleSim]:
    async with GoogleSim(GoogleSimConfig(start=START, frozen=True, rooms=3)) as running:
        yield running


@pytest.fixture
async def http(sim: GoogleSim, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
        yield client


def closed_port() -> int:
    """A loopback port nobody listens on: the simulator's "sync" message is refused there
    (nothing leaves 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tokens(sim: GoogleSim, tmp_path: Path) -> ServiceAccountTokens:
    key = tmp_path / "key.json"
    key.write_text(json.dumps(sim.key_file()))
    (tmp_path / "ca.pem").write_bytes(sim.cert_pem)
    return ServiceAccountTokens(
        service_account_file=str(key), subject=ADMIN, ca_file=str(tmp_path / "ca.pem")
    )


async def test_watch_and_stop_take_slots_of_the_subjects_limiter(
    sim: GoogleSim, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    clock, waits = Monotonic(), Sleeps()
    limiter = RequestRateLimiter(per_minute=60, burst=2, monotonic=clock, sleep=waits)
    watch = WatchManager(
        http,
        tokens(sim, tmp_path),
        calendar_url=sim.calendar_url,
        notification_url=f"https://127.0.0.1:{closed_port()}",
        poke=lambda room: True,
        clock=Pinned(),  # the simulator's pinned time: channel expiry is read on it
        limiter=limiter,
        subject=ADMIN,
    )
    rooms = {f"room-{k}": f"room-{k}@example.com" for k in (1, 2, 3)}
    for room, calendar in rooms.items():
        await watch._open(room, calendar)  # what run() does per room, without its loop
    assert len(sim.channels.items) == 3
    # Three watches at one instant: two from the burst, the third waited a second.
    assert waits.delays == [1.0]
    assert all(watch.healthy(r) for r in rooms)
    await watch.stop()
    assert sim.channels.items == {}  # every channel stopped, each stop through the limiter
    assert waits.delays == [1.0, 2.0, 3.0, 4.0]  # in debt: each stop one more second out
    assert sim.api.requests["watch"] == 3 and sim.api.requests["channels"] == 3


async def test_a_throttled_bucket_delays_the_watch_instead_of_meeting_the_quota(
    sim: GoogleSim, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The limiter the poller drained is the one the watch waits on: shared, not a second
    budget on top (which is how 2,000 rooms would have gone past 600 a minute)."""
    clock, waits = Monotonic(), Sleeps()
    shared = RequestRateLimiter(per_minute=60, burst=1, monotonic=clock, sleep=waits)
    await shared.acquire(ADMIN)  # the poller's request took the only saved-up slot
    watch = WatchManager(
        http,
        tokens(sim, tmp_path),
        calendar_url=sim.calendar_url,
        notification_url=f"https://127.0.0.1:{closed_port()}",
        poke=lambda room: True,
        clock=Pinned(),  # the simulator's pinned time: channel expiry is read on it
        limiter=shared,
        subject=ADMIN,
    )
    await watch._open("room-1", "room-1@example.com")
    assert waits.delays == [1.0]
    assert watch.healthy("room-1")
