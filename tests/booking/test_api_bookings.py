"""Booking through the agent's local API, over real HTTP on 127.0.0.1: simulated devices, the
agent, a signature-checking receiver. Every answer of the booking routes, and that a refusal
sends nothing to the device."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.booking.conftest import OLD_TOKEN
from tests.e2e.harness import SIM_START, booking_created, eventually, of_type
from tests.receivers import WebhookReceiver


def _requested(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return of_type(receiver.events, "booking.requested")


async def _status(http: httpx.AsyncClient, uuid: str) -> dict[str, Any]:
    r = await http.get(f"/v1/requests/{uuid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_book_is_accepted_then_created_with_our_uuid(booked, receiver) -> None:
    fleet, _, http = await booked(mode="hybrid", confirm_delay_s=2.0)
    dev = fleet.devices[0]
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings",
        json={"title": "Stand-up", "duration_min": 15, "organizer": {"name": "Kari"}},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    uuid = body["request_uuid"]
    assert body["status"] == "pending" and body["room_id"] == dev.device_id
    assert r.headers["Location"] == f"/v1/requests/{uuid}"
    # booking.requested is out at once (the agent opens the request when it sends the Book)
    await eventually(lambda: _requested(receiver))
    assert _requested(receiver)[0]["data"]["booking"]["booking_request_uuid"] == uuid
    assert (await _status(http, uuid))["status"] == "pending"
    fleet.clock.advance(3)
    created = await booking_created(receiver.events, uuid)
    view = await _wait_status(http, uuid, "created")
    assert view["booking_id"] == created["booking"]["id"]
    assert view["meeting_id"] == created["booking"]["meeting_id"] and view["meeting_id"]
    assert view["booking"]["title"] == "Stand-up"
    assert view["request"]["duration_min"] == 15
    booked_on_device = [b for b in dev.calendar.bookings() if b.title == "Stand-up"]
    assert len(booked_on_device) == 1
    assert booked_on_device[0].organizer.name == "Kari"


async def _wait_status(
    http: httpx.AsyncClient, uuid: str, want: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Poll ``GET /v1/requests/{uuid}`` until it reads ``want`` (what a client does)."""
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while (last := await _status(http, uuid)).get("status") != want:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"request {uuid} never became {want!r}; last {last}") from None
    return last


async def test_declined_request_is_failed_with_the_cause(booked, receiver) -> None:
    fleet, _, http = await booked(mode="hybrid", confirm_delay_s=1.0)
    dev = fleet.devices[0]
    dev.calendar.decline_next()
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings", json={"title": "No", "duration_min": 30}
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    fleet.clock.advance(2)
    view = await _wait_status(http, uuid, "failed")
    assert view["cause"] == "Decline"
    assert not [b for b in dev.calendar.bookings() if b.title == "No"]


async def test_unanswered_request_expires(booked, receiver) -> None:
    """Legacy software never sends Created/Failed: only the deadline and a re-list close it."""
    fleet, _, http = await booked(mode="hybrid", profile="legacy", confirm_delay_s=1.0)
    dev = fleet.devices[0]
    dev.calendar.decline_next()
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings", json={"title": "Nobody answers", "duration_min": 30}
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    fleet.clock.advance(70)  # past the 60 s BookingTimeout + 5 s grace
    view = await _wait_status(http, uuid, "expired")
    assert view["request"]["title"] == "Nobody answers"


async def test_unknown_request_is_404(booked) -> None:
    _, _, http = await booked()
    r = await http.get("/v1/requests/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and "kept for a day" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"duration_min": 30}, "title"),
        ({"title": "   ", "duration_min": 30}, "title"),
        ({"title": "x" * 129, "duration_min": 30}, "title"),
        ({"title": 5, "duration_min": 30}, "title"),
        ({"title": "T"}, "duration_min"),
        ({"title": "T", "duration_min": 0}, "duration_min"),
        ({"title": "T", "duration_min": 1441}, "duration_min"),
        ({"title": "T", "duration_min": True}, "duration_min"),
        ({"title": "T", "duration_min": "30"}, "duration_min"),
        ({"title": "T", "duration_min": 30, "start": "tomorrow"}, "start"),
        ({"title": "T", "duration_min": 30, "start": "2026-11-23T09:00:00"}, "start"),
        # the window is today + 8 h (UTC here): the day after tomorrow is outside it
        ({"title": "T", "duration_min": 30, "start": "2026-11-25T09:00:00Z"}, "start"),
        ({"title": "T", "duration_min": 30, "start": "2026-11-22T09:00:00Z"}, "start"),
        ({"title": "T", "duration_min": 30, "organizer": "Kari"}, "organizer"),
        ({"title": "T", "duration_min": 30, "room": "x"}, "room"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_order_is_422_naming_the_field_and_sends_nothing(
    booked, receiver, body, field
) -> None:
    fleet, _, http = await booked()
    dev = fleet.devices[0]
    before = len(dev.calendar.bookings())
    r = await http.post(f"/v1/rooms/{dev.device_id}/bookings", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and field in r.json()["error"]
    assert len(dev.calendar.bookings()) == before and not _requested(receiver)


async def test_malformed_json_is_400(booked) -> None:
    fleet, _, http = await booked()
    r = await http.post(
        f"/v1/rooms/{fleet.devices[0].device_id}/bookings",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400


async def test_unknown_room_is_404(booked, receiver) -> None:
    _, _, http = await booked()
    r = await http.post("/v1/rooms/no-such-room/bookings", json={"title": "T", "duration_min": 5})
    assert r.status_code == 404 and "no-such-room" in r.json()["error"]
    r = await http.delete("/v1/rooms/no-such-room/bookings/1")
    assert r.status_code == 404


async def test_overlap_with_the_stored_window_is_409_and_sends_nothing(booked, receiver) -> None:
    fleet, running, http = await booked()
    dev = fleet.devices[0]
    start = SIM_START + timedelta(hours=2)
    existing = dev.calendar.add(start, 60, title="Board meeting")
    await eventually(lambda: running.agent.devices()[0]["window_size"] == 1)
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings",
        json={
            "title": "Clash",
            "duration_min": 30,
            "start": (start + timedelta(minutes=30)).isoformat(),
        },
    )
    assert r.status_code == 409, r.text
    assert r.json()["conflict"] == existing.id
    assert [b.title for b in dev.calendar.bookings()] == ["Board meeting"]
    assert not _requested(receiver)
    # right after it is free: accepted
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings",
        json={
            "title": "After",
            "duration_min": 30,
            "start": (start + timedelta(hours=1)).isoformat(),
        },
    )
    assert r.status_code == 202, r.text


async def test_offline_device_is_503_and_sends_nothing(booked, receiver) -> None:
    fleet, running, http = await booked()
    dev = fleet.devices[0]
    dev.faults.reboot(down_s=60, not_ready_s=0)
    await eventually(lambda: not running.agent.devices()[0]["connected"])
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings", json={"title": "T", "duration_min": 5}
    )
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "30" and "not connected" in r.json()["error"]
    r = await http.delete(f"/v1/rooms/{dev.device_id}/bookings/1")
    assert r.status_code == 503
    assert not _requested(receiver)


async def test_release_deletes_the_booking(booked, receiver) -> None:
    fleet, running, http = await booked()
    dev = fleet.devices[0]
    existing = dev.calendar.add(SIM_START + timedelta(hours=1), 30, title="To release")
    await eventually(lambda: running.agent.devices()[0]["window_size"] == 1)
    r = await http.delete(f"/v1/rooms/{dev.device_id}/bookings/{existing.id}")
    assert r.status_code == 202, r.text
    assert r.json() == {"room_id": dev.device_id, "booking_id": existing.id, "status": "releasing"}
    await eventually(lambda: of_type(receiver.events, "booking.deleted"))
    deleted = of_type(receiver.events, "booking.deleted")[0]["data"]
    assert deleted["booking"]["id"] == existing.id
    assert dev.calendar.bookings() == []
    r = await http.delete(f"/v1/rooms/{dev.device_id}/bookings/{existing.id}")
    assert r.status_code == 404 and "no booking" in r.json()["error"]


async def test_the_rotated_old_token_books_too(booked) -> None:
    fleet, _, http = await booked()
    r = await http.post(
        f"/v1/rooms/{fleet.devices[0].device_id}/bookings",
        json={"title": "Old token", "duration_min": 5},
        headers={"Authorization": f"Bearer {OLD_TOKEN}"},
    )
    assert r.status_code == 202, r.text


async def test_a_book_without_an_answer_is_never_sent_again(booked, receiver) -> None:
    """The device takes the Book but its OK is late (the request times out), then the link
    drops: the agent reconnects and re-lists, and the room is booked once."""
    fleet, running, http = await booked(extra={"defaults": {"request_timeout_s": 0.5}})
    dev = fleet.devices[0]
    dev.faults.slow(2000, duration_s=1.5)
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings", json={"title": "Once", "duration_min": 20}
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    dev.faults.drop()
    await eventually(lambda: running.agent.devices()[0]["reconnects"] >= 1)
    await eventually(lambda: running.agent.devices()[0]["connected"])
    view = await _wait_status(http, uuid, "created")
    assert [b.title for b in dev.calendar.bookings()].count("Once") == 1
    assert view["booking"]["title"] == "Once"
    assert len([e for e in _requested(receiver)]) == 1


async def test_a_double_tap_books_once(booked, receiver) -> None:
    """Two overlapping orders at once (a kiosk button pressed twice): the second is refused
    while the first is pending, before anything is sent."""
    fleet, _, http = await booked(mode="hybrid", confirm_delay_s=5.0)
    dev = fleet.devices[0]
    order = {"title": "Tap", "duration_min": 30}
    route = f"/v1/rooms/{dev.device_id}/bookings"
    first, second = await asyncio.gather(http.post(route, json=order), http.post(route, json=order))
    assert sorted([first.status_code, second.status_code]) == [202, 409], (first.text, second.text)
    accepted, refused = (first, second) if first.status_code == 202 else (second, first)
    assert refused.json()["conflict"] == accepted.json()["request_uuid"]
    assert "still pending" in refused.json()["error"]
    fleet.clock.advance(6)
    await _wait_status(http, accepted.json()["request_uuid"], "created")
    assert [b.title for b in dev.calendar.bookings()] == ["Tap"]
    assert len(_requested(receiver)) == 1


async def test_a_request_past_its_deadline_with_the_device_away_is_overdue_not_expired(
    booked, receiver
) -> None:
    """The device is offline past the deadline (and past any grace): the stored request is
    still pending and the device may yet report it created, so it reads ``overdue`` (as in
    /v1/pending), never a provisional ``expired`` that a later ``created`` contradicts."""
    fleet, running, http = await booked(mode="hybrid", confirm_delay_s=2.0)
    dev = fleet.devices[0]
    r = await http.post(
        f"/v1/rooms/{dev.device_id}/bookings", json={"title": "Away", "duration_min": 15}
    )
    assert r.status_code == 202, r.text
    uuid = r.json()["request_uuid"]
    await eventually(lambda: _requested(receiver))
    dev.faults.reboot(down_s=3, not_ready_s=0)
    await eventually(lambda: not running.agent.devices()[0]["connected"])
    fleet.clock.advance(120)  # 60 s BookingTimeout + the 30 s the API used to allow, and more
    view = await _status(http, uuid)
    assert view["status"] == "overdue", view
    # The device comes back; the session decides, and what it decides is final.
    await eventually(lambda: running.agent.devices()[0]["connected"])
    seen: list[str] = []

    async def decided() -> bool:
        seen.append((await _status(http, uuid))["status"])
        return seen[-1] not in ("pending", "overdue")

    async with asyncio.timeout(30):
        while not await decided():
            await asyncio.sleep(0.05)
    assert seen[-1] in ("created", "expired"), seen
    assert (await _status(http, uuid))["status"] == seen[-1]
