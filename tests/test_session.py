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
import structlog

from edge_agent.backoff import Backoff
from edge_agent.bookings.models import MAX_LIST_PAGES
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
            "Status Time SystemTime": "2026-11-23T08:00:03Z",  # 3 s ahead of T0: in step
            "Configuration RoomAnalytics": {"PeopleCountOutOfCall": "On"},
        }
        self.list_calls = 0
        self.deletes: list[dict[str, Any]] = []
        self.current: dict[str, Mapping[str, Any]] = {}
        """What a NotifyCurrentValue subscription to that query delivers as it is made."""
        """The parameters of each ``Bookings Delete`` the session sent."""
        self.list_answer: Callable[[int, int], Any] | None = None
        """Answers ``Bookings List (Offset, Limit)`` instead of ``bookings`` (a lying device)."""
        self.after_answer: Callable[[], None] | None = None
        """Called (once) as a list's answer is read, before the session gets to it: feedback
        it delivers was read after the answer (the device sent it just after)."""
        self.frames_read = 0
        """Frames "read": one per feedback delivered and per answer, as the real reader counts."""
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
        if notify and name in self.current:
            handler(self.current[name])
        if len(self.handlers) == 2:  # run() subscribes to events and status, then starts
            self.subscribed.set()
        return len(self.handlers)

    async def command(self, path: Any, /, **args: Any) -> Any:
        assert self.connected, "the session sent a command while the link was down"
        if path == "Bookings Delete":
            self.deletes.append(args)
            return {"status": "OK"}
        assert path == "Bookings List", path
        self.list_calls += 1
        await asyncio.sleep(0)  # a real link suspends here: let the test's timeouts run
        offset, limit = int(args.get("Offset", 0)), int(args.get("Limit", 100))
        if self.list_answer is not None:
            return self.list_answer(offset, limit)
        page = self.bookings[offset : offset + limit]
        return {"ResultInfo": {"TotalRows": str(len(self.bookings))}, "Booking": page}

    async def command_at(self, path: Any, /, **args: Any) -> tuple[Any, int]:
        result = await self.command(path, **args)
        self.frames_read += 1
        frame = self.frames_read
        if self.after_answer is not None:
            hook, self.after_answer = self.after_answer, None
            hook()
        return result, frame

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

    def status(self, query: str, payload: Mapping[str, Any]) -> None:
        """A status feedback (or a current value) to the ``query`` subscription."""
        for subscribed, handler, _ in self.handlers:
            if subscribed == query:
                self.frames_read += 1
                handler(payload)

    def feed(self, name: str, **body: Any) -> None:
        """An ``Event Bookings <name>`` notification, delivered as the client's reader does."""
        for query, handler, _ in self.handlers:
            if query == "Event Bookings":
                self.frames_read += 1
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
    task: asyncio.Task[None]


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    opts: dict[str, Any] = dict(getattr(request, "param", {}))
    defaults: dict[str, Any] = opts.pop("defaults", {})  # device settings, the rest is tuning
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
        settings(**defaults),
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
        yield Running(session, links[-1], store, recorder, clock, path, task)
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


async def test_release_deletes_by_meeting_id_when_the_booking_has_one(running: Running) -> None:
    """The xAPI: a hybrid calendar's ``Id`` may not survive a reboot, its ``MeetingId`` does; a
    local-calendar booking (MeetingId empty) is deleted by ``Id``."""
    r = running
    r.link.bookings = [
        list_entry(pos=1, Id="7", MeetingId="M7", StartTime="2026-11-23T09:00:00Z"),
        list_entry(
            pos=2,
            Id="8",
            MeetingId="",
            StartTime="2026-11-23T11:00:00Z",
            EndTime="2026-11-23T12:00:00Z",
        ),
    ]
    await online_and_listed(r)
    released = await r.session.release("7")
    assert released.meeting_id == "M7"
    await r.session.release("8")
    assert r.link.deletes == [{"MeetingId": "M7"}, {"Id": "8"}]
    with pytest.raises(LookupError):
        await r.session.release("9")
    assert len(r.link.deletes) == 2  # an unknown booking sends nothing


@pytest.mark.parametrize(
    "running", [{"defaults": {"ghost_after_s": 1, "release_after_s": 1}}], indirect=True
)
async def test_a_ghost_release_deletes_by_meeting_id(running: Running) -> None:
    r = running
    r.link.current["Status RoomAnalytics"] = {
        "Status": {"RoomAnalytics": {"PeopleCount": {"Current": 0}, "PeoplePresence": "No"}}
    }
    r.link.bookings = [
        list_entry(
            Id="7",
            MeetingId="M7",
            StartTime="2026-11-23T08:00:00Z",
            EndTime="2026-11-23T08:30:00Z",
        )
    ]
    await online_and_listed(r)
    r.link.feed("Start", Id="7", MeetingId="M7")
    await r.recorder.next_with("booking.started")
    r.clock.advance(5)  # empty past ghost_after_s and release_after_s
    await r.recorder.next_with("booking.released")
    assert r.link.deletes == [{"MeetingId": "M7"}]


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
    assert requested.events[0]["data"]["booking_request_uuid"] == "u-1"
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
    assert data["booking_request_uuid"] == "u-1"  # where booking.failed/request_expired have it
    assert created.pending_delete == ["u-1"]
    assert await r.store.load_pending(DEVICE) == []
    # A calendar change: the transition asked for a re-list and the session ran it.
    await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == lists_before + 1
    assert list(await r.store.load_window(DEVICE)) == ["M7"]


async def test_a_list_answered_before_an_event_it_lacks_is_not_applied_after_it(
    running: Running,
) -> None:
    """The device answers a list, then sends BookingCreated for the request it just confirmed;
    the reader delivers the event before the lister gets to its answer. The older list must not
    be applied after the event (it would delete the booking, and the next list would bring it
    back without the request it resolved): it is dropped and the room listed again."""
    r = running
    await online_and_listed(r)
    r.link.feed(
        "BookingRequested",
        BookingRequestUUID="u-1",
        Duration=30,
        StartTime="2026-11-23T08:00:00Z",
        Title="Ad hoc",
    )
    await r.recorder.next_with("booking.requested")
    entry = list_entry(
        Id="7",
        MeetingId="M7",
        Title="Ad hoc",
        StartTime="2026-11-23T08:00:00Z",
        EndTime="2026-11-23T08:30:00Z",
    )

    def confirmed_just_after_the_answer() -> None:
        r.link.bookings = [entry]
        r.link.feed(
            "BookingCreated",
            Id="7",
            MeetingId="M7",
            BookingRequestUUID="u-1",
            Duration=30,
            StartTime="2026-11-23T08:00:00Z",
            Title="Ad hoc",
        )

    r.link.after_answer = confirmed_just_after_the_answer
    lists_before = r.link.list_calls
    r.link.feed("Updated")  # someone else's change: the session lists (the answer lacks M7)
    created = await r.recorder.next_with("booking.created")
    assert created.events[0]["data"]["booking"]["booking_request_uuid"] == "u-1"
    snapshot = await r.recorder.next_with("bookings.snapshot")
    assert "booking.deleted" not in types(snapshot) and "booking.created" not in types(snapshot)
    assert [b["id"] for b in snapshot.events[-1]["data"]["bookings"]] == ["7"]
    assert r.link.list_calls == lists_before + 2  # the stale one, then the one applied
    window = await r.store.load_window(DEVICE)
    assert [b["booking_request_uuid"] for b in window.values()] == ["u-1"]
    assert all(e["type"] != "booking.deleted" for e in outbox(r.path))


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


async def test_device_online_comes_before_the_room_events_of_a_connect(running: Running) -> None:
    """On connect the re-made subscriptions deliver their current values (Status Bookings, then
    RoomAnalytics while the session reads the device's settings) before ``on_connected`` ends;
    ``device.online`` is stored first all the same, dated no later than the first of them."""
    r = running
    r.link.current["Status RoomAnalytics"] = {
        "Status": {"RoomAnalytics": {"PeopleCount": {"Current": 2}, "PeoplePresence": "Yes"}}
    }
    r.link.connected = True  # the client re-subscribes before it calls on_connected
    avail = {"Status": "Free", "TimeStamp": "2026-11-23T09:00:00Z"}
    r.link.status("Status Bookings", {"Status": {"Bookings": {"Availability": avail}}})
    r.clock.advance(1)  # the settings take a while to read
    await r.link.on_connected(r.link)
    await r.recorder.next_with("bookings.snapshot")
    stored = [e for e in outbox(r.path) if e["type"] != "bookings.snapshot"]
    assert [e["type"] for e in stored] == ["device.online", "room.availability", "room.occupancy"]
    online, room = stored[0], stored[1]
    assert online["data"]["software"] == "ce11.20"
    assert online["data"]["observed_at"] <= room["data"]["observed_at"]

    # A link lost before it came up applies what it sent (nothing is lost), then goes offline.
    r.link.go_offline("reset")
    await r.recorder.next_with("device.offline")
    r.link.connected = True
    r.link.status("Status Bookings", {"Status": {"Bookings": {"Availability": {"Status": "Busy"}}}})
    r.link.go_offline("reset again")
    await r.recorder.next_with("room.availability")
    assert [e["type"] for e in outbox(r.path)][-2:] == ["device.offline", "room.availability"]


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


# --- poison values (issue 10, item 2): one odd value costs its entry or event, never the room --


def assert_never_restarted(r: Running) -> None:
    """The session's run() is still the first one and no device.offline was ever emitted."""
    assert not r.task.done(), r.task.exception() if r.task.done() else None
    assert "device.offline" not in [e["type"] for e in outbox(r.path)]


POISON_LIST_ENTRIES: list[tuple[str, dict[str, Any]]] = [
    ("end out of range", list_entry(pos=1, Id="1", EndTime="9999-12-31T23:59:59-01:00")),
    ("start out of range", list_entry(pos=1, Id="1", StartTime="0001-01-01T00:00:00+01:00")),
]


@pytest.mark.parametrize(
    ("why", "bad"), POISON_LIST_ENTRIES, ids=[w for w, _ in POISON_LIST_ENTRIES]
)
async def test_a_poisoned_list_entry_costs_that_entry_only(
    running: Running, why: str, bad: dict[str, Any]
) -> None:
    r = running
    r.link.bookings = [
        bad,
        list_entry(
            pos=2,
            Id="2",
            MeetingId="B",
            StartTime="2026-11-23T11:00:00Z",
            EndTime="2026-11-23T12:00:00Z",
        ),
    ]
    with structlog.testing.capture_logs() as logs:
        await r.link.go_online()
        assert types(await r.recorder.next()) == ["device.online"]
        snap = await r.recorder.next_with("bookings.snapshot")
    assert [b["meeting_id"] for b in snap.events[-1]["data"]["bookings"]] == ["B"]
    assert set(await r.store.load_window(DEVICE)) == {"B"}
    assert r.session.skipped_entries == 1 and r.session.info()["skipped_entries"] == 1
    skipped = [e for e in logs if e["log_level"] == "warning" and "skipped" in e.get("detail", "")]
    assert len(skipped) == 1 and skipped[0]["device"] == DEVICE and "Id=1" in skipped[0]["detail"]
    # Every later list fails the same entry and still applies the rest: the room is not blind.
    r.link.feed("Updated")
    await r.recorder.next_with("bookings.snapshot")
    assert r.session.lists == 2 and r.session.skipped_entries == 2
    assert_never_restarted(r)


async def test_a_poisoned_event_is_dropped_and_the_next_one_applies(running: Running) -> None:
    r = running
    await online_and_listed(r)
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    with structlog.testing.capture_logs() as logs:
        r.link.feed("BookingCreated", Id="9", StartTime="9999-12-31T23:00:00Z", Duration="120")
        r.link.feed("BookingCreated", Id="9", StartTime="0001-01-01T00:00:00+01:00")
        r.link.feed("BookingRequested", BookingRequestUUID="u-x", Duration="inf", StartTime="")
        r.link.feed("BookingCreated", Id="9", MeetingId="M9", Extra=deep)
        r.link.feed("BookingRequested", BookingRequestUUID="u-1", Duration=30, StartTime="")
        # Whatever the poisoned ones did, the good event behind them is stored.
        await r.recorder.next_with("booking.requested")
        while "u-1" not in {p.booking_request_uuid for p in await r.store.load_pending(DEVICE)}:
            await r.recorder.next()
    deep_drop = [e for e in logs if e["log_level"] == "warning" and "deep" in e.get("detail", "")]
    assert len(deep_drop) == 1 and deep_drop[0]["device"] == DEVICE
    assert_never_restarted(r)


# --- a device that lies about TotalRows (issue 10, item 5) --------------------------------------


def _lying_page(ids: range) -> dict[str, Any]:
    entries = [
        list_entry(pos=i, Id=str(i), MeetingId=f"M{i}", StartTime="2026-11-23T09:00:00Z")
        for i in ids
    ]
    return {"ResultInfo": {"TotalRows": str(10**9)}, "Booking": entries}


async def test_a_device_repeating_the_same_page_forever_is_read_once(running: Running) -> None:
    r = running
    r.link.list_answer = lambda offset, limit: _lying_page(range(1, 4))  # ignores Offset
    with structlog.testing.capture_logs() as logs:
        await r.link.go_online()
        snap = await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == 2  # the first page, and the one that repeated it
    assert [b["meeting_id"] for b in snap.events[-1]["data"]["bookings"]] == ["M1", "M2", "M3"]
    (warning,) = [e for e in logs if "cut short" in e["event"]]
    assert warning["device"] == DEVICE and warning["bookings_kept"] == 3
    assert "repeats" in warning["reason"] and warning["total_rows"] == 10**9
    assert r.session.info()["lists_cut_short"] == 1
    # The slot was released: the next list runs (and is cut short the same way).
    r.link.feed("Updated")
    await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == 4 and r.session.lists == 2


async def test_a_device_paging_forever_is_capped(running: Running) -> None:
    r = running
    # Fresh Ids on every page, TotalRows 10^9: only the page cap stops it.
    r.link.list_answer = lambda offset, limit: _lying_page(range(offset, offset + 2))
    with structlog.testing.capture_logs() as logs:
        await r.link.go_online()
        snap = await r.recorder.next_with("bookings.snapshot")
    assert r.link.list_calls == MAX_LIST_PAGES
    assert len(snap.events[-1]["data"]["bookings"]) == 2 * MAX_LIST_PAGES
    (warning,) = [e for e in logs if "cut short" in e["event"]]
    assert "page cap" in warning["reason"] and warning["device"] == DEVICE


async def test_a_list_cut_short_deletes_nothing(running: Running) -> None:
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
    await online_and_listed(r)
    # Now the device lies: it repeats a page that lacks B. B must not read as deleted.
    r.link.list_answer = lambda offset, limit: {
        "ResultInfo": {"TotalRows": str(10**9)},
        "Booking": [list_entry(pos=1, Id="1", MeetingId="A", StartTime="2026-11-23T09:00:00Z")],
    }
    r.link.feed("Updated")
    snap = await r.recorder.next_with("bookings.snapshot")
    assert "booking.deleted" not in types(snap)
    assert set(await r.store.load_window(DEVICE)) == {"A", "B"}


# --- the device's clock and zone (issue 10, item 8) --------------------------------------------


def warnings_of(logs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] == "warning" and text in e["event"]]


@pytest.mark.parametrize("device_time", ["2099-11-23T08:00:00Z", "1971-01-01T00:00:00Z"])
async def test_a_device_clock_far_off_is_reported_and_the_window_is_the_agents(
    running: Running, device_time: str
) -> None:
    r = running
    r.link.settings["Status Time SystemTime"] = device_time
    r.link.bookings = [list_entry(Id="1", MeetingId="A", StartTime="2026-11-23T09:00:00Z")]
    with structlog.testing.capture_logs() as logs:
        await r.link.go_online()
        snap = await r.recorder.next_with("bookings.snapshot")
    (warning,) = warnings_of(logs, "device clock is off")
    assert warning["device"] == DEVICE
    assert warning["device_time"] == device_time.replace("Z", ".000Z")
    assert warning["agent_time"] == "2026-11-23T08:00:00.000Z"
    assert "window follows the agent's clock" in warning["event"]
    assert abs(r.session.info()["clock_skew_s"]) > 300
    # The window is the agent's day, whatever the device's clock says.
    window = snap.events[-1]["data"]["window"]
    assert window == {"start": "2026-11-23T00:00:00.000Z", "end": "2026-11-24T08:00:00.000Z"}
    assert [b["meeting_id"] for b in snap.events[-1]["data"]["bookings"]] == ["A"]


async def test_a_device_clock_in_step_is_not_reported(running: Running) -> None:
    r = running
    with structlog.testing.capture_logs() as logs:
        await online_and_listed(r)
    assert warnings_of(logs, "clock") == []
    assert r.session.info()["clock_skew_s"] == 3.0


@pytest.mark.parametrize(
    ("zone", "text"),
    [("Mars/Olympus_Mons", "unknown time zone"), (5, "not a name"), ({"x": 1}, "not a name")],
)
async def test_a_bad_device_zone_is_reported_with_the_device(
    running: Running, zone: Any, text: str
) -> None:
    r = running
    r.link.settings["Configuration Time Zone"] = zone
    with structlog.testing.capture_logs() as logs:
        await online_and_listed(r)
    (warning,) = warnings_of(logs, text)
    assert warning["device"] == DEVICE and warning["source"] == "the device"
    assert r.session.info()["time_zone"] == "UTC"  # the configured zone is kept



async def test_the_stored_event_debug_line_follows_the_log_level(running: Running) -> None:
    """Each stored event is logged at debug (its ids: what an operator greps for); below that
    level the line is skipped before structlog builds it (once per event on the hot path)."""
    import logging

    from structlog.testing import capture_logs

    stdlog = logging.getLogger("edge_agent.session")
    saved = stdlog.level
    try:
        stdlog.setLevel(logging.DEBUG)
        with capture_logs() as logs:
            await online_and_listed(running)
        assert "event stored" in [e["event"] for e in logs]
        stdlog.setLevel(logging.INFO)
        with capture_logs() as logs:
            running.link.go_offline("test")
            assert types(await running.recorder.next()) == ["device.offline"]
        assert "event stored" not in [e["event"] for e in logs]
    finally:
        stdlog.setLevel(saved)
