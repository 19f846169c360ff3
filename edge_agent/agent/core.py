"""The running agent: store, sinks and their drainers, one session per device, the local API.

Everything runs in one :class:`asyncio.TaskGroup` with named tasks. A device session or a sink
that fails is logged and restarted by its supervisor; it never takes the others down.

Shutdown (SIGTERM, SIGINT): the device sessions stop first, so no new events are taken; the
drainers then get ``drain_timeout_s`` to deliver what is in flight and queued; whatever is left
stays in the outbox for the next start; the store is closed last. Exit status 0.
SIGHUP re-reads the configuration file and applies its device list: new devices start, removed
ones stop, changed ones restart; sinks and the store keep running. Room changes (``[microsoft]``,
``[[rooms]]``, a device's ``calendar``) are not applied by SIGHUP: a WARNING says a restart is
needed (the directory itself is re-read every ``refresh_rooms_s``).

This module is the lifecycle and the status the local API reads; the calendar sources
(:mod:`.calendars`), booking a calendar-only room (:mod:`.booking`), the store and fleet
membership (:mod:`.fleet`) and the builders (:mod:`.build`) are collaborators it owns or calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from edge_agent import metrics
from edge_agent.agent import fleet
from edge_agent.agent.booking import CalendarBookings
from edge_agent.agent.build import build_sinks, devices_by_id, rooms_key
from edge_agent.agent.calendars import CalendarSources
from edge_agent.backoff import Backoff
from edge_agent.bookings.book import BookingOrder
from edge_agent.bookings.models import Booking
from edge_agent.clock import Clock, system_clock, unix_time, utc_iso
from edge_agent.config import (
    EX_CONFIG,
    AgentConfig,
    ConfigError,
    DeviceSettings,
    Secrets,
    load_config,
    resolve_secrets,
)
from edge_agent.forward.base import Sink, SinkStats
from edge_agent.forward.drainer import Drainer
from edge_agent.ops import heap, sdnotify
from edge_agent.ops.api import DeviceStatus, LocalApi, SinkStatus
from edge_agent.ops.api_bookings import request_view
from edge_agent.ops.api_guard import ApiGuard, server_ssl_context
from edge_agent.ops.event_stream import EventFeed
from edge_agent.session import BookingSent, DeviceSession, SessionTuning
from edge_agent.store import Store, StoreBackend

if TYPE_CHECKING:
    from edge_agent.forward.mqtt.commands import SensorState

log = structlog.get_logger("edge_agent.agent")

SAMPLE_INTERVAL_S = 5.0
TRIM_INTERVAL_S = 2.0  # how often the heap trimmer reads the RSS (a few us); it trims rarely
"""malloc_trim costs ~0.5 ms with 1,000 devices: 0.05 % of a core at this interval."""
LIST_CONCURRENCY = 16
"""Devices listing their bookings at once, fleet-wide (memory and store load after a start)."""


class Agent:
    """The running agent. Implements :class:`edge_agent.ops.api.AgentView` for the local API.

    Args:
        config: the validated configuration.
        secrets: resolved secrets (device passwords, webhook secrets, MQTT password).
        config_path: the file SIGHUP re-reads (None: reload is refused).
        clock: the one clock: the sessions, the store and the drainers all read time from it
            (tests and the demo pass the simulator's), so event times, ages, retry times and
            delivery latency agree.
        session_overrides: :class:`SessionTuning` fields for every device (tests, demo).
        drainer_overrides: extra :class:`Drainer` keyword arguments (tests: fast backoff).
        drain_timeout_s: how long shutdown waits for in-flight and queued deliveries.
        graph_overrides: extra :class:`GraphPoller` keyword arguments (tests, demo).
        google_overrides: extra :class:`GooglePoller` keyword arguments (tests, demo).
    """

    def __init__(
        self,
        config: AgentConfig,
        secrets: Secrets,
        *,
        config_path: Path | None = None,
        clock: Clock = system_clock,
        session_overrides: Mapping[str, Any] | None = None,
        drainer_overrides: Mapping[str, Any] | None = None,
        drain_timeout_s: float = 5.0,
        api: bool = True,
        graph_overrides: Mapping[str, Any] | None = None,
        google_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._secrets = secrets
        self._config_path = config_path
        self._clock = clock
        self._tuning = SessionTuning(**dict(session_overrides or {}))
        self._drainer_overrides = dict(drainer_overrides or {})
        self._drain_timeout_s = drain_timeout_s
        self._with_api = api
        self._store: StoreBackend | None = None
        self._fleet: fleet.LeasedDevices | None = None  # fleet mode: [store] url is postgresql
        self._sessions: dict[str, DeviceSession] = {}
        self._link_export = metrics.LinkCountersExport()
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._settings: dict[str, DeviceSettings] = {}
        self._sinks: list[tuple[Sink, Drainer]] = []
        self._sink_tasks: list[asyncio.Task[Any]] = []
        self._other_tasks: list[asyncio.Task[Any]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._list_slots = asyncio.Semaphore(LIST_CONCURRENCY)
        self._started = clock.monotonic()
        self._last_stats: Mapping[str, Any] = {}
        # Collaborators with state of their own: the calendar sources (clients, pollers, push)
        # and the calendar-only rooms' bookings, which read those sources and the store.
        self._calendars = CalendarSources(
            config,
            lambda: self._secrets,
            clock=clock,
            graph_overrides=graph_overrides,
            google_overrides=google_overrides,
        )
        self._calendar_bookings = CalendarBookings(
            self._calendars,
            clock=clock,
            store=lambda: self._store,
            task_group=lambda: self._tg,
            tasks=self._other_tasks,
        )
        self.api: LocalApi | None = None
        self.event_feed = EventFeed()
        """Committed events for ``/v1/events/stream`` (``edge-agent tail``)."""
        self.ready = asyncio.Event()
        """Set once the store is open and every task started (tests wait on it)."""

    # --- AgentView -----------------------------------------------------------------------------

    @property
    def store(self) -> StoreBackend | None:
        return self._store

    def devices(self) -> list[DeviceStatus]:
        out: list[DeviceStatus] = []
        for s in self._sessions.values():
            status = {**s.info(), **self._link_times(s.device_id)}
            out.append(status)  # type: ignore[arg-type]
        return out

    def _link_times(self, device_id: str) -> dict[str, Any]:
        """``connected_since`` or ``down_since`` and ``last_seen`` (UTC ISO, as of the last
        sample) for ``/v1/devices`` and the status page. ``last_error_at`` comes from the link
        itself (exact, and cleared with ``last_error`` once the link is up again)."""
        t = self._link_export.times(device_id)
        if t is None:
            return {}

        def iso(ts: float | None) -> str | None:
            return None if ts is None else utc_iso(datetime.fromtimestamp(ts, UTC))

        return {
            "connected_since" if t.connected else "down_since": iso(t.since),
            "last_seen": iso(t.last_seen),
        }

    def sinks(self) -> list[SinkStatus]:
        out: list[SinkStatus] = []
        depth = self._last_stats.get("sinks", {})
        for sink, drainer in self._sinks:
            st = drainer.stats()
            # No delivery error: the sink's own (MQTT: refused, unreachable, lost), with its time.
            own = getattr(sink, "stats", None)
            err = own if not st.last_error and isinstance(own, SinkStats) else st
            entry: SinkStatus = {
                "name": sink.name,
                "state": "gone" if st.stopped_reason else "running",
                # A gone sink never delivers again, whatever its connection says.
                "ready": sink.ready() and not st.stopped_reason,
                "last_error": err.last_error,
                "last_error_at": err.last_error_at,
            }
            if err.last_error is None and err.previous_error is not None:
                entry["previous_error"] = err.previous_error
                entry["previous_error_at"] = err.previous_error_at
            d = depth.get(sink.name)
            if isinstance(d, Mapping):
                entry["outbox_depth"] = int(d.get("depth") or 0)
            extra = {k: v for k, v in dataclasses.asdict(st).items() if k not in entry}
            out.append({**entry, **extra})  # type: ignore[typeddict-item]
        return out

    def rooms(self) -> list[dict[str, Any]]:
        """Every room (``/v1/rooms``, ``edge-agent status``): a device without a calendar is a
        room of source ``device``; calendar rooms (linked or not) come from the poller."""
        out: dict[str, dict[str, Any]] = {}
        for dev_id, session in self._sessions.items():
            if session.settings.calendar is not None:
                continue
            info = session.info()
            out[dev_id] = {
                "id": dev_id,
                "source": "device",
                "device_id": dev_id,
                "calendar": None,
                "connected": info.get("connected"),
                "last_sync": None,
                "last_error": info.get("last_error"),
                "window_size": info.get("window_size"),
            }
        self._calendars.rooms(out, self._sessions)
        return [out[k] for k in sorted(out)]

    def health(self) -> dict[str, Any]:
        """The MQTT ``bridge/health`` payload."""
        sinks = self._last_stats.get("sinks", {}) if self._last_stats else {}
        return {
            "uptime_s": round(self._clock.monotonic() - self._started, 1),
            "devices_configured": len(self._sessions),
            "devices_connected": sum(1 for s in self._sessions.values() if s.client.connected),
            "outbox": sinks,
            "deliveries": {
                sink.name: dataclasses.asdict(drainer.stats()) for sink, drainer in self._sinks
            },
        }

    # --- control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM does)."""
        if not self._stop.is_set():
            log.info("stopping: no new device events; draining deliveries")
            sdnotify.stopping("draining the outbox")
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the config file and apply its device list (what SIGHUP does)."""
        if self._tg is None:
            return
        self._tg.create_task(self._reload(), name="agent.reload")

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until :meth:`request_stop`; returns the exit status. Not meant to be cancelled
        mid-start; cancelling while running stops everything without the drain."""
        self._store = await self._open_store()
        if isinstance(self._store, Store):
            self._store.on_committed.append(self.event_feed.publish)
        elif self.config.store.url is not None:  # PostgreSQL: this member's commits
            from edge_agent.store.postgres import PostgresStore  # ~0.7 MiB: only then

            if isinstance(self._store, PostgresStore):
                self._store.on_committed.append(self.event_feed.publish)
        try:
            if self._with_api and not await self._start_api():
                return EX_CONFIG
            if not self._with_api:
                self._calendars.setup(self._store)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._start(tg)
                self.ready.set()
                self._announce_ready()
                await self._stop.wait()
                await self._shutdown()
        finally:
            self._tg = None
            await self._close()
        return 0

    async def _start(self, tg: asyncio.TaskGroup) -> None:
        assert self._store is not None
        for sink, opts in build_sinks(
            self.config, self._secrets, self.health, self._room_in_use, clock=self._clock
        ):
            drainer = Drainer(
                self._store,
                sink,
                max_in_flight=int(opts["max_in_flight"]),
                ttl_s=float(opts["ttl_s"]),
                **{"clock": unix_time(self._clock), **self._drainer_overrides},
            )
            self._sinks.append((sink, drainer))
            # The drainer runs the sink's connection loop itself.
            name = f"drainer[{sink.name}]"
            self._sink_tasks.append(tg.create_task(self._supervise(name, drainer.run), name=name))
        self._start_mqtt_requests(tg)
        self._settings = devices_by_id(self.config, self._secrets)
        metrics.DEVICES_CONFIGURED.set(len(self._settings))
        self._start_devices(tg)
        member = self._fleet.member if self._fleet is not None else None
        self._calendars.start(tg, self._store, self._supervise, member)
        await self._announce_rooms()
        if self.config.mqtt is not None:
            self._other_tasks.append(tg.create_task(self._rooms_clock(), name="mqtt.rooms"))
        self._other_tasks.append(tg.create_task(self._sample_loop(), name="agent.sampler"))
        self._other_tasks.append(tg.create_task(self._trim_loop(), name="agent.heap-trim"))
        self._other_tasks.append(
            tg.create_task(sdnotify.watchdog_loop(self._healthy), name="agent.watchdog")
        )

    async def _start_api(self) -> bool:
        """Bind the local API before anything else starts; False (logged) when the address
        cannot be bound. That is a configuration problem, not a crash: ``run`` exits 78, which
        the unit's ``RestartPreventExitStatus=`` does not restart (a taken port stays taken)."""
        listen = self.config.api.listen
        try:
            api = self._local_api()  # the guard, and TLS when [api] cert_file is set
            await api.start()
        except OSError as exc:
            # EADDRINUSE, EADDRNOTAVAIL (not an address of this machine), EACCES (a port below
            # 1024), or a host name that does not resolve (gaierror).
            log.error(
                f"cannot listen on api.listen = {listen!r}: {exc.strerror or exc}; set [api] "
                "listen to a free address of this machine in the configuration",
                key="api.listen",
                listen=listen,
            )
            return False
        self.api = api
        return True

    def _start_device(self, settings: DeviceSettings) -> None:
        assert self._tg is not None and self._store is not None
        if settings.id in self._device_tasks:
            # Reloads are serialised, so this is a bug, not a race: never run a device twice.
            log.error("device already running; not starting it again", device=settings.id)
            return
        session = DeviceSession(
            settings,
            site=self.config.site,
            store=self._store,
            clock=self._clock,
            tuning=self._tuning,
            list_slots=self._list_slots,
        )
        self._sessions[settings.id] = session
        name = f"device[{settings.id}]"
        self._device_tasks[settings.id] = self._tg.create_task(
            self._supervise(name, session.run), name=name
        )

    async def _room_in_use(self, state: SensorState) -> None:
        """A third-party sensor's reading (MQTT occupancy/set) to the room's device."""
        session = self._sessions.get(state.room)
        if session is None:
            raise LookupError(f"no device {state.room!r} in this agent's configuration")
        await session.set_room_in_use(state.in_use, state.sensor, state.duration_s)

    async def _stop_device(
        self, device_id: str, reason: str, drain_timeout_s: float | None = None
    ) -> None:
        """Close the device's link, commit what it already sent (within ``drain_timeout_s``,
        by default the agent's), then end its session."""
        task = self._device_tasks.pop(device_id, None)
        session = self._sessions.pop(device_id, None)
        if session is not None:
            timeout = self._drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            await session.stop(timeout, reason)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` until cancelled; an exception is logged and the task restarted."""
        backoff = Backoff(initial=1.0, maximum=60.0)
        attempt = 0
        while True:
            started = self._clock.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._clock.monotonic() - started > 60:
                    attempt = 0
                attempt += 1
                delay = backoff.delay(attempt)
                log.exception(f"{name} failed; restarting", task=name, retry_in_s=round(delay, 1))
                await asyncio.sleep(delay)

    def _announce_ready(self) -> None:
        connected = sum(1 for s in self._sessions.values() if s.client.connected)
        sinks = ", ".join(s.name for s, _ in self._sinks) or "none"
        sdnotify.ready(f"{connected}/{len(self._sessions)} devices connected; sinks: {sinks}")
        log.info(
            "agent started",
            site=self.config.site,
            devices=len(self._sessions),
            sinks=[s.name for s, _ in self._sinks],
            api=self.api.url if self.api else None,
            store=str(self.config.store_path),
        )

    def _healthy(self) -> bool:
        # The watchdog loop runs on the event loop, so a ping already proves the loop turns;
        # beyond that the agent is healthy while its store is open and its writes are not
        # failing in a way a restart can clear. A full disk is not: a restart frees no space
        # and drops what the sessions hold and retry (see "Health" in edge_agent.store.writer).
        if self._store is None or self._store.failed is not None:
            return False
        return not self._store.health().restart_helps

    async def _sample_loop(self) -> None:
        """Keep the gauges that are cheaper to read than to maintain, and systemd's STATUS."""
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def _trim_loop(self) -> None:
        """Give the memory a burst freed back to the OS, soon after (see
        :mod:`edge_agent.ops.heap`)."""
        trimmer = heap.HeapTrimmer()
        if not trimmer.supported:
            return
        while True:
            await asyncio.sleep(TRIM_INTERVAL_S)
            trimmer.check()

    async def sample(self) -> Mapping[str, Any]:
        assert self._store is not None
        health = self._store.health()  # also sets edge_agent_store_healthy
        trouble = ""
        if not health.healthy:
            then = "withholding the watchdog" if health.restart_helps else "retrying"
            trouble = f"NOT READY: {health.problem}; {then}; "
        try:
            self._last_stats = await self._store.stats()
        except Exception:
            log.exception("cannot read store statistics")
            if trouble:
                sdnotify.status(trouble.removesuffix("; "))
            return self._last_stats
        connected = sum(1 for s in self._sessions.values() if s.client.connected)
        metrics.DEVICES_CONNECTED.set(connected)
        now = self._clock.now().timestamp()
        for device_id, session in self._sessions.items():
            client = session.client
            self._link_export.export(
                device_id,
                client.counters,
                connected=client.connected,
                last_error=getattr(client, "last_error", None),
                now=now,
            )
        for sink, drainer in self._sinks:
            ready = sink.ready() and drainer.stopped_reason is None
            metrics.SINK_READY.labels(sink=sink.name).set(1 if ready else 0)
        pending = int(self._last_stats.get("pending", 0))
        sinks = self._last_stats.get("sinks", {})
        depth = sum(int(v.get("depth", 0)) for v in sinks.values()) if sinks else 0
        sdnotify.status(
            f"{trouble}{connected}/{len(self._sessions)} devices connected; outbox {depth}; "
            f"pending requests {pending}"
        )
        return self._last_stats

    async def _shutdown(self) -> None:
        await self._leave_fleet()
        # The calendar rounds stop first, with the sessions: no new events, then the drain.
        await self._calendars.stop()
        await asyncio.gather(
            *(self._stop_device(d, "agent stopping") for d in list(self._device_tasks))
        )
        deadline = self._clock.monotonic() + self._drain_timeout_s
        while self._clock.monotonic() < deadline:
            stats = await self.sample()
            sinks = stats.get("sinks", {})
            if not sinks or all(int(v.get("depth", 0)) == 0 for v in sinks.values()):
                break
            if all(not sink.ready() for sink, _ in self._sinks):
                break
            await asyncio.sleep(0.05)
        left = self._last_stats.get("sinks", {})
        log.info("drain finished", undelivered={k: v.get("depth") for k, v in left.items()})
        for t in self._sink_tasks + self._other_tasks:
            t.cancel()

    async def _close(self) -> None:
        for sink, _ in self._sinks:
            with contextlib.suppress(Exception):
                await sink.close()
        self.event_feed.close()
        if self.api is not None:
            with contextlib.suppress(Exception):
                await self.api.stop()
        await self._calendars.close()
        if self._store is not None:
            await self._store.close()

    async def _reload(self) -> None:
        # Runs in the agent's TaskGroup: an error here must not take the running agent down.
        # Serialised: two SIGHUPs in a row must not diff against a half-applied device list.
        try:
            async with self._reload_lock:
                await self._apply_reload()
        except Exception:
            log.exception("reload failed; the running configuration is kept")
            sdnotify.ready()

    async def _apply_reload(self) -> None:
        if self._config_path is None:
            log.warning("SIGHUP ignored: the agent was not started from a config file")
            return
        sdnotify.reloading()
        try:
            cfg = load_config(self._config_path)
            secrets = resolve_secrets(cfg)
        except ConfigError as exc:
            log.error(
                "reload failed: the configuration is invalid; keeping the running one",
                problems=exc.lines(),
            )
            sdnotify.ready()
            return
        if rooms_key(cfg) != rooms_key(self.config):
            log.warning(
                "room changes ([microsoft], [google], [[rooms]], devices' calendar) need a "
                "restart to take effect; the running rooms are kept (systemctl restart edge-agent)"
            )
        new = devices_by_id(cfg, secrets)
        self._apply_outside_devices(cfg, secrets)
        removed = [d for d in self._settings if d not in new]
        added = [d for d in new if d not in self._settings]
        changed = [d for d in new if d in self._settings and new[d] != self._settings[d]]
        for d in changed:
            await self._stop_device(d, "configuration changed")
        for d in removed:
            await self._stop_device(d, "removed from the configuration")
            await self._forget(d)
        self._secrets = secrets
        self._settings = new
        self._poke_mqtt(cfg, secrets)
        for d in added + changed:
            self._start_if_mine(new[d])
        if self._fleet is not None:
            self._fleet.member.set_devices(new)
        await self._announce_rooms()
        metrics.DEVICES_CONFIGURED.set(len(new))
        log.info("configuration reloaded", added=added, removed=removed, changed=changed)
        sdnotify.ready()

    def _apply_outside_devices(self, cfg: AgentConfig, secrets: Secrets) -> None:
        """A reload's changes outside the device list: apply the log level now (the MQTT
        credentials follow in :meth:`_poke_mqtt`), and name every other changed key, which
        takes effect only after a restart. ``self.config`` is what runs: the live keys are
        updated in it, the others are not (so a later reload names them again)."""
        from edge_agent.config.diff import LIVE_KEYS, MQTT_PASSWORD, changed_keys, changed_secrets
        from edge_agent.ops.logs import configure_logging, resolve_level

        changed = changed_keys(self.config, cfg) + changed_secrets(self._secrets, secrets)
        live = [k for k in changed if k in LIVE_KEYS or k == MQTT_PASSWORD]
        restart = [k for k in changed if k not in live]
        running = self.config
        if "log.level" in live:
            # $EDGE_AGENT_LOG_LEVEL still wins over [log] level, as at start.
            configure_logging(resolve_level(None, cfg.log.level))
            running = running.model_copy(update={"log": cfg.log})
        if running.mqtt is not None and cfg.mqtt is not None:
            creds = {k.split(".", 1)[1] for k in live if k.startswith("mqtt.")}
            update = {k: getattr(cfg.mqtt, k) for k in creds}
            running = running.model_copy(update={"mqtt": running.mqtt.model_copy(update=update)})
        self.config = running
        if live:
            log.info("reload applied", keys=live)
        if restart:
            log.warning(
                "reload: these settings changed but take effect only after a restart "
                "(systemctl restart edge-agent); the running values are kept until then",
                keys=restart,
            )

    def _poke_mqtt(self, cfg: AgentConfig, secrets: Secrets) -> None:
        """A reload may follow a fixed credential (here or at the broker): retry now, with the
        reloaded credentials, instead of waiting out the refused backoff."""
        if not any(sink.name == "mqtt" for sink, _ in self._sinks):
            return  # no MQTT sink: paho is never imported
        from edge_agent.forward.mqtt import MqttSink

        password = secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None
        for sink, _ in self._sinks:
            if isinstance(sink, MqttSink):
                creds = (cfg.mqtt.username, password) if cfg.mqtt is not None else None
                sink.reconnect_now(credentials=creds)
                requests = getattr(self, "mqtt_requests", None)
                if requests is not None:
                    requests.reconnect_now(credentials=creds)

    async def _announce_rooms(self) -> None:
        """Tell the MQTT sink which rooms exist: it clears the retained topics of removed ones
        and publishes Home Assistant discovery (``edge_agent.forward.mqtt.discovery``)."""
        if not any(sink.name == "mqtt" for sink, _ in self._sinks):
            return  # no MQTT sink: paho is never imported
        from edge_agent.forward.mqtt import MqttSink

        calendar = None  # the calendar-only rooms, once every source has read its directory
        if self._calendars.rooms_known():
            calendar = self._calendars.calendar_only_rooms()
        for sink, _ in self._sinks:
            if isinstance(sink, MqttSink):
                await sink.set_rooms(self._settings, calendar, now=self._clock.now())

    async def _rooms_clock(self) -> None:
        """The calendar rooms' booked / next booking follow the clock (a calendar sends nothing
        when a meeting starts): every 30 s, and at once when a poller's room set changed."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await self._calendars.rooms_changed.wait()
            self._calendars.rooms_changed.clear()
            await self._announce_rooms()

    async def _forget(self, device_id: str) -> None:
        """A device left the configuration: drop its window, pending requests and state (its
        undelivered events are still delivered) and its per-device metric series."""
        assert self._store is not None
        await self._store.forget_device(device_id)
        with contextlib.suppress(KeyError):
            metrics.RECONNECTS.remove(device_id)
        for reason in ("duplicate", "queue_full"):
            with contextlib.suppress(KeyError):
                metrics.FEEDBACK_DROPPED.remove(device_id, reason)
        self._link_export.forget(device_id)

    # --- booking through the agent (api_bookings.BookingDesk: local API, MQTT mirror) ---------

    def booking_room(self, room_id: str) -> Literal["device", "calendar"] | None:
        """What kind of room ``room_id`` is, for booking; ``None``: unknown."""
        if room_id in self._sessions:
            return "device"
        return "calendar" if self._calendar_bookings.room(room_id) is not None else None

    async def book(
        self, room_id: str, order: BookingOrder, *, request_uuid: str | None = None
    ) -> BookingSent:
        """Book ``room_id`` with a fresh request UUID: a device room through
        :meth:`DeviceSession.book`, a calendar-only Microsoft or Google room through its calendar
        (:meth:`.booking.CalendarBookings.book`).

        Raises:
            LookupError: unknown room; else what :meth:`DeviceSession.book` or
                :meth:`.booking.CalendarBookings.book` raise.
        """
        session = self._sessions.get(room_id)
        if session is not None:
            return await session.book(request_uuid or str(uuid.uuid4()), order)
        return await self._calendar_bookings.book(room_id, order, request_uuid or str(uuid.uuid4()))

    async def release(self, room_id: str, booking_id: str) -> Booking:
        """Release a booking of ``room_id`` (``Bookings Delete``, or the calendar's delete);
        ``booking.deleted`` follows (a calendar room's from its next round, fetched now)."""
        session = self._sessions.get(room_id)
        if session is not None:
            return await session.release(booking_id)
        return await self._calendar_bookings.release(room_id, booking_id)

    async def booking_request(self, request_uuid: str) -> dict[str, Any] | None:
        """What ``GET /v1/requests/{uuid}`` shows, or ``None`` (unknown, or older than a day)."""
        if self._store is None:
            return None
        row = await self._store.load_request(request_uuid)
        return request_view(row, self._clock.now()) if row is not None else None

    def _start_mqtt_requests(self, tg: asyncio.TaskGroup) -> None:
        """With ``[mqtt]``: the booking mirror on ``<base>/bridge/request/{book,release}``."""
        m = self.config.mqtt
        mqtt_sink = next((s for s, _ in self._sinks if s.name == "mqtt"), None)
        if m is None or mqtt_sink is None:
            return
        from edge_agent.forward.mqtt.link import broker_settings
        from edge_agent.forward.mqtt.requests import BridgeRequests

        password = self._secrets.mqtt_password
        settings = broker_settings(
            m.url,
            client_id=f"{self.config.mqtt_client_id}-requests",
            username=m.username,
            password=password.get_secret_value() if password else None,
            ca_file=m.ca_file,
            cert_file=m.cert_file,
            key_file=m.key_file,
            keepalive=m.keepalive,
            protocol=m.protocol,
        )
        self.mqtt_requests = BridgeRequests(
            settings, self.config.mqtt_base_topic, self, mqtt_sink.ready
        )
        name = "mqtt.requests"
        self._sink_tasks.append(
            tg.create_task(self._supervise(name, self.mqtt_requests.run), name=name)
        )

    def _local_api(self) -> LocalApi:
        api = self.config.api
        tokens = [t.get_secret_value() for t in self._secrets.api_tokens]
        tls = None
        if api.cert_file is not None and api.key_file is not None:
            tls = server_ssl_context(api.cert_file, api.key_file)
        routes, open_paths = self._calendars.setup(self._store)  # notification routes, push
        guard = ApiGuard(
            api.listen,
            tokens,
            read_requires_token=api.read_requires_token,
            allowed_hosts=api.allowed_hosts,
            tls=api.cert_file is not None,
            # Graph's notifications carry no bearer token: each item is checked by clientState.
            self_authenticating=open_paths,
        )
        return LocalApi(
            self,
            api.listen,
            guard=guard,
            ssl_context=tls,
            routes=routes,
            show_private=api.show_private,
            clock=self._clock,
        )

    # --- fleet mode (DESIGN.md "Fleet mode"): the store in PostgreSQL, devices by lease --------

    # --- fleet mode (DESIGN.md "Fleet mode"): the store in PostgreSQL, devices by lease --------

    async def _open_store(self) -> StoreBackend:
        """SQLite by default; PostgreSQL (and fleet membership) when ``[store] url`` is set."""
        return await fleet.open_store(self.config, self._secrets, self._clock)

    @property
    def member_id(self) -> str:
        return fleet.member_id(self.config)

    def _start_devices(self, tg: asyncio.TaskGroup) -> None:
        """Alone: every configured device. In a fleet: those whose lease this member wins,
        as it wins them (the membership task starts and stops their sessions)."""
        if self.config.store.url is None:
            for settings in self._settings.values():
                self._start_device(settings)
            return
        from edge_agent.store.postgres import PostgresStore

        assert isinstance(self._store, PostgresStore)
        self._fleet = fleet.LeasedDevices(
            self._store,
            self.config,
            settings=lambda: self._settings,
            running=lambda device_id: device_id in self._device_tasks,
            start_device=self._start_device,
            stop_device=self._stop_device,
            start_room=self._calendars.start_room,
            stop_room=self._calendars.stop_room,
        )
        self._other_tasks.append(
            tg.create_task(self._supervise("fleet", self._fleet.member.run), name="agent.fleet")
        )

    def _start_if_mine(self, settings: DeviceSettings) -> None:
        """After a reload: alone, start it; in a fleet, only if this member holds its lease
        (a new device is taken by whichever member wins it, at its next round)."""
        if self._fleet is None or self._fleet.holds(settings.id):
            self._start_device(settings)

    async def _leave_fleet(self) -> None:
        """SIGTERM in a fleet: stop the sessions and release the leases at once."""
        if self._fleet is not None:
            await self._fleet.member.leave()

    async def fleet_status(self) -> dict[str, Any] | None:
        """``/v1/fleet``: the members, their devices and lease ages; ``None`` when alone."""
        if self._fleet is None:
            return None
        return await self._fleet.member.snapshot()
