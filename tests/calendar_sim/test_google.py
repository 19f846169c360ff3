"""The Google sibling: service-account tokens, resources, events.list sync, watch channels."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from graphsim_helpers import START, NotificationReceiver

from calendar_sim.google import GoogleSim, GoogleSimConfig

ROOM = "room-1@example.com"
SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly "
    "https://www.googleapis.com/auth/admin.directory.resource.calendar.readonly"
)


def assertion(
    key: dict[str, Any],
    *,
    sub: str | None = "admin@example.com",
    scope: str = SCOPES,
    signer: str | None = None,
) -> str:
    """What google-auth's service_account.Credentials signs (RFC 7523), with the real clock."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": key["client_email"],
        "scope": scope,
        "aud": key["token_uri"],
        "iat": now,
        "exp": now + 3600,
    }
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(
        claims,
        signer or key["private_key"],
        algorithm="RS256",
        headers={"kid": key["private_key_id"]},
    )


class Client:
    def __init__(self, sim: GoogleSim, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.tls = ssl.create_default_context(cadata=sim.cert_pem.decode())
        self.token = ""

    async def fetch_token(self, signed: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": signed}
        async with self.session.post(self.sim.token_uri, data=form, ssl=self.tls) as resp:
            body = await resp.json()
            if resp.status == 200:
                self.token = body["access_token"]
            return resp.status, body

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.session.request(
            method, self.sim.url + path, headers=headers, ssl=self.tls, **kw
        ) as resp:
            text = await resp.text()
            return (
                resp.status,
                dict(resp.headers),
                (await resp.json(content_type=None)) if text else None,
            )


@pytest.fixture
async def receiver() -> AsyncIterator[NotificationReceiver]:
    rx = NotificationReceiver()
    await rx.start()
    yield rx
    await rx.stop()


@pytest.fixture
async def google(receiver: NotificationReceiver) -> AsyncIterator[tuple[GoogleSim, Client]]:
    config = GoogleSimConfig(start=START, frozen=True, rooms=3, notification_ca_pem=receiver.ca_pem)
    async with GoogleSim(config) as sim, aiohttp.ClientSession() as session:
        client = Client(sim, session)
        status, body = await client.fetch_token(assertion(sim.key_file()))
        assert status == 200, body
        yield sim, client


def events_path(calendar: str = ROOM) -> str:
    return f"/calendar/v3/calendars/{calendar}/events"


async def full_then_sync(
    client: Client, query: dict[str, str]
) -> tuple[list[dict[str, Any]], str, int]:
    items: list[dict[str, Any]] = []
    pages = 0
    params = dict(query)
    while True:
        status, _, body = await client.call("GET", events_path(), params=params)
        assert status == 200, body
        pages += 1
        items += body["items"]
        assert not ("nextPageToken" in body and "nextSyncToken" in body)
        if "nextSyncToken" in body:
            return items, body["nextSyncToken"], pages
        params = {"pageToken": body["nextPageToken"], "maxResults": query.get("maxResults", "250")}


WINDOW = {
    "timeMin": "2026-11-23T00:00:00Z",
    "timeMax": "2026-11-30T00:00:00Z",
    "singleEvents": "true",
    "orderBy": "startTime",
}


async def test_token_grant_checks_signature_delegation_and_scope(
    google: tuple[GoogleSim, Client],
) -> None:
    sim, client = google
    key = sim.key_file()
    assert key["type"] == "service_account" and key["token_uri"] == sim.token_uri
    from device_sim.tls import make_self_signed

    _, other_key = make_self_signed(["x"])
    status, body = await client.fetch_token(assertion(key, signer=other_key.decode()))
    assert status == 400 and body["error"] == "invalid_grant"
    status, body = await client.fetch_token(assertion(key, sub="mallory@example.com"))
    assert status == 401 and body["error"] == "unauthorized_client"
    status, body = await client.fetch_token(
        assertion(key, scope="https://www.googleapis.com/auth/gmail.readonly")
    )
    assert status == 401 and body["error"] == "unauthorized_client"
    # a calendar-only token cannot read the directory
    status, _ = await client.fetch_token(
        assertion(key, scope="https://www.googleapis.com/auth/calendar.readonly")
    )
    assert status == 200
    status, _, body = await client.call(
        "GET", "/admin/directory/v1/customer/my_customer/resources/calendars"
    )
    assert status == 403 and body["error"]["errors"][0]["reason"] == "insufficientPermissions"
    sim.clock.advance(3600)
    status, _, body = await client.call("GET", events_path(), params=WINDOW)
    assert status == 401


async def test_resources_across_pages(google: tuple[GoogleSim, Client]) -> None:
    _, client = google
    emails: list[str] = []
    params = {"maxResults": "2"}
    while True:
        status, _, body = await client.call(
            "GET", "/admin/directory/v1/customer/my_customer/resources/calendars", params=params
        )
        assert status == 200
        emails += [r["resourceEmail"] for r in body["items"]]
        if "nextPageToken" not in body:
            break
        params = {"maxResults": "2", "pageToken": body["nextPageToken"]}
    assert emails == ["room-1@example.com", "room-2@example.com", "room-3@example.com"]


async def test_full_sync_then_sync_token_changes(google: tuple[GoogleSim, Client]) -> None:
    sim, client = google
    a = sim.add_event(ROOM, START.replace(hour=8), 30, "A")
    b = sim.add_event(ROOM, START.replace(hour=9), 30, "B")
    c = sim.add_event(ROOM, START.replace(hour=10), 30, "C")
    sim.add_event(ROOM, START + timedelta(days=30), 30, "Far away")
    allday = sim.add_all_day(ROOM, START.date() + timedelta(days=1), summary="Offsite")
    items, sync, pages = await full_then_sync(client, {**WINDOW, "maxResults": "2"})
    assert pages == 2 and [i["summary"] for i in items] == ["A", "B", "C", "Offsite"]
    assert items[3]["start"] == {"date": "2026-11-24"} and items[3]["end"] == {"date": "2026-11-25"}
    assert allday.id == items[3]["id"]

    status, _, body = await client.call("GET", events_path(), params={"syncToken": sync, **WINDOW})
    assert status == 400  # syncToken never goes with timeMin/timeMax

    sim.move_event(ROOM, b.id, START.replace(hour=14))
    sim.cancel_event(ROOM, c.id)
    far = sim.add_event(ROOM, START + timedelta(days=40), 30, "Outside, still reported")
    status, _, body = await client.call("GET", events_path(), params={"syncToken": sync})
    assert status == 200 and "nextSyncToken" in body
    by_id = {i["id"]: i for i in body["items"]}
    assert set(by_id) == {b.id, c.id, far.id} and a.id not in by_id
    assert by_id[c.id]["status"] == "cancelled"
    assert by_id[b.id]["start"]["dateTime"] == "2026-11-23T14:00:00.000Z"

    sim.expire_sync_tokens(ROOM)
    status, _, body = await client.call(
        "GET", events_path(), params={"syncToken": body["nextSyncToken"]}
    )
    assert status == 410 and body["error"]["errors"][0]["reason"] == "fullSyncRequired"
    # a full sync after that returns no tombstone for what was deleted meanwhile
    items, _, _ = await full_then_sync(client, WINDOW)
    assert c.id not in {i["id"] for i in items}


async def test_throttling_and_insert_with_a_client_id(google: tuple[GoogleSim, Client]) -> None:
    sim, client = google
    sim.fault("throttle", ROOM, count=1, retry_after=3)
    status, _headers, body = await client.call("GET", events_path(), params=WINDOW)
    assert status == 429 and body["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    sim.fault("quota", ROOM, count=1)
    status, _, body = await client.call("GET", events_path(), params=WINDOW)
    assert status == 403 and body["error"]["errors"][0]["domain"] == "usageLimits"
    status, _, _ = await client.call("GET", events_path(), params=WINDOW)
    assert status == 200
    key = sim.key_file()
    await client.fetch_token(assertion(key, scope="https://www.googleapis.com/auth/calendar"))
    event = {
        "id": "0f3c2a9e7b1d4c55",
        "summary": "Booked on the panel",
        "start": {"dateTime": "2026-11-23T12:00:00Z"},
        "end": {"dateTime": "2026-11-23T12:30:00Z"},
    }
    status, _, made = await client.call("POST", events_path(), json=event)
    assert status == 200 and made["id"] == event["id"]
    status, _, body = await client.call("POST", events_path(), json=event)
    assert status == 409 and body["error"]["errors"][0]["reason"] == "duplicate"
    assert len(sim.calendars[ROOM].events) == 1


async def test_watch_channel_sync_then_exists_then_stop(
    google: tuple[GoogleSim, Client], receiver: NotificationReceiver
) -> None:
    sim, client = google
    body = {"id": "chan-1", "type": "web_hook", "address": receiver.url("push"), "token": "tok-9"}
    status, _, channel = await client.call("POST", events_path() + "/watch", json=body)
    assert status == 200 and channel["id"] == "chan-1" and channel["resourceId"]
    status, _, err = await client.call("POST", events_path() + "/watch", json=body)
    assert status == 400 and err["error"]["errors"][0]["reason"] == "channelIdNotUnique"
    sim.add_event(ROOM, START.replace(hour=9), 30, "Pushed")
    sim.add_event("room-2@example.com", START.replace(hour=9), 30, "Not this channel")
    pushes = [(await receiver.notifications.get())[1]["headers"] for _ in range(2)]
    assert [p["X-Goog-Resource-State"] for p in pushes] == ["sync", "exists"]
    assert [p["X-Goog-Message-Number"] for p in pushes] == ["1", "2"]
    assert all(p["X-Goog-Channel-Token"] == "tok-9" for p in pushes)
    assert all(p["X-Goog-Channel-ID"] == "chan-1" for p in pushes)
    status, _, _ = await client.call(
        "POST",
        "/calendar/v3/channels/stop",
        json={"id": "chan-1", "resourceId": channel["resourceId"]},
    )
    assert status == 204
    status, _, _ = await client.call(
        "POST",
        "/calendar/v3/channels/stop",
        json={"id": "chan-1", "resourceId": channel["resourceId"]},
    )
    assert status == 404


async def test_series_are_expanded_with_single_events(google: tuple[GoogleSim, Client]) -> None:
    sim, client = google
    meet = "https://meet.google.com/abc-defg-hij"
    series = sim.add_event(
        ROOM, START.replace(hour=8), 15, "Stand-up", daily_count=3, hangout_link=meet
    )
    items, sync, _ = await full_then_sync(client, WINDOW)
    assert [i["recurringEventId"] for i in items] == [series.id] * 3
    assert len({i["id"] for i in items}) == 3
    assert items[1]["start"]["dateTime"] == "2026-11-24T08:00:00.000Z"
    assert items[0]["hangoutLink"] == meet
    status, _, body = await client.call(
        "GET", events_path(), params={"timeMin": WINDOW["timeMin"], "timeMax": WINDOW["timeMax"]}
    )
    assert [i["recurrence"] for i in body["items"]] == [["RRULE:FREQ=DAILY;COUNT=3"]]
    # the sync token remembers singleEvents: a moved series comes back as its instances
    sim.move_event(ROOM, series.id, START.replace(hour=9))
    status, _, body = await client.call("GET", events_path(), params={"syncToken": sync})
    assert status == 200 and len(body["items"]) == 3
    assert body["items"][0]["start"]["dateTime"] == "2026-11-23T09:00:00.000Z"


async def test_a_body_not_sent_as_json_is_refused(google: tuple[GoogleSim, Client]) -> None:
    """The reference's requests carry Content-Type: application/json; a body without it is
    refused (400 parseError), never parsed on a guess: an agent that forgot the header fails
    here as it would at Google."""
    sim, client = google
    await client.fetch_token(
        assertion(sim.key_file(), scope="https://www.googleapis.com/auth/calendar")
    )
    event = (
        b'{"id": "0f3c2a9e7b1d4c66", "start": {"dateTime": "2026-11-23T12:00:00Z"},'
        b' "end": {"dateTime": "2026-11-23T12:30:00Z"}}'
    )
    for headers in ({}, {"Content-Type": "text/plain"}):
        status, _, body = await client.call("POST", events_path(), data=event, headers=headers)
        assert status == 400, body
        assert body["error"]["errors"][0]["reason"] == "parseError"
    watch = b'{"id": "ch-1", "type": "web_hook", "address": "https://127.0.0.1:9/hook"}'
    status, _, body = await client.call("POST", events_path() + "/watch", data=watch)
    assert status == 400 and body["error"]["errors"][0]["reason"] == "parseError"
    assert sim.calendars[ROOM].events == {} and sim.channels.items == {}
    status, _, made = await client.call(
        "POST", events_path(), data=event, headers={"Content-Type": "application/json"}
    )
    assert status == 200 and made["id"] == "0f3c2a9e7b1d4c66"


async def test_the_per_user_quota_is_a_sliding_minute(google: tuple[GoogleSim, Client]) -> None:
    """600 a minute per user by default; here 3, on a clock the test moves."""
    from calendar_sim.google.quota import UsageQuota

    sim, client = google
    now = [100.0]
    sim.api.quota = UsageQuota(per_user=3, per_project=5, monotonic=lambda: now[0])
    for _ in range(3):
        status, _, _ = await client.call("GET", events_path(), params=WINDOW)
        assert status == 200
    status, _, body = await client.call("GET", events_path(), params=WINDOW)
    assert status == 403, body
    err = body["error"]["errors"][0]
    assert (err["domain"], err["reason"]) == ("usageLimits", "rateLimitExceeded")
    status, _, _ = await client.call(
        "GET", "/admin/directory/v1/customer/my_customer/resources/calendars"
    )
    assert status == 200  # the Directory is another API, with its own quota
    now[0] += 30.0
    status, _, _ = await client.call("GET", events_path(), params=WINDOW)
    assert status == 403  # half a minute later the three are still in the window
    now[0] += 30.5
    status, _, _ = await client.call("GET", events_path(), params=WINDOW)
    assert status == 200  # the first three slid out
    assert sim.api.quota.peak == {"admin@example.com": 3} and sim.api.quota.refused == 2
    # The project's quota (5 here) counts every request of every user in the same minute.
    sim.api.quota.per_user = 0
    for _ in range(4):  # with the one just admitted: five in the window
        assert (await client.call("GET", events_path(), params=WINDOW))[0] == 200
    status, _, body = await client.call("GET", events_path(), params=WINDOW)
    assert status == 429 and body["error"]["errors"][0]["reason"] == "rateLimitExceeded"
