"""A device session's occupancy side: the I/O around :mod:`edge_agent.bookings.occupancy`.

The session owns one :class:`RoomWatch` and calls it from a few clearly separated places: on
every (re)connect (:meth:`RoomWatch.on_connected`: subscribe to ``Status RoomAnalytics`` with
the current value, learn what the device can report), for each RoomAnalytics notification and
each occupancy tick (both applied by the session's one worker, :meth:`RoomWatch.apply`), for the
booking events of a bookings :class:`~edge_agent.bookings.state.Step`
(:meth:`RoomWatch.on_step`: start and end a booking's track, add ``data.occupancy`` to
``booking.ended``), and between :meth:`RoomWatch.start` and :meth:`RoomWatch.stop` on its own
(a timer wakes the worker for ghosts and held changes; a task, only while there are any, sends
``Bookings Delete`` for the releases).

What the device cannot report degrades to what it can, said once as a warning and always in
``info()`` (the ``occupancy`` of ``/v1/devices``) with a hint of what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from edge_agent.bookings import occupancy as occ
from edge_agent.clock import Clock
from edge_agent.store.occupancy import OccupancyWrite
from edge_agent.xapi import XapiError
from edge_agent.xapi.errors import ConnectionLost, MethodNotFound, PermissionDenied

if TYPE_CHECKING:
    from edge_agent.bookings.state import Step
    from edge_agent.session import DeviceLink
    from edge_agent.store import StoreBackend

log = structlog.get_logger(__name__)

ROOM_ANALYTICS = ["Status", "RoomAnalytics"]
HINT_COUNTING = (
    "people count is off: set Configuration RoomAnalytics PeopleCountOutOfCall to On on the device"
)
HINT_PRESENCE = (
    "presence is off: set Configuration RoomAnalytics PeoplePresenceDetector to On on the device"
)
HINT_PERMISSION = (
    "the device user may not read Status RoomAnalytics (permission denied); give it the User or "
    "Admin role, and enable RoomAnalytics PeopleCountOutOfCall / PeoplePresenceDetector"
)


def _nothing() -> None:
    pass


async def _no_delete(booking_id: str) -> str | None:
    return "not running"


async def _no_release(booking_id: str, error: str | None) -> None:
    pass


def _no_spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    coro.close()
    raise RuntimeError("RoomWatch.start() was not called")


class RoomInUseRefused(Exception):
    """A sensor reading the device could not take (the text says why and what to do)."""


def software_version(text: str | None) -> tuple[int, int] | None:
    """``"ce26.4.1.4 5f9a2c81b3e 2026-03-12"`` -> (26, 4); None when unreadable."""
    if not text:
        return None
    head = text.split()[0].lstrip("cesCE")
    parts = head.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def is_room_analytics(payload: Mapping[str, Any]) -> bool:
    status = payload.get("Status")
    return isinstance(status, Mapping) and "RoomAnalytics" in status


class RoomWatch:
    """One device's occupancy: pure state plus what the device can report."""

    __slots__ = (
        "_clock",
        "_delete",
        "_logger",
        "_offer_released",
        "_offer_tick",
        "_releaser",
        "_releases",
        "_running",
        "_spawn",
        "_store",
        "_tick_max_s",
        "_tick_queued",
        "_timer",
        "_warned",
        "config",
        "counting",
        "denied",
        "device_id",
        "policy",
        "presence",
        "releases_failed",
        "sensor_readings",
        "site",
        "software",
        "state",
        "subscribed",
    )

    def __init__(
        self,
        *,
        site: str,
        device_id: str,
        policy: occ.OccupancyPolicy,
        store: StoreBackend,
        clock: Clock,
    ) -> None:
        self.site = site
        self.device_id = device_id
        self.policy = policy
        self._store = store
        self._clock = clock
        self.state = occ.RoomOccupancy(site=site, device_id=device_id, policy=policy)
        self._logger: Any = None  # bound on first use (_log)
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self._tick_queued = False
        self._releaser: asyncio.Task[None] | None = None
        self._offer_tick: Callable[[], None] = _nothing
        self._delete: Callable[[str], Awaitable[str | None]] = _no_delete
        self._offer_released: Callable[[str, str | None], Awaitable[None]] = _no_release
        self._spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = _no_spawn
        self._tick_max_s = 30.0
        self._releases: list[Mapping[str, Any]] = []
        self.subscribed: bool | None = None  # None: not tried yet
        self.denied = False
        self.counting: bool | None = None  # from PeopleCount Current (-1: not counting)
        self.presence: bool | None = None
        self.config: dict[str, str] = {}
        self._warned: set[str] = set()
        self.releases_failed = 0
        self.software: str | None = None
        self.sensor_readings = 0

    @property
    def _log(self) -> Any:
        if self._logger is None:
            self._logger = log.bind(device=self.device_id)
        return self._logger

    # --- the local API's and check-config's view -------------------------------------------

    def info(self) -> dict[str, Any]:
        """``{"available", "hint", "people_count", "presence", "in_use", ...}``."""
        hints = self.hints()
        available = not self.denied and (self.counting is not False or self.presence is not False)
        return {
            "available": available if self.subscribed is not None else None,
            "hint": "; ".join(hints) or None,
            "counting": self.counting,
            "presence_detection": self.presence,
            **self.state.info(),
        }

    def hints(self) -> list[str]:
        if self.denied:
            return [HINT_PERMISSION]
        out = []
        if self.counting is False or self.config.get("PeopleCountOutOfCall") == "Off":
            out.append(HINT_COUNTING)
        if self.presence is False or self.config.get("PeoplePresenceDetector") == "Off":
            out.append(HINT_PRESENCE)
        return out

    def _warn_once(self) -> None:
        for hint in self.hints():
            if hint not in self._warned:
                self._warned.add(hint)
                self._log.warning("occupancy: the device reports less than it could", hint=hint)

    # --- the shell's steps -------------------------------------------------------------------

    async def restore(self) -> None:
        open_row, tracks = await self._store.load_occupancy(self.device_id)
        self.state = occ.restore(self.site, self.device_id, self.policy, open_row, tracks)
        if tracks:
            self._log.info("occupancy restored", bookings=len(tracks))

    async def on_connected(
        self,
        client: DeviceLink,
        handler: Callable[[Mapping[str, Any]], None],
        software: str | None = None,
    ) -> None:
        """Subscribe (NotifyCurrentValue) and read the RoomAnalytics configuration. A refusal
        is remembered and warned about once; the bookings side goes on regardless."""
        self.software = software
        try:
            await client.subscribe(ROOM_ANALYTICS, handler, True)
            self.subscribed, self.denied = True, False
        except ConnectionLost:
            raise
        except PermissionDenied:
            self.subscribed, self.denied = False, True
        except XapiError as exc:
            self.subscribed = False
            self._log.info("cannot subscribe to Status RoomAnalytics", error=str(exc))
        with contextlib.suppress(XapiError):
            conf = await client.get(["Configuration", "RoomAnalytics"])
            if isinstance(conf, Mapping):
                self.config = {
                    k: str(conf[k])
                    for k in ("PeopleCountOutOfCall", "PeoplePresenceDetector")
                    if k in conf
                }
        self._warn_once()

    def reading(self, payload: Mapping[str, Any], now: datetime) -> occ.OccupancyStep | None:
        reading = occ.parse_feedback(payload, self.state.reading)
        if reading is None:
            return None
        if reading.people_count is not None:
            self.counting = reading.people_count >= 0
        if reading.presence is not None:
            self.presence = reading.presence != "Unknown"
        self._warn_once()
        return occ.on_reading(self.state, reading, now)

    def tick(self, now: datetime) -> occ.OccupancyStep:
        self._tick_queued = False
        return occ.on_tick(self.state, now)

    def released(self, booking_id: str, now: datetime, error: str | None) -> occ.OccupancyStep:
        return occ.on_released(self.state, booking_id, now, error)

    async def adopt(self, step: occ.OccupancyStep) -> None:
        """Persist the step's rows (before its events are committed), then adopt its state."""
        await self.save(step.rows)
        self.state = step.state
        if step.release:
            self._releases.extend(step.release)
        self._rearm()

    async def save(self, rows: occ.OccupancyRows) -> None:
        if rows:
            await self._store.save_occupancy(self._write(rows))

    def _write(self, rows: occ.OccupancyRows) -> OccupancyWrite:
        return OccupancyWrite(
            self.device_id,
            closed=[i.to_row() for i in rows.closed],
            open=None if rows.open is None else rows.open.to_row(),
            bookings=[b.to_row() for b in rows.bookings],
        )

    def on_step(self, step: Step, now: datetime) -> tuple[Step, list[OccupancyWrite]]:
        """Track the bookings a bookings step starts and ends; ``booking.ended`` gets
        ``data.occupancy``. Returns the step with those envelopes amended and the occupancy
        rows to write in the step's own commit (``Change.occupancy``: one writer round, and a
        booking's start is never durable without its track, nor the track without it)."""
        kinds = ("booking.started", "booking.ended", "booking.deleted")
        if not any(e.get("type") in kinds for e in step.events):
            return step, []
        events = []
        rows: list[occ.OccupancyRows] = []
        for env in step.events:
            booking = env.get("data", {}).get("booking")
            if env.get("type") == "booking.started" and isinstance(booking, Mapping):
                s = occ.on_booking_started(self.state, booking, now)
                self.state = s.state
                rows.append(s.rows)
            elif env.get("type") == "booking.ended" and isinstance(booking, Mapping):
                s, summary = occ.on_booking_ended(self.state, booking, now)
                self.state = s.state
                rows.append(s.rows)
                env = {**env, "data": {**env["data"], "occupancy": summary}}
            elif env.get("type") == "booking.deleted" and isinstance(booking, Mapping):
                s = occ.on_booking_deleted(self.state, str(booking.get("id")), now)
                self.state = s.state
                rows.append(s.rows)
            events.append(env)
        self._rearm()
        return replace(step, events=tuple(events)), [self._write(r) for r in rows if r]

    # --- third-party sensors -------------------------------------------------------------------

    async def set_in_use(
        self, client: DeviceLink, in_use: bool, sensor: str, duration_s: int | None
    ) -> None:
        """Pass a sensor's reading to the device; raises :class:`RoomInUseRefused`."""
        if not client.connected:
            raise RoomInUseRefused(f"{self.device_id}: the device is offline; reading not passed")
        version = software_version(self.software)
        if version is not None and version < (26, 8):
            raise RoomInUseRefused(
                f"{self.device_id}: RoomOS {self.software} has no xCommand RoomAnalytics "
                "RoomInUse Set (RoomOS 26.8 or later); upgrade the device to feed it a sensor"
            )
        args: dict[str, Any] = {"State": "True" if in_use else "False"}
        if duration_s:
            args["Duration"] = duration_s
        if sensor:
            args["ID"] = sensor
        try:
            await client.command("RoomAnalytics RoomInUse Set", **args)
        except MethodNotFound:
            raise RoomInUseRefused(
                f"{self.device_id}: the device has no xCommand RoomAnalytics RoomInUse Set "
                "(RoomOS 26.8 or later); upgrade it to feed it a sensor"
            ) from None
        except XapiError as exc:
            raise RoomInUseRefused(
                f"{self.device_id}: the device refused RoomAnalytics RoomInUse Set: {exc}"
            ) from None
        self.sensor_readings += 1

    # --- its wakeups: a timer, and a task while releases are sent ---------------------------

    def start(
        self,
        *,
        offer_tick: Callable[[], None],
        delete: Callable[[str], Awaitable[str | None]],
        offer_released: Callable[[str, str | None], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        tick_max_s: float,
    ) -> None:
        """Wake the worker when a ghost or a held change is due (``offer_tick``, at most one
        queued); send the releases in a task made by ``spawn`` while there are any. Until
        :meth:`stop`. A timer, not a task: a quiet room costs one timer handle."""
        self._offer_tick = offer_tick
        self._delete = delete
        self._offer_released = offer_released
        self._spawn = spawn
        self._tick_max_s = tick_max_s
        self._tick_queued = False
        self._running = True
        self._rearm()

    def stop(self) -> None:
        """No more wakeups (the release task is its task group's to cancel)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._releaser = None

    def _rearm(self) -> None:
        """The state or the releases changed: start sending releases, time the next wakeup."""
        if not self._running:
            return
        if self._releases and self._releaser is None:
            self._releaser = self._spawn(self._send_releases())
        if self._timer is not None:
            self._timer.cancel()
        delay = self._tick_max_s
        due = self.state.next_wakeup()
        if due is not None and not self._tick_queued:
            delay = max(0.0, min(delay, (due - self._clock.now()).total_seconds()))
        self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        due = self.state.next_wakeup()
        if not self._tick_queued and due is not None and due <= self._clock.now():
            # The tick is applied by the worker (tick() then adopt() re-arm): until then the
            # timer waits tick_max_s rather than firing again at once.
            self._tick_queued = True
            self._offer_tick()
        self._rearm()

    async def _send_releases(self) -> None:
        try:
            while self._releases:
                booking = self._releases.pop(0)
                bid = str(booking.get("id"))
                error = await self._delete(bid)
                if error is not None:
                    self.releases_failed += 1
                    self._log.warning(
                        "could not release a ghost booking; it stays booked", booking_id=bid,
                        error=error,
                    )
                await self._offer_released(bid, error)
        finally:
            self._releaser = None
