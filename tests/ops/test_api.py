"""The local API over real HTTP on 127.0.0.1, reading a real Store through a small AgentView."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.bookings.pending import open_request
from edge_agent.metrics import RECONNECTS
from edge_agent.ops.api_guard import ApiGuard, host_name
from edge_agent.ops.api import AgentView, DeviceStatus, LocalApi, SinkStatus, StoreView, readiness
from edge_agent.store import Change, PendingRow, Store


@dataclass
class FakeAgent:
    """A small real AgentView: in-memory device/sink state over a real (or no) store."""

    store: StoreView | None
    device_list: list[DeviceStatus] = field(default_factory=list)
    sink_list: list[SinkStatus] = field(default_factory=list)

    def devices(self) -> Sequence[DeviceStatus]:
        return self.device_list

    def sinks(self) -> Sequence[SinkStatus]:
        return self.sink_list


def envelope(device: str, etype: str = "booking.created") -> dict[str, Any]:
    return {
        "type": etype,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": str(uuid.uuid4()), "site": "hq", "device_id": device},
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    yield s
    await s.close()


@pytest.fixture
def agent(store: Store) -> FakeAgent:
    return FakeAgent(
        store=store,
        device_list=[
            {
                "id": "room-4a",
                "url": "wss://10.0.0.1/ws",
                "connected": True,
                "last_error": None,
                "reconnects": 0,
                "time_zone": "Europe/Oslo",
                "booking_timeout_s": 60,
                "window_size": 2,
            },
            {
                "id": "room-4b",
                "url": "wss://10.0.0.2/ws",
                "connected": False,
                "last_error": "room-4b: device refused the credentials (HTTP 403)",
                "reconnects": 4,
                "time_zone": None,
                "booking_timeout_s": None,
                "window_size": 0,
            },
        ],
        sink_list=[{"name": "webhook", "state": "running", "ready": True, "last_error": None}],
    )


TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
async def api(agent: FakeAgent) -> AsyncIterator[LocalApi]:
    guard = ApiGuard("127.0.0.1:0", [TOKEN])
    async with LocalApi(agent, "127.0.0.1:0", guard=guard) as local:
        yield local


@pytest.fixture
async def http(api: LocalApi) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=5, headers=headers) as client:
        yield client


def test_fake_agent_satisfies_the_protocol(agent: FakeAgent) -> None:
    assert isinstance(agent, AgentView)


async def test_bound_port(api: LocalApi) -> None:
    assert api.port > 0 and api.url == f"http://127.0.0.1:{api.port}"


async def test_healthz(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_ready_with_one_device_connected(http: httpx.AsyncClient) -> None:
    r = await http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["store"] == {"open": True}
    assert [d["id"] for d in body["devices"]] == ["room-4a", "room-4b"]
    assert body["sinks"][0]["name"] == "webhook"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("store", "store not open"),
        ("sink_gone", "sink webhook is gone"),
        ("no_device", "no device connected"),
    ],
)
async def test_readyz_not_ready(
    agent: FakeAgent, http: httpx.AsyncClient, change: str, reason: str
) -> None:
    if change == "store":
        agent.store = None
    elif change.startswith("sink_"):
        agent.sink_list[0]["state"] = change.removeprefix("sink_")
    else:
        agent.device_list[0]["connected"] = False
    r = await http.get("/readyz")
    assert r.status_code == 503
    assert reason in r.json()["reasons"]


def test_sink_not_delivering_does_not_fail_readiness(agent: FakeAgent) -> None:
    agent.sink_list[0]["ready"] = False  # receiver away: events are buffered, by design
    assert readiness(agent) == (True, [])
    assert readiness(FakeAgent(store=agent.store)) == (True, [])  # no devices configured


async def test_metrics(http: httpx.AsyncClient) -> None:
    RECONNECTS.labels(device="room-4b").inc()
    r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'edge_agent_device_reconnects_total{device="room-4b"}' in r.text
    assert "edge_agent_outbox_depth" in r.text or "edge_agent_devices_connected" in r.text


async def test_devices(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/devices")
    devices = r.json()["devices"]
    assert devices[1]["last_error"].startswith("room-4b:")
    assert {
        "id",
        "url",
        "connected",
        "last_error",
        "reconnects",
        "time_zone",
        "booking_timeout_s",
        "window_size",
    } <= set(devices[0])


async def test_bookings_from_the_store(store: Store, http: httpx.AsyncClient) -> None:
    await store.commit(
        Change(
            "room-4a",
            window_replace={
                "b2": {"id": "b2", "title": "Later", "start": "2026-11-23T13:00:00Z"},
                "b1": {"id": "b1", "title": "Standup", "start": "2026-11-23T09:00:00Z"},
            },
        )
    )
    r = await http.get("/v1/devices/room-4a/bookings")
    assert r.status_code == 200
    body = r.json()
    assert body["device"] == "room-4a" and body["count"] == 2
    assert [b["id"] for b in body["bookings"]] == ["b1", "b2"]
    r = await http.get("/v1/devices/room-4b/bookings")
    assert r.status_code == 200 and r.json()["bookings"] == []


async def test_bookings_unknown_device_404(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/devices/nope/bookings")
    assert r.status_code == 404 and "nope" in r.json()["error"]


async def test_pending_from_the_store(store: Store, http: httpx.AsyncClient) -> None:
    """The documented public shape only: the store's row (its tracker fields) stays inside."""
    deadline = 1_795_424_490.0  # 2026-11-23T09:01:30Z
    request = open_request(
        device_id="room-4a",
        booking_request_uuid="uuid-1",
        title="Ad hoc",
        start=None,
        duration_min=30,
        requested_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        booking_timeout_s=60,
    )
    await store.commit(
        Change(
            "room-4a", pending_upsert=[PendingRow("room-4a", "uuid-1", deadline, request.to_row())]
        )
    )
    overdue = {**request.to_row(), "relist_requested": True, "internal": "x"}
    await store.commit(
        Change("room-4b", pending_upsert=[PendingRow("room-4b", "uuid-2", deadline + 1, overdue)])
    )
    r = await http.get("/v1/pending")
    body = r.json()
    assert body["count"] == 2
    assert body["pending"][0] == {
        "request_uuid": "uuid-1",
        "device": "room-4a",
        "title": "Ad hoc",
        "start": None,
        "duration_min": 30,
        "requested_at": "2026-11-23T09:00:00.000Z",
        "deadline": "2026-11-23T09:01:30.000Z",
        "state": "pending",
    }
    r = await http.get("/v1/pending", params={"device": "room-4b"})
    [second] = r.json()["pending"]
    assert second["request_uuid"] == "uuid-2" and second["state"] == "overdue"
    assert "internal" not in second and "relist_requested" not in second


async def test_outbox_stats(store: Store, http: httpx.AsyncClient) -> None:
    await store.commit(Change("room-4a", events=[envelope("room-4a"), envelope("room-4a")]))
    r = await http.get("/v1/outbox")
    body = r.json()
    assert body["outbox_total"] == 2 and body["sinks"]["webhook"]["depth"] == 2


async def test_store_closed_answers_503(agent: FakeAgent, http: httpx.AsyncClient) -> None:
    agent.store = None
    for path in ("/v1/pending", "/v1/outbox", "/v1/devices/room-4a/bookings"):
        r = await http.get(path)
        assert r.status_code == 503, path
    assert (await http.get("/healthz")).status_code == 200


async def test_handler_error_is_500_and_server_survives(
    agent: FakeAgent, http: httpx.AsyncClient
) -> None:
    class Broken:
        async def load_window(self, device_id: str) -> dict[str, Any]:
            raise RuntimeError("disk on fire")

        async def load_pending(self, device_id: str | None = None) -> list[Any]:
            return []

        async def stats(self) -> dict[str, Any]:
            return {}

        async def dead_letters(self, limit: int = 100, sink: str | None = None) -> list[Any]:
            return []

        async def replay_dead_letters(
            self, ids: Sequence[int] | None = None, sink: str | None = None
        ) -> int:
            return 0

        async def purge_dead_letters(
            self, ids: Sequence[int] | None = None, sink: str | None = None
        ) -> int:
            return 0

    agent.store = Broken()
    r = await http.get("/v1/devices/room-4a/bookings")
    assert r.status_code == 500 and "disk on fire" in r.json()["error"]
    assert (await http.get("/healthz")).status_code == 200


async def test_unknown_route_404_json(http: httpx.AsyncClient) -> None:
    r = await http.get("/nope")
    assert r.status_code == 404 and "error" in r.json()


async def test_port_in_use_and_stop_closes_the_port(agent: FakeAgent) -> None:
    api = LocalApi(agent, "127.0.0.1:0")
    await api.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(api.url + "/healthz")).status_code == 200
        clash = LocalApi(agent, f"127.0.0.1:{api.port}")
        with pytest.raises(OSError):
            await clash.start()
    finally:
        await api.stop()
    await api.stop()  # twice is fine
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(api.url + "/healthz")


async def test_readyz_not_ready_when_the_store_writer_died(
    store: Store, http: httpx.AsyncClient
) -> None:
    """A dead store writer left every commit waiting while /readyz stayed green."""
    import asyncio
    import contextlib

    await store._writer.release()  # the writer's next rollback raises outside sqlite3.Error
    with contextlib.suppress(Exception):
        await asyncio.wait_for(store.commit(Change("room-4a", events=[envelope("room-4a")])), 2)
    r = await http.get("/readyz")
    assert r.status_code == 503, r.text
    [reason] = r.json()["reasons"]
    assert reason.startswith("store failed: ") and "restart the agent" in reason


async def make_dead_letters(store: Store, n: int) -> list[int]:
    await store.commit(Change("room-4a", events=[envelope("room-4a") for _ in range(n)]))
    batch = await store.read_outbox("webhook", [("room-4a", 0, n)])
    await store.dead_letter("webhook", batch, reason="rejected: HTTP 400", attempts=3)
    return [d["id"] for d in await store.dead_letters()]


async def test_dead_letters_list_replay_purge(store: Store, http: httpx.AsyncClient) -> None:
    ids = await make_dead_letters(store, 4)
    r = await http.get("/v1/dead-letters", params={"limit": 2})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 2
    assert [d["id"] for d in body["dead_letters"]] == ids[:2]
    assert body["dead_letters"][0]["reason"] == "rejected: HTTP 400"
    assert (await http.get("/v1/dead-letters", params={"sink": "mqtt"})).json()["count"] == 0
    assert (await http.get("/v1/dead-letters", params={"limit": "x"})).status_code == 400

    r = await http.post("/v1/dead-letters/replay", json={"ids": ids[:1]})
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    assert (await store.stats())["sinks"]["webhook"]["depth"] == 1

    r = await http.post("/v1/dead-letters/purge", json={})
    assert r.status_code == 400 and "all" in r.json()["error"]  # everything must be asked for
    r = await http.post("/v1/dead-letters/purge", json={"ids": ids[1:2], "sink": "webhook"})
    assert r.json() == {"purged": 1}
    r = await http.post("/v1/dead-letters/replay", json={"sink": "webhook"})
    assert r.json() == {"replayed": 2}
    assert await store.dead_letters() == []


async def test_dead_letter_posts_need_a_json_body(store: Store, http: httpx.AsyncClient) -> None:
    await make_dead_letters(store, 1)
    # A web page can send a text/plain POST to loopback without a CORS preflight; not JSON.
    r = await http.post(
        "/v1/dead-letters/purge", content=b'{"all": true}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    for bad in ([1], {"ids": "1"}, {"ids": [True]}, {"sink": 1}, {"all": "yes"}, {"x": 1}):
        r = await http.post("/v1/dead-letters/purge", json=bad)
        assert r.status_code == 400, bad
    r = await http.post(
        "/v1/dead-letters/purge", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert len(await store.dead_letters()) == 1


def test_only_loopback_hosts_are_accepted_on_loopback() -> None:
    hosts = ApiGuard("127.0.0.1:9780").hosts
    for host in ("127.0.0.1:9780", "localhost:9780", "[::1]:9780", "LOCALHOST"):
        assert host_name(host) in hosts, host
    for host in (
        "evil.example:9780",
        "10.0.0.1:9780",
        "[2001:db8::1]:9780",
        "127.0.0.1.evil.example",
    ):
        assert host_name(host) not in hosts, host
