"""calendarView/delta as Microsoft documents it: rounds, next and delta links, @removed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
from graphsim_helpers import START, GraphClient, make_config

from calendar_sim.graph import GraphSim, Recurrence

ROOM = "room-1@contoso.com"
WINDOW_START = START.replace(hour=0)  # 2026-11-23T00:00Z
WINDOW_END = WINDOW_START + timedelta(days=7)
UTC_PREFER = 'outlook.timezone="UTC"'


def first_url(mailbox: str = ROOM) -> str:
    query = urlencode(
        {
            "startDateTime": WINDOW_START.isoformat().replace("+00:00", "Z"),
            "endDateTime": WINDOW_END.isoformat().replace("+00:00", "Z"),
        }
    )
    return f"/users/{mailbox}/calendarView/delta?{query}"


async def round_of(
    client: GraphClient, url: str, page: int | None = None, prefer: str = UTC_PREFER
) -> tuple[list[dict[str, Any]], str, int]:
    """(items, delta link, pages) of one whole round from ``url``."""
    headers = {"Prefer": prefer if page is None else f"{prefer}, odata.maxpagesize={page}"}
    items: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while True:
        assert next_url is not None
        status, _, body = await client.get(next_url, headers=headers)
        assert status == 200, body
        pages += 1
        items += body["value"]
        assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
        if "@odata.deltaLink" in body:
            return items, body["@odata.deltaLink"], pages
        next_url = body["@odata.nextLink"]


async def test_initial_round_pages_then_ends_with_a_delta_link(
    sim: GraphSim, client: GraphClient
) -> None:
    for hour in range(8, 13):
        sim.add_event(ROOM, START.replace(hour=hour), 30, f"Meeting {hour}")
    sim.add_event(ROOM, WINDOW_END + timedelta(hours=1), 30, "Outside the window")
    status, headers, body = await client.get(first_url(), headers={"Prefer": "odata.maxpagesize=2"})
    assert status == 200 and len(body["value"]) == 2 and "@odata.nextLink" in body
    assert headers["Preference-Applied"] == "odata.maxpagesize=2"
    assert "$skiptoken=" in body["@odata.nextLink"]
    items, delta_link, pages = await round_of(client, first_url(), page=2)
    assert pages == 3 and "$deltatoken=" in delta_link
    assert [i["subject"] for i in items] == [f"Meeting {h}" for h in range(8, 13)]
    first = items[0]
    assert first["start"] == {"dateTime": "2026-11-23T08:00:00.0000000", "timeZone": "UTC"}
    assert first["organizer"]["emailAddress"]["address"] == "ola.olsen@contoso.com"
    for key in (
        "id",
        "iCalUId",
        "sensitivity",
        "isCancelled",
        "isAllDay",
        "type",
        "seriesMasterId",
        "onlineMeeting",
    ):
        assert key in first


async def test_the_next_round_holds_only_changes(sim: GraphSim, client: GraphClient) -> None:
    keep = sim.add_event(ROOM, START.replace(hour=8), 30, "Unchanged")
    moved = sim.add_event(ROOM, START.replace(hour=9), 30, "Moved")
    leaves = sim.add_event(ROOM, START.replace(hour=10), 30, "Leaves the window")
    deleted = sim.add_event(ROOM, START.replace(hour=11), 30, "Deleted")
    cancelled = sim.add_event(ROOM, START.replace(hour=12), 30, "Cancelled")
    _, delta_link, _ = await round_of(client, first_url())

    items, delta_link, _ = await round_of(client, delta_link)
    assert items == []  # nothing changed

    sim.move_event(ROOM, moved.id, START.replace(hour=14), 45)
    sim.move_event(ROOM, leaves.id, WINDOW_END + timedelta(days=1))
    sim.delete_event(ROOM, deleted.id)
    sim.cancel_event(ROOM, cancelled.id)
    added = sim.add_event(ROOM, START.replace(hour=15), 60, "New")

    items, delta_link, _ = await round_of(client, delta_link, page=2)
    by_id = {i["id"]: i for i in items}
    assert keep.id not in by_id
    assert by_id[moved.id]["start"]["dateTime"] == "2026-11-23T14:00:00.0000000"
    assert by_id[moved.id]["end"]["dateTime"] == "2026-11-23T14:45:00.0000000"
    assert by_id[leaves.id] == {"id": leaves.id, "@removed": {"reason": "deleted"}}
    assert by_id[deleted.id] == {"id": deleted.id, "@removed": {"reason": "deleted"}}
    assert by_id[cancelled.id]["isCancelled"] is True
    assert by_id[added.id]["subject"] == "New"
    assert len(items) == 5

    # Coming back into the window is an addition again.
    sim.move_event(ROOM, leaves.id, START.replace(hour=16))
    items, _, _ = await round_of(client, delta_link)
    assert [(i["id"], i["subject"]) for i in items] == [(leaves.id, "Leaves the window")]


async def test_prefer_timezone_is_honoured(sim: GraphSim, client: GraphClient) -> None:
    sim.add_event(ROOM, START.replace(hour=8), 30, "Standup")
    items, _, _ = await round_of(client, first_url(), prefer='outlook.timezone="Europe/Oslo"')
    assert items[0]["start"] == {
        "dateTime": "2026-11-23T09:00:00.0000000",
        "timeZone": "Europe/Oslo",
    }
    items, _, _ = await round_of(client, first_url(), prefer="")
    assert items[0]["start"]["timeZone"] == "UTC"


async def test_a_series_is_expanded_into_occurrences(sim: GraphSim, client: GraphClient) -> None:
    series = sim.add_event(
        ROOM,
        START.replace(hour=7),
        15,
        "Daily",
        recurrence=Recurrence(
            "daily", START.date(), range_type="numbered", number_of_occurrences=3
        ),
    )
    items, delta_link, _ = await round_of(client, first_url())
    assert [i["type"] for i in items] == ["occurrence"] * 3
    assert {i["seriesMasterId"] for i in items} == {series.id}
    assert len({i["id"] for i in items}) == 3
    assert len({i["iCalUId"] for i in items}) == 3  # each occurrence has its own
    # Deleting one occurrence removes it and re-sends the others (the series changed).
    await client.request("DELETE", f"/users/{ROOM}/events/{items[1]['id']}")
    changes, _, _ = await round_of(client, delta_link)
    removed = [c["id"] for c in changes if "@removed" in c]
    assert removed == [items[1]["id"]]


async def test_a_forgotten_sync_state_is_410(sim: GraphSim, client: GraphClient) -> None:
    sim.add_event(ROOM, START.replace(hour=8), 30, "A")
    _, delta_link, _ = await round_of(client, first_url())
    sim.expire_sync_state(ROOM)
    status, _, body = await client.get(delta_link)
    assert status == 410 and body["error"]["code"] == "SyncStateNotFound"
    # A fresh round works again, and so does its link.
    items, delta_link, _ = await round_of(client, first_url())
    assert [i["subject"] for i in items] == ["A"]
    # The injected kind: only on links, once.
    sim.fault("sync_reset", ROOM, count=1)
    status, _, _ = await client.get(first_url())
    assert status == 200
    status, _, body = await client.get(delta_link)
    assert status == 410 and body["error"]["code"] == "SyncStateNotFound"
    status, _, _ = await client.get(delta_link)
    assert status == 200


async def test_429_carries_retry_after(sim: GraphSim, client: GraphClient) -> None:
    sim.throttle(ROOM, retry_after=7, count=1)
    status, headers, body = await client.get(first_url())
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"]["code"] == "TooManyRequests"
    status, _, _ = await client.get(first_url(mailbox="room-2@contoso.com"))
    assert status == 200  # another mailbox is not throttled
    status, _, _ = await client.get(first_url())
    assert status == 200


async def test_503_and_global_faults(sim: GraphSim, client: GraphClient) -> None:
    sim.fault("unavailable", None, count=2, retry_after=3)
    for mailbox in (ROOM, "room-2@contoso.com"):
        status, headers, _body = await client.get(first_url(mailbox))
        assert status == 503 and headers["Retry-After"] == "3"
    status, _, _ = await client.get(first_url())
    assert status == 200


async def test_at_most_four_requests_per_mailbox_in_flight(
    sim: GraphSim, client: GraphClient
) -> None:
    hold = sim.fault("hold", ROOM, count=4)  # used up by four: the fifth is not held
    held = [asyncio.create_task(client.get(first_url())) for _ in range(4)]
    while hold.hits < 4:
        await asyncio.sleep(0)  # until the four are inside the fake (no timing involved)
    assert sim.api.in_flight[ROOM] == 4
    status, headers, body = await client.get(first_url())
    assert status == 429 and body["error"]["code"] == "ApplicationThrottled"
    assert "MailboxConcurrency" in body["error"]["message"] and "Retry-After" in headers
    status, _, _ = await client.get(first_url("room-2@contoso.com"))
    assert status == 200
    hold.release()
    assert [r[0] for r in await asyncio.gather(*held)] == [200] * 4


async def test_window_and_token_errors(client: GraphClient) -> None:
    status, _, body = await client.get(f"/users/{ROOM}/calendarView/delta")
    assert status == 400 and "StartDateTime" in body["error"]["message"]
    status, _, body = await client.get(f"/users/{ROOM}/calendarView/delta?$deltatoken=made-up")
    assert status == 410


async def test_all_day_events_span_the_local_day(sim: GraphSim, client: GraphClient) -> None:
    oslo_midnight = START.replace(hour=0) - timedelta(hours=1)  # 2026-11-23 00:00 in Oslo
    sim.add_event(ROOM, oslo_midnight, 24 * 60, "Offsite", is_all_day=True)
    (item,), _, _ = await round_of(client, first_url())
    assert item["isAllDay"] is True
    assert item["start"]["dateTime"] == "2026-11-23T00:00:00.0000000"
    assert item["end"]["dateTime"] == "2026-11-24T00:00:00.0000000"


async def test_slow_answers_still_answer(sim: GraphSim, client: GraphClient) -> None:
    slow = sim.fault("slow", ROOM, delay_s=0.05, count=1)
    status, _, _ = await client.get(first_url())
    assert status == 200 and slow.hits == 1 and sim.faults.faults == []


async def test_links_can_be_followed_again(sim: GraphSim, client: GraphClient) -> None:
    """A client whose answer was lost (or that was killed before it stored the next link)
    follows the same link again and gets the same page; a delta link stays valid."""
    for hour in (8, 9, 10):
        sim.add_event(ROOM, START.replace(hour=hour), 30, f"M{hour}")
    headers = {"Prefer": "odata.maxpagesize=2"}
    _, _, first = await client.get(first_url(), headers=headers)
    next_link = first["@odata.nextLink"]
    _, _, page = await client.get(next_link, headers=headers)
    _, _, again = await client.get(next_link, headers=headers)
    assert page["value"] == again["value"] and [e["subject"] for e in page["value"]] == ["M10"]
    delta_link = page["@odata.deltaLink"]
    sim.add_event(ROOM, START.replace(hour=11), 30, "M11")
    for _ in range(2):
        items, _, _ = await round_of(client, delta_link)
        assert [i["subject"] for i in items] == ["M11"]


async def test_null_field_form_for_an_event_that_left_the_range() -> None:
    # Microsoft Q&A 1190523: changes outside the window come back with all fields null.
    async with GraphSim(make_config(out_of_range_as_nulls=True)) as sim:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(sim, session)
            assert (await client.fetch_token())[0] == 200
            leaves = sim.add_event(ROOM, START.replace(hour=10), 30, "Leaves the window")
            deleted = sim.add_event(ROOM, START.replace(hour=11), 30, "Deleted")
            _, delta_link, _ = await round_of(client, first_url())
            sim.move_event(ROOM, leaves.id, WINDOW_END + timedelta(days=1))
            sim.delete_event(ROOM, deleted.id)
            items, _, _ = await round_of(client, delta_link)
    by_id = {i["id"]: i for i in items}
    assert by_id[deleted.id] == {"id": deleted.id, "@removed": {"reason": "deleted"}}
    left = by_id[leaves.id]
    assert "@removed" not in left and left["start"] is None and left["end"] is None
    assert left["subject"] is None
