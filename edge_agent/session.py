"""One device's session: the I/O shell around the pure bookings logic.

It owns the device's :class:`~edge_agent.xapi.XapiClient`, turns what arrives (feedback,
list results, connection changes, time passing) into inputs for :mod:`edge_agent.bookings`, and
commits each resulting :class:`~edge_agent.bookings.Step` to the store in one transaction
before adopting its new state. One worker task applies every input in arrival order, so the
device's state has exactly one owner. It takes the device's
:class:`~edge_agent.config.DeviceSettings` as they are (the xapi endpoint is derived from them)
and one injected :class:`~edge_agent.clock.Clock` for every time it reads.

Re-listing: whether to re-list is the transitions' decision (``Step.relist``: on every
(re)connect, on ``SyncRequired``/``Updated``, after events that change the calendar, at local
midnight, when a pending request's deadline passes); the session obeys it, debounced (a storm of
them costs one list), and adds only its own safety net, a list every ``relist_interval_s``, and
the catch-up list after dropping feedback (below).

A list older than a change already applied is not applied (:data:`STALE_LISTS_MAX`): the answer
to ``Bookings List`` resolves a future the lister awaits, and the reader may deliver the next
frames (a ``BookingCreated`` the device sent just after the answer, say) before the lister is
scheduled again. The worker would then apply the older list after the newer event and delete
the booking it had just added (reported deleted, then created again by the next list, without
the request it resolved). So each feedback input carries the number of its frame and each list
the number of its first page's answer (:meth:`~edge_agent.xapi.XapiClient.command_at`); a
list that predates an applied event that changed the window is dropped and listed again.

Backpressure: feedback is queued (bounded). Should the queue overflow (the store is stuck, say),
further feedback is dropped and a re-list is scheduled: the device's calendar is the truth, and
reconciliation reports what the dropped events would have. Link changes (online/offline) are never
dropped: no list brings them back, so they join the queue past its bound, in order with the rest
(each one takes a reconnect, and reconnects back off, so there are never many of them). Every
drop (an overflow, a repeated frame) is counted (``info()``,
``edge_agent_feedback_dropped_total{device,reason}``) and warned about.

Time: every input carries the time its fact happened (a frame's arrival, stamped by the client's
reader; a list's or a link change's, stamped here), so a backlog (a store on a full disk, a
burst) changes when an input is applied, never what it means: repeats are told from new events
by arrival, and ``observed_at`` is the arrival. A process stopped outright (SIGSTOP) is the
limit: the frames the kernel buffered meanwhile are read, and stamped, together on resume. The
reader sees the stall and marks those frames' arrival uncertain (``Feedback.arrived_after``);
identical events among them are kept rather than dropped as repeats, counted
(``repeats_kept_uncertain``) and said at info level.

A device whose clock is off past :data:`CLOCK_SKEW_MAX_S` lists its own days, so an event about
a booking the agent's window lacks asks for a re-list that cannot find it: while the skew
lasts, re-lists asked for by device events are throttled to one per ``relist_interval_s``
(counted, ``relists_throttled``, and said once per episode); connects, ticks and the safety net
still list.

Stopping (:meth:`DeviceSession.stop`): the link is closed first, so nothing new arrives; what was
already received is then applied and committed (bounded by a timeout) before ``run()`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from edge_agent.backoff import Backoff
from edge_agent.bookings.book import BookingOrder, book_args, check_order
from edge_agent.bookings.models import (
    MAX_LIST_PAGES,
    MAX_LIST_ROWS,
    Booking,
    ListPage,
    join_pages,
    next_page_offset,
    page_cap_reached,
    parse_device_time,
    parse_list_result,
    repeats,
)
from edge_agent.bookings.on_event import on_event
from edge_agent.bookings.on_list import on_list
from edge_agent.bookings.occupancy import OccupancyPolicy
from edge_agent.bookings.on_status import on_availability, on_connection, on_tick
from edge_agent.bookings.pending import deadline_for
from edge_agent.bookings.precedence import forwarded
from edge_agent.bookings.state import DeviceBookings, Step
from edge_agent.clock import Clock, system_clock, utc_iso
from edge_agent.config import DeviceDefaults, DeviceSettings
from edge_agent.mailbox import Flag, Inbox
from edge_agent.metrics import FEEDBACK_DROPPED
from edge_agent.session_occupancy import RoomWatch
from edge_agent.store import Change, PendingRow, Store, StoreBackend, StoreError
from edge_agent.store.occupancy import OccupancyWrite
from edge_agent.xapi import LinkCounters, XapiClient, XapiError
from edge_agent.xapi.errors import ConnectionLost, NotConnected, RequestTimeout
from edge_agent.xapi.protocol import Feedback, Handler, PathLike

log = structlog.get_logger(__name__)
# The stdlib logger structlog's filter_by_level asks: the per-event debug line is skipped
# here, before structlog builds (and then drops) its event dict for every stored event.
_stdlog = logging.getLogger(__name__)

LIST_PAGE_SIZE = 100
"""``Limit`` of one ``Bookings List`` page; more pages follow while ``TotalRows`` says so."""
CLOCK_SKEW_MAX_S = 300.0
"""How far the device's ``Status Time SystemTime`` may be from the agent's clock before the
agent warns. The device lists and times bookings by its own clock (``DayOffset 0`` is the
device's today); a device in 2099 or 1971 lists days the agent's window does not hold."""


class DeviceLink(Protocol):
    """What the session uses of its :class:`~edge_agent.xapi.XapiClient` (tests give a fake)."""

    @property
    def connected(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    @property
    def counters(self) -> LinkCounters: ...

    def stats(self) -> dict[str, Any]: ...

    async def subscribe(
        self, query: PathLike, handler: Handler, notify_current_value: bool = False
    ) -> int: ...

    async def command(self, path: PathLike, /, **args: Any) -> Any: ...

    async def command_at(self, path: PathLike, /, **args: Any) -> tuple[Any, int]: ...

    @property
    def frames_read(self) -> int: ...

    async def get(self, path: PathLike) -> Any: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


LinkFactory = Callable[..., DeviceLink]
"""Builds the link like :class:`XapiClient`: ``(endpoint, *, on_connected, on_disconnected,
request_timeout, clock, **options)``; ``on_connected(link)`` is awaited after each connect,
``on_disconnected(exc | None)`` called after each disconnect."""


@dataclass(frozen=True, slots=True)
class SessionTuning:
    """How the session paces itself: the same for every device, not configuration (tests and
    the demo shorten the delays). The per-device settings are :class:`DeviceSettings`."""

    relist_debounce_s: float = 0.5
    tick_max_s: float = 30.0
    """Longest sleep between clock checks. The session sleeps until its next deadline or local
    midnight and is woken early when a request opens; this bounds how late a wall-clock step
    (NTP, or a simulator's clock jump in tests) is noticed. 1,000 devices waking every second
    cost a few percent of a core."""
    queue_max: int = 10_000
    client_options: Mapping[str, Any] = field(default_factory=dict)
    """Extra :class:`XapiClient` keyword arguments (timing, tests)."""


@dataclass(frozen=True, slots=True)
class _Feedback:
    payload: Mapping[str, Any]
    arrived_at: datetime
    """When the frame arrived (the reader's stamp), not when the worker gets to it."""
    arrived_after: datetime | None = None
    """When set, the arrival is only known to lie between this and ``arrived_at`` (the frame
    was read in the catch-up after a stall)."""
    frame: int = 0
    """The link's number for the frame (``DeviceLink.frames_read`` as it was delivered)."""


@dataclass(frozen=True, slots=True)
class _Listed:
    page: ListPage
    applied: asyncio.Future[None]
    observed_at: datetime
    """When the last page arrived: the window and the expiries are judged as of then."""
    frame: int = 0
    """The number of the frame that answered the first page: feedback with a higher number
    was read after it (the list may not show what that feedback changed)."""


STALE_LISTS_MAX = 3
"""Lists in a row dropped as older than a change already applied, before the next one is
applied anyway (a device whose window changes faster than it can be listed still gets its
snapshots and reconciliation)."""


_DEFAULT_TIME_ZONE = DeviceDefaults.model_fields["time_zone"].default


@dataclass(frozen=True, slots=True)
class _DeviceConfig:
    """What the session reads from the device on each connect."""

    tz: ZoneInfo | None = None
    booking_timeout_s: int | None = None
    software: str | None = None
    system_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class _LinkChange:
    online: bool
    observed_at: datetime
    reason: str | None = None
    software: str | None = None
    tz: ZoneInfo | None = None
    booking_timeout_s: int | None = None


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _Occupancy:
    """Status RoomAnalytics feedback (``payload``), an occupancy tick (None), or the outcome
    of releasing a ghost booking (``released``: booking id, error)."""

    payload: Mapping[str, Any] | None
    at: datetime
    released: tuple[str, str | None] | None = None


_Input = _Feedback | _Listed | _LinkChange | _Tick | _Occupancy


def _arrival(item: _Input) -> datetime | None:
    """When ``item``'s frame arrived (feedback and RoomAnalytics readings), else None."""
    if isinstance(item, _Feedback):
        return item.arrived_at
    if isinstance(item, _Occupancy):
        return item.at
    return None


DUPLICATE_WARNING_INTERVAL_S = 60.0
"""Shortest time between two warnings about duplicates dropped (each says how many)."""


class _DuplicateDrops:
    """Bookings events dropped as repeats: counted, and warned about on the first and then at
    most every :data:`DUPLICATE_WARNING_INTERVAL_S` with how many since the last warning (a
    device or proxy repeating frames can repeat every one of them)."""

    __slots__ = ("total", "_log", "_monotonic", "_unwarned", "_last", "_warned_at")

    def __init__(self, log: Callable[[], Any], monotonic: Callable[[], float]) -> None:
        self.total = 0
        self._log = log
        self._monotonic = monotonic
        self._unwarned = 0
        self._last = ""
        self._warned_at: float | None = None

    def dropped(self, payload: Mapping[str, Any]) -> None:
        self.total += 1
        self._unwarned += 1
        self._last = str(dict(payload))[:200]
        self.flush()

    def flush(self) -> None:
        """Warn about the drops not yet warned about, if the interval allows it now."""
        if not self._unwarned:
            return
        now = self._monotonic()
        if self._warned_at is not None and now - self._warned_at < DUPLICATE_WARNING_INTERVAL_S:
            return
        self._log().warning(
            "dropped device events as duplicates: each was identical to one that arrived less"
            " than 5 s before it (the device or a proxy repeated frames)",
            dropped=self._unwarned,
            dropped_total=self.total,
            last=self._last,
        )
        self._unwarned = 0
        self._warned_at = now


class _KeptUncertain:
    """Bookings events kept although identical to one read just before, because either's
    arrival was uncertain (a catch-up after a stall): counted, and said at info level on the
    first and then at most every :data:`DUPLICATE_WARNING_INTERVAL_S` (a catch-up after a long
    stop can hold hundreds)."""

    __slots__ = ("total", "_log", "_monotonic", "_unsaid", "_said_at")

    def __init__(self, log: Callable[[], Any], monotonic: Callable[[], float]) -> None:
        self.total = 0
        self._log = log
        self._monotonic = monotonic
        self._unsaid = 0
        self._said_at: float | None = None

    def kept(self) -> None:
        self.total += 1
        self._unsaid += 1
        now = self._monotonic()
        if self._said_at is not None and now - self._said_at < DUPLICATE_WARNING_INTERVAL_S:
            return
        self._log().info(
            "kept device events identical to one read just before: they were read in the "
            "catch-up after a stall, so the device may have sent them far apart (delivered at "
            "least once rather than maybe lost)",
            kept=self._unsaid,
            kept_total=self.total,
        )
        self._unsaid = 0
        self._said_at = now


class DeviceSession:
    """Keeps one device's window, pending requests and events flowing into the store."""

    # Slots, not an instance dict: past 30 attributes CPython gives every instance a dict of
    # its own (~2 KiB a device).
    __slots__ = (
        "_booking_lock_",
        "_clock",
        "_clock_timer",
        "_connecting",
        "_duplicates",
        "_held",
        "_held_since",
        "_inputs",
        "_kept_uncertain",
        "_link_factory",
        "_list_slots",
        "_lister",
        "_logger",
        "_next_safety_relist",
        "_overflow_dropped_before",
        "_overflowing",
        "_relist_wanted",
        "_skew_throttle_said",
        "_skewed_relist_at",
        "_stale_lists",
        "_stop_reason",
        "_store",
        "_store_backoff",
        "_tg",
        "_tick_queued",
        "_window_frame",
        "_zone_conflict_said",
        "client",
        "clock_skew_s",
        "device_id",
        "dropped_feedback",
        "lists",
        "lists_cut_short",
        "relists_throttled",
        "room",
        "settings",
        "site",
        "skipped_entries",
        "state",
        "store_errors",
        "time_zone_source",
        "tuning",
    )

    def __init__(
        self,
        settings: DeviceSettings,
        *,
        site: str,
        store: StoreBackend,
        clock: Clock = system_clock,
        tuning: SessionTuning = SessionTuning(),
        store_backoff: Backoff = Backoff(initial=0.5, maximum=30.0),
        list_slots: asyncio.Semaphore | None = None,
        link_factory: LinkFactory = XapiClient,
    ) -> None:
        self.settings = settings
        self.tuning = tuning
        self.device_id = settings.id
        self._link_factory = link_factory
        self.site = site
        self._store = store
        self._clock = clock
        self._store_backoff = store_backoff
        # Shared by the fleet: after a start or a network blip, 1,000 devices listing at once
        # would hold 1,000 list replies (and their snapshots) in memory at the same time.
        self._list_slots = list_slots or asyncio.Semaphore(1)
        self._booking_lock_: asyncio.Lock | None = None
        self._logger: Any = None  # bound on first use (_log): most sessions rarely log
        self._inputs: Inbox[_Input] = Inbox(tuning.queue_max)
        self._relist_wanted = Flag()
        self._clock_timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._tick_queued = False
        self._tg: asyncio.TaskGroup | None = None  # while run() runs: for the transient tasks
        self._lister: asyncio.Task[None] | None = None
        self._overflowing = False
        self._overflow_dropped_before = 0
        self._next_safety_relist = 0.0
        self._stop_reason: str | None = None
        # Feedback that arrives while a link comes up (the re-made subscriptions' current values,
        # RoomAnalytics) waits here until device.online is queued: see _on_connected.
        self._connecting = True
        self._held: list[_Input] = []
        self._held_since: datetime | None = None
        self.state: DeviceBookings | None = None
        self.client = self._new_client()
        self.lists = 0
        self.dropped_feedback = 0
        self.skipped_entries = 0
        self.lists_cut_short = 0
        self.clock_skew_s: float | None = None
        """Device clock minus the agent's at the last connect (None: not read)."""
        self.store_errors = 0
        self._duplicates = _DuplicateDrops(self._device_log, clock.monotonic)
        self._kept_uncertain = _KeptUncertain(self._device_log, clock.monotonic)
        self.relists_throttled = 0
        """Re-lists asked for by device events and not made: the device's clock is off."""
        self._skewed_relist_at: float | None = None  # monotonic; the last one let through
        self._window_frame = 0
        """The highest frame number of an applied event that changed the window."""
        self._stale_lists = 0
        """Lists dropped in a row as older than ``_window_frame``."""
        self._skew_throttle_said = False
        self.time_zone_source: Literal["device", "config"] = "config"
        """Where the zone in use came from: ``device`` (its Configuration Time Zone, read now or
        stored from an earlier connect) or ``config`` (``time_zone``, or its default UTC)."""
        self._zone_conflict_said: tuple[str, str] | None = None
        self.room = RoomWatch(
            site=site,
            device_id=settings.id,
            policy=OccupancyPolicy(
                ghost_after_s=settings.ghost_after_s,
                release_after_s=settings.release_after_s or None,
                min_interval_s=settings.occupancy_min_interval_s,
            ),
            store=store,
            clock=clock,
        )

    @property
    def _log(self) -> Any:
        return self._device_log()

    def _device_log(self) -> Any:
        """The module's logger bound to this device (made on first use: ~0.3 KiB a device)."""
        logger = self._logger
        if logger is None:
            logger = self._logger = log.bind(device=self.device_id)
        return logger

    # --- the local API's view ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``/v1/devices`` shows of this device."""
        st = self.state
        return {
            "id": self.device_id,
            "url": self.settings.url,
            **self.client.stats(),
            "time_zone": st.tz.key if st else self.settings.time_zone,
            "time_zone_source": self.time_zone_source,
            "booking_timeout_s": st.booking_timeout_s if st else self.settings.booking_timeout_s,
            "window_size": len(st.window) if st else 0,
            "pending_requests": len(st.pending) if st else 0,
            "availability": st.availability.to_dict() if st and st.availability else None,
            "lists": self.lists,
            "dropped_feedback": self.dropped_feedback,
            "skipped_entries": self.skipped_entries,
            "lists_cut_short": self.lists_cut_short,
            "clock_skew_s": self.clock_skew_s,
            "duplicates_dropped": self.duplicates_dropped,
            "repeats_kept_uncertain": self._kept_uncertain.total,
            "relists_throttled": self.relists_throttled,
            "occupancy": self.room.info(),
        }

    @property
    def duplicates_dropped(self) -> int:
        """Bookings events dropped as repeats of one that arrived less than 5 s before."""
        return self._duplicates.total

    # --- running -------------------------------------------------------------------------------

    def _new_client(self) -> DeviceLink:
        return self._link_factory(
            self.settings.endpoint(),
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            request_timeout=self.settings.request_timeout_s,
            clock=self._clock,
            **dict(self.tuning.client_options),
        )

    async def run(self) -> None:
        """Restore the state from the store, then run the device link until cancelled.

        Cancelling is safe: what was committed stays committed; what was still queued is
        recovered by the re-list after the next start (:meth:`stop` applies it first). May be
        called again after a failure (the supervisor does): each run gets a fresh client.
        """
        if self.client.closed:
            self.client = self._new_client()
        self._window_frame = 0  # frame numbers are the client's: a new one counts from zero
        self.state = await self._restore()
        await self.room.restore()
        await self.client.subscribe(["Event", "Bookings"], self._on_feedback)
        await self.client.subscribe(["Status", "Bookings"], self._on_feedback, True)
        self._next_safety_relist = self._clock.monotonic() + self.settings.relist_interval_s
        name = f"device[{self.device_id}]"
        try:
            # Two tasks per device while it is quiet: the link's reader and this one, which is
            # the worker. A re-list and a ghost release get a task of their own while they run;
            # the clock and the occupancy wakeups are timers. (Six tasks each, with the
            # coroutines, futures and timeouts they wait on, were ~10 KiB per device.)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.client.run(), name=f"{name}.xapi")
                self._clock_rearm()
                self.room.start(
                    offer_tick=self._offer_occupancy_tick,
                    delete=self._release_booking,
                    offer_released=self._offer_released,
                    spawn=lambda coro: tg.create_task(coro, name=f"{name}.release"),
                    tick_max_s=self.tuning.tick_max_s,
                )
                if self._relist_wanted.is_set():
                    self._start_lister()
                await self._work()
        finally:
            self._tg = None
            self._clock_stop()
            self.room.stop()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.client.close())

    async def stop(self, timeout: float, reason: str) -> None:
        """Close the link, then apply and commit what was already received, for at most
        ``timeout`` seconds. ``reason`` goes into the ``device.offline`` event. The caller then
        cancels :meth:`run`. Cancelling this is safe."""
        self._stop_reason = reason
        await self.client.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._inputs.join()

    async def _restore(self) -> DeviceBookings:
        s = self.settings
        window = await self._store.load_window(self.device_id)
        pending = await self._store.load_pending(self.device_id)
        dstate = await self._store.load_device_state(self.device_id) or {}
        tz = (
            self._zone(dstate.get("time_zone"), "the stored device state")
            or self._zone(s.time_zone, "the configuration")
            or ZoneInfo("UTC")
        )
        if tz.key == dstate.get("time_zone"):
            self.time_zone_source = "device"  # read from it at an earlier connect
        timeout = dstate.get("booking_timeout_s")
        state, notes = DeviceBookings.restore(
            site=self.site,
            device_id=self.device_id,
            tz=tz,
            window_rows=window,
            pending_rows=[p.row for p in pending],
            device_state=dstate,
            booking_timeout_s=int(timeout) if isinstance(timeout, int) else s.booking_timeout_s,
            grace_s=s.request_grace_s,
        )
        for note in notes:
            self._log.warning("stored row unreadable", detail=note)
        if state.window or state.pending:
            self._log.info(
                "restored from the store", bookings=len(state.window), pending=len(state.pending)
            )
        return state

    # --- inputs from the client (called by its reader: must not block) --------------------------

    def _on_feedback(self, payload: Mapping[str, Any]) -> None:
        # XapiClient stamps each frame as its reader takes it off the link. A link that does not
        # (a test's fake) calls this from its reader too, so the session's clock reads the same.
        frame = self.client.frames_read
        if isinstance(payload, Feedback):
            self._offer(_Feedback(payload, payload.arrived_at, payload.arrived_after, frame))
        else:
            self._offer(_Feedback(payload, self._clock.now(), None, frame))

    def _on_disconnected(self, exc: BaseException | None) -> None:
        reason = str(exc) if exc is not None else (self._stop_reason or "closed")
        # A link lost before it came up never said online: what it sent is applied as it came.
        self._release_held()
        self._offer(_LinkChange(online=False, observed_at=self._clock.now(), reason=reason))
        self._connecting = True

    async def _on_connected(self, client: DeviceLink) -> None:
        """The client has re-made the subscriptions; their current values (Status Bookings)
        have already arrived, and RoomAnalytics' arrive while this runs. Those are held and
        queued after ``device.online``, so no ``room.*`` event of a device precedes its
        online, and the online is dated by the first of them (the link was up by then)."""
        started = self._clock.now()
        try:
            dev = await self._read_device_settings(client)
            self._check_clock(dev.system_time)
            self._note_time_zone(dev.tz)
            await self.room.on_connected(client, self._on_room_analytics, dev.software)
            up_at = min(started, self._held_since) if self._held_since else started
            # The online transition asks for the list (Step.relist), after the settings apply.
            self._offer(
                _LinkChange(
                    online=True,
                    observed_at=up_at,
                    software=dev.software,
                    tz=dev.tz,
                    booking_timeout_s=dev.booking_timeout_s,
                )
            )
        finally:
            # Also when the settings could not be read: never hold feedback past this hook.
            self._release_held()

    def _release_held(self) -> None:
        held, self._held, self._held_since = self._held, [], None
        self._connecting = False
        for item in held:
            self._offer(item)

    def _note_time_zone(self, device_zone: ZoneInfo | None) -> None:
        """The device's zone wins over a configured ``time_zone`` (a fallback for a device
        whose configuration cannot be read); say so once per pair of zones when they differ,
        since a configured zone reads like a choice. The default (UTC) set by nobody is not
        a choice and gives no warning."""
        if device_zone is None:
            return  # unreadable: the zone in use stays (stored from the device, or configured)
        self.time_zone_source = "device"
        configured = self.settings.time_zone
        if configured in (device_zone.key, _DEFAULT_TIME_ZONE):
            return
        pair = (device_zone.key, configured)
        if self._zone_conflict_said == pair:
            return
        self._zone_conflict_said = pair
        self._log.warning(
            "the device's time zone differs from the configured time_zone; using the device's "
            "(time_zone is only the fallback when the device's cannot be read): set the zone on "
            "the device, or make time_zone match it",
            device_time_zone=device_zone.key,
            configured_time_zone=configured,
            using=device_zone.key,
        )

    def _check_clock(self, device_time: datetime | None) -> None:
        """Warn when the device's clock is off by more than :data:`CLOCK_SKEW_MAX_S`.

        The window, deadlines and ``observed_at`` always follow the agent's clock (the one
        injected clock); a skewed device still lists, and stamps its events, by its own, so its
        bookings may fall outside the agent's window until its clock is fixed."""
        if device_time is None:
            self.clock_skew_s = None
            return
        agent_time = self._clock.now()
        skew = (device_time - agent_time).total_seconds()
        was_skewed = self.clock_skew_s is not None and abs(self.clock_skew_s) > CLOCK_SKEW_MAX_S
        self.clock_skew_s = round(skew, 3)
        if abs(skew) > CLOCK_SKEW_MAX_S:
            self._log.warning(
                "device clock is off: the booking window follows the agent's clock, but the "
                "device lists its own days, so bookings may be missing; fix the device's time "
                "(NTP: Configuration NetworkServices NTP)",
                device_time=utc_iso(device_time),
                agent_time=utc_iso(agent_time),
                skew_s=round(skew),
                max_skew_s=CLOCK_SKEW_MAX_S,
            )
        elif was_skewed:
            self._log.info("device clock is back in step", skew_s=round(skew, 1))
            self._skew_throttle_said = False
            self._skewed_relist_at = None

    @property
    def _clock_skewed(self) -> bool:
        return self.clock_skew_s is not None and abs(self.clock_skew_s) > CLOCK_SKEW_MAX_S

    def _throttle_skewed_relist(self, step: Step) -> Step:
        """``step`` with its re-list dropped if the device's clock is off and one was let
        through less than ``relist_interval_s`` ago. A skewed device lists its own days: the
        booking an event names is not in them, and every event would re-list for nothing.
        ``DayOffset`` cannot make up for the skew: Cisco documents no negative offsets, and a
        device in 2099 would need ~-26,000. The limit stays until the device's time is fixed."""
        now = self._clock.monotonic()
        last = self._skewed_relist_at
        if last is None or now - last >= self.settings.relist_interval_s:
            self._skewed_relist_at = now
            return step
        self.relists_throttled += 1
        if not self._skew_throttle_said:
            self._skew_throttle_said = True
            self._log.warning(
                "device clock is off: re-lists asked for by its events are throttled (the "
                "device lists its own days, which do not hold the bookings its events name)",
                skew_s=round(self.clock_skew_s or 0.0),
                at_most_every_s=self.settings.relist_interval_s,
            )
        return replace(step, relist=False)

    def _offer(self, item: _Input) -> None:
        if self._connecting and not isinstance(item, _LinkChange):
            if len(self._held) < self.tuning.queue_max:
                if self._held_since is None:
                    self._held_since = _arrival(item) or self._clock.now()
                self._held.append(item)
            else:
                self._drop_feedback()  # past the same bound as the queue's: dropped, re-listed
            return
        if isinstance(item, _LinkChange):
            # A re-list cannot bring back an online/offline transition: never refused, and in
            # order with the feedback around it (see the module's docstring).
            self._inputs.put_nowait(item, past_bound=True)
            return
        try:
            self._inputs.put_nowait(item)
        except asyncio.QueueFull:
            self._drop_feedback()
        else:
            self._end_overflow_if_drained()

    def _drop_feedback(self) -> None:
        self.dropped_feedback += 1
        FEEDBACK_DROPPED.labels(self.device_id, "queue_full").inc()
        if not self._overflowing:
            self._overflowing = True
            self._overflow_dropped_before = self.dropped_feedback - 1
            self._log.warning(
                "feedback queue full: dropping device feedback and re-listing to catch up",
                queue_max=self.tuning.queue_max,
            )
        self._request_relist()

    def _end_overflow_if_drained(self) -> None:
        if self._overflowing and self._inputs.qsize() <= self.tuning.queue_max // 2:
            self._overflowing = False
            # Each episode is said twice: when it starts, and what it cost once it is over.
            self._log.warning(
                "feedback queue drained: device feedback was dropped while it was full;"
                " the re-list reports what it would have",
                dropped=self.dropped_feedback - self._overflow_dropped_before,
                dropped_total=self.dropped_feedback,
                queue_max=self.tuning.queue_max,
            )

    async def _read_device_settings(self, client: DeviceLink) -> _DeviceConfig:
        """Time zone, BookingTimeout, software and clock from the device; None where it may
        not be read."""
        tz: ZoneInfo | None = None
        timeout: int | None = None
        software: str | None = None
        system_time: datetime | None = None
        try:
            tz = self._zone(await client.get(["Configuration", "Time", "Zone"]), "the device")
        except ConnectionLost:
            raise
        except XapiError as exc:
            self._log.info(
                "cannot read Configuration Time Zone; using the configured zone",
                error=str(exc),
                time_zone=self.settings.time_zone,
            )
        try:
            raw = await client.get(["Configuration", "Bookings", "AdhocBooking", "BookingTimeout"])
            timeout = int(raw)
        except ConnectionLost:
            raise
        except (XapiError, ValueError, TypeError) as exc:
            self._log.info(
                "cannot read Bookings AdhocBooking BookingTimeout; using the configured value",
                error=str(exc),
                booking_timeout_s=self.settings.booking_timeout_s,
            )
        try:
            sw = await client.get(["Status", "SystemUnit", "Software", "Version"])
            software = str(sw) if sw not in (None, "") else None
        except ConnectionLost:
            raise
        except XapiError:
            pass
        try:
            raw_time = await client.get(["Status", "Time", "SystemTime"])
            system_time = parse_device_time(raw_time)
            if system_time is None:
                self._log.info("unreadable Status Time SystemTime", value=str(raw_time)[:64])
        except ConnectionLost:
            raise
        except XapiError as exc:
            self._log.info("cannot read Status Time SystemTime", error=str(exc))
        return _DeviceConfig(tz, timeout, software, system_time)

    def _zone(self, name: Any, source: str) -> ZoneInfo | None:
        """``name`` as a zone; None (and a warning naming the device) when it is not one."""
        if name is None or name == "":
            return None
        if not isinstance(name, str):
            self._log.warning(
                "time zone is not a name; ignored, keeping the zone in use",
                source=source,
                value=repr(name)[:64],
                type=type(name).__name__,
            )
            return None
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self._log.warning(
                "unknown time zone name; ignored, keeping the zone in use",
                source=source,
                time_zone=name,
            )
            return None

    # --- the worker: the one owner of the state --------------------------------------------------

    async def _work(self) -> None:
        while True:
            item = await self._inputs.get()
            try:
                await self._handle(item)
            finally:
                self._inputs.task_done()
                if isinstance(item, _Listed) and not item.applied.done():
                    item.applied.set_result(None)
                del item  # do not hold the last input (a whole list, say) while waiting

    async def _handle(self, item: _Input) -> None:
        assert self.state is not None
        if isinstance(item, _Occupancy):
            await self._handle_occupancy(item)
            return
        if isinstance(item, _Tick):
            self._tick_queued = False
        if isinstance(item, _Listed) and self._list_is_stale(item):
            return
        # The parsers and on_event never raise on device input (one odd value costs its entry
        # or event); a bug that raises anyway ends run() and the agent's supervisor restarts it.
        step = self._transition(self.state, item, self._clock.now())
        if isinstance(item, _Feedback) and (
            step.window_upsert or step.window_delete or step.window_replace is not None
        ):
            self._window_frame = max(self._window_frame, item.frame)
        at = item.arrived_at if isinstance(item, _Feedback) else self._clock.now()
        step, occupancy = self.room.on_step(step, at)  # booking starts and ends, for occupancy
        await self._apply(step, occupancy)
        if isinstance(item, _Tick):
            self._reschedule()

    def _list_is_stale(self, item: _Listed) -> bool:
        """Drop ``item`` and list again when an event read after its answer has already changed
        the window (the module's docstring); at most :data:`STALE_LISTS_MAX` in a row."""
        if item.frame >= self._window_frame:
            self._stale_lists = 0
            return False
        if self._stale_lists >= STALE_LISTS_MAX:
            self._log.warning(
                "Bookings List older than a change already applied, again: applying it",
                lists_dropped=self._stale_lists,
            )
            self._stale_lists = 0
            return False
        self._stale_lists += 1
        self._log.info(
            "Bookings List older than a change already applied: listing again",
            list_frame=item.frame,
            change_frame=self._window_frame,
        )
        self._request_relist()
        return True

    def _transition(self, state: DeviceBookings, item: _Input, now: datetime) -> Step:
        """The pure transition for ``item`` processed at ``now``; each input brings the time its
        fact happened (the transitions judge by that, ``now`` only dates the envelopes)."""
        self._duplicates.flush()
        self._end_overflow_if_drained()
        if isinstance(item, _Feedback):
            if "Status" in item.payload:
                return on_availability(state, item.payload, now, observed_at=item.arrived_at)
            step = on_event(
                state,
                item.payload,
                now,
                arrived_at=item.arrived_at,
                arrived_after=item.arrived_after,
            )
            if step.duplicate:
                FEEDBACK_DROPPED.labels(self.device_id, "duplicate").inc()
                self._duplicates.dropped(item.payload)
            if step.kept_uncertain:
                self._kept_uncertain.kept()
            if step.relist and self._clock_skewed:
                step = self._throttle_skewed_relist(step)
            return step
        if isinstance(item, _Listed):
            self.skipped_entries += len(item.page.skipped)
            # on_list's ``now`` is when the list was received: the window it was asked for, and
            # whether a request had expired by then, are judged as of the answer.
            return on_list(state, item.page, item.observed_at)
        if isinstance(item, _LinkChange):
            if item.online:
                state = state.with_config(tz=item.tz, booking_timeout_s=item.booking_timeout_s)
            return on_connection(
                state,
                item.online,
                now,
                reason=item.reason,
                software=item.software,
                observed_at=item.observed_at,
            )
        return on_tick(state, now)

    async def _apply(self, step: Step, occupancy: Sequence[OccupancyWrite] = ()) -> None:
        """Commit ``step`` (and the ``occupancy`` rows its events start or end, in the same
        transaction) durably, then adopt its state. A store failure is retried (with backoff,
        logged) rather than dropped: the events in it are the ones not to lose."""
        for note in step.notes:
            self._log.info("bookings", detail=note)
        for warning in step.warnings:
            self._log.warning("bookings", detail=warning)
        if step.needs_commit or occupancy:
            change = Change(
                self.device_id,
                window_replace=step.window_replace_rows(),
                window_upsert=step.window_upsert_rows(),
                window_delete=list(step.window_delete),
                pending_upsert=[
                    PendingRow(
                        self.device_id,
                        p.booking_request_uuid,
                        p.deadline.timestamp(),
                        p.to_row(),
                    )
                    for p in step.pending_upsert
                ],
                pending_delete=list(step.pending_delete),
                device_state=dict(step.device_state) if step.device_state is not None else None,
                events=forwarded(step.events, linked=self.settings.calendar is not None),
                occupancy=occupancy,
            )
            attempt = 0
            while True:
                try:
                    await self._store.commit(change)
                    break
                except StoreError as exc:
                    attempt += 1
                    self.store_errors += 1
                    delay = self._store_backoff.delay(attempt)
                    self._log.error(
                        "cannot store device events; holding them and retrying",
                        error=str(exc),
                        events=len(change.events),
                        retry_in_s=round(delay, 1),
                    )
                    await asyncio.sleep(delay)
        old_pending = self.state.pending if self.state else {}
        self.state = step.state
        for env in step.events:
            self._log_event(env)
        if step.relist:
            self._request_relist()
        if step.state.pending is not old_pending:
            self._reschedule()

    def _log_event(self, env: Mapping[str, Any]) -> None:
        if not _stdlog.isEnabledFor(logging.DEBUG):
            return
        data = env.get("data", {})
        booking = data.get("booking") or {}
        self._log.debug(
            "event stored",
            type=env.get("type"),
            event_id=data.get("event_id"),
            booking_id=booking.get("id"),
            meeting_id=booking.get("meeting_id"),
            booking_request_uuid=booking.get("booking_request_uuid")
            or data.get("booking_request_uuid"),
        )

    # --- occupancy (edge_agent.session_occupancy; the pure side is bookings.occupancy) -----------

    def _on_room_analytics(self, payload: Mapping[str, Any]) -> None:
        at = payload.arrived_at if isinstance(payload, Feedback) else self._clock.now()
        self._offer(_Occupancy(payload, at))

    async def _handle_occupancy(self, item: _Occupancy) -> None:
        assert self.state is not None
        if item.released is not None:
            booking_id, error = item.released
            ostep = self.room.released(booking_id, item.at, error)
        elif item.payload is not None:
            found = self.room.reading(item.payload, item.at)
            if found is None:
                return
            ostep = found
        else:
            ostep = self.room.tick(item.at)
        await self.room.adopt(ostep)
        if ostep.events:
            await self._apply(Step(state=self.state, events=ostep.events))

    async def set_room_in_use(self, in_use: bool, sensor: str, duration_s: int | None) -> None:
        """``xCommand RoomAnalytics RoomInUse Set`` for a third-party sensor (RoomOS 26.8+).

        Raises:
            RoomInUseRefused: the device is offline, its software predates 26.8, or it refused.
        """
        await self.room.set_in_use(self.client, in_use, sensor, duration_s)

    def _offer_occupancy_tick(self) -> None:
        # RoomWatch queues at most one tick at a time: past the bound rather than waiting for
        # room (a timer cannot wait), like a link change.
        self._inputs.put_nowait(_Occupancy(None, self._clock.now()), past_bound=True)

    async def _release_booking(self, booking_id: str) -> str | None:
        """``Bookings Delete`` for a ghost booking; the error, or None when it went through."""
        if not self.client.connected:
            return "the device is offline"
        try:
            await self.client.command("Bookings Delete", **self._delete_target(booking_id))
        except ConnectionLost as exc:
            return str(exc) or "connection lost"
        except XapiError as exc:
            return str(exc)
        return None

    async def _offer_released(self, booking_id: str, error: str | None) -> None:
        await self._inputs.put(_Occupancy(None, self._clock.now(), (booking_id, error)))

    # --- listing ---------------------------------------------------------------------------------

    def _request_relist(self) -> None:
        self._relist_wanted.set()
        self._start_lister()

    def _start_lister(self) -> None:
        """A task for the re-list asked for, unless one runs (it takes the new ask too)."""
        if self._lister is None and self._tg is not None:
            self._lister = self._tg.create_task(
                self._list_loop(), name=f"device[{self.device_id}].lister"
            )

    async def _list_loop(self) -> None:
        """List while re-lists are asked for, then end (the next ask starts another)."""
        try:
            while self._relist_wanted.is_set():
                # Debounce: a burst of Updated/SyncRequired (or of calendar events) costs one list.
                await asyncio.sleep(self.tuning.relist_debounce_s)
                self._relist_wanted.clear()
                if not self.client.connected:
                    continue  # on_connected asks again
                try:
                    async with self._list_slots:
                        page, frame = await self._list_all()
                        # Applied inside the slot, so the parse and the snapshot are done with too.
                        applied = asyncio.get_running_loop().create_future()
                        await self._inputs.put(_Listed(page, applied, self._clock.now(), frame))
                        await applied
                except ConnectionLost:
                    continue
                except XapiError as exc:
                    self._log.warning("Bookings List failed; will retry", error=str(exc))
                    await asyncio.sleep(min(30.0, self.tuning.relist_debounce_s * 10))
                    self._relist_wanted.set()
                    continue
                self.lists += 1
                self._next_safety_relist = (
                    self._clock.monotonic() + self.settings.relist_interval_s
                )
                del page  # the next re-list may wait: do not keep a second window alive
        finally:
            self._lister = None

    async def _list_all(self) -> tuple[ListPage, int]:
        """``Bookings List DayOffset 0 Days 2``, every page (``TotalRows`` says how many), but
        never more than the caps allow nor past a page that repeats the one before it: a device
        that lies about ``TotalRows`` gets what was read, marked cut short (no deletions).
        Also the number of the frame that answered the first page (``_Listed.frame``)."""
        pages: list[ListPage] = []
        offset = 0
        first = 0
        while True:
            result, frame = await self.client.command_at(
                "Bookings List", DayOffset=0, Days=2, Limit=LIST_PAGE_SIZE, Offset=offset
            )
            if not pages:
                first = frame
            page = parse_list_result(result)
            if pages and repeats(page, pages[-1]):
                return self._cut_short(
                    pages, page, f"the page at Offset {offset} repeats the previous page"
                ), first
            pages.append(page)
            nxt = next_page_offset(page, offset)
            if nxt is None:
                return join_pages(pages), first
            cap = page_cap_reached(pages)
            if cap is not None:
                return self._cut_short(pages, page, cap), first
            offset = nxt

    def _cut_short(self, pages: list[ListPage], last: ListPage, why: str) -> ListPage:
        joined = join_pages(pages, cut_short=why)
        self.lists_cut_short += 1
        self._log.warning(
            "Bookings List cut short: the device claims more rows than it sends; applying what "
            "was read, deleting nothing until a whole list arrives",
            reason=why,
            total_rows=last.total_rows,
            pages_read=len(pages),
            bookings_kept=len(joined.bookings),
            max_pages=MAX_LIST_PAGES,
            max_rows=MAX_LIST_ROWS,
        )
        return joined

    # --- time passing ---------------------------------------------------------------------------

    def _clock_rearm(self, delay: float | None = None) -> None:
        """Time the next clock check: the next pending deadline, local midnight or safety
        re-list, at most ``tick_max_s`` away (``delay`` given: then)."""
        if self._clock_timer is not None:
            self._clock_timer.cancel()
        if delay is None:
            assert self.state is not None
            now = self._clock.now()
            until_wakeup = (self.state.next_wakeup(now) - now) / timedelta(seconds=1)
            until_safety = self._next_safety_relist - self._clock.monotonic()
            # While a tick waits for the worker, the worker's reschedule wakes us: no spinning.
            tick_max = self.tuning.tick_max_s
            delay = (
                tick_max
                if self._tick_queued
                else max(0.0, min(until_wakeup, until_safety, tick_max))
            )
        self._clock_timer = asyncio.get_running_loop().call_later(delay, self._clock_due)

    def _reschedule(self) -> None:
        """Check the clock now (the worker changed what it waits for)."""
        if self._clock_timer is not None:
            self._clock_rearm(0.0)

    def _clock_stop(self) -> None:
        if self._clock_timer is not None:
            self._clock_timer.cancel()
            self._clock_timer = None

    def _clock_due(self) -> None:
        """Time passed: the safety re-list when due, a tick when a deadline or midnight is."""
        self._clock_timer = None
        assert self.state is not None
        if self._clock.monotonic() >= self._next_safety_relist:
            self._next_safety_relist = self._clock.monotonic() + self.settings.relist_interval_s
            self._request_relist()
        now = self._clock.now()
        if not self._tick_queued and (
            self.state.next_wakeup(now) <= now
            or self.state.bounds is not None
            and self.state.current_bounds(now) != self.state.bounds
        ):
            # At most one tick queued (past the bound, so a full queue never holds the clock):
            # with the store stuck, ticks must not crowd out the device's events.
            self._tick_queued = True
            self._inputs.put_nowait(_Tick(), past_bound=True)
        self._clock_rearm()

    # --- booking through the agent (local API, MQTT mirror) -------------------------------------

    async def book(self, request_uuid: str, order: BookingOrder) -> BookingSent:
        """Send ``Bookings Book`` with our ``request_uuid``, once; the outcome comes as events.

        Checked first against the window (:func:`~edge_agent.bookings.book.check_order`), then
        recorded as a pending request in the store, then sent. The command is never replayed:
        when the link drops (or the device is slow to answer) after the send, the request stays
        pending and is closed by the outcome events, by the next list, or by its deadline.
        Cancelling is safe once the request is recorded (it then simply expires or resolves).

        Raises:
            DeviceOffline: the device is not connected (nothing was recorded or sent).
            OrderRefused: overlap or outside the window (nothing was recorded or sent).
            BookingRejected: the device answered the command with an error (recorded as failed).
            StoreError: the request could not be recorded (nothing was sent).
        """
        # One order at a time per device, and the next one checked only once the worker has
        # taken this one in as pending (bounded: a stuck store must not hold the API).
        async with self._booking_lock:
            sent = await self._book(request_uuid, order)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BOOK_SETTLE_S):
                    await self._inputs.join()
            return sent

    @property
    def _booking_lock(self) -> asyncio.Lock:
        # Made on first use (in the running loop) and kept with the session: most devices
        # never book through the agent.
        lock = self._booking_lock_
        if lock is None:
            lock = self._booking_lock_ = asyncio.Lock()
        return lock

    async def _book(self, request_uuid: str, order: BookingOrder) -> BookingSent:
        state = self.state
        if state is None or not self.client.connected:
            raise DeviceOffline(f"{self.device_id}: the device is not connected; try again later")
        now = self._clock.now()
        start = check_order(
            order,
            state.window.values(),
            state.current_bounds(now),
            now,
            pending=state.pending.values(),
        )
        deadline = deadline_for(now, state.booking_timeout_s, state.grace_s)
        await self._store.record_request(
            request_uuid,
            self.device_id,
            {
                **order.to_dict(),
                "start": utc_iso(start),
                "requested_at": utc_iso(now),
                "expires_at": utc_iso(deadline),
            },
        )
        args = book_args(order, request_uuid)
        try:
            await self.client.command("Bookings Book", **args)
        except NotConnected as exc:
            # The link went down between the check and the send: nothing reached the device.
            await self._store.resolve_request(
                request_uuid, "failed", {"cause": "NotConnected", "detail": str(exc)}
            )
            raise DeviceOffline(f"{self.device_id}: the device is not connected; try again later")
        except (ConnectionLost, RequestTimeout) as exc:
            self._log.warning(
                "Bookings Book: no answer; the request stays pending until its outcome arrives, "
                "a list shows it, or it expires (it is never sent again)",
                booking_request_uuid=request_uuid,
                error=str(exc),
            )
            self._open_request(request_uuid, args, now)
            return BookingSent(request_uuid, deadline, answered=False)
        except XapiError as exc:
            cause = getattr(exc, "cause", None) or type(exc).__name__
            await self._store.resolve_request(
                request_uuid, "failed", {"cause": str(cause), "detail": str(exc)}
            )
            raise BookingRejected(
                f"{self.device_id}: the device refused Bookings Book: {exc}", request_uuid
            ) from exc
        self._log.info("Bookings Book sent", booking_request_uuid=request_uuid, **args)
        self._open_request(request_uuid, args, now)
        return BookingSent(request_uuid, deadline, answered=True)

    def _open_request(
        self, request_uuid: str, args: Mapping[str, Any], requested_at: datetime
    ) -> None:
        """Track the request the way the device's ``BookingRequested`` opens it, through the
        worker like any feedback: the outcome is then matched (by its events, the next list, or
        the deadline) even when that event is lost with the link, or the software never sends
        it. The device's own ``BookingRequested`` then finds it pending and changes nothing."""
        requested = {
            k: v
            for k, v in args.items()
            if k in ("BookingRequestUUID", "Duration", "StartTime", "Title")
        }
        self._offer(
            _Feedback({"Event": {"Bookings": {"BookingRequested": requested}}}, requested_at)
        )

    def _delete_target(self, booking_id: str) -> dict[str, str]:
        """``Bookings Delete``'s parameter for a booking of the window: its ``MeetingId`` when it
        has one, else its ``Id``. The xAPI says a hybrid calendar's ``Id`` "may not be persistent
        across reboots"; the MeetingId is the backend's, so a Delete built from the stored window
        after a reboot still names that meeting and never whatever now has that list Id."""
        state = self.state
        booking = None
        if state is not None:
            booking = next((b for b in state.window.values() if b.id == booking_id), None)
        if booking is not None and booking.meeting_id:
            return {"MeetingId": booking.meeting_id}
        return {"Id": booking_id}

    async def release(self, booking_id: str) -> Booking:
        """Send ``Bookings Delete`` (by MeetingId, else Id) for a booking in the window;
        ``booking.deleted`` follows.

        Raises:
            DeviceOffline: the device is not connected.
            LookupError: no booking ``booking_id`` in the window.
            BookingRejected: the device answered with an error.
        """
        state = self.state
        if state is None or not self.client.connected:
            raise DeviceOffline(f"{self.device_id}: the device is not connected; try again later")
        booking = next((b for b in state.window.values() if b.id == booking_id), None)
        if booking is None:
            raise LookupError(f"{self.device_id}: no booking {booking_id!r} in the window")
        try:
            await self.client.command("Bookings Delete", **self._delete_target(booking_id))
        except XapiError as exc:
            raise BookingRejected(
                f"{self.device_id}: the device refused Bookings Delete {booking_id}: {exc}"
            ) from exc
        self._log.info("Bookings Delete sent", booking_id=booking_id)
        return booking


BOOK_SETTLE_S = 1.0
"""How long a booking order waits for the session to take it in as pending before the next
order of that device is checked."""


class DeviceOffline(Exception):
    """The device is not connected: a booking order cannot be sent now."""


class BookingRejected(Exception):
    """The device answered a booking command with an error (``request_uuid``: of a Book)."""

    def __init__(self, message: str, request_uuid: str | None = None) -> None:
        super().__init__(message)
        self.request_uuid = request_uuid


@dataclass(frozen=True, slots=True)
class BookingSent:
    """A ``Bookings Book`` that went out: the request is pending until ``deadline``;
    ``answered`` False when the link dropped (or timed out) before the device's OK."""

    request_uuid: str
    deadline: datetime
    answered: bool
