"""Subscriptions: the validation handshake, change and lifecycle notifications, renewal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from graphsim_helpers import START, GraphClient, NotificationReceiver, make_config

from calendar_sim.graph import GraphSim

ROOM = "room-1@contoso.com"


@pytest.fixture
async def receiver() -> AsyncIterator[NotificationReceiver]:
    rx = NotificationReceiver()
    await rx.start()
    yield rx
    await rx.stop()


@pytest.fixture
async def pushed(receiver: NotificationReceiver) -> AsyncIterator[tuple[GraphSim, GraphClient]]:
    config = make_config(notification_ca_pem=receiver.ca_pem)
    async with GraphSim(config) as sim, aiohttp.ClientSession() as session:
        client = GraphClient(sim, session)
        await client.fetch_token()
        yield sim, client


def _body(rx: NotificationReceiver, **kw: Any) -> dict[str, Any]:
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": rx.url("notify"),
        "lifecycleNotificationUrl": rx.url("lifecycle"),
        "resource": f"users/{ROOM}/events",
        "expirationDateTime": (START + timedelta(days=2)).isoformat().replace("+00:00", "Z"),
        "clientState": "opaque-secret-of-the-agent",
        **kw,
    }


async def test_validation_then_change_and_lifecycle_notifications(
    pushed: tuple[GraphSim, GraphClient], receiver: NotificationReceiver
) -> None:
    sim, client = pushed
    status, _, sub = await client.request("POST", "/subscriptions", json=_body(receiver))
    assert status == 201, sub
    # both URLs were validated, each with the token URL-decoded (it holds spaces and colons)
    assert len(receiver.validations) == 2
    assert all(t.startswith("Validation: ") and " " in t for t in receiver.validations)
    assert sub["clientState"] == "opaque-secret-of-the-agent"
    assert sub["lifecycleNotificationUrl"] == receiver.url("lifecycle")

    event = sim.add_event(ROOM, START.replace(hour=9), 30, "Pushed")
    path, note = await receiver.notifications.get()
    assert path == "notify"
    (item,) = note["value"]
    assert item["subscriptionId"] == sub["id"]
    assert item["changeType"] == "created"
    assert item["clientState"] == "opaque-secret-of-the-agent"
    assert item["resourceData"]["id"] == event.id
    assert item["tenantId"] == sim.config.tenant_id

    sim.add_event("room-2@contoso.com", START.replace(hour=9), 30, "Another room")  # not ours
    sim.delete_event(ROOM, event.id)
    path, note = await receiver.notifications.get()
    assert (path, note["value"][0]["changeType"]) == ("notify", "deleted")

    sim.lifecycle(sub["id"], "reauthorizationRequired")
    path, note = await receiver.notifications.get()
    assert path == "lifecycle"
    assert note["value"][0]["lifecycleEvent"] == "reauthorizationRequired"
    status, _, _ = await client.request("POST", f"/subscriptions/{sub['id']}/reauthorize")
    assert status == 204

    sim.lifecycle(sub["id"], "missed")
    _, note = await receiver.notifications.get()
    assert note["value"][0]["lifecycleEvent"] == "missed"

    sim.lifecycle(sub["id"], "subscriptionRemoved")
    _, note = await receiver.notifications.get()
    assert note["value"][0]["lifecycleEvent"] == "subscriptionRemoved"
    status, _, _ = await client.get(f"/subscriptions/{sub['id']}")
    assert status == 404


async def test_renewal_expiry_and_delete(
    pushed: tuple[GraphSim, GraphClient], receiver: NotificationReceiver
) -> None:
    sim, client = pushed
    _, _, sub = await client.request("POST", "/subscriptions", json=_body(receiver))
    later = (START + timedelta(days=6)).isoformat().replace("+00:00", "Z")
    status, _, renewed = await client.request(
        "PATCH", f"/subscriptions/{sub['id']}", json={"expirationDateTime": later}
    )
    assert status == 200 and renewed["expirationDateTime"] == later
    too_far = (START + timedelta(days=8)).isoformat().replace("+00:00", "Z")
    status, _, body = await client.request(
        "PATCH", f"/subscriptions/{sub['id']}", json={"expirationDateTime": too_far}
    )
    assert status == 400 and "10080" in body["error"]["message"]
    sim.clock.advance(timedelta(days=6, minutes=1).total_seconds())
    await client.fetch_token()
    status, _, _ = await client.get(f"/subscriptions/{sub['id']}")
    assert status == 404  # expired subscriptions are gone
    _, _, sub = await client.request(
        "POST",
        "/subscriptions",
        json=_body(receiver, expirationDateTime=(sim.clock.now() + timedelta(hours=1)).isoformat()),
    )
    status, _, _ = await client.request("DELETE", f"/subscriptions/{sub['id']}")
    assert status == 204
    status, _, _ = await client.request("DELETE", f"/subscriptions/{sub['id']}")
    assert status == 404


async def test_a_failed_handshake_refuses_the_subscription(
    pushed: tuple[GraphSim, GraphClient], receiver: NotificationReceiver
) -> None:
    sim, client = pushed
    receiver.validation_answer = "not the token"
    status, _, body = await client.request("POST", "/subscriptions", json=_body(receiver))
    assert status == 400 and "validation" in body["error"]["message"].lower()
    assert sim.subscriptions.items == {}
    receiver.validation_answer = None
    for bad in (
        {"notificationUrl": "http://127.0.0.1:1/plain-http"},
        {"resource": "users/nobody@contoso.com/events"},
        {"resource": "me/messages"},
        {"changeType": "renamed"},
        {"expirationDateTime": START.isoformat()},
    ):
        status, _, body = await client.request(
            "POST", "/subscriptions", json=_body(receiver, **bad)
        )
        assert status in (400, 404), (bad, body)
    assert sim.subscriptions.items == {}
