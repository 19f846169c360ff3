"""DeviceSession with a fake device link (no sockets) and a real Store on a temporary file.

The fake implements what the session uses of XapiClient (subscribe / command / get / run /
close / connected, the on_connected / on_disconnected callbacks); each test drives feedback,
lists, link changes and time through the session and checks what it committed. Every commit is
recorded as it returns from the real store, so tests await commits, never sleep.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.backoff import Backoff
from edge_agent.config import DeviceSettings, config_from_dict, device_settings, resolve_secrets
from edge_agent.session import DeviceSession, SessionTuning
from edge_agent.store import Change, Store, StoreError
from tests.bookings.helpers import list_entry

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday; pinned, never the wall clock
WAIT_S = 5.0
DEVICE = "room-1"


class FakeClock:
    """Wall time that moves only when the test says; real monotonic time for timeouts."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._loop_origin = asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time() - self._loop_origin

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class FakeLink:
    """The client surface the session uses. ``bookings`` is what ``Bookings List`` answers."""

    def __init__(
        self,
        endpoint: Any,
        *,
        on_connected: Callable[[Any], Awaitable[Any]],
        on_disconnected: Callable[[BaseException | None], Any],
        request_timeout: float,
        clock: Any,
        **options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.connected = False
        self.closed = False
        self.handlers: list[tuple[str, Callable[[Mapping[str, Any]], Any], bool]] = []
        self.bookings: list[dict[str, Any]] = []
        self.settings: dict[str, Any] = {
            "Configuration Time Zone": "UTC",
            "Configuration Bookings AdhocBooking BookingTimeout": 60,
            "Status SystemUnit Software Version": "ce11.20",
            "Configuration RoomAnalytics": {"PeopleCountOutOfCall": "On"},
        }
        self.list_calls = 0
        self.subscribed = asyncio.Event()
        self._closed = asyncio.Event()

    # --- the surface -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected}

    async def subscribe(
        self, query: Any, handler: Callable[[Mapping[str, Any]], Any], notify: bool = False
    ) -> int:
        name = query if isinstance(query, str) else " ".join(query)
        self.handlers.append((name, handler, notify))
        if len(self.handlers) == 2:  # run() subscribes to events and status, then starts
            self.subscribed.set()
        return len(self.handlers)

    async def command(self, path: Any, /, **args: Any) -> Any:
        assert self.connected, "the session sent a command while the link was down"
        assert path == "Bookings List", path
        self.list_calls += 1
        offset, limit = int(args.get("Offset", 0)), int(args.get("Limit", 100))
        page = self.bookings[offset : offset + limit]
        return {"ResultInfo": {"TotalRows": str(len(self.bookings))}, "Booking": page}

    async def get(self, path: Any) -> Any:
        return self.settings[" ".join(path) if not isinstance(path, str) else path]

    async def run(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self.closed = True
        self._closed.set()
        if self.connected:
            self.connected = False
            self.on_disconnected(None)

    # --- what the test drives ----------------------------------------------------------------

    async def go_online(self) -> None:
        self.connected = True
        await self.on_connected(self)

    def go_offline(self, why: str) -> None:
        self.connected = False
        self.on_disconnected(ConnectionError(why))

    def feed(self, name: str, **body: Any) -> None:
        """An ``Event Bookings <name>`` notification, delivered as the client's reader does."""
        for query, handler, _ in self.handlers:
            if query == "Event Bookings":
                handler({"Event": {"Bookings": {name: body}}})


@dataclass
class Recorder:
    """Wraps the real ``Store.commit``: records each committed Change; can fail or hold."""

    real: Callable[[Change], Awaitable[None]]
    committed: asyncio.Queue[Change] = field(default_factory=asyncio.Queue)
    fail_next: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def commit(self, change: Change) -> None:
        self.attempts += 1
        self.entered.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("disk I/O error (injected)")
        await self.real(change)
        self.committed.put_nowait(change)

    async def next(self) -> Change:
        return await asyncio.wait_for(self.committed.get(), WAIT_S)

    async def next_with(self, event_type: str) -> Change:
        """Skip commits until one carrying an ``event_type`` envelope."""
        while True:
            change = await self.next()
            if event_type in types(change):
                return change


def types(change: Change) -> list[str]:
    return [e["type"] for e in change.events]


def outbox(path: Path) -> list[dict[str, Any]]:
    """Every envelope in the store's outbox, in order (read with plain sqlite3)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT body FROM outbox ORDER BY seq").fetchall()
    return [json.loads(body) for (body,) in rows]


def settings(**defaults: Any) -> DeviceSettings:
    raw = {
        "site": "hq",
        "defaults": {"password_env": "PW", **defaults},
        "devices": [{"id": DEVICE, "url": "ws://127.0.0.1:1/ws"}],
    }
    cfg = config_from_dict(raw, env={"PW": "pw"})
    (one,) = device_settings(cfg, resolve_secrets(cfg, env={"PW": "pw"}))
    return one


@dataclass
class Running:
    session: DeviceSession
    link: FakeLink
    store: Store
    recorder: Recorder
    clock: FakeClock
    path: Path


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    opts: dict[str, Any] = getattr(request, "param", {})
    path = tmp_path / "agent.db"
    clock = FakeClock(T0)
    store = await Store.open(path, clock=lambda: clock.now().timestamp())
    recorder = Recorder(store.commit)
    store.commit = recorder.commit  # type: ignore[method-assign]
    links: list[FakeLink] = []

    def factory(*args: Any, **kwargs: Any) -> FakeLink:
        links.append(FakeLink(*args, **kwargs))
        return links[-1]

    session = DeviceSession(
        settings(),
        site="hq",
        store=store,
        clock=clock,
        tuning=SessionTuning(relist_debounce_s=0.0, tick_max_s=0.01, **opts),
        store_backoff=Backoff(initial=0.001, maximum=0.001, jitter=0.0),
        link_factory=factory,
    )
    task = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(links[-1].subscribed.wait(), WAIT_S)
        yield Running(session, links[-1], store, recorder, clock, path)
    finally:
        recorder.gate.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()


async def online_and_listed(r: Running) -> None:
    await r.link.go_online()
    assert types(await r.recorder.next()) == ["device.online"]
    assert types(await r.recorder.next_with("bookings.snapshot")) == ["bookings.snapshot"]


async def test_online_then_list_then_snapshot(running: Running) -> None:
    r = running
    r.link.bookings = [
        list_entry(pos=1, Id="1", MeetingId="A", StartTime="2026-11-23T09:00:00Z"),
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T11:00:00Z",
            EndTime="2026-11-23T12:00:00Z",
        ),
    ]
    await r.link.go_online()
    online = await r.recorder.next()
    assert types(online) == ["device.online"]
    assert online.events[0]["data"]["software"] == "ce11.20"
    snap = await r.recorder.next()
    # The very first list reports only the snapshot, not a booking.created per booking.
    assert types(snap) == ["bookings.snapshot"]
    assert [b["meeting_id"] for b in snap.events[0]["data"]["bookings"]] == ["A", "B"]
    assert set(await r.store.load_window(DEVICE)) == {"A", "B"}
    assert r.link.list_calls == 1 and r.session.lists == 1
    assert [e["type"] for e in outbox(r.path)] == ["device.online", "bookings.snapshot"]


async def test_requested_then_created_resolves_the_pending_request(running: Running) -> None:
    r = running
    await online_and_listed(r)
    r.link.feed(
        "BookingRequested",
        BookingRequestUUID="u-1",
        Duration=30,
        StartTime="2026-11-23T08:00:00Z",
        Title="Ad hoc",
    )
    requested = await r.recorder.next()
    assert types(requested) == ["booking.requested"]
    assert [p.booking_request_uuid for p in await r.store.load_pending(DEVICE)] == ["u-1"]
    # The device confirms 4 s later; the created booking joins the list the re-list returns.
    r.clock.advance(4)
    r.link.bookings = [
        list_entry(
            Id="7",
            MeetingId="M7",
            Title="Ad hoc",
            StartTime="2026-11-23T08:00:00Z",
            EndTime="2026-11-23T08:30:00Z",
        )
    ]
    lists_before = r.link.list_calls
    r.link.feed(
        "BookingCreated",
        Id="7",
        MeetingId="M7",
        BookingRequestUUID="u-1",
        Duration=30,
        StartTime="2026-11-23T08:00:00Z",
        Title="Ad hoc",
    )
    created = await r.recorder.next()
    assert types(created) == ["booking.created"]
    data = created.events[0]["data"]
    assert data["pending_ms"] == 4000
    assert data["booking"]["booking_request_uuid"] == "u-1"
    assert created.pending_delete == ["u-1"]
    assert await r.store.load_pending(DEVICE) == []
    # A calendar change: the transition asked for a re-list and the session ran it.
    await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == lists_before + 1
    assert list(await r.store.load_window(DEVICE)) == ["M7"]


async def test_a_request_past_its_deadline_expires_at_the_next_list(running: Running) -> None:
    r = running
    await online_and_listed(r)
    r.link.feed("BookingRequested", BookingRequestUUID="u-9", Duration=30, StartTime="", Title="")
    assert types(await r.recorder.next()) == ["booking.requested"]
    # Past BookingTimeout 60 + request_grace_s 30 (the one default): the tick asks for the
    # list that expires it.
    r.clock.advance(91)
    expired = await r.recorder.next_with("booking.request_expired")
    assert types(expired) == ["booking.request_expired", "bookings.snapshot"]
    assert await r.store.load_pending(DEVICE) == []


async def test_link_changes_emit_offline_and_online_and_relist(running: Running) -> None:
    r = running
    await online_and_listed(r)
    r.link.go_offline("connection reset")
    offline = await r.recorder.next()
    assert types(offline) == ["device.offline"]
    assert offline.events[0]["data"]["reason"] == "connection reset"
    await r.link.go_online()
    assert types(await r.recorder.next()) == ["device.online"]
    await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == 2


@pytest.mark.parametrize("running", [{"queue_max": 4}], indirect=True)
async def test_overflow_drops_feedback_and_relists_to_catch_up(running: Running) -> None:
    r = running
    await online_and_listed(r)
    r.recorder.gate.clear()  # the store is stuck: the worker waits in its first commit
    r.link.feed("BookingRequested", BookingRequestUUID="u-0", Duration=30, StartTime="", Title="")
    r.recorder.entered.clear()
    await asyncio.wait_for(r.recorder.entered.wait(), WAIT_S)  # the worker holds u-0
    for i in range(1, 11):
        r.link.feed(
            "BookingRequested", BookingRequestUUID=f"u-{i}", Duration=30, StartTime="", Title=""
        )
    assert r.session.dropped_feedback == 6  # 4 queued behind the blocked one, 6 dropped
    r.link.bookings = [
        list_entry(
            Id="3", MeetingId="C", StartTime="2026-11-23T10:00:00Z", EndTime="2026-11-23T11:00:00Z"
        )
    ]
    r.recorder.gate.set()
    requested = [types(await r.recorder.next()) for _ in range(5)]
    assert requested == [["booking.requested"]] * 5
    # The overflow asked for a list: the device's calendar says what the dropped events would.
    snap = await r.recorder.next_with("bookings.snapshot")
    assert [b["meeting_id"] for b in snap.events[-1]["data"]["bookings"]] == ["C"]
    pending = {p.booking_request_uuid for p in await r.store.load_pending(DEVICE)}
    assert pending == {f"u-{i}" for i in range(5)}


async def test_a_store_failure_is_retried_without_losing_events(running: Running) -> None:
    r = running
    r.recorder.fail_next = 2
    await r.link.go_online()
    online = await r.recorder.next()
    assert types(online) == ["device.online"]
    assert r.session.store_errors == 2
    await r.recorder.next_with("bookings.snapshot")
    # Stored exactly once each, in order: the failed attempts wrote nothing.
    assert [e["type"] for e in outbox(r.path)] == ["device.online", "bookings.snapshot"]
