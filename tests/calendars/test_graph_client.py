"""GraphClient against a real HTTPS fake of Graph on 127.0.0.1 (tests/calendars/graphfake.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
import structlog

from edge_agent.backoff import Backoff
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.graph.auth import ClientCredentials
from edge_agent.calendars.graph.client import PLACES_TOP, GraphClient
from edge_agent.calendars.graph.errors import (
    GraphAuthError,
    GraphPermissionError,
    GraphRequestError,
    GraphUnavailable,
    MailboxNotFound,
    ResyncRequired,
)
from tests.calendars.graphfake import FakeGraph, Reply, graph_event

MB = "Room-B@contoso.com"
BOUNDS = WindowBounds(
    datetime(2026, 11, 22, 23, tzinfo=UTC), datetime(2026, 11, 29, 23, tzinfo=UTC)
)


class Sleeps:
    """The client's sleep: records what it was asked to wait, without waiting the wall clock."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(fake: FakeGraph, http: httpx.AsyncClient, ca_file: str, sleeps: Sleeps) -> GraphClient:
    tokens = ClientCredentials(
        tenant_id=fake.tenant,
        client_id="app-1",
        secret="s3cret",
        authority_url=fake.authority_url,
        ca_file=ca_file,
    )
    return GraphClient(
        http,
        tokens,
        graph_url=fake.graph_url,
        max_page_size=2,
        sleep=sleeps,
        backoff=Backoff(initial=0.5, maximum=4.0, jitter=0.0),
    )


def seed(fake: FakeGraph, n: int = 5) -> None:
    for i in range(n):
        fake.put(
            MB,
            graph_event(f"e{i}", f"2026-11-23T{8 + i:02d}:00:00", f"2026-11-23T{9 + i:02d}:00:00"),
        )


# --------------------------------------------------------------------------- places


async def test_list_rooms_follows_every_next_link(fake: FakeGraph, client: GraphClient) -> None:
    fake.rooms = [
        {"id": f"p{i}", "displayName": f"Room {i}", "emailAddress": f"Room-{i}@contoso.com"}
        for i in range(5)
    ] + [{"id": "bad", "displayName": "no mail"}]
    rooms = await client.list_rooms()
    assert [r.mailbox for r in rooms] == [f"Room-{i}@contoso.com" for i in range(5)]
    assert rooms[0].display_name == "Room 0" and rooms[0].place_id == "p0"
    assert len(fake.of("/places/")) == 3


async def test_list_rooms_asks_for_the_largest_page(fake: FakeGraph, client: GraphClient) -> None:
    fake.rooms = [{"id": "p0", "emailAddress": "Room-0@contoso.com"}]
    with structlog.testing.capture_logs() as logs:
        await client.list_rooms()
    assert fake.of("/places/")[0].query.get("$top") == str(PLACES_TOP)
    assert not [e for e in logs if e["log_level"] == "warning"]


async def test_a_full_room_page_without_next_link_is_a_warning(
    fake: FakeGraph, client: GraphClient
) -> None:
    # Graph's default page is 100, and tenants report its nextLink missing (Q&A 1021419).
    fake.rooms = [{"id": f"p{i}", "emailAddress": f"Room-{i}@contoso.com"} for i in range(100)]
    fake.rooms_page = 100
    with structlog.testing.capture_logs() as logs:
        rooms = await client.list_rooms()
    assert len(rooms) == 100
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and "no @odata.nextLink" in warned[0]["event"]


async def test_places_403_names_place_read_all(fake: FakeGraph, client: GraphClient) -> None:
    fake.script("/places/", Reply(403, {"error": {"code": "ErrorAccessDenied", "message": "no"}}))
    with pytest.raises(GraphPermissionError) as info:
        await client.list_rooms()
    assert info.value.permission == "Place.Read.All"
    assert "Place.Read.All" in str(info.value) and "directory" in str(info.value)


# --------------------------------------------------------------------------- calendar delta


async def test_full_round_follows_the_chain_to_the_delta_link(
    fake: FakeGraph, client: GraphClient
) -> None:
    seed(fake, 5)
    fake.put(MB, graph_event("later", "2026-12-02T08:00:00", "2026-12-02T09:00:00"))
    r = await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert [v["id"] for v in r.values] == [f"e{i}" for i in range(5)]
    assert r.pages == 3 and "$deltatoken=" in r.delta_link
    first, *rest = fake.of("/calendarView/delta")
    assert first.query["startDateTime"] == "2026-11-22T23:00:00.000Z"
    assert first.query["endDateTime"] == "2026-11-29T23:00:00.000Z"
    for seen in [first, *rest]:
        assert 'outlook.timezone="UTC"' in seen.headers["Prefer"]
        assert "odata.maxpagesize=2" in seen.headers["Prefer"]
    assert all("$skiptoken" in s.query for s in rest)


async def test_links_on_graphs_own_host_are_followed_through_a_reverse_proxy_graph_url(
    fake: FakeGraph, client: GraphClient
) -> None:
    # graph_url is a proxy (the fake); Graph's links name graph.microsoft.com.
    fake.link_url = "https://graph.microsoft.com/v1.0"
    seed(fake, 5)
    r = await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert [v["id"] for v in r.values] == [f"e{i}" for i in range(5)] and r.pages == 3
    assert r.delta_link.startswith(fake.graph_url + "/users/") and "$deltatoken=" in r.delta_link
    fake.delete(MB, "e1")
    again = await client.calendar_delta("room-b", MB, BOUNDS, r.delta_link)
    assert [v["id"] for v in again.values] == ["e1"]
    fake.rooms = [{"id": f"p{i}", "emailAddress": f"Room-{i}@contoso.com"} for i in range(5)]
    assert len(await client.list_rooms()) == 5


@pytest.mark.parametrize(
    "link_url",
    [
        "https://attacker.example.com/v1.0",  # not Graph: the token must not go there
        "https://graph.microsoft.com/beta",  # Graph, but not graph_url's version
        "http://graph.microsoft.com/v1.0",  # not https
        "https://graph.microsoft.com:8443/v1.0",
    ],
)
async def test_other_links_are_refused(fake: FakeGraph, client: GraphClient, link_url: str) -> None:
    fake.link_url = link_url
    seed(fake, 5)
    with pytest.raises(GraphRequestError, match="refused so the token is not sent there"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert len(fake.of("/calendarView/delta")) == 1


async def test_resume_from_delta_link_gives_changes_and_removed(
    fake: FakeGraph, client: GraphClient
) -> None:
    seed(fake, 3)
    r1 = await client.calendar_delta("room-b", MB, BOUNDS, None)
    fake.delete(MB, "e1")
    fake.put(MB, graph_event("e2", "2026-11-24T10:00:00", "2026-11-24T11:00:00"))
    r2 = await client.calendar_delta("room-b", MB, BOUNDS, r1.delta_link)
    assert [(v["id"], "@removed" in v) for v in r2.values] == [("e1", True), ("e2", False)]
    assert r2.values[0]["@removed"] == {"reason": "deleted"}
    r3 = await client.calendar_delta("room-b", MB, BOUNDS, r2.delta_link)
    assert r3.values == []


@pytest.mark.parametrize(
    "reply",
    [
        Reply(410, {"error": {"code": "SyncStateNotFound", "message": "gone"}}),
        Reply(400, {"error": {"code": "syncStateNotFound", "message": "expired"}}),
    ],
)
async def test_lost_round_raises_resync_required(
    fake: FakeGraph, client: GraphClient, reply: Reply
) -> None:
    seed(fake, 1)
    r1 = await client.calendar_delta("room-b", MB, BOUNDS, None)
    fake.script("deltatoken", reply)
    with pytest.raises(ResyncRequired, match="room-b"):
        await client.calendar_delta("room-b", MB, BOUNDS, r1.delta_link)


async def test_429_waits_retry_after_then_succeeds(
    fake: FakeGraph, client: GraphClient, sleeps: Sleeps
) -> None:
    seed(fake, 1)
    fake.script("calendarView", Reply(429, {"error": {"code": "ApplicationThrottled"}}, "7"))
    r = await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert [v["id"] for v in r.values] == ["e0"]
    assert len(sleeps.delays) == 1 and sleeps.delays[0] >= 6.0  # ~7 s on the monotonic clock
    assert len(fake.of("/calendarView/delta")) == 2


async def test_throttling_is_per_mailbox(
    fake: FakeGraph, client: GraphClient, sleeps: Sleeps
) -> None:
    seed(fake, 1)
    fake.put("other@contoso.com", graph_event("o1", "2026-11-23T08:00:00", "2026-11-23T09:00:00"))
    fake.script("Room-B", Reply(429, {}, "30"))
    await client.calendar_delta("room-b", MB, BOUNDS, None)
    before = len(sleeps.delays)
    await client.calendar_delta("other", "other@contoso.com", BOUNDS, None)
    assert len(sleeps.delays) == before  # the other mailbox did not wait


async def test_503_retried_with_backoff_then_gives_up_clearly(
    fake: FakeGraph, client: GraphClient, sleeps: Sleeps
) -> None:
    seed(fake, 1)
    fake.script("calendarView", Reply(503, {}), Reply(503, {}))
    r = await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert r.values and sleeps.delays == [0.5, 1.0]
    fake.script("calendarView", *[Reply(503, {}) for _ in range(5)])
    with pytest.raises(GraphUnavailable, match="room-b: Graph HTTP 503 after 5 attempts"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)


async def test_401_renews_the_token_once(fake: FakeGraph, client: GraphClient) -> None:
    seed(fake, 1)
    await client.calendar_delta("room-b", MB, BOUNDS, None)
    fake.revoke_tokens()  # the cached token expired early (revoked, clock skew)
    r = await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert r.values
    assert len(fake.of("/oauth2/v2.0/token")) == 2


async def test_401_twice_fails_with_advice(fake: FakeGraph, client: GraphClient) -> None:
    seed(fake, 1)
    fake.script("calendarView", Reply(401, {}), Reply(401, {}), Reply(401, {}))
    with pytest.raises(GraphAuthError, match="room-b: .*admin consent"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)
    assert len(fake.of("/calendarView/delta")) == 2  # renewed once, not in a loop
    assert len(fake.of("/oauth2/v2.0/token")) == 2


async def test_calendar_403_names_permission_policy_and_room(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.script("calendarView", Reply(403, {"error": {"code": "ErrorAccessDenied"}}))
    with pytest.raises(GraphPermissionError) as info:
        await client.calendar_delta("room-b", MB, BOUNDS, None)
    msg = str(info.value)
    assert msg.startswith("room-b: ") and MB in msg
    assert "Calendars.Read" in msg and "application access policy" in msg
    assert info.value.permission == "Calendars.Read"


async def test_404_mailbox_not_found(fake: FakeGraph, client: GraphClient) -> None:
    fake.script("calendarView", Reply(404, {"error": {"code": "ErrorInvalidUser"}}))
    with pytest.raises(MailboxNotFound, match="room-b: no calendar for Room-B@contoso.com"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)


async def test_at_most_four_requests_in_flight_per_mailbox(
    fake: FakeGraph, client: GraphClient
) -> None:
    seed(fake, 1)
    await client.calendar_delta("room-b", MB, BOUNDS, None)  # token cached: no auth in the race
    fake.hold.clear()
    calls = [
        asyncio.create_task(client.calendar_delta("room-b", MB, BOUNDS, None)) for _ in range(10)
    ]
    await asyncio.wait_for(fake.wait_in_flight(MB, 4), 10)
    fake.hold.set()
    await asyncio.gather(*calls)
    assert fake.max_in_flight[MB.lower()] == 4


async def test_next_link_to_another_host_is_refused(fake: FakeGraph, client: GraphClient) -> None:
    fake.script(
        "calendarView", Reply(200, {"value": [], "@odata.nextLink": "https://evil.example/x"})
    )
    with pytest.raises(GraphRequestError, match="evil.example.*token is not sent"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)


async def test_oversized_answer_is_refused(
    fake: FakeGraph, http: httpx.AsyncClient, ca_file: str
) -> None:
    tokens = ClientCredentials(
        tenant_id=fake.tenant,
        client_id="app-1",
        secret="s3cret",
        authority_url=fake.authority_url,
        ca_file=ca_file,
    )
    small = GraphClient(http, tokens, graph_url=fake.graph_url, max_body_bytes=300)
    seed(fake, 5)
    with pytest.raises(GraphRequestError, match="above 300 bytes"):
        await small.calendar_delta("room-b", MB, BOUNDS, None)


async def test_page_without_any_link_is_an_error(fake: FakeGraph, client: GraphClient) -> None:
    fake.script("calendarView", Reply(200, {"value": []}))
    with pytest.raises(GraphRequestError, match="neither @odata.nextLink nor @odata.deltaLink"):
        await client.calendar_delta("room-b", MB, BOUNDS, None)


async def test_retry_after_as_http_date_and_giving_up_on_429(
    fake: FakeGraph, http: httpx.AsyncClient, ca_file: str, sleeps: Sleeps
) -> None:
    tokens = ClientCredentials(
        tenant_id=fake.tenant,
        client_id="app-1",
        secret="s3cret",
        authority_url=fake.authority_url,
        ca_file=ca_file,
    )
    wall = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC).timestamp()
    c = GraphClient(
        http, tokens, graph_url=fake.graph_url, sleep=sleeps, wall=lambda: wall, max_attempts=3
    )
    seed(fake, 1)
    fake.script("calendarView", Reply(429, {}, "Mon, 23 Nov 2026 09:00:20 GMT"))
    await c.calendar_delta("room-b", MB, BOUNDS, None)
    assert len(sleeps.delays) == 1 and 19.0 <= sleeps.delays[0] <= 20.0
    fake.script("calendarView", *[Reply(429, {}, "1") for _ in range(3)])
    with pytest.raises(GraphUnavailable, match=r"room-b: Graph throttled \(HTTP 429\) after 3"):
        await c.calendar_delta("room-b", MB, BOUNDS, None)


class StaticToken:
    async def token(self, *, renew: bool = False) -> str:
        return "t"


async def test_unreachable_graph_is_retried_then_reported(
    http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    c = GraphClient(
        http,
        StaticToken(),
        graph_url="https://127.0.0.1:9/v1.0",
        sleep=sleeps,
        max_attempts=3,
        backoff=Backoff(initial=0.5, maximum=4.0, jitter=0.0),
    )
    with pytest.raises(GraphUnavailable, match=r"room-b: Graph unreachable \(ConnectError"):
        await c.calendar_delta("room-b", MB, BOUNDS, None)
    assert sleeps.delays == [0.5, 1.0]
