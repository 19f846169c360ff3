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

Rooms (DESIGN.md "Rooms and calendar sources"): with ``[microsoft]``, a :class:`GraphPoller`
runs the Graph rooms (linked devices, ``[[rooms]]``, and the directory's when
``discover_rooms``) as the supervised task ``graph``; its rounds commit through
:class:`edge_agent.store.calendar.RoomCalendarStore` into the same outbox the device sessions
use, so the drainers forward them to the webhook and MQTT with the device events. With
``[google]``, a :class:`GooglePoller` does the same for the Google rooms as the task ``google``
(``RoomCalendarStore(source="google")``: its own sync state, ``data.source = "google"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import uuid
import socket
from datetime import UTC, datetime
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from edge_agent import metrics
from edge_agent.backoff import Backoff
from edge_agent.clock import Clock, system_clock, unix_time, utc_iso
from edge_agent.config import (
    AgentConfig,
    EX_CONFIG,
    ConfigError,
    DeviceSettings,
    Secrets,
    device_settings,
    load_config,
    resolve_secrets,
)
from edge_agent.forward.base import Sink
from edge_agent.forward.drainer import Drainer
from edge_agent.bookings.book import BookingOrder
from edge_agent.bookings.models import Booking
from edge_agent.calendars.graph.booking import BookingNotSupported, CalendarUnavailable
from edge_agent.ops import heap, sdnotify
from edge_agent.ops.api import DeviceStatus, LocalApi, SinkStatus
from edge_agent.ops.api_bookings import request_view
from edge_agent.ops.api_guard import ApiGuard, server_ssl_context
from edge_agent.ops.event_stream import EventFeed
from edge_agent.session import BookingSent, DeviceSession, SessionTuning
from edge_agent.store import Store, StoreBackend, StoreUnusable

if TYPE_CHECKING:
    from edge_agent.fleet import FleetMember
    import httpx

    from edge_agent.bookings.pending import PendingRequest
    from edge_agent.calendars.google.booking import GoogleBooking
    from edge_agent.calendars.graph.auth import ClientCredentials
    from edge_agent.calendars.graph.booking import GraphBooking
    from edge_agent.calendars.sync import SyncState
    from edge_agent.calendars.graph.client import GraphClient
    from edge_agent.calendars.graph.poller import CalendarRoom, GraphPoller
    from edge_agent.calendars.graph.push import PushManager
    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.client import GoogleClient
    from edge_agent.calendars.google.poller import GooglePoller
    from edge_agent.calendars.google.push import WatchManager
    from edge_agent.forward.mqtt import MqttSink
    from edge_agent.forward.mqtt.commands import RoomInUseSender, SensorState
    from edge_agent.forward.webhook import WebhookSink

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL_S = 5.0
TRIM_INTERVAL_S = 2.0  # how often the heap trimmer reads the RSS (a few us); it trims rarely
"""malloc_trim costs ~0.5 ms with 1,000 devices: 0.05 % of a core at this interval."""
CALENDAR_BOOK_TIMEOUT_S = 60.0
"""A calendar room's booking request expires when its event is not created within this."""
LIST_CONCURRENCY = 16
"""Devices listing their bookings at once, fleet-wide (memory and store load after a start)."""


def devices_by_id(cfg: AgentConfig, secrets: Secrets) -> dict[str, DeviceSettings]:
    """The configured devices' settings (``[defaults]`` merged), by device id."""
    return {d.id: d for d in device_settings(cfg, secrets)}


def build_webhook_sink(cfg: AgentConfig, secrets: Secrets) -> WebhookSink:
    """The ``[webhook]`` sink (``check-config --connect`` probes this very sink)."""
    from edge_agent.forward.webhook import WebhookSink

    assert cfg.webhook is not None
    w = cfg.webhook
    return WebhookSink(
        w.url,
        [s.get_secret_value() for s in secrets.webhook_secrets],
        timeout_s=w.timeout_s,
        ca_file=str(w.ca_file) if w.ca_file else None,
        batch_max=w.batch_max,
        max_connections=w.max_in_flight,
    )


def build_mqtt_sink(
    cfg: AgentConfig,
    secrets: Secrets,
    health: Callable[[], dict[str, Any]],
    room_in_use: RoomInUseSender | None = None,
) -> MqttSink:
    """The ``[mqtt]`` sink (``check-config --connect`` probes this very sink)."""
    from edge_agent.forward.mqtt import MqttSink
    from edge_agent.forward.mqtt.commands import SensorCommands

    assert cfg.mqtt is not None
    m = cfg.mqtt
    return MqttSink(
        url=m.url,
        client_id=cfg.mqtt_client_id,
        username=m.username,
        password=secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None,
        password_source=(
            f"password_file {m.password_file}"
            if m.password_file
            else f"password_env {m.password_env}"
            if m.password_env
            else None
        ),
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
        keepalive=m.keepalive,
        base_topic=cfg.mqtt_base_topic,
        protocol=m.protocol,
        site=cfg.site,
        health=health,
        health_interval_s=m.health_interval_s,
        discovery=m.discovery,
        discovery_prefix=m.discovery_prefix,
        commands=(
            None
            if room_in_use is None
            else lambda base: SensorCommands(base, room_in_use)  # occupancy/set, see .commands
        ),
    )


def build_sinks(
    cfg: AgentConfig,
    secrets: Secrets,
    health: Callable[[], dict[str, Any]],
    room_in_use: RoomInUseSender | None = None,
) -> list[tuple[Sink, dict[str, Any]]]:
    """The configured sinks, each with its drainer options (``ttl_s``, ``max_in_flight``)."""
    sinks: list[tuple[Sink, dict[str, Any]]] = []
    if cfg.webhook is not None:
        w = cfg.webhook
        sinks.append(
            (
                build_webhook_sink(cfg, secrets),
                {"ttl_s": float(w.ttl_s), "max_in_flight": w.max_in_flight},
            )
        )
    if cfg.mqtt is not None:
        m = cfg.mqtt
        sinks.append(
            (
                build_mqtt_sink(cfg, secrets, health, room_in_use),
                {"ttl_s": float(m.ttl_s), "max_in_flight": 32},
            )
        )
    return sinks


def _zone(name: str | None, fallback: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name or fallback)


def graph_rooms(cfg: AgentConfig) -> list[CalendarRoom]:
    """The Graph rooms the config names: each linked device (room id = device id, the device's
    time zone) and each ``[[rooms]]`` entry (its ``time_zone``, else ``[microsoft]``'s, else
    ``[defaults]``'s)."""
    from edge_agent.calendars.graph.poller import CalendarRoom

    ms = cfg.microsoft
    default_tz = (ms.time_zone if ms else None) or cfg.defaults.time_zone or "UTC"
    rooms: list[CalendarRoom] = []
    for dev in cfg.devices:
        if dev.calendar is not None and (dev.calendar_source or "microsoft") == "microsoft":
            tz = _zone(dev.time_zone or cfg.defaults.time_zone, "UTC")
            rooms.append(CalendarRoom(dev.id, dev.calendar, tz, device_id=dev.id))
    for r in cfg.rooms:
        if r.source == "microsoft":
            rooms.append(CalendarRoom(r.id, r.calendar, _zone(r.time_zone, default_tz)))
    return rooms


def google_rooms(cfg: AgentConfig) -> list[CalendarRoom]:
    """The Google rooms the config names: each device linked with ``calendar_source =
    "google"`` (room id = device id, the device's time zone) and each ``[[rooms]]`` entry of
    source google (its ``time_zone``, else ``[google]``'s, else ``[defaults]``'s)."""
    from edge_agent.calendars.poller import CalendarRoom

    g = cfg.google
    default_tz = (g.time_zone if g else None) or cfg.defaults.time_zone or "UTC"
    rooms: list[CalendarRoom] = []
    for dev in cfg.devices:
        if dev.calendar is not None and dev.calendar_source == "google":
            tz = _zone(dev.time_zone or cfg.defaults.time_zone, "UTC")
            rooms.append(CalendarRoom(dev.id, dev.calendar, tz, device_id=dev.id))
    for r in cfg.rooms:
        if r.source == "google":
            rooms.append(CalendarRoom(r.id, r.calendar, _zone(r.time_zone, default_tz)))
    return rooms


def build_google_client(
    cfg: AgentConfig, *, max_connections: int = 64, **client_options: Any
) -> tuple[GoogleClient, ServiceAccountTokens, httpx.AsyncClient]:
    """The Google client the agent and ``check-config --connect`` use, its token source (the
    service-account JWT grant, impersonating ``[google] subject``) and its HTTP client (the
    caller closes it). The key file is read by google-auth at the first token, in a worker
    thread; ``resolve_secrets`` has checked it already. Raises AuthError / ValueError."""
    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.client import GoogleClient
    from edge_agent.httpclient import http_client

    g = cfg.google
    assert g is not None
    ca = str(g.ca_file) if g.ca_file else None
    tokens = ServiceAccountTokens(
        service_account_file=g.service_account_file, subject=g.subject, ca_file=ca
    )
    http = http_client(timeout_s=30.0, max_connections=max_connections, ca_file=ca)
    client = GoogleClient(
        http,
        tokens,
        subject=g.subject,
        customer=g.customer,
        directory_url=g.directory_url,
        calendar_url=g.calendar_url,
        **client_options,
    )
    return client, tokens, http


def certificate_thumbprint(cert_file: Path) -> str:
    """SHA-1 of the certificate's DER (what Entra ID shows as the thumbprint), hex."""
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert_file.read_text(encoding="ascii"))
    return hashlib.sha1(der).hexdigest().upper()  # the platform's thumbprint is SHA-1


def check_rsa_key(key_pem: str) -> None:
    """Raise ValueError unless ``key_pem`` is an unencrypted RSA private key: Entra ID takes
    client assertions signed RS256/PS256 only (msal would fail deep inside PyJWT otherwise)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"[microsoft] key_file is not a readable unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(
            f"[microsoft] key_file is not an RSA key ({type(key).__name__}); Entra ID needs an "
            "RSA key for the certificate credential"
        )


def build_graph_client(
    cfg: AgentConfig, secrets: Secrets, *, max_connections: int = 64
) -> tuple[GraphClient, ClientCredentials, httpx.AsyncClient]:
    """The Graph client the agent and ``check-config --connect`` use, its token source and its
    HTTP client (the caller closes it). Raises ValueError / OSError for an unreadable
    certificate."""
    from edge_agent.calendars.graph.auth import CertificateCredential, ClientCredentials
    from edge_agent.calendars.graph.client import GraphClient
    from edge_agent.httpclient import http_client

    ms = cfg.microsoft
    assert ms is not None
    ca = str(ms.ca_file) if ms.ca_file else None
    cert = None
    if ms.certificate_file is not None:
        assert secrets.microsoft_private_key is not None
        key_pem = secrets.microsoft_private_key.get_secret_value()
        check_rsa_key(key_pem)
        cert = CertificateCredential(certificate_thumbprint(ms.certificate_file), key_pem)
    secret = secrets.microsoft_client_secret
    tokens = ClientCredentials(
        tenant_id=ms.tenant_id,
        client_id=ms.client_id,
        secret=secret.get_secret_value() if secret is not None else None,
        certificate=cert,
        authority_url=ms.authority_url,
        ca_file=ca,
    )
    http = http_client(timeout_s=30.0, max_connections=max_connections, ca_file=ca)
    return GraphClient(http, tokens, graph_url=ms.graph_url), tokens, http


def _rooms_key(cfg: AgentConfig) -> Any:
    """What SIGHUP cannot apply to the rooms without a restart."""
    return (
        cfg.microsoft,
        cfg.google,
        tuple(cfg.rooms),
        tuple((d.id, d.calendar, d.calendar_source) for d in cfg.devices if d.calendar),
    )


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
        self._fleet: FleetMember | None = None  # fleet mode: [store] url is postgresql
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
        self._graph: GraphPoller | None = None
        self._graph_http: httpx.AsyncClient | None = None
        self._graph_client: GraphClient | None = None
        self._graph_tokens: ClientCredentials | None = None
        self._push: PushManager | None = None
        self._graph_task: asyncio.Task[None] | None = None
        self._graph_overrides = dict(graph_overrides or {})
        self._google: GooglePoller | None = None
        self._google_http: httpx.AsyncClient | None = None
        self._google_client: GoogleClient | None = None
        self._google_task: asyncio.Task[None] | None = None
        self._google_overrides = dict(google_overrides or {})
        self._google_tokens: ServiceAccountTokens | None = None
        self._watch: WatchManager | None = None
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
            out.append({**s.info(), **self._link_times(s.device_id)})  # type: ignore[typeddict-item]
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
            entry: SinkStatus = {
                "name": sink.name,
                "state": "gone" if st.stopped_reason else "running",
                # A gone sink never delivers again, whatever its connection says.
                "ready": sink.ready() and not st.stopped_reason,
                "last_error": st.last_error or getattr(sink, "last_error", None),
            }
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
        status = self._graph.status() if self._graph is not None else {}
        for rid, st in status.items():
            room = st.room
            out[rid] = {
                "id": rid,
                "source": "microsoft",
                "device_id": room.device_id,
                "calendar": room.mailbox,
                "display_name": room.display_name,
                "discovered": room.discovered,
                "time_zone": str(room.time_zone),
                "last_sync": st.last_sync,
                "last_error": st.last_error,
                "window_size": st.window_size,
                "rounds": st.rounds,
            }
            if self._push is not None:
                out[rid].update(self._push.status(rid))
            linked = self._sessions.get(room.device_id) if room.device_id else None
            if linked is not None:
                out[rid]["connected"] = linked.client.connected
        self._google_rooms(out)
        if self.config.microsoft is not None:
            for room in graph_rooms(self.config):  # not running yet (the poller is starting)
                out.setdefault(
                    room.room_id,
                    {
                        "id": room.room_id,
                        "source": "microsoft",
                        "device_id": room.device_id,
                        "calendar": room.mailbox,
                        "last_sync": None,
                        "last_error": None,
                        "window_size": 0,
                    },
                )
        return [out[k] for k in sorted(out)]

    def _google_rooms(self, out: dict[str, dict[str, Any]]) -> None:
        """The Google rooms of :meth:`rooms` (source ``google``): the poller's, else (not
        running yet) the configured ones."""
        status = self._google.status() if self._google is not None else {}
        for rid, st in status.items():
            room = st.room
            out[rid] = {
                "id": rid,
                "source": "google",
                "device_id": room.device_id,
                "calendar": room.mailbox,
                "display_name": room.display_name,
                "discovered": room.discovered,
                "time_zone": str(room.time_zone),
                "last_sync": st.last_sync,
                "last_error": st.last_error,
                "window_size": st.window_size,
                "rounds": st.rounds,
            }
            if self._watch is not None:
                out[rid].update(self._watch.status(rid))
            linked = self._sessions.get(room.device_id) if room.device_id else None
            if linked is not None:
                out[rid]["connected"] = linked.client.connected
        if self.config.google is not None:
            for room in google_rooms(self.config):
                out.setdefault(
                    room.room_id,
                    {
                        "id": room.room_id,
                        "source": "google",
                        "device_id": room.device_id,
                        "calendar": room.mailbox,
                        "last_sync": None,
                        "last_error": None,
                        "window_size": 0,
                    },
                )

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
        if isinstance(self._store, Store):  # the PostgreSQL store has no commit feed yet
            self._store.on_committed.append(self.event_feed.publish)
        try:
            if self._with_api and not await self._start_api():
                return EX_CONFIG
            if not self._with_api:
                self._graph_setup()
                self._google_setup()
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
        for sink, opts in build_sinks(self.config, self._secrets, self.health, self._room_in_use):
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
        if self.config.microsoft is not None:
            self._graph_task = tg.create_task(
                self._supervise("graph", self._run_graph), name="graph"
            )
        if self.config.google is not None:
            self._google_task = tg.create_task(
                self._supervise("google", self._run_google), name="google"
            )
        await self._announce_rooms()
        self._other_tasks.append(tg.create_task(self._sample_loop(), name="agent.sampler"))
        self._other_tasks.append(tg.create_task(self._trim_loop(), name="agent.heap-trim"))
        self._other_tasks.append(
            tg.create_task(sdnotify.watchdog_loop(self._healthy), name="agent.watchdog")
        )

    def _graph_setup(self) -> tuple[list[Any], tuple[str, ...]]:
        """The Graph client and, with ``notification_url``, the push manager and the local
        API's notification routes. A credential that cannot be built (an unreadable
        certificate) is logged; the ``graph`` task retries it."""
        ms = self.config.microsoft
        if ms is None:
            return [], ()
        try:
            self._graph_client, self._graph_tokens, self._graph_http = build_graph_client(
                self.config, self._secrets
            )
        except (OSError, ValueError) as exc:
            log.error("cannot build the Graph client; retrying", error=str(exc))
            return [], ()
        if not ms.notification_url:
            return [], ()
        from edge_agent.calendars.graph.push import LIFECYCLE_PATH, NOTIFY_PATH, PushManager
        from edge_agent.calendars.notify import GraphNotifications

        self._push = PushManager(
            self._graph_http,
            self._graph_tokens,
            notification_url=ms.notification_url,
            poke=self._poke_room,
            graph_url=ms.graph_url,
            clock=self._clock,
        )
        notify = GraphNotifications(self._push, self._poke_room)
        return notify.routes(), (NOTIFY_PATH, LIFECYCLE_PATH)

    def _poke_room(self, room_id: str) -> bool:
        """A Graph notification for ``room_id``: fetch its delta now (the poller of this run)."""
        return self._graph.poke(room_id) if self._graph is not None else False

    async def _run_graph(self) -> None:
        """One poller per run: a restart by the supervisor starts from the stored state. With
        push, the subscriptions (task ``graph-push``) follow the poller's rooms and stretch
        their polling while healthy; they are deleted when the task ends."""
        from edge_agent.calendars.graph.poller import GraphPoller
        from edge_agent.store.calendar import RoomCalendarStore

        assert self._store is not None
        cfg = self.config
        ms = cfg.microsoft
        assert ms is not None
        if self._graph_client is None:
            self._graph_client, self._graph_tokens, self._graph_http = build_graph_client(
                cfg, self._secrets
            )
        # Refused in fleet mode by the config checks: the calendar sync state is SQLite's.
        assert isinstance(self._store, Store)
        store = RoomCalendarStore(self._store, site=cfg.site, source="microsoft")
        push = self._push
        opts = self._poller_options(
            ms,
            graph_rooms(cfg),
            # A device without a calendar is a room under its id: the directory cannot take it.
            [d.id for d in cfg.devices if d.calendar is None],
            self._graph_overrides,
            push,
        )
        self._graph = GraphPoller(self._graph_client, store, **opts)
        log.info(
            "graph calendar source starting",
            rooms_configured=len(opts["rooms"]),
            discover=ms.discover_rooms,
            graph_url=ms.graph_url,
            push=push.notification_url if push is not None else None,
        )
        await _run_with_push(self._graph.run, push, "graph")

    def _google_setup(self) -> tuple[list[Any], tuple[str, ...]]:
        """The Google client and, with ``notification_url``, the watch channels and the local
        API's notification route (its messages are checked by each channel's token)."""
        g = self.config.google
        if g is None:
            return [], ()
        try:
            self._google_client, self._google_tokens, self._google_http = build_google_client(
                self.config
            )
        except Exception as exc:  # noqa: BLE001 - AuthError/ValueError: the task retries it
            log.error("cannot build the Google client; retrying", error=str(exc))
            return [], ()
        if not g.notification_url:
            return [], ()
        from edge_agent.calendars.google.push import NOTIFY_PATH, WatchManager

        self._watch = WatchManager(
            self._google_http,
            self._google_tokens,
            calendar_url=g.calendar_url,
            notification_url=g.notification_url,
            poke=self._poke_google_room,
            clock=self._clock,
        )
        return self._watch.routes(), (NOTIFY_PATH,)

    def _poke_google_room(self, room_id: str) -> bool:
        """A Google notification for ``room_id``: fetch its changes now."""
        return self._google.poke(room_id) if self._google is not None else False

    async def _run_google(self) -> None:
        """One poller per run, as for Graph: a restart by the supervisor starts from the stored
        sync tokens. The client is built once (its token cache outlives a poller restart)."""
        from edge_agent.calendars.google.poller import GooglePoller
        from edge_agent.store.calendar import RoomCalendarStore

        assert self._store is not None
        cfg = self.config
        g = cfg.google
        assert g is not None
        if self._google_client is None:
            self._google_client, _, self._google_http = build_google_client(cfg)
        # Refused in fleet mode by the config checks: the calendar sync state is SQLite's.
        assert isinstance(self._store, Store)
        store = RoomCalendarStore(self._store, site=cfg.site, source="google")
        watch = self._watch
        opts = self._poller_options(
            g,
            google_rooms(cfg),
            # Ids taken elsewhere: devices without a calendar, and the Graph rooms.
            [d.id for d in cfg.devices if d.calendar is None]
            + ([r.room_id for r in graph_rooms(cfg)] if cfg.microsoft is not None else []),
            self._google_overrides,
            watch,
        )
        self._google = GooglePoller(self._google_client, store, **opts)
        log.info(
            "google calendar source starting",
            rooms_configured=len(opts["rooms"]),
            discover=g.discover_rooms,
            calendar_url=g.calendar_url,
            subject=g.subject,
            push=watch.address if watch is not None else None,
        )
        await _run_with_push(self._google.run, watch, "google")

    def _poller_options(
        self,
        section: Any,
        rooms: list[Any],
        reserved_ids: list[str],
        overrides: Mapping[str, Any],
        push: Any,
    ) -> dict[str, Any]:
        """A calendar poller's options from its config section (``[microsoft]`` or ``[google]``,
        the same keys); with push, polling follows its rooms and stretches while it is healthy."""
        opts: dict[str, Any] = {
            "rooms": rooms,
            "discover": section.discover_rooms,
            "default_zone": _zone(section.time_zone or self.config.defaults.time_zone, "UTC"),
            "poll_interval_s": section.poll_interval_s,
            "refresh_rooms_s": section.refresh_rooms_s,
            "horizon_days": section.horizon_days,
            "clock": self._clock,
            "reserved_ids": reserved_ids,
            **overrides,
        }
        if push is not None:
            opts["interval_for"] = push.poll_interval_s
            opts["on_rooms"] = lambda found: push.set_rooms(
                {rid: r.mailbox for rid, r in found.items()}
            )
        return opts

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

    async def _stop_device(self, device_id: str, reason: str) -> None:
        """Close the device's link, commit what it already sent, then end its session."""
        task = self._device_tasks.pop(device_id, None)
        session = self._sessions.pop(device_id, None)
        if session is not None:
            await session.stop(self._drain_timeout_s, reason)
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
        """Give the memory a burst freed back to the OS, soon after (see :mod:`edge_agent.ops.heap`)."""
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
        # The calendar rounds stop first, with the sessions: no new events, then the drain. A
        # round cut mid-commit is either stored whole or not at all (one transaction).
        if self._graph_task is not None:
            self._graph_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._graph_task
        if self._google_task is not None:
            self._google_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._google_task
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
        if self._graph_http is not None:
            with contextlib.suppress(Exception):
                await self._graph_http.aclose()
        if self._google_http is not None:
            with contextlib.suppress(Exception):
                await self._google_http.aclose()
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
        if _rooms_key(cfg) != _rooms_key(self.config):
            log.warning(
                "room changes ([microsoft], [google], [[rooms]], devices' calendar) need a restart to take "
                "effect; the running rooms are kept (systemctl restart edge-agent)"
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
            self._fleet.set_devices(new)
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
        from edge_agent.forward.mqtt import MqttSink

        password = secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None
        for sink, _ in self._sinks:
            if isinstance(sink, MqttSink):
                creds = (cfg.mqtt.username, password) if cfg.mqtt is not None else None
                sink.reconnect_now(credentials=creds)

    async def _announce_rooms(self) -> None:
        """Tell the MQTT sink which rooms exist: it clears the retained topics of removed ones
        and publishes Home Assistant discovery (``edge_agent.forward.mqtt.discovery``)."""
        from edge_agent.forward.mqtt import MqttSink

        for sink, _ in self._sinks:
            if isinstance(sink, MqttSink):
                await sink.set_rooms(self._settings)

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
        return "calendar" if self._calendar_room(room_id) is not None else None

    def _calendar_room(self, room_id: str) -> tuple[str, CalendarRoom] | str | None:
        """The calendar-only room ``room_id`` with its source (``"microsoft"``, ``"google"``),
        its source's name when that source cannot be booked through the agent, or ``None``."""
        for source, poller in (("microsoft", self._graph), ("google", self._google)):
            st = poller.status().get(room_id) if poller is not None else None
            if st is not None and st.room.device_id is None:
                return source, st.room
        if self.config.microsoft is not None:
            for room in graph_rooms(self.config):
                if room.room_id == room_id and room.device_id is None:
                    return "microsoft", room
        if self.config.google is not None:
            for room in google_rooms(self.config):
                if room.room_id == room_id and room.device_id is None:
                    return "google", room
        for r in self.config.rooms:
            if r.id == room_id:
                return str(r.source)
        return None

    async def book(
        self, room_id: str, order: BookingOrder, *, request_uuid: str | None = None
    ) -> BookingSent:
        """Book ``room_id`` with a fresh request UUID: a device room through
        :meth:`DeviceSession.book`, a calendar-only Microsoft or Google room through its calendar
        (:meth:`_book_calendar`).

        Raises:
            LookupError: unknown room; else what :meth:`DeviceSession.book` or
                :meth:`_book_calendar` raise.
        """
        session = self._sessions.get(room_id)
        if session is not None:
            return await session.book(request_uuid or str(uuid.uuid4()), order)
        room = self._calendar_room(room_id)
        if room is None:
            raise LookupError(f"unknown room {room_id!r}")
        if isinstance(room, str):
            raise BookingNotSupported(
                f"{room_id} is a {room} calendar room: booking it through the agent is not "
                "supported yet; book it in its calendar"
            )
        source, cal = room
        return await self._book_calendar(source, cal, order, request_uuid or str(uuid.uuid4()))

    async def release(self, room_id: str, booking_id: str) -> Booking:
        """Release a booking of ``room_id`` (``Bookings Delete``, or the calendar's delete);
        ``booking.deleted`` follows (a calendar room's from its next round, fetched now)."""
        session = self._sessions.get(room_id)
        if session is not None:
            return await session.release(booking_id)
        room = self._calendar_room(room_id)
        if room is None:
            raise LookupError(f"unknown room {room_id!r}")
        if isinstance(room, str):
            raise BookingNotSupported(
                f"{room_id} is a {room} calendar room: releasing through the agent is not "
                "supported yet"
            )
        from edge_agent.calendars.errors import CalendarSourceError
        from edge_agent.session import BookingRejected

        source, cal = room
        booker = await self._calendar_ready(source, cal)
        state = await self._calendar_state(cal.room_id, source)
        stored = state.bookings.get(booking_id) if state is not None else None
        if stored is None:
            raise LookupError(f"{room_id}: no booking {booking_id!r} in the room's calendar window")
        try:
            await booker.delete_event(cal.room_id, cal.mailbox, booking_id)
        except CalendarSourceError as exc:
            raise BookingRejected(str(exc)) from None
        assert self._store is not None
        from edge_agent.store.base import Change

        # The agent's own copy (made when it booked it) must not hold the slot any more.
        await self._store.commit(Change(cal.room_id, window_delete=[booking_id]))
        self._poke_source(source, cal.room_id)
        log.info("calendar booking deleted", room=room_id, booking_id=booking_id)
        return stored.to_booking()

    # --- booking a calendar-only room (DESIGN.md "Booking through the agent") -----------------
    #
    # The request is recorded (``booking_request``) with a pending row under the room id, then
    # the event is created in the room's mailbox with ``transactionId`` = the request UUID, so
    # a create sent again (a timeout) never makes a second event. The answer closes the request
    # in one commit: ``booking.created`` (with ``booking_request_uuid`` and ``pending_ms``), the
    # pending row deleted, and the booking kept in the room id's window rows, which is what the
    # calendar rounds read as "already reported" (:mod:`edge_agent.bookings.precedence`, by
    # meeting id): the round that sees the event does not report it again, and a round that
    # sees it before the answer is in skips it as awaited by the pending request.

    def _poke_source(self, source: str, room_id: str) -> bool:
        """Fetch ``room_id``'s changes now, from the poller of its source."""
        if source == "google":
            return self._poke_google_room(room_id)
        return self._poke_room(room_id)

    async def _calendar_ready(
        self, source: str, room: CalendarRoom
    ) -> GraphBooking | GoogleBooking:
        """The booker, once the room's calendar can take a change now.

        Raises:
            CalendarUnavailable: no client or token, the room not read yet, or its last
                round failed.
        """
        rid = room.room_id
        if source == "google":
            return await self._google_booker(room)
        from edge_agent.calendars.graph.booking import GraphBooking

        if self._graph_http is None or self._graph_tokens is None or self._graph is None:
            raise CalendarUnavailable(f"{rid}: the Graph calendar source is not running yet")
        self._check_round(rid, self._graph.status().get(rid))
        try:
            await self._graph_tokens.token()
        except Exception as exc:  # noqa: BLE001 - any token failure means: not now
            raise CalendarUnavailable(f"{rid}: no Graph token: {exc}") from None
        ms = self.config.microsoft
        assert ms is not None
        return GraphBooking(self._graph_http, self._graph_tokens, graph_url=ms.graph_url)

    async def _google_booker(self, room: CalendarRoom) -> GoogleBooking:
        """A Google room's booker: the poller's HTTP client, and a token source of its own,
        since an insert needs the write scope the poller's ``calendar.readonly`` lacks."""
        from edge_agent.calendars.google.auth import ServiceAccountTokens
        from edge_agent.calendars.google.booking import BOOKING_SCOPE, GoogleBooking

        rid, g = room.room_id, self.config.google
        if self._google_http is None or self._google is None or g is None:
            raise CalendarUnavailable(f"{rid}: the Google calendar source is not running yet")
        self._check_round(rid, self._google.status().get(rid))
        tokens: ServiceAccountTokens | None = self.__dict__.get("_google_booking_tokens_")
        try:
            if tokens is None:
                tokens = ServiceAccountTokens(
                    service_account_file=g.service_account_file,
                    subject=g.subject,
                    scopes=(BOOKING_SCOPE,),
                    ca_file=str(g.ca_file) if g.ca_file else None,
                )
                self.__dict__["_google_booking_tokens_"] = tokens
            await tokens.token()
        except Exception as exc:  # noqa: BLE001 - any token failure means: not now
            raise CalendarUnavailable(
                f"{rid}: no Google token with the scope {BOOKING_SCOPE} (domain-wide "
                f"delegation): {exc}"
            ) from None
        return GoogleBooking(self._google_http, tokens, calendar_url=g.calendar_url)

    @staticmethod
    def _check_round(rid: str, st: Any) -> None:
        """Refuse (CalendarUnavailable) a room not read yet or whose last round failed."""
        if st is None or st.last_sync is None:
            why = st.last_error if st is not None and st.last_error else "not read yet"
            raise CalendarUnavailable(f"{rid}: the room's calendar is not available ({why})")
        if st.last_error:
            raise CalendarUnavailable(
                f"{rid}: the room's last calendar round failed: {st.last_error}"
            )

    async def _calendar_state(self, room_id: str, source: str) -> SyncState | None:
        from edge_agent.store.calendar import RoomCalendarStore

        assert isinstance(self._store, Store)  # calendar rooms run on SQLite only
        return await RoomCalendarStore(
            self._store, site=self.config.site, source=source
        ).load_sync_state(room_id)

    def _calendar_lock(self, room_id: str) -> asyncio.Lock:
        # One order at a time per room: two overlapping orders must not both pass the check.
        locks: dict[str, asyncio.Lock] = self.__dict__.setdefault("_calendar_locks_", {})
        return locks.setdefault(room_id, asyncio.Lock())

    async def _book_calendar(
        self, source: str, room: CalendarRoom, order: BookingOrder, request_uuid: str
    ) -> BookingSent:
        """Check, record, then create the event in the background; the request is pending.

        Raises:
            CalendarUnavailable: see :meth:`_calendar_ready` (nothing recorded or sent).
            OrderRefused: overlap or outside the window (nothing recorded or sent).
            StoreError: the request could not be recorded (nothing sent).
        """
        from datetime import timedelta

        from edge_agent.bookings.book import check_order
        from edge_agent.bookings.events import make_envelope
        from edge_agent.bookings.pending import PendingRequest
        from edge_agent.calendars.model import CalendarBooking
        from edge_agent.clock import utc_iso
        from edge_agent.store.base import Change, PendingRow

        assert self._store is not None and self._tg is not None
        rid = room.room_id
        booker = await self._calendar_ready(source, room)
        async with self._calendar_lock(rid):
            state = await self._calendar_state(rid, source)
            if state is None or state.window is None:
                raise CalendarUnavailable(f"{rid}: the room's calendar is not read yet")
            now = self._clock.now()
            window = [b.to_booking() for b in state.bookings.values() if not b.cancelled]
            poller = self._google if source == "google" else self._graph
            st = poller.status().get(rid) if poller is not None else None
            synced = st.last_sync.timestamp() if st is not None and st.last_sync else 0.0
            for key, row in (await self._store.load_window(rid)).items():
                # Booked here and not yet seen by a round: it holds its slot meanwhile.
                if key not in state.bookings and float(row.get("booked_at") or 0) > synced:
                    with contextlib.suppress(ValueError):
                        window.append(CalendarBooking.from_row(row).to_booking())
            pending: list[PendingRequest] = []
            lapsed: list[PendingRequest] = []
            for p in await self._store.load_pending(rid):
                with contextlib.suppress(ValueError):
                    req = PendingRequest.from_row(p.row)
                    (pending if req.deadline > now else lapsed).append(req)
            if lapsed:  # left by an agent that stopped while they were pending
                await self._expire_calendar_requests(rid, lapsed, source)
            start = check_order(order, window, state.window, now, pending=pending)
            deadline = now + timedelta(seconds=CALENDAR_BOOK_TIMEOUT_S)
            request = {
                **order.to_dict(),
                "start": utc_iso(start),
                "requested_at": utc_iso(now),
                "expires_at": utc_iso(deadline),
            }
            await self._store.record_request(request_uuid, rid, request)
            req = PendingRequest(
                rid, request_uuid, order.title, start, order.duration_min, now, deadline
            )
            env = make_envelope(
                "booking.requested",
                site=self.config.site,
                device_id=None,
                room_id=rid,
                source=source,
                now=now,
                extra={"booking_request_uuid": request_uuid, "request": req.to_dict()},
            )
            kept = PendingRow(rid, request_uuid, deadline.timestamp(), req.to_row())
            await self._store.commit(Change(rid, pending_upsert=[kept], events=[env]))
        task = self._tg.create_task(
            self._follow_calendar_request(booker, source, room, order, req),
            name=f"book[{rid}:{request_uuid}]",
        )
        self._other_tasks.append(task)  # cancelled at shutdown; the request then expires
        task.add_done_callback(self._other_tasks.remove)
        log.info("calendar booking requested", room=rid, booking_request_uuid=request_uuid)
        return BookingSent(request_uuid, deadline, answered=False)

    async def _expire_calendar_requests(
        self, room_id: str, reqs: list[PendingRequest], source: str
    ) -> None:
        from edge_agent.bookings.events import make_envelope
        from edge_agent.store.base import Change

        assert self._store is not None
        now = self._clock.now()
        events = [
            make_envelope(
                "booking.request_expired",
                site=self.config.site,
                device_id=None,
                room_id=room_id,
                source=source,
                now=now,
                extra={"booking_request_uuid": r.booking_request_uuid, "request": r.to_dict()},
            )
            for r in reqs
        ]
        uuids = [r.booking_request_uuid for r in reqs]
        await self._store.commit(Change(room_id, pending_delete=uuids, events=events))

    async def _follow_calendar_request(
        self,
        booker: GraphBooking | GoogleBooking,
        source: str,
        room: CalendarRoom,
        order: BookingOrder,
        req: PendingRequest,
    ) -> None:
        """Create the event (sent again with the same ``transactionId`` until answered or the
        deadline), then close the request: created, failed (a refusal) or expired. Never
        raises: it runs in the agent's TaskGroup, which one failed request must not end."""
        try:
            await self._create_calendar_event(booker, source, room, order, req)
        except Exception:
            # A store that cannot commit the outcome: the request reads as expired after its
            # deadline (request_view), and the room's next round still reports the event.
            log.exception(
                "calendar booking: the outcome could not be stored",
                room=room.room_id,
                booking_request_uuid=req.booking_request_uuid,
            )

    async def _create_calendar_event(
        self,
        booker: GraphBooking | GoogleBooking,
        source: str,
        room: CalendarRoom,
        order: BookingOrder,
        req: PendingRequest,
    ) -> None:
        from datetime import timedelta

        from edge_agent.bookings.events import make_envelope
        from edge_agent.bookings.pending import Resolution
        from edge_agent.calendars.errors import CalendarSourceError
        from edge_agent.calendars.google import events as google_events
        from edge_agent.calendars.google.errors import GoogleUnavailable
        from edge_agent.calendars.graph import events as graph_events
        from edge_agent.calendars.graph.errors import GraphUnavailable
        from edge_agent.calendars.sync import Upsert
        from edge_agent.clock import parse_utc
        from edge_agent.store.base import Change

        assert self._store is not None and req.start is not None
        rid, uid = room.room_id, req.booking_request_uuid
        common: dict[str, Any] = {
            "site": self.config.site,
            "device_id": None,
            "room_id": rid,
            "source": source,
        }
        attempt = 0
        event: dict[str, Any] | None = None
        failure: str | None = None
        try:
            async with asyncio.timeout((req.deadline - self._clock.now()).total_seconds()):
                while event is None and failure is None:
                    attempt += 1
                    try:
                        event = await booker.create_event(
                            rid,
                            room.mailbox,
                            request_uuid=uid,
                            title=order.title,
                            start=req.start,
                            end=req.start + timedelta(minutes=order.duration_min),
                            organizer=order.organizer,
                        )
                    except (GraphUnavailable, GoogleUnavailable) as exc:
                        # Idempotent (Graph's transactionId, Google's event id): keep trying
                        # until the deadline.
                        log.warning(
                            "calendar booking: calendar unavailable; retrying",
                            room=rid,
                            booking_request_uuid=uid,
                            error=str(exc),
                        )
                        await asyncio.sleep(min(30.0, 2.0 * attempt))
                    except CalendarSourceError as exc:
                        failure = str(exc)
        except TimeoutError:
            pass
        now = self._clock.now()
        if event is not None:
            if source == "google":
                items, _ = google_events.to_delta_items([event], room.time_zone)
            else:
                items, _ = graph_events.to_delta_items([event], {}, room.time_zone)
            if items and isinstance(items[0], Upsert):
                cb = items[0].booking
                booking = dataclasses.replace(cb.to_booking(), booking_request_uuid=uid)
                row = {**cb.to_row(), **booking.to_dict(), "booked_at": now.timestamp()}
                stale = []  # the agent's own copies of bookings that are over
                for k, r in (await self._store.load_window(rid)).items():
                    with contextlib.suppress(ValueError, TypeError):
                        if parse_utc(str(r.get("end"))) < now:
                            stale.append(k)
                env = make_envelope(
                    "booking.created",
                    booking=booking,
                    now=now,
                    extra={"pending_ms": Resolution("created", req, now).pending_ms},
                    **common,
                )
                await self._store.commit(
                    Change(
                        rid,
                        window_upsert={cb.id: row},
                        window_delete=stale,
                        pending_delete=[uid],
                        events=[env],
                    )
                )
                self._poke_source(source, rid)
                log.info(
                    "calendar booking created",
                    room=rid,
                    booking_request_uuid=uid,
                    booking_id=cb.id,
                    meeting_id=cb.meeting_id,
                )
                return
            failure = f"the calendar answered the create with an unreadable event: {event!r:.200}"
        if failure is not None:
            env = make_envelope(
                "booking.failed",
                now=now,
                extra={
                    "booking_request_uuid": uid,
                    "cause": failure,
                    "request": req.to_dict(),
                    "pending_ms": Resolution("failed", req, now).pending_ms,
                },
                **common,
            )
            log.error("calendar booking failed", room=rid, booking_request_uuid=uid, cause=failure)
        else:
            env = make_envelope(
                "booking.request_expired",
                now=now,
                extra={"booking_request_uuid": uid, "request": req.to_dict()},
                **common,
            )
            log.warning("calendar booking expired", room=rid, booking_request_uuid=uid)
        await self._store.commit(Change(rid, pending_delete=[uid], events=[env]))

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
        routes, open_paths = self._graph_setup()  # the Graph notification routes, with push
        g_routes, g_paths = self._google_setup()  # the Google one, with [google] push
        routes, open_paths = [*routes, *g_routes], (*open_paths, *g_paths)
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

    async def _open_store(self) -> StoreBackend:
        """SQLite by default; PostgreSQL (and fleet membership) when ``[store] url`` is set."""
        cfg = self.config
        sinks = tuple(cfg.sink_names()) or ("webhook",)
        if cfg.store.url is None:
            return await Store.open(
                cfg.store_path,
                sinks=sinks,
                outbox_max_events=cfg.store.outbox_max_events,
                synchronous=cfg.store.synchronous,
                clock=unix_time(self._clock),
            )
        from edge_agent.store.postgres import PostgresStore

        password = self._secrets.store_password
        return await PostgresStore.open(
            cfg.store.url,
            password=None if password is None else password.get_secret_value(),
            sslmode=cfg.store.sslmode,
            ca_file=cfg.store.ca_file,
            sinks=sinks,
            outbox_max_events=cfg.store.outbox_max_events,
            member_id=self.member_id,
            idle_in_transaction_s=max(1.0, cfg.fleet.lease_s / 3),
            lock_timeout_s=cfg.fleet.lease_s,
            clock=unix_time(self._clock),
        )

    @property
    def member_id(self) -> str:
        return self.config.fleet.member_id or socket.gethostname()

    def _start_devices(self, tg: asyncio.TaskGroup) -> None:
        """Alone: every configured device. In a fleet: those whose lease this member wins,
        as it wins them (the membership task starts and stops their sessions)."""
        if self.config.store.url is None:
            for settings in self._settings.values():
                self._start_device(settings)
            return
        from edge_agent.fleet import FleetMember
        from edge_agent.store.postgres import PostgresStore

        assert isinstance(self._store, PostgresStore)
        self._fleet = FleetMember(
            self._store,
            member_id=self.member_id,
            lease_s=self.config.fleet.lease_s,
            devices=list(self._settings),
            start_session=self._start_leased,
            stop_session=self._stop_leased,
            info={"site": self.config.site, "api": self.config.api.listen},
        )
        self._other_tasks.append(
            tg.create_task(self._supervise("fleet", self._fleet.run), name="agent.fleet")
        )

    def _start_leased(self, device_id: str) -> None:
        settings = self._settings.get(device_id)
        if settings is not None and device_id not in self._device_tasks:
            self._start_device(settings)

    async def _stop_leased(self, device_id: str, lost: bool) -> None:
        if not lost:
            await self._stop_device(device_id, "handed over to another fleet member")
            return
        # The lease is gone: whatever the session still holds cannot be committed (the store
        # refuses it); close the socket now rather than wait for commits that cannot happen.
        task = self._device_tasks.pop(device_id, None)
        session = self._sessions.pop(device_id, None)
        if session is not None:
            await session.stop(0.0, "fleet lease lost")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start_if_mine(self, settings: DeviceSettings) -> None:
        """After a reload: alone, start it; in a fleet, only if this member holds its lease
        (a new device is taken by whichever member wins it, at its next round)."""
        if self._fleet is None or settings.id in self._fleet.held:
            self._start_device(settings)

    async def _leave_fleet(self) -> None:
        """SIGTERM in a fleet: stop the sessions and release the leases at once."""
        if self._fleet is not None:
            await self._fleet.leave()

    async def fleet_status(self) -> dict[str, Any] | None:
        """``/v1/fleet``: the members, their devices and lease ages; ``None`` when alone."""
        if self._fleet is None:
            return None
        return await self._fleet.snapshot()


async def _run_with_push(
    run: Callable[[], Coroutine[Any, Any, None]], push: Any, source: str
) -> None:
    """Run a calendar poller, with its push manager beside it when there is one; the push is
    stopped (bounded, shielded) when the run ends: Graph's subscriptions are deleted, Google's
    channels stopped, since their secrets die with this run."""
    if push is None:
        await run()
        return
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run(), name=f"{source}-poller")
            tg.create_task(push.run(), name=f"{source}-push")
    finally:
        await asyncio.shield(push.stop())


async def run_agent(
    config: AgentConfig,
    *,
    secrets: Secrets | None = None,
    config_path: Path | None = None,
    **options: Any,
) -> int:
    """Run the agent with signal handling (SIGTERM/SIGINT stop, SIGHUP reload); exit status."""
    agent = Agent(
        config,
        secrets if secrets is not None else resolve_secrets(config),
        config_path=config_path,
        **options,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        return await agent.run()
    except StoreUnusable as exc:
        # A damaged or too-new database: a restart cannot fix it, so the exit code is the one
        # the systemd unit does not restart on (RestartPreventExitStatus=78), with one line.
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
