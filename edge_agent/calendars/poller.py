"""The I/O shell for calendar rooms, one for every source: discovery, then per room a full sync
and incremental polling. A source (Graph, Google) is a :class:`CalendarSource`: its room
directory and one whole round of its change feed, mapped to delta items; everything else --
pacing, the window, failures, the store -- is this module's, the same for every source.

One task per room (``<name>[<room_id>]``, e.g. ``graph[room-b]``) and one for the directory
(``<name>-rooms``), in one TaskGroup. Per round: plan (pure,
:func:`~edge_agent.calendars.sync.plan_round`), fetch the whole chain and map it
(:meth:`CalendarSource.fetch_round`), apply (pure), then hand the new state and the changes to
the store in one call -- the store commits the delta link, the window rows and the
outbox events in one transaction, so a kill -9 either loses the round (it is fetched again from
the previous link, and re-applying reports nothing twice) or keeps all of it.

Pacing: each room polls every ``poll_interval_s`` +-10 %, from a random phase inside the first
interval, so 2,000 rooms spread over the minute instead of firing in the same second; at most
``max_rounds_in_flight`` rounds run at once across rooms (memory and sockets stay bounded); a
room also wakes at its local midnight (the window rolls) and on :meth:`CalendarPoller.poke`
(the hook for push notifications: a notification only triggers a delta fetch). A source with a
request quota (Google's per-user limit) paces its own requests; a room then simply waits
longer in its round, and the effective interval stretches to what the quota allows.

Failures never stop other rooms: a room's error is logged with its id and the advice in the
error's message, kept in :meth:`CalendarPoller.status`, and the room retries on the one backoff.

In a fleet (``owned`` given) the directory still lists every room on every member (each tells
``on_directory``, so the fleet can lease them), but a member runs only the rooms it holds:
:meth:`CalendarPoller.start_room` when it takes a room's lease (or the linked device's),
:meth:`CalendarPoller.stop_room` the moment it gives it up or loses it. Stopping keeps the
stored state (no empty snapshot: the room did not leave the directory); the next owner's task
loads the committed delta link and resumes from it. A room that leaves the directory is
reported empty by the member that runs it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import structlog

from edge_agent.backoff import Backoff
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.auth import AuthError
from edge_agent.calendars.errors import CalendarSourceError, ResyncRequired
from edge_agent.calendars.model import CalendarBooking, room_id_from_mailbox
from edge_agent.calendars.sync import (
    BookingChange,
    DeltaItem,
    RoundPlan,
    SyncResult,
    SyncState,
    apply_round,
    next_roll,
    plan_round,
    resync_required,
    room_removed,
)
from edge_agent.clock import Clock, system_clock

__all__ = [
    "CalendarPoller",
    "CalendarRoom",
    "CalendarSource",
    "CalendarStore",
    "DirectoryRoom",
    "FetchedRound",
    "RoomStatus",
    "RoomUpdate",
    "SourceName",
    "first_poll_delay",
    "next_poll_delay",
]

log = structlog.get_logger(__name__)

SourceName = Literal["microsoft", "google"]  # the envelope's data.source of a calendar room
ROOM_ERROR_BACKOFF = Backoff(initial=10.0, maximum=600.0)  # a failing room, between rounds
POLL_JITTER = 0.1  # +-10 % per interval: phases drift apart instead of re-aligning


def first_poll_delay(interval_s: float, rng: random.Random) -> float:
    """A room's phase: uniform in ``[0, interval_s)``, so N rooms spread over one interval."""
    return interval_s * rng.random()


def next_poll_delay(
    now_utc: datetime, interval_s: float, tz: ZoneInfo, rng: random.Random
) -> float:
    """Seconds to the room's next round: the jittered interval, but never past the local
    midnight at which its window rolls (plus a millisecond, to land after it)."""
    jittered = interval_s * rng.uniform(1.0 - POLL_JITTER, 1.0 + POLL_JITTER)
    until_roll = (next_roll(now_utc, tz) - now_utc).total_seconds() + 0.001
    return min(jittered, until_roll)


@dataclass(frozen=True, slots=True)
class CalendarRoom:
    """A room whose window comes from a calendar (a Graph room mailbox, a Google resource
    calendar's ``resourceEmail``). ``device_id`` when a device is linked (``[[devices]]
    calendar``): the room id is then the device id."""

    room_id: str
    mailbox: str
    time_zone: ZoneInfo
    device_id: str | None = None
    display_name: str | None = None
    discovered: bool = False  # from the directory: it stops when the directory drops it


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    """What a round gives the cloud: booking changes (in order) and, when due, the snapshot.
    ``window`` is the range the snapshot covers (None with the empty snapshot of a room that
    left the directory)."""

    room_id: str
    source: SourceName
    changes: tuple[BookingChange, ...]
    snapshot: tuple[CalendarBooking, ...] | None
    window: WindowBounds | None
    observed_at: datetime
    device_id: str | None = None


class DirectoryRoom(Protocol):
    """A room as a source's directory lists it (Graph ``GraphRoom``, Google ``GoogleRoom``)."""

    @property
    def mailbox(self) -> str: ...

    @property
    def display_name(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class FetchedRound:
    """One whole round of a source's change feed, mapped: the items in order, the link (Graph
    delta link, Google sync token) that resumes the round next time, and notes on entries that
    could not be mapped at all."""

    items: list[DeltaItem]
    next_link: str
    notes: list[str] = field(default_factory=list)


class CalendarSource(Protocol):
    """What the poller needs from a calendar service. Errors: :class:`ResyncRequired` when the
    source lost the round, other :class:`CalendarSourceError` or :class:`AuthError` for the
    rest (the room retries on the backoff)."""

    @property
    def name(self) -> str:
        """``graph``/``google``: names the tasks and the log lines."""
        ...

    @property
    def source(self) -> SourceName:
        """The events' ``data.source``."""
        ...

    async def list_rooms(self) -> Sequence[DirectoryRoom]:
        """Every room of the directory (all pages)."""
        ...

    async def fetch_round(
        self, room: CalendarRoom, plan: RoundPlan, stored: Mapping[str, CalendarBooking]
    ) -> FetchedRound:
        """The whole round ``plan`` asks for (a full listing over ``plan.bounds`` when
        ``plan.full``, else from ``plan.delta_link``), mapped against the ``stored`` window."""
        ...

    def forget_mailbox(self, mailbox: str) -> None:
        """Drop a removed room's per-calendar state (throttling gates)."""
        ...


class CalendarStore(Protocol):
    """What the poller needs from the agent's store (docs/internals.md "edge_agent.calendars")."""

    async def load_sync_state(self, room_id: str) -> SyncState | None:
        """The stored state of ``room_id`` (delta link, window range and rows), None if none."""
        ...

    async def save_sync_state(
        self, room_id: str, state: SyncState, update: RoomUpdate | None
    ) -> None:
        """In ONE transaction: replace the room's sync state and window rows with ``state``
        (``SyncState()`` = forget the room) and put ``update``'s events in the outbox."""
        ...


@dataclass(slots=True)
class RoomStatus:
    """For ``edge-agent status`` and ``/v1/rooms``."""

    room: CalendarRoom
    last_sync: datetime | None = None
    last_error: str | None = None
    window_size: int = 0
    rounds: int = 0


@dataclass(slots=True)
class _RoomTask:
    room: CalendarRoom
    task: asyncio.Task[None]
    poke: asyncio.Event = field(default_factory=asyncio.Event)


class CalendarPoller:
    """Runs every room of one source. ``rooms``: those listed in config (linked devices,
    ``[[rooms]]``); with ``discover`` the directory's rooms are added (a configured room wins on
    its id or mailbox)."""

    def __init__(
        self,
        source: CalendarSource,
        store: CalendarStore,
        *,
        rooms: Sequence[CalendarRoom] = (),
        discover: bool = True,
        default_zone: ZoneInfo,
        poll_interval_s: float = 60.0,
        refresh_rooms_s: float = 86400.0,
        horizon_days: int = 7,
        max_rounds_in_flight: int = 32,
        error_backoff: Backoff = ROOM_ERROR_BACKOFF,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
        interval_for: Callable[[str, float], float] | None = None,
        on_rooms: Callable[[Mapping[str, CalendarRoom]], None] | None = None,
        reserved_ids: Collection[str] = (),
        owned: Collection[str] | None = None,
        on_directory: Callable[[Mapping[str, CalendarRoom]], None] | None = None,
    ) -> None:
        """``interval_for(room_id, poll_interval_s)``: a room's interval (push stretches it
        while its subscription is healthy); ``on_rooms(rooms)``: told the running set after each
        change (push subscribes those rooms); ``reserved_ids``: room ids taken by something
        else (devices without a calendar): a directory room with one of them is skipped.

        Fleet mode: ``owned``, the room ids this member may run now (``None``: every room, an
        agent alone), then :meth:`start_room` / :meth:`stop_room`; ``on_directory(rooms)``:
        told every room there is (configured and discovered, owned or not) after each refresh.
        """
        self._reserved = frozenset(reserved_ids)
        self._owned: set[str] | None = None if owned is None else set(owned)
        self._on_directory = on_directory
        self._known: dict[str, CalendarRoom] = {}  # every room there is, running or not
        self._source = source
        self._interval_for = interval_for
        self._on_rooms = on_rooms
        self._name = source.name
        self._store = store
        self._configured = {r.room_id: r for r in rooms}
        self._discover = discover
        self._zone = default_zone
        self._interval = poll_interval_s
        self._refresh = refresh_rooms_s
        self._horizon = horizon_days
        self._rounds = asyncio.Semaphore(max_rounds_in_flight)
        self._error_backoff = error_backoff
        self._clock = clock
        self._rng = rng or random.Random()
        self._tasks: dict[str, _RoomTask] = {}
        self._unreported: dict[str, CalendarRoom] = {}  # left the directory, store failed
        self._status: dict[str, RoomStatus] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.rooms_ready = asyncio.Event()  # set after the first room-set is running

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Run until cancelled (cancel-safe: every room task stops at its next await)."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self._discover:
                    tg.create_task(self._directory_loop(), name=f"{self._name}-rooms")
                else:
                    await self._set_rooms(list(self._configured.values()))
                    self.rooms_ready.set()
        finally:
            self._tg = None  # a start_room after the end starts nothing

    def poke(self, room_id: str) -> bool:
        """Fetch ``room_id``'s delta now (the push hook). False for an unknown room."""
        rt = self._tasks.get(room_id)
        if rt is None:
            return False
        rt.poke.set()
        return True

    def status(self) -> dict[str, RoomStatus]:
        return dict(self._status)

    def rooms(self) -> dict[str, CalendarRoom]:
        """Every room there is (configured and discovered), whether this member runs it or not."""
        return dict(self._known)

    # ------------------------------------------------------------------ fleet: ownership

    def start_room(self, room_id: str) -> None:
        """This member holds ``room_id`` now (its lease, or its linked device's): run it if
        the directory has it, or as soon as it does. Does nothing for an agent alone."""
        if self._owned is None or room_id in self._owned:
            return
        self._owned.add(room_id)
        room = self._known.get(room_id)
        if room is not None and self._tg is not None and room_id not in self._tasks:
            self._launch(room)
            self._tell_rooms()

    async def stop_room(self, room_id: str) -> None:
        """This member gave ``room_id`` up or lost it: stop its task now (its stored state
        stays: the next owner resumes from it). Cancel-safe."""
        if self._owned is None:
            return
        self._owned.discard(room_id)
        if room_id in self._tasks:
            await self._stop_room(room_id, forget=False)
            self._status.pop(room_id, None)
            self._tell_rooms()

    def _mine(self, room_id: str) -> bool:
        return self._owned is None or room_id in self._owned

    # ------------------------------------------------------------------ the directory

    async def _directory_loop(self) -> None:
        attempt = 0
        while True:
            try:
                found = await self._source.list_rooms()
            except (CalendarSourceError, AuthError) as e:
                attempt += 1
                delay = self._error_backoff.delay(attempt, self._rng)
                log.error(
                    f"{self._name} room discovery failed", error=str(e), retry_in_s=round(delay)
                )
                # The configured rooms need not wait for the directory; a refresh that fails
                # later keeps the rooms already known (a fleet's members keep agreeing).
                if not self._known:
                    await self._set_rooms(list(self._configured.values()))
                    self.rooms_ready.set()
                await asyncio.sleep(delay)
                continue
            attempt = 0
            rooms = dict(self._configured)
            by_mailbox = {r.mailbox.lower(): r.room_id for r in rooms.values()}
            for g in found:
                if g.mailbox.lower() in by_mailbox:
                    continue  # configured (linked to a device, or listed by hand)
                try:
                    rid = room_id_from_mailbox(g.mailbox)
                except ValueError as e:
                    log.warning("directory room skipped", error=str(e))
                    continue
                if rid in self._reserved and rid not in self._configured:
                    log.error(
                        "a directory room has the id of a device; the room is skipped",
                        room=rid,
                        mailbox=g.mailbox,
                        fix=f"link the device to it ([[devices]] calendar = {g.mailbox!r}) or "
                        "list the room in [[rooms]] with its own id",
                    )
                    continue
                if rid in rooms:
                    log.error(
                        "two rooms would share one id; the second is skipped",
                        room=rid,
                        mailbox=g.mailbox,
                        kept=rooms[rid].mailbox,
                        fix="list one of them in [[rooms]] with its own id",
                    )
                    continue
                rooms[rid] = CalendarRoom(
                    rid, g.mailbox, self._zone, display_name=g.display_name, discovered=True
                )
                by_mailbox[g.mailbox.lower()] = rid
            log.info(f"{self._name} rooms", found=len(found), running=len(rooms))
            for rid, gone in list(self._unreported.items()):
                if rid in rooms:
                    del self._unreported[rid]  # back in the directory: its round relists it
                else:
                    await self._report_removed(gone)
            await self._set_rooms(list(rooms.values()))
            self.rooms_ready.set()
            await asyncio.sleep(self._refresh)

    async def _set_rooms(self, rooms: list[CalendarRoom]) -> None:
        assert self._tg is not None
        known = {r.room_id: r for r in rooms}
        # Before any await: a start_room meanwhile (the fleet took a lease) sees the new set.
        self._known = known
        # Rooms that left: reported empty by whoever runs them (here, if this member does).
        for rid in [k for k in self._tasks if k not in known]:
            await self._stop_room(rid)
        if self._on_directory is not None:
            self._on_directory(dict(known))
        for rid in [k for k in self._tasks if not self._mine(k)]:
            await self._stop_room(rid, forget=False)
            self._status.pop(rid, None)
        for rid, room in known.items():
            if not self._mine(rid):
                continue
            running = self._tasks.get(rid)
            if running is not None and running.room == room:
                continue
            # A room whose mailbox changed keeps its window but not the old mailbox's delta link.
            relist = running is not None and running.room.mailbox.lower() != room.mailbox.lower()
            if running is not None:
                await self._stop_room(rid, forget=False)
            if rid not in self._tasks and self._mine(rid):  # not stopped meanwhile by the fleet
                self._launch(room, relist=relist)
        self._tell_rooms()

    def _launch(self, room: CalendarRoom, *, relist: bool = False) -> None:
        assert self._tg is not None
        rid = room.room_id
        poke = asyncio.Event()
        task = self._tg.create_task(
            self._room_loop(room, poke, relist=relist), name=f"{self._name}[{rid}]"
        )
        self._tasks[rid] = _RoomTask(room, task, poke)
        self._status.setdefault(rid, RoomStatus(room))
        self._status[rid].room = room

    def _tell_rooms(self) -> None:
        if self._on_rooms is not None:
            self._on_rooms({rid: rt.room for rid, rt in self._tasks.items()})

    async def _stop_room(self, room_id: str, *, forget: bool = True) -> None:
        rt = self._tasks.pop(room_id, None)
        if rt is None:  # stopped meanwhile (the fleet gave it up during a refresh)
            return
        rt.task.cancel()
        await asyncio.wait([rt.task])  # its CancelledError stays in it; ours still propagates
        if not forget:
            return
        self._status.pop(room_id, None)
        self._source.forget_mailbox(rt.room.mailbox)
        await self._report_removed(rt.room)

    async def _report_removed(self, room: CalendarRoom) -> None:
        """The empty window of a room that left, once; kept for the next refresh if the store
        fails (the room is gone either way, and its stale window must not stay)."""
        try:
            state = await self._store.load_sync_state(room.room_id)
            if state is not None and (state.window is not None or state.bookings):
                result = room_removed(state)
                update = RoomUpdate(
                    room.room_id,
                    self._source.source,
                    (),
                    result.snapshot,
                    None,
                    self._clock.now(),
                    room.device_id,
                )
                await self._store.save_sync_state(room.room_id, result.state, update)
                log.info("room left the directory; its window reported empty", room=room.room_id)
        except Exception as e:  # noqa: BLE001 - the directory loop must survive a store failure
            self._unreported[room.room_id] = room
            log.error(
                "could not report a removed room; retrying at the next refresh",
                room=room.room_id,
                error=repr(e),
            )
        else:
            self._unreported.pop(room.room_id, None)

    # ------------------------------------------------------------------ one room

    async def _room_loop(
        self, room: CalendarRoom, poke: asyncio.Event, *, relist: bool = False
    ) -> None:
        rlog = log.bind(room=room.room_id, mailbox=room.mailbox)
        await self._wait(poke, first_poll_delay(self._interval, self._rng))
        loaded: SyncState | None = None
        state = SyncState()
        failures = 0
        while True:
            try:
                if loaded is None:  # inside the try: a store that fails to read is retried too
                    loaded = await self._store.load_sync_state(room.room_id) or SyncState()
                    state = resync_required(loaded) if relist else loaded
                async with self._rounds:
                    state = await self._round(room, state, rlog)
                failures = 0
                interval = self._interval
                if self._interval_for is not None:
                    interval = self._interval_for(room.room_id, interval)
                delay = next_poll_delay(self._clock.now(), interval, room.time_zone, self._rng)
            except ResyncRequired as e:
                rlog.warning("delta round lost; full resync", reason=str(e))
                # Not stored: after a restart the old link gets its 410 again, with the same result.
                state = resync_required(state)
                failures += 1
                # A full listing that is itself refused must not spin: back off after the first.
                delay = 0.0 if failures == 1 else self._error_backoff.delay(failures, self._rng)
            except (CalendarSourceError, AuthError) as e:
                failures += 1
                delay = self._error_backoff.delay(failures, self._rng)
                self._status[room.room_id].last_error = str(e)
                rlog.error("calendar sync failed", error=str(e), retry_in_s=round(delay))
            except Exception as e:  # noqa: BLE001 - a bug must not take the other 1,999 rooms down
                failures += 1
                delay = self._error_backoff.delay(failures, self._rng)
                self._status[room.room_id].last_error = f"internal error: {e!r}"
                rlog.exception("calendar sync crashed", retry_in_s=round(delay))
            now = self._clock.now()
            until_roll = (next_roll(now, room.time_zone) - now).total_seconds() + 0.001
            await self._wait(poke, min(delay, until_roll))

    async def _round(
        self, room: CalendarRoom, state: SyncState, rlog: structlog.BoundLogger
    ) -> SyncState:
        plan = plan_round(state, self._clock.now(), room.time_zone, self._horizon)
        if plan.full and state.window is not None and state.window != plan.bounds:
            rlog.info("window rolled; new round", start=plan.bounds.start.isoformat())
        got = await self._source.fetch_round(room, plan, state.bookings)
        now = self._clock.now()
        result: SyncResult = apply_round(state, plan, got.items, got.next_link, now)
        for note in (*got.notes, *result.notes):
            rlog.warning("calendar entry", note=note)
        update = None
        if result.changes or result.snapshot is not None:
            update = RoomUpdate(
                room.room_id,
                self._source.source,
                result.changes,
                result.snapshot,
                plan.bounds,
                now,
                room.device_id,
            )
        await self._store.save_sync_state(room.room_id, result.state, update)
        st = self._status[room.room_id]
        st.last_sync, st.last_error = now, None
        st.window_size = len(result.state.bookings)
        st.rounds += 1
        if result.changes:
            rlog.info("calendar changes", changes=len(result.changes), full=plan.full)
        return result.state

    async def _wait(self, poke: asyncio.Event, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(poke.wait(), seconds)
            except TimeoutError:
                pass
        poke.clear()
