"""Creating, editing and deleting events through Graph; transactionId makes a retry safe."""

from __future__ import annotations

from graphsim_helpers import GraphClient

from calendar_sim.graph import GraphSim

ROOM = "room-1@contoso.com"
BODY = {
    "subject": "Booked from the panel",
    "start": {"dateTime": "2026-11-23T10:00:00", "timeZone": "Europe/Oslo"},
    "end": {"dateTime": "2026-11-23T10:30:00", "timeZone": "Europe/Oslo"},
    "transactionId": "7c1e2f0a-booking-request-uuid",
}


async def test_a_retried_create_with_the_same_transaction_id_books_once(
    sim: GraphSim, client: GraphClient
) -> None:
    status, headers, first = await client.request("POST", f"/users/{ROOM}/events", json=BODY)
    assert status == 201, first
    assert first["transactionId"] == BODY["transactionId"]
    assert first["start"] == {"dateTime": "2026-11-23T09:00:00.0000000", "timeZone": "UTC"}
    assert first["organizer"]["emailAddress"]["address"] == ROOM
    assert headers["Location"].endswith(first["id"])
    status, _, again = await client.request("POST", f"/users/{ROOM}/events", json=BODY)
    assert status == 201 and again["id"] == first["id"]
    assert [e.subject for e in sim.events(ROOM)] == ["Booked from the panel"]
    other = {**BODY, "transactionId": "another-request"}
    status, _, second = await client.request("POST", f"/users/{ROOM}/events", json=other)
    assert status == 201 and second["id"] != first["id"]


async def test_patch_get_delete(sim: GraphSim, client: GraphClient) -> None:
    _, _, made = await client.request("POST", f"/users/{ROOM}/events", json=BODY)
    url = f"/users/{ROOM}/events/{made['id']}"
    status, _, moved = await client.request(
        "PATCH",
        url,
        json={
            "start": {"dateTime": "2026-11-23T12:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-23T13:00:00Z", "timeZone": "UTC"},
            "subject": "Moved",
        },
    )
    assert status == 200 and moved["subject"] == "Moved"
    assert moved["end"]["dateTime"] == "2026-11-23T13:00:00.0000000"
    status, _, got = await client.get(url, headers={"Prefer": 'outlook.timezone="Europe/Oslo"'})
    assert status == 200 and got["start"]["dateTime"] == "2026-11-23T13:00:00.0000000"
    status, _, _ = await client.request("DELETE", url)
    assert status == 204
    status, _, body = await client.get(url)
    assert status == 404 and body["error"]["code"] == "ErrorItemNotFound"
    # After a delete the transaction id is free again: a new booking, not the old one.
    status, _, fresh = await client.request("POST", f"/users/{ROOM}/events", json=BODY)
    assert status == 201 and fresh["id"] != made["id"]


async def test_bad_bodies_are_400_and_change_nothing(sim: GraphSim, client: GraphClient) -> None:
    cases = [
        {"subject": "no times"},
        {**BODY, "end": {"dateTime": "2026-11-23T08:00:00", "timeZone": "Europe/Oslo"}},
        {**BODY, "start": {"dateTime": "2026-11-23T10:00:00", "timeZone": "Mars/Olympus"}},
        {**BODY, "sensitivity": "secret"},
    ]
    for body in cases:
        status, _, answer = await client.request("POST", f"/users/{ROOM}/events", json=body)
        assert status == 400, (body, answer)
        assert answer["error"]["code"] and answer["error"]["message"]
    status, _, answer = await client.request(
        "POST",
        f"/users/{ROOM}/events",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert sim.events(ROOM) == []


async def test_a_body_without_the_json_content_type_is_refused_415(
    sim: GraphSim, client: GraphClient
) -> None:
    """Graph's reference marks ``Content-Type: application/json`` required on a create; its
    errors table answers a content type it does not support with 415. Nothing is created."""
    import json

    raw = json.dumps(BODY).encode()
    for headers in ({}, {"Content-Type": "text/plain"}):
        status, _, body = await client.request(
            "POST", f"/users/{ROOM}/events", data=raw, headers=headers
        )
        assert status == 415, body
        assert "application/json" in body["error"]["message"]
    status, _, made = await client.request(
        "POST",
        f"/users/{ROOM}/events",
        data=raw,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 201, made
    status, _, again = await client.request("POST", f"/users/{ROOM}/events", json=BODY)
    assert status == 201 and again["id"] == made["id"]  # one event: the refused ones made none
