"""The agent's Google edge against the Google simulator, on the real wire shape: recurring
series (instances share the series' iCalUID; a cancelled series is one item) and discovery
(the Directory lists equipment with the rooms)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from edge_agent.calendars.google.auth import ServiceAccountTokens
from edge_agent.calendars.google.client import GoogleClient
from edge_agent.calendars.google.events import to_delta_items
from edge_agent.calendars.sync import SyncResult, SyncState, apply_round, plan_round

START = datetime(2026, 11, 23, 6, tzinfo=UTC)
UTCZ = ZoneInfo("UTC")


@pytest.fixture
async def sim_client(tmp_path: Path) -> AsyncIterator[tuple[GoogleSim, GoogleClient, str]]:
    sim = GoogleSim(GoogleSimConfig(start=START, frozen=True, rooms=1))
    await sim.start()
    try:
        key, ca = tmp_path / "key.json", tmp_path / "ca.pem"
        key.write_text(json.dumps(sim.key_file()))
        ca.write_bytes(sim.cert_pem)
        tokens = ServiceAccountTokens(
            service_account_file=str(key), subject=sim.config.admin, ca_file=str(ca)
        )
        verify = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(verify=verify) as http:
            client = GoogleClient(
                http,
                tokens,
                subject=sim.config.admin,
                directory_url=sim.directory_url,
                calendar_url=sim.calendar_url,
            )
            yield sim, client, sorted(sim.calendars)[0]
    finally:
        await sim.stop()


async def round_(
    client: GoogleClient, room: str, state: SyncState, now: datetime
) -> SyncResult:
    plan = plan_round(state, now, UTCZ, 7)
    got = await client.list_events("r", room, plan.bounds, plan.delta_link)
    items, _ = to_delta_items(got.values, UTCZ)
    return apply_round(state, plan, items, got.sync_token, now)


async def test_next_occurrence_at_the_midnight_roll_is_created_not_moved(
    sim_client: tuple[GoogleSim, GoogleClient, str],
) -> None:
    sim, client, room = sim_client
    series = sim.add_event(room, START.replace(hour=9), 30, "Stand-up", daily_count=10)
    first = await round_(client, room, SyncState(), START)
    assert {b.meeting_id for b in first.state.bookings.values()} == {f"{series.id}@google.com"}
    tomorrow = START + timedelta(days=1)
    r = await round_(client, room, first.state, tomorrow)
    assert [(c.type, c.booking.id) for c in r.changes] == [
        ("booking.created", f"{series.id}_20261130T090000Z")
    ]


async def test_cancelling_a_series_deletes_every_instance_in_the_window(
    sim_client: tuple[GoogleSim, GoogleClient, str],
) -> None:
    sim, client, room = sim_client
    series = sim.add_event(room, START.replace(hour=9), 30, "Stand-up", daily_count=5)
    single = sim.add_event(room, START.replace(hour=12), 30, "One-off")
    first = await round_(client, room, SyncState(), START)
    assert len(first.state.bookings) == 6
    sim.cancel_event(room, series.id)
    r = await round_(client, room, first.state, START)
    assert [c.type for c in r.changes] == ["booking.deleted"] * 5
    assert set(r.state.bookings) == {single.id}


async def test_discovery_lists_only_conference_rooms(
    sim_client: tuple[GoogleSim, GoogleClient, str],
) -> None:
    sim, client, room = sim_client
    sim.add_room("projector-1@example.com", "Projector", category="OTHER", resource_type="Beamer")
    sim.add_room("car-1@example.com", "Pool car", category="OTHER", resource_type="Car")
    sim.add_room("legacy-1@example.com", "Old room", category="CATEGORY_UNKNOWN")
    rooms = await client.list_rooms()
    assert sorted(r.mailbox for r in rooms) == sorted([room, "legacy-1@example.com"])
