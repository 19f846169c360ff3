"""GoogleClient against the HTTPS fake: directory paging, full sync pages and the sync token,
incremental with syncToken alone, 410, rate-limit backoff, permissions, and the rate limiter."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from edge_agent.backoff import Backoff
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.google.auth import ServiceAccountTokens
from edge_agent.calendars.google.client import GoogleClient
from edge_agent.calendars.google.errors import (
    CalendarNotFound,
    GoogleAuthError,
    GooglePermissionError,
    GoogleUnavailable,
    ResyncRequired,
)
from edge_agent.calendars.ratelimit import RequestRateLimiter
from tests.calendars.google.conftest import ADMIN
from tests.calendars.google.googlefake import (
    FakeGoogle,
    Reply,
    google_error,
    google_event,
    rate_limited,
)

ROOM = "c_1888abc@resource.calendar.google.com"
WINDOW = WindowBounds(
    datetime(2026, 11, 22, 23, tzinfo=UTC), datetime(2026, 11, 29, 23, tzinfo=UTC)
)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(
    gfake: FakeGoogle, http: httpx.AsyncClient, key_file: Path, ca_file: str, sleeps: Sleeps
) -> GoogleClient:
    tokens = ServiceAccountTokens(
        service_account_file=str(key_file), subject=ADMIN, ca_file=ca_file
    )
    return GoogleClient(
        http,
        tokens,
        subject=ADMIN,
        directory_url=gfake.base,
        calendar_url=gfake.calendar_url,
        max_results=2,
        sleep=sleeps,
        rng=random.Random(3),
    )


def ev(eid: str, start: str, end: str) -> dict[str, object]:
    return google_event(eid, f"2026-11-{start}+01:00", f"2026-11-{end}+01:00")


def seed(gfake: FakeGoogle) -> None:
    gfake.put(ROOM, ev("e1", "23T09:00:00", "23T10:00:00"))
    gfake.put(ROOM, ev("e2", "24T09:00:00", "24T10:00:00"))
    gfake.put(ROOM, ev("e3", "25T09:00:00", "25T10:00:00"))
    gfake.put(ROOM, ev("later", "30T09:00:00", "30T10:00:00"))  # past the window


async def test_directory_every_page(gfake: FakeGoogle, client: GoogleClient) -> None:
    gfake.rooms = [
        {
            "kind": "admin#directory#resources#calendars#CalendarResource",
            "resourceId": f"r{i}",
            "resourceName": f"Room {i}",
            "resourceEmail": f"c_{i}@resource.calendar.google.com",
        }
        for i in range(5)
    ] + [{"resourceId": "broken", "resourceName": "No mail"}]
    rooms = await client.list_rooms()
    assert [r.display_name for r in rooms] == [f"Room {i}" for i in range(5)]
    assert rooms[0].mailbox == "c_0@resource.calendar.google.com" and rooms[0].resource_id == "r0"
    seen = gfake.of("/resources/calendars")
    assert [s.query.get("pageToken") for s in seen] == [None, "2", "4"]
    assert seen[0].path == "/admin/directory/v1/customer/my_customer/resources/calendars"


async def test_full_sync_pages_then_sync_token_alone(
    gfake: FakeGoogle, client: GoogleClient
) -> None:
    seed(gfake)
    full = await client.list_events("room", ROOM, WINDOW, None)
    assert [v["id"] for v in full.values] == ["e1", "e2", "e3"] and full.pages == 2
    first, last = gfake.of("/events")
    for q in (first.query, last.query):
        assert q["timeMin"] == "2026-11-22T23:00:00.000Z"
        assert q["timeMax"] == "2026-11-29T23:00:00.000Z"
        assert q["singleEvents"] == "true" and q["maxResults"] == "2"
    assert "pageToken" not in first.query and last.query["pageToken"] == "2"

    gfake.put(ROOM, ev("e2", "24T11:00:00", "24T12:00:00"))
    gfake.cancel(ROOM, "e3")
    gfake.put(ROOM, ev("e4", "26T09:00:00", "26T10:00:00"))
    inc = await client.list_events("room", ROOM, WINDOW, full.sync_token)
    assert [(v["id"], v["status"]) for v in inc.values] == [
        ("e2", "confirmed"),
        ("e3", "cancelled"),
        ("e4", "confirmed"),
    ]
    assert inc.sync_token != full.sync_token
    for s in gfake.of("/events")[2:]:
        assert s.query["syncToken"] == full.sync_token
        for banned in ("timeMin", "timeMax", "updatedMin", "orderBy"):
            assert banned not in s.query
        assert s.query["singleEvents"] == "true"
    assert [s.query.get("pageToken") for s in gfake.of("/events")[2:]] == [None, "2"]


async def test_page_without_either_token_is_an_error(
    gfake: FakeGoogle, client: GoogleClient
) -> None:
    seed(gfake)
    gfake.script("/events", Reply(200, {"kind": "calendar#events", "items": []}))
    with pytest.raises(Exception, match="neither nextPageToken nor nextSyncToken"):
        await client.list_events("room", ROOM, WINDOW, None)


async def test_gone_sync_token_is_resync_required(gfake: FakeGoogle, client: GoogleClient) -> None:
    seed(gfake)
    full = await client.list_events("room", ROOM, WINDOW, None)
    gfake.forget_sync_tokens()
    with pytest.raises(ResyncRequired, match="fullSyncRequired"):
        await client.list_events("room", ROOM, WINDOW, full.sync_token)


@pytest.mark.parametrize(
    "status,reason",
    [(403, "rateLimitExceeded"), (403, "userRateLimitExceeded"), (429, "rateLimitExceeded")],
)
async def test_rate_limit_backs_off_exponentially(
    gfake: FakeGoogle, client: GoogleClient, sleeps: Sleeps, status: int, reason: str
) -> None:
    seed(gfake)
    gfake.script("/events", *[Reply(status, rate_limited(status, reason))] * 3)
    got = await client.list_events("room", ROOM, WINDOW, None)
    assert [v["id"] for v in got.values] == ["e1", "e2", "e3"]
    assert len(sleeps.delays) == 3
    # 1, 2, 4 s with +-20 % jitter: each step at least 1.5x the previous
    assert 0.8 <= sleeps.delays[0] <= 1.2
    assert sleeps.delays[1] >= 1.3 * sleeps.delays[0] and sleeps.delays[2] >= 1.3 * sleeps.delays[1]


async def test_rate_limit_honours_retry_after_and_gives_up(
    gfake: FakeGoogle, client: GoogleClient, sleeps: Sleeps
) -> None:
    seed(gfake)
    gfake.script("/events", Reply(429, rate_limited(429), retry_after="30"))
    await client.list_events("room", ROOM, WINDOW, None)
    assert sleeps.delays[0] == 30
    gfake.script("/events", *[Reply(403, rate_limited())] * 6)
    with pytest.raises(GoogleUnavailable, match="rate-limited .rateLimitExceeded. after 6"):
        await client.list_events("room", ROOM, WINDOW, None)


async def test_forbidden_is_a_permission_error_not_a_retry(
    gfake: FakeGoogle, client: GoogleClient, sleeps: Sleeps
) -> None:
    seed(gfake)
    gfake.script("/events", Reply(403, google_error(403, "forbidden", "Forbidden")))
    with pytest.raises(GooglePermissionError, match="share the resource calendar") as info:
        await client.list_events("room", ROOM, WINDOW, None)
    assert info.value.scope.endswith("/auth/calendar.readonly") and sleeps.delays == []
    gfake.script("/resources", Reply(403, google_error(403, "forbidden", "Not Authorized")))
    with pytest.raises(GooglePermissionError, match="discover_rooms = false"):
        await client.list_rooms()


async def test_unknown_calendar_and_dead_token(gfake: FakeGoogle, client: GoogleClient) -> None:
    with pytest.raises(CalendarNotFound, match="no calendar"):
        await client.list_events("room", "nobody@resource.calendar.google.com", WINDOW, None)
    seed(gfake)
    gfake.script("/events", Reply(401, google_error(401, "authError", "Invalid Credentials")))
    assert len((await client.list_events("room", ROOM, WINDOW, None)).values) == 3  # renewed
    gfake.script("/events", *[Reply(401, google_error(401, "authError", "Invalid"))] * 2)
    with pytest.raises(GoogleAuthError, match="freshly issued token"):
        await client.list_events("room", ROOM, WINDOW, None)


async def test_server_errors_are_retried(
    gfake: FakeGoogle, client: GoogleClient, sleeps: Sleeps
) -> None:
    seed(gfake)
    gfake.script("/events", Reply(503, google_error(503, "backendError", "Backend Error")))
    assert len((await client.list_events("room", ROOM, WINDOW, None)).values) == 3
    assert len(sleeps.delays) == 1


async def test_every_request_takes_a_slot_of_the_subjects_limiter(
    gfake: FakeGoogle, http: httpx.AsyncClient, key_file: Path, ca_file: str
) -> None:
    seed(gfake)
    clock, waits = Monotonic(), Sleeps()
    limiter = RequestRateLimiter(per_minute=60, burst=2, monotonic=clock, sleep=waits)
    tokens = ServiceAccountTokens(
        service_account_file=str(key_file), subject=ADMIN, ca_file=ca_file
    )
    client = GoogleClient(
        http,
        tokens,
        subject=ADMIN,
        directory_url=gfake.base,
        calendar_url=gfake.calendar_url,
        max_results=1,
        limiter=limiter,
    )
    await client.list_events("room", ROOM, WINDOW, None)  # 3 pages at one instant
    assert len(gfake.of("/events")) == 3
    assert waits.delays == [1.0]  # two from the burst, the third a second later
    clock.t = 10.0  # the bucket refilled (to its burst of 2)
    await client.list_events("room", ROOM, WINDOW, None)
    assert waits.delays == [1.0, 1.0]


def test_backoff_schedule_is_the_error_guides() -> None:
    from edge_agent.calendars.google.client import RETRY_BACKOFF

    assert RETRY_BACKOFF == Backoff(initial=1.0, maximum=64.0)
