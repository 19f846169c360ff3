"""Many simulated devices in one process, sharing one clock and one scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from .calendar import CalendarMode
from .clock import SimClock
from .core import ADMIN, DeviceCore, DeviceSettings
from .faultspec import apply_fault_spec
from .generator import generate_day
from .occupancy import SensingSettings
from .server import Device
from .tls import fingerprint_sha256, make_self_signed, server_context

log = logging.getLogger(__name__)


@dataclass
class SimConfig:
    """Options of a fleet of simulated devices (device k listens on ``port + k``; 0: any)."""

    devices: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    http: bool = False  # serve ws:// instead of wss://
    https_only: bool = False  # with http: refuse WebSocket upgrades with 401 (HTTP Mode HTTPS)
    username: str = "admin"
    password: str = "secret"
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # more: user -> (pw, role)
    mode: CalendarMode = "local"
    profile: str = "modern"
    speed: float = 1.0
    seed: int = 1
    time_zone: str = "Etc/UTC"
    start: datetime | None = None  # simulated start time; None: now
    confirm_delay_s: float = 5.0  # hybrid: how long the calendar backend takes to confirm
    booking_timeout_s: int = 60  # Configuration Bookings AdhocBooking BookingTimeout (60..300)
    cert_file: str | None = None
    key_file: str | None = None
    generate_day: bool = False  # fill each calendar with a realistic office day
    product_id: str = "Cisco Room Kit Pro"
    max_subscriptions: int = 50
    send_queue_frames: int = 1024  # per connection; a client further behind is disconnected
    faults: list[str] = field(default_factory=list)  # "--fault" specs applied at start
    profiles: dict[int, str] = field(default_factory=dict)  # device index -> its own profile
    counting_off: frozenset[int] = frozenset()  # devices with PeopleCountOutOfCall Off
    presence_off: frozenset[int] = frozenset()  # devices with PeoplePresenceDetector Off
    sensing: SensingSettings = field(default_factory=SensingSettings)


class Scheduler:
    """One heap of (due, device) for every device's clock-driven events; one task sleeps until
    the earliest. Stale entries are skipped, so a device is never ticked from two places."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, DeviceCore]] = []
        self._due: dict[DeviceCore, float] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        clock.listeners.append(self._wake.set)

    def schedule(self, core: DeviceCore, due: datetime | None) -> None:
        if due is None:
            return
        when = due.timestamp()
        known = self._due.get(core)
        if known is not None and known <= when:
            return
        self._due[core] = when
        heapq.heappush(self._heap, (when, next(self._seq), core))
        if self._heap[0][2] is core:
            self._wake.set()

    async def run(self) -> None:
        """Tick devices as their events come due; runs until cancelled (safe to cancel)."""
        while True:
            now = self.clock.now()
            stamp = now.timestamp()
            while self._heap and self._heap[0][0] <= stamp:
                when, _, core = heapq.heappop(self._heap)
                if self._due.get(core) != when:
                    continue
                del self._due[core]
                try:
                    core.tick(now)
                except Exception:
                    log.exception("device %s: tick failed", core.settings.device_id)
            self._wake.clear()
            timeout = None
            if self._heap:
                timeout = max(0.0, self.clock.real_seconds(self._heap[0][0] - stamp))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


class DeviceFleet:
    """``N`` simulated devices. ``await start()`` returns once all listen; ``await stop()``."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.clock = SimClock(config.start, config.speed)
        self.devices: list[Device] = []
        self.cert_pem: bytes = b""
        self.cert_sha256: str = ""
        self.scheduler = Scheduler(self.clock)
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._pending_spawns: list[tuple[Coroutine[Any, Any, None], str]] = []

    async def __aenter__(self) -> DeviceFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the certificate, the devices and their servers; apply ``config.faults``."""
        cfg = self.config
        ssl_context = None
        if not cfg.http:
            if cfg.cert_file and cfg.key_file:
                self.cert_pem = Path(cfg.cert_file).read_bytes()
                key_pem = Path(cfg.key_file).read_bytes()
            else:
                self.cert_pem, key_pem = await asyncio.to_thread(make_self_signed, [cfg.host])
            ssl_context = server_context(self.cert_pem, key_pem)
            self.cert_sha256 = fingerprint_sha256(self.cert_pem)
        credentials = {cfg.username: (cfg.password, ADMIN), **cfg.users}
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run(started), name="device-sim.fleet")
        await started.wait()
        now = self.clock.now()
        for k in range(cfg.devices):
            core = DeviceCore(self._settings(k), now)
            core.on_due = self._scheduling(core)
            device = Device(
                core,
                self.clock,
                credentials=credentials,
                http=cfg.http,
                spawn=self.spawn,
                send_queue_frames=cfg.send_queue_frames,
            )
            if cfg.generate_day:
                self._fill(device, k, now)
            await device.start(cfg.host, cfg.port + k if cfg.port else 0, ssl_context)
            self.devices.append(device)
        for spec in cfg.faults:
            apply_fault_spec(self, spec)
        log.info(
            "device-sim: %d devices listening from %s",
            len(self.devices),
            self.devices[0].url if self.devices else "-",
        )

    def _scheduling(self, core: DeviceCore) -> Callable[[datetime | None], None]:
        def on_due(due: datetime | None) -> None:
            self.scheduler.schedule(core, due)

        return on_due

    def _settings(self, k: int) -> DeviceSettings:
        cfg = self.config
        mode = "HTTPS" if (not cfg.http or cfg.https_only) else "HTTP+HTTPS"
        return DeviceSettings(
            index=k,
            device_id=f"sim-{k:04d}",
            product_id=cfg.product_id,
            profile=cfg.profiles.get(k, cfg.profile),
            mode=cfg.mode,
            time_zone=cfg.time_zone,
            booking_timeout_s=cfg.booking_timeout_s,
            confirm_delay_s=cfg.confirm_delay_s,
            http_mode=mode,
            seed=cfg.seed * 1_000_003 + k,
            max_subscriptions=cfg.max_subscriptions,
            sensing=cfg.sensing,
            counting=k not in cfg.counting_off,
            presence_detector=k not in cfg.presence_off,
        )

    def _fill(self, device: Device, k: int, now: datetime) -> None:
        rng = random.Random(self.config.seed * 7_919 + k)
        core = device.core
        bookings = generate_day(rng, now, core.zone, with_meeting_ids=True)
        bookings += generate_day(rng, now + timedelta(days=1), core.zone, with_meeting_ids=True)
        core.add_bookings(now, bookings, announce=False)

    async def _run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self.scheduler.run(), name="device-sim.scheduler")
            started.set()
            await asyncio.Event().wait()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` in the fleet's task group (fault timers); errors are logged."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the fleet is not running")
        self._tg.create_task(self._guard(coro, name), name=name)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", name)

    async def stop(self) -> None:
        """Close every server and connection and stop the timers. Safe to call twice."""
        for device in self.devices:
            await device.stop()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
            self._tg = None

    # ---- views -------------------------------------------------------------------------------

    def produced(self) -> dict[str, int]:
        """Events emitted by all devices together, per type."""
        total: Counter[str] = Counter()
        for device in self.devices:
            total.update(device.core.produced)
        return dict(total)

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /devices`` shows: ports, ids, connection and event counters."""
        return [
            {
                "index": d.device_index,
                "id": d.device_id,
                "port": d.port,
                "url": d.url,
                "profile": d.core.profile.name,
                "mode": d.core.settings.mode,
                "time_zone": str(d.core.zone),
                "connections": len(d.links),
                "ready": d.core.ready,
                "handshakes": {str(k): v for k, v in sorted(d.handshakes.items())},
                "bookings": len(d.core.calendar.bookings),
                "events": dict(sorted(d.core.produced.items())),
                "events_total": sum(d.core.produced.values()),
                "faults": d.faults.describe(),
            }
            for d in self.devices
        ]
