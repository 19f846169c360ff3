"""The local HTTP API (aiohttp): health, readiness, metrics, a view of the agent, dead letters.

Bound to ``[api] listen`` (default ``127.0.0.1:9780``). Who may call it (bearer tokens, Host and
Origin checks, JSON bodies only, bounded) is :mod:`edge_agent.ops.api_guard`; the booking routes
are :mod:`edge_agent.ops.api_bookings`.

Routes:

- ``GET /`` — the status page for a person (:mod:`edge_agent.ops.status_page`).
- ``GET /healthz`` — 200 ``{"status": "ok"}`` while the event loop serves requests.
- ``GET /readyz`` — ``{"ready": bool, "reasons": [...], "store": {...}, "devices": [...],
  "sinks": [...]}``; 200 when ready, 503 when not. **Not ready** when any of:

  1. the store is not open (starting up, shutting down) or has failed (its writer died:
     ``store.failed`` is the reason; only a restart helps);
  2. a sink is ``gone`` (the webhook answered 410): it will not recover by itself and events
     only pile up;
  3. devices are configured but none is connected.

  A sink that is running but cannot reach its receiver right now (``ready: false``) and single
  devices being offline do *not* fail readiness: the agent buffers and retries by design; they
  are listed in the JSON and in the metrics (``edge_agent_outbox_oldest_undelivered_seconds``,
  ``edge_agent_devices_connected``).
- ``GET /metrics`` — Prometheus exposition of :data:`edge_agent.metrics.REGISTRY`.
- ``GET /v1/devices`` — ``{"devices": [...]}``, one :class:`DeviceStatus` each.
- ``GET /v1/sinks`` — ``{"sinks": [...]}``, one :class:`SinkStatus` each (what ``/readyz``
  lists): state, readiness, backlog and the last error with its time (``last_error_at``);
  after a recovery the error moves to ``previous_error`` / ``previous_error_at``.
- ``GET /v1/devices/{id}/bookings`` — the buffered window from the store, sorted by start;
  404 for an unknown device. Private bookings come without title, organizer and agenda
  (``"hidden": true``) unless ``[api] show_private = true``.
- ``GET /v1/events/stream`` — events as the store commits them, one JSON envelope a line
  (``?room=ID``, alias ``?device=ID``, ``?type=booking.*``; see
  :mod:`edge_agent.ops.event_stream`); 404 when the agent has no ``event_feed``.
- ``GET /v1/rooms`` — ``{"rooms": [...]}``, every room (DESIGN.md "Rooms and calendar
  sources"), one :class:`RoomStatus` each: ``id``, ``source`` (``device``, ``microsoft``,
  ``google``), ``device_id`` (the linked device, or the device itself), ``calendar`` (the
  mailbox), ``last_sync``, ``last_error``, ``window_size``.
- ``GET /v1/rooms/{id}/bookings`` — the room's forwarded window from the store (a calendar
  room's, or a device room's own), sorted by start; 404 for an unknown room.
- ``POST /v1/notifications/microsoft`` and ``.../lifecycle`` — Graph change and lifecycle
  notifications (:mod:`edge_agent.calendars.notify`), mounted only with ``[microsoft]
  notification_url``; a reverse proxy forwards ``<notification_url>/v1/notifications/...`` here.
- ``GET /v1/pending`` — pending booking requests from the store (``?device=ID`` to filter):
  ``{"count", "pending": [...]}``, by deadline, each in the public shape of
  :func:`public_pending` (not the store's row).
- ``GET /v1/fleet`` — fleet mode: members, their devices and lease ages (404 when alone).
- ``GET /v1/outbox`` — the store's outbox / dead-letter statistics (``Store.stats()``).
- ``GET /v1/dead-letters`` — ``{"count", "dead_letters": [...]}``, oldest first
  (``?limit=N``, default 100, at most 10000; ``?sink=NAME``).
- ``POST /v1/dead-letters/replay`` — put dead letters back in the outbox; JSON body
  ``{"ids": [..], "sink": "webhook"}``, both optional (none: every dead letter);
  answers ``{"replayed": n}``.
- ``POST /v1/dead-letters/purge`` — delete dead letters; JSON body with ``ids``, ``sink`` or
  ``"all": true`` (one is required); answers ``{"purged": n}``.

The two POST routes exist because only the running agent may write its database (the store
holds a lock; see :mod:`edge_agent.store`): ``edge-agent outbox dead-letter replay|purge`` uses
them while the agent runs. Like every state-changing route they need the bearer token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, Self, TypedDict, runtime_checkable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent import jsoncodec
from edge_agent.clock import Clock, system_clock, utc_iso
from edge_agent.config import DEFAULT_API_LISTEN, parse_listen
from edge_agent.metrics import REGISTRY
from edge_agent.ops import api_bookings, event_stream, status_page
from edge_agent.store import PendingRow
from edge_agent.ops.api_guard import MAX_BODY_BYTES, ApiGuard

log = structlog.get_logger(__name__)

__all__ = [
    "AgentView",
    "DeviceStatus",
    "LocalApi",
    "RoomStatus",
    "SinkStatus",
    "StoreView",
    "readiness",
]


class DeviceStatus(TypedDict, total=False):
    """One entry of ``AgentView.devices()`` (and of ``/v1/devices``)."""

    id: str  # required
    url: str
    connected: bool  # required
    last_error: str | None
    """What is wrong now; null once the link is up again (then it is ``previous_error``)."""
    last_error_at: str | None
    """When ``last_error`` happened (UTC ISO)."""
    previous_error: str | None
    previous_error_at: str | None
    reconnects: int
    time_zone: str | None
    """The zone in use: the device's ``Configuration Time Zone``, else the configured fallback."""
    time_zone_source: Literal["device", "config"]
    booking_timeout_s: int | None
    window_size: int
    """Bookings in the buffered window."""
    software: str | None
    connected_since: str | None
    """UTC ISO time the link came up; ``down_since`` instead while it is down (to the 5 s
    sample; both absent before the first sample)."""
    down_since: str | None
    last_seen: str | None
    """UTC ISO time of the last frame or connect (to the 5 s sample)."""


class RoomStatus(TypedDict, total=False):
    """One entry of ``rooms()`` (and of ``/v1/rooms``)."""

    id: str  # required
    source: str  # required: "device", "microsoft", "google"
    device_id: str | None
    calendar: str | None
    last_sync: Any
    last_error: str | None
    window_size: int | None


class SinkStatus(TypedDict, total=False):
    """One entry of ``AgentView.sinks()``."""

    name: str  # required: "webhook", "mqtt"
    state: Literal["running", "gone"]  # required; "gone": stopped for good (webhook 410)
    ready: bool  # the sink can deliver right now (Sink.ready())
    last_error: str | None
    """The delivery error, else the sink's own connection error (MQTT: refused, unreachable,
    link lost); null after the next delivery or reconnect (then it is ``previous_error``)."""
    last_error_at: str | None
    """When ``last_error`` happened (UTC ISO); likewise ``previous_error_at``."""
    previous_error: str | None
    previous_error_at: str | None
    outbox_depth: int


class StoreView(Protocol):
    """What the API uses of :class:`edge_agent.store.Store`.

    The store may also have ``failed: str | None`` (why it cannot write any more); the API
    reads it with ``getattr``, so a view without it counts as healthy.
    """

    async def load_window(self, device_id: str) -> Mapping[str, Any]: ...

    async def load_pending(self, device_id: str | None = None) -> Sequence[PendingRow]: ...

    async def stats(self) -> Mapping[str, Any]: ...

    async def dead_letters(
        self, limit: int = 100, sink: str | None = None
    ) -> Sequence[Mapping[str, Any]]: ...

    async def replay_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int: ...

    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int: ...


@runtime_checkable
class AgentView(Protocol):
    """What the API reads from the running agent (``edge_agent.agent.Agent`` implements it).

    ``store`` is ``None`` while the store is not open. ``devices()`` and ``sinks()`` are called on
    the event loop and must be cheap (in-memory state, no I/O).
    """

    @property
    def store(self) -> StoreView | None: ...

    def devices(self) -> Sequence[DeviceStatus]: ...

    def sinks(self) -> Sequence[SinkStatus]: ...


def readiness(agent: AgentView) -> tuple[bool, list[str]]:
    """The readiness rule (see the module docstring): ``(ready, reasons it is not)``."""
    reasons: list[str] = []
    if agent.store is None:
        reasons.append("store not open")
    else:
        failed = getattr(agent.store, "failed", None)
        unhealthy = getattr(agent.store, "unhealthy", None)  # writes keep failing (disk full)
        if failed:
            reasons.append(f"store failed: {failed}")
        elif unhealthy:
            reasons.append(unhealthy)
    for sink in agent.sinks():
        if sink.get("state") == "gone":
            reasons.append(f"sink {sink['name']} is gone")
    devices = agent.devices()
    if devices and not any(d.get("connected") for d in devices):
        reasons.append("no device connected")
    return not reasons, reasons


def _gone_not_ready(sink: SinkStatus) -> SinkStatus:
    """A gone sink never delivers again, whatever its connection says: never ``ready``."""
    return {**sink, "ready": False} if sink.get("state") == "gone" else sink


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _jsonable(dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=jsoncodec.dumpb(_jsonable(data)), status=status, content_type="application/json"
    )


def _booking_sort_key(item: tuple[str, Any]) -> tuple[str, str]:
    key, booking = item
    start = booking.get("start") if isinstance(booking, Mapping) else None
    return (str(start or ""), key)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_DEAD_LETTERS = 10_000
"""The most dead letters one ``GET /v1/dead-letters`` returns."""


def _bad(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=reason)


async def _selection(request: web.Request) -> tuple[list[int] | None, str | None, bool]:
    """``(ids, sink, all)`` from a dead-letter POST body; 415 / 400 when malformed."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason="send a JSON body (Content-Type: application/json)"
        )
    raw = await request.read()
    try:
        body = jsoncodec.loads(raw) if raw.strip() else {}
    except ValueError:
        raise _bad("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    unknown = set(body) - {"ids", "sink", "all"}
    if unknown:
        raise _bad(f"unknown keys {sorted(unknown)}; allowed: ids, sink, all")
    ids = body.get("ids")
    if ids is not None and not (
        isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise _bad("ids must be a list of dead-letter ids (integers)")
    sink = body.get("sink")
    if sink is not None and not isinstance(sink, str):
        raise _bad("sink must be a sink name (webhook, mqtt)")
    everything = body.get("all", False)
    if not isinstance(everything, bool):
        raise _bad("all must be true or false")
    return ids, sink, everything


class LocalApi:
    """The HTTP server: ``await start()`` / ``await stop()``, or ``async with``.

    ``listen`` is ``"HOST:PORT"`` (port 0 picks a free port; read :attr:`port` after start).
    ``guard`` protects every route (default: loopback, no token, so no state-changing request
    is accepted); ``ssl_context`` serves HTTPS.
    """

    def __init__(
        self,
        agent: AgentView,
        listen: str = DEFAULT_API_LISTEN,
        *,
        guard: ApiGuard | None = None,
        ssl_context: ssl.SSLContext | None = None,
        routes: Sequence[web.RouteDef] = (),
        show_private: bool = False,
        clock: Clock = system_clock,
    ) -> None:
        """``routes``: more handlers (the Graph notification endpoints; the guard is told
        which of them authenticate their callers themselves)."""
        self._agent = agent
        self._show_private = show_private
        self._clock = clock
        self._host, self._port = parse_listen(listen)
        self._runner: web.AppRunner | None = None
        self._guard = guard or ApiGuard(listen)
        self._ssl = ssl_context
        self.app = self._make_app()
        if routes:
            self.app.add_routes(routes)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._ssl else 'http'}://{host}:{self._port}"

    async def start(self) -> None:
        """Bind and serve. Raises ``OSError`` when the address is taken."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, self._host, self._port, reuse_address=True, ssl_context=self._ssl
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # The one site's bound (host, port, ...): the real port when listen asked for port 0.
        addresses = runner.addresses
        if addresses:
            self._port = int(addresses[0][1])
        log.info("local API listening", url=self.url)

    async def stop(self) -> None:
        """Stop serving; safe to call twice; cleanup is shielded from cancellation."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.shield(runner.cleanup())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- routes ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._guard.middleware, self._errors], client_max_size=MAX_BODY_BYTES
        )
        app.router.add_get("/", self._status_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/devices", self._devices)
        app.router.add_get("/v1/devices/{id}/bookings", self._bookings)
        app.router.add_get("/v1/sinks", self._sinks)
        app.router.add_get("/v1/rooms", self._rooms)
        app.router.add_get("/v1/rooms/{id}/bookings", self._room_bookings)
        app.router.add_get("/v1/pending", self._pending)
        app.router.add_get("/v1/events/stream", self._events_stream)
        app.router.add_get("/v1/outbox", self._outbox)
        app.router.add_get("/v1/dead-letters", self._dead_letters)
        app.router.add_post("/v1/dead-letters/replay", self._replay)
        app.router.add_post("/v1/dead-letters/purge", self._purge)
        api_bookings.add_routes(app, self._agent)
        app.router.add_get("/v1/fleet", self._fleet)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json({"error": exc.reason}, status=exc.status)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("local API request failed", path=request.path)
            return _json({"error": f"{type(exc).__name__}: {exc}"}, status=500)

    async def _status_page(self, request: web.Request) -> web.Response:
        html = await status_page.page(
            self._agent, show_private=self._show_private, now=self._clock.now()
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reasons = readiness(self._agent)
        store = self._agent.store
        body = {
            "ready": ok,
            "reasons": reasons,
            "store": {"open": store is not None},
            "devices": list(self._agent.devices()),
            "sinks": [_gone_not_ready(s) for s in self._agent.sinks()],
        }
        return _json(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _devices(self, request: web.Request) -> web.Response:
        return _json({"devices": list(self._agent.devices())})

    async def _sinks(self, request: web.Request) -> web.Response:
        return _json({"sinks": [_gone_not_ready(s) for s in self._agent.sinks()]})

    def _store(self) -> StoreView:
        store = self._agent.store
        if store is None:
            raise web.HTTPServiceUnavailable(reason="store not open")
        return store

    async def _bookings(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if not any(d.get("id") == device_id for d in self._agent.devices()):
            raise web.HTTPNotFound(reason=f"unknown device {device_id!r}")
        window = await self._store().load_window(device_id)
        bookings = [
            status_page.booking_view(b, self._show_private)
            for _, b in sorted(window.items(), key=_booking_sort_key)
        ]
        return _json({"device": device_id, "count": len(bookings), "bookings": bookings})

    def _room_list(self) -> list[RoomStatus]:
        # Optional on AgentView: a view without rooms (a test double) has none.
        rooms = getattr(self._agent, "rooms", None)
        return list(rooms()) if callable(rooms) else []

    async def _rooms(self, request: web.Request) -> web.Response:
        rooms = self._room_list()
        return _json({"count": len(rooms), "rooms": rooms})

    async def _room_bookings(self, request: web.Request) -> web.Response:
        from edge_agent.store.schema import calendar_window_owner

        room_id = request.match_info["id"]
        room = next((r for r in self._room_list() if r.get("id") == room_id), None)
        if room is None:
            raise web.HTTPNotFound(reason=f"unknown room {room_id!r}")
        source = str(room.get("source") or "device")
        owner = room_id if source == "device" else calendar_window_owner(room_id, source)
        window = await self._store().load_window(owner)
        bookings = [b for _, b in sorted(window.items(), key=_booking_sort_key)]
        for b in bookings:
            if isinstance(b, dict):
                b.pop("cancelled", None)  # the store's extra; not an envelope field
        bookings = [status_page.booking_view(b, self._show_private) for b in bookings]
        return _json(
            {"room": room_id, "source": source, "count": len(bookings), "bookings": bookings}
        )

    async def _events_stream(self, request: web.Request) -> web.StreamResponse:
        feed = getattr(self._agent, "event_feed", None)
        if not isinstance(feed, event_stream.EventFeed):
            raise web.HTTPNotFound(reason="this agent has no event stream")
        return await event_stream.stream_response(request, feed, show_private=self._show_private)

    async def _pending(self, request: web.Request) -> web.Response:
        device_id = request.query.get("device") or None
        rows = await self._store().load_pending(device_id)
        return _json({"count": len(rows), "pending": [public_pending(r) for r in rows]})

    async def _outbox(self, request: web.Request) -> web.Response:
        return _json(await self._store().stats())

    async def _dead_letters(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise _bad("limit must be a number") from None
        if not 1 <= limit <= MAX_DEAD_LETTERS:
            raise _bad(f"limit must be 1..{MAX_DEAD_LETTERS}")
        sink = request.query.get("sink") or None
        rows = await self._store().dead_letters(limit=limit, sink=sink)
        return _json({"count": len(rows), "dead_letters": list(rows)})

    async def _replay(self, request: web.Request) -> web.Response:
        ids, sink, _ = await _selection(request)
        n = await self._store().replay_dead_letters(ids, sink=sink)
        log.info("dead letters replayed through the local API", replayed=n, sink=sink, ids=ids)
        return _json({"replayed": n})

    async def _purge(self, request: web.Request) -> web.Response:
        ids, sink, everything = await _selection(request)
        if ids is None and sink is None and not everything:
            raise _bad('purge needs ids, sink or "all": true')
        n = await self._store().purge_dead_letters(ids, sink=sink)
        log.info("dead letters purged through the local API", purged=n, sink=sink, ids=ids)
        return _json({"purged": n})

    async def _fleet(self, request: web.Request) -> web.Response:
        # Fleet mode only (the agent has ``fleet_status``; an agent alone answers 404).
        status = getattr(self._agent, "fleet_status", None)
        body = None if status is None else await status()
        if body is None:
            raise web.HTTPNotFound(reason="not in fleet mode ([store] url is not postgresql)")
        return _json(body)

def public_pending(row: PendingRow) -> dict[str, Any]:
    """One ``/v1/pending`` entry: ``request_uuid``, ``device``, ``title``, ``start`` (null: the
    request was for now), ``duration_min``, ``requested_at``, ``deadline`` (UTC ISO) and
    ``state``: ``pending`` (waiting for the device's BookingCreated / BookingFailed) or
    ``overdue`` (the deadline passed; a re-list decides between created and expired).

    The store's row (its tracker fields, its layout) stays internal: it may change with the
    schema, this may not."""
    doc = row.row
    return {
        "request_uuid": row.booking_request_uuid,
        "device": row.device_id,
        "title": doc.get("title"),
        "start": doc.get("start"),
        "duration_min": doc.get("duration_min"),
        "requested_at": doc.get("requested_at"),
        "deadline": utc_iso(datetime.fromtimestamp(row.deadline, UTC)),
        "state": "overdue" if doc.get("relist_requested") else "pending",
    }
