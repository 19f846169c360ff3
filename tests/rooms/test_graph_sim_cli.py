"""Graph rooms through the real CLI against the project's simulator (``calendar_sim.graph``).

``edge-agent run -c FILE`` in a subprocess, the simulator over HTTPS with the certificate it
makes at start (written here as the config's ``ca_file``), a signature-checking webhook
receiver. The agent and the simulator both run on the wall clock; every event is placed at
whole days from today's UTC midnight, so no verdict depends on the hour (conftest.py).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from calendar_sim.graph import GraphSim, GraphSimConfig
from tests.e2e.harness import eventually, of_type
from tests.receivers import WebhookReceiver

pytestmark = pytest.mark.slow

SIM_SECRET = "graph-sim-secret-for-the-rooms-tests"


def at(days: int, hour: int) -> datetime:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=days, hours=hour)


class StampedSim:
    """The simulator with the arrival time and query of every request it served."""

    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim
        self.arrivals: list[tuple[float, str, dict[str, str]]] = []

        @web.middleware
        async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
            self.arrivals.append((time.monotonic(), request.path, dict(request.query)))
            return await handler(request)

        sim.api.app.middlewares.insert(0, stamp)  # before start: the app is not frozen yet
        self.tokens: list[str] = []
        issue = sim.identity._issue

        def recording(app: Any) -> dict[str, Any]:
            out = issue(app)
            self.tokens.append(str(out.get("access_token")))
            return out

        sim.identity._issue = recording  # type: ignore[method-assign]

    def delta(self, mailbox: str) -> list[tuple[float, dict[str, str]]]:
        path = f"/v1.0/users/{mailbox}/calendarView/delta"
        return [(t, q) for t, p, q in self.arrivals if p == path]


@pytest.fixture
async def sim() -> AsyncIterator[StampedSim]:
    # 105 rooms: the places directory answers 100 a page, so discovery needs two pages.
    g = GraphSim(GraphSimConfig(rooms=105, client_secret=SIM_SECRET, time_zone="UTC"))
    stamped = StampedSim(g)
    await g.start()
    yield stamped
    await g.stop()


def write_config(tmp_path: Path, sim: GraphSim, receiver: WebhookReceiver, extra: str = "") -> Path:
    ca = tmp_path / "graph-sim-ca.pem"
    ca.write_bytes(sim.cert_pem)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""site = "sim"
[store]
path = "{tmp_path / "agent.db"}"
[webhook]
url = "{receiver.url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:0"
[microsoft]
tenant_id = "{sim.config.tenant_id}"
client_id = "{sim.config.client_id}"
client_secret_file = "graph-secret"
authority_url = "{sim.authority_url}"
graph_url = "{sim.graph_url}"
ca_file = "{ca.name}"
poll_interval_s = 3
{extra}
"""
    )
    (tmp_path / "graph-secret").write_text(SIM_SECRET + "\n")
    return cfg


def of_room(events: list[dict[str, Any]], room: str, *types: str) -> list[dict[str, Any]]:
    return [e for e in of_type(events, *types) if e["data"]["room_id"] == room]


def created(events: list[dict[str, Any]], room: str) -> Counter[str]:
    return Counter(e["data"]["booking"]["id"] for e in of_room(events, room, "booking.created"))


async def test_sim_discovery_changes_resync_throttle_kill9(sim, receiver, tmp_path, spawn):
    g = sim.sim
    mbox = "room-7@contoso.com"
    first = g.add_event(mbox, at(1, 9), 60, "Planning")
    cfg = write_config(tmp_path, g, receiver)
    proc = await spawn(cfg, EDGE_AGENT_LOG_LEVEL="debug")

    # discovery beyond Graph's default page of 100 (the agent asks $top=999): a snapshot of
    # every room, each on its own room id (nextLink paging: test_graph_client.py)
    await eventually(
        lambda: (
            len({e["data"]["room_id"] for e in of_type(receiver.events, "bookings.snapshot")})
            >= 105
        ),
        "a snapshot of each of the 105 rooms",
        timeout=60,
    )
    places = [a for a in sim.arrivals if a[1].endswith("/places/microsoft.graph.room")]
    assert places and places[0][2].get("$top") == "999"
    snap = of_room(receiver.events, "room-7", "bookings.snapshot")[0]
    assert [b["id"] for b in snap["data"]["bookings"]] == [first.id]
    assert snap["data"]["source"] == "microsoft" and "device_id" not in snap["data"]
    assert snap["data"]["bookings"][0]["title"] == "Planning"

    # create, move, cancel, and an event leaving the window
    ev = g.add_event(mbox, at(2, 13), 30, "Review")
    await eventually(lambda: created(receiver.events, "room-7")[ev.id] == 1, timeout=20)
    g.move_event(mbox, ev.id, at(2, 15))
    await eventually(lambda: of_room(receiver.events, "room-7", "booking.moved"), timeout=20)
    g.cancel_event(mbox, ev.id)
    await eventually(lambda: of_room(receiver.events, "room-7", "booking.deleted"), timeout=20)
    g.move_event(mbox, first.id, at(40, 9))
    await eventually(
        lambda: len(of_room(receiver.events, "room-7", "booking.deleted")) == 2, timeout=20
    )
    deleted = [
        e["data"]["booking"]["id"] for e in of_room(receiver.events, "room-7", "booking.deleted")
    ]
    assert deleted == [ev.id, first.id]

    # 410: the simulator forgets the delta links; the agent lists in full and sweeps
    gone = g.add_event(mbox, at(3, 9), 30, "Gone soon")
    await eventually(lambda: created(receiver.events, "room-7")[gone.id] == 1, timeout=20)
    g.expire_sync_state(mbox)
    g.delete_event(mbox, gone.id)
    fresh = g.add_event(mbox, at(3, 11), 30, "After the reset")
    await eventually(lambda: created(receiver.events, "room-7")[fresh.id] == 1, timeout=30)
    await eventually(
        lambda: (
            gone.id
            in [
                e["data"]["booking"]["id"]
                for e in of_room(receiver.events, "room-7", "booking.deleted")
            ]
        ),
        timeout=20,
    )
    assert any("startDateTime" in q for _, q in sim.delta(mbox)[1:])  # a second full listing

    # 429 with Retry-After 2: the mailbox waits before its next call
    seen = len(sim.delta(mbox))
    g.throttle(mbox, retry_after=2.0, count=1)
    later = g.add_event(mbox, at(4, 9), 30, "After the throttle")
    await eventually(lambda: created(receiver.events, "room-7")[later.id] == 1, timeout=30)
    calls = [t for t, _ in sim.delta(mbox)[seen:]]
    assert calls[1] - calls[0] >= 2.0

    # kill -9, changes meanwhile, restart: resumed from the stored delta link, nothing twice
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    while_dead = g.add_event(mbox, at(5, 9), 30, "While dead")
    before = len(sim.delta(mbox))
    await spawn(cfg)
    await eventually(lambda: created(receiver.events, "room-7")[while_dead.id] == 1, timeout=30)
    assert "$deltatoken" in sim.delta(mbox)[before][1] or "$skiptoken" in sim.delta(mbox)[before][1]
    counts = created(receiver.events, "room-7")
    assert set(counts.values()) == {1}, counts
    assert receiver.bad_signatures == 0

    text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("agent-*.log"))
    assert "graph" in text.lower() and SIM_SECRET not in text
    assert sim.tokens, "the simulator issued tokens"
    for token in sim.tokens:
        assert token not in text
    assert "eyJ" not in text  # no JWT (access token) of any kind in the debug log
