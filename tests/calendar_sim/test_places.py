"""Room discovery: GET /places/microsoft.graph.room, paged with @odata.nextLink."""

from __future__ import annotations

from graphsim_helpers import GraphClient

from calendar_sim.graph import GraphSim


async def _all_rooms(client: GraphClient, url: str) -> tuple[list[dict[str, object]], int]:
    rooms: list[dict[str, object]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        status, _, body = await client.get(next_url)
        assert status == 200, body
        rooms += body["value"]
        pages += 1
        next_url = body.get("@odata.nextLink")
    return rooms, pages


async def test_rooms_are_listed_across_pages(sim: GraphSim, client: GraphClient) -> None:
    sim.add_room("Room-B@contoso.com", "Room B (4th floor)")
    sim.add_room("ceo@contoso.com", "The CEO", is_room=False)  # a user mailbox: not a room
    rooms, pages = await _all_rooms(client, "/places/microsoft.graph.room?$top=2")
    assert pages == 2
    addresses = sorted(str(r["emailAddress"]) for r in rooms)
    assert addresses == [
        "Room-B@contoso.com",
        "room-1@contoso.com",
        "room-2@contoso.com",
        "room-3@contoso.com",
    ]
    for room in rooms:
        assert room["@odata.type"] == "#microsoft.graph.room"
        assert room["id"] and room["displayName"]


async def test_a_removed_room_leaves_the_directory(sim: GraphSim, client: GraphClient) -> None:
    sim.remove_room("room-2@contoso.com")
    rooms, _ = await _all_rooms(client, "/places/microsoft.graph.room")
    assert [r["emailAddress"] for r in rooms] == ["room-1@contoso.com", "room-3@contoso.com"]
    status, _, body = await client.get(
        "/users/room-2@contoso.com/calendarView?startDateTime=2026-11-23T00:00:00Z"
        "&endDateTime=2026-11-24T00:00:00Z"
    )
    assert status == 404 and body["error"]["code"] == "ErrorInvalidUser"


async def test_bad_paging_arguments_are_400(client: GraphClient) -> None:
    status, _, body = await client.get("/places/microsoft.graph.room?$top=zero")
    assert status == 400 and "$top" in body["error"]["message"]
