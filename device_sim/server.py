"""The I/O shell of one simulated device: a WebSocket server, its connections and its faults.

Each connection has one reader (this handler) and one writer task draining a bounded queue;
a consumer too slow to keep the queue under its limit is disconnected, not buffered without
end. Protocol work happens in ``DeviceCore``; this module only moves frames and applies faults.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .calendar import Booking, Organizer, utc_iso
from .core import ADMIN, DeviceCore, Session
from .rpc import Outgoing

if TYPE_CHECKING:
    from .clock import SimClock

log = logging.getLogger(__name__)
# websockets logs every connection at INFO: kept apart so a fleet of 1,000 can quiet it
WS_LOG = logging.getLogger("device_sim.ws")

MAX_FRAME = 16 * 1024 * 1024
MALFORMED_KINDS = ("invalid_json", "not_jsonrpc", "unknown_subscription", "binary")

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


def parse_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic`` or an ``auth-<base64url>`` subprotocol."""
    header = request.headers.get("Authorization", "")
    encoded = None
    urlsafe = False
    if header[:6].lower() == "basic ":
        encoded = header[6:].strip()
    else:
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            for proto in value.split(","):
                proto = proto.strip()
                if proto.startswith("auth-"):
                    encoded, urlsafe = proto[5:], True
                    break
    if encoded is None:
        return None
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        raw = base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded)
        text = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def malformed_frame(kind: str) -> str | bytes:
    """A frame a client must survive (logged and skipped, never fatal)."""
    if kind == "invalid_json":
        return '{"jsonrpc":"2.0","method":"xFeedback/Event","params":{"Id":0,"Event":'
    if kind == "not_jsonrpc":
        return '{"hello":"this is JSON but not JSON-RPC","list":[1,2,3]}'
    if kind == "unknown_subscription":
        params = {"Id": 987654, "Event": {"Bookings": {"Updated": {}}}}
        return orjson.dumps(
            {"jsonrpc": "2.0", "method": "xFeedback/Event", "params": params}
        ).decode()
    if kind == "binary":
        return b"\x00\x01\x02binary frame from the device\xff"
    raise ValueError(f"unknown malformed kind {kind!r} (one of {', '.join(MALFORMED_KINDS)})")


@dataclass(frozen=True, slots=True)
class MalformedMarker:
    """Queued in place of a frame: send a malformed frame of this kind."""

    kind: str
    reply: bool = False


@dataclass(eq=False)
class Link:
    """One WebSocket connection to the device."""

    ws: ServerConnection
    session: Session
    queue: asyncio.Queue[Outgoing | MalformedMarker]
    frames_sent: int = 0
    overflowed: bool = False

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.ws.transport.abort()


@dataclass
class FaultState:
    """Time-bounded faults, in loop time (real seconds)."""

    down: bool = False  # rebooting: handshakes get 502
    silent_until: float = 0.0
    rate_limited_until: float = 0.0
    duplicate_until: float = 0.0
    duplicate_left: int = 0
    slow_ms: float = 0.0
    slow_until: float | None = None
    malformed_every: int = 0
    malformed_kind: str | None = None
    reboots: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class Faults:
    """Fault injection for one device. Every method returns at once; timed parts run in the
    fleet's task group."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self.state = FaultState()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _count(self, name: str) -> None:
        self.state.counts[name] = self.state.counts.get(name, 0) + 1

    def drop(self) -> int:
        """Drop every connection without a close frame (``transport.abort()``); how many."""
        self._count("drop")
        links = list(self._device.links)
        for link in links:
            link.abort()
        return len(links)

    def silent(self, duration_s: float) -> None:
        """TCP stays up but nothing is answered or sent (no pongs either) for ``duration_s``."""
        self._count("silent")
        self.state.silent_until = max(self.state.silent_until, self._now() + duration_s)
        for link in self._device.links:
            link.ws.transport.pause_reading()
        self._device.spawn(self._device.end_silence(), "silence")

    def is_silent(self) -> bool:
        return self.state.silent_until > self._now()

    def reboot(self, down_s: float = 5.0, not_ready_s: float = 5.0) -> None:
        """Reboot: connections drop, 502 for ``down_s``, then -31997 for ``not_ready_s``, then
        ready (SyncRequired to the next Bookings subscriber; new booking Ids in hybrid mode)."""
        self._count("reboot")
        self._device.spawn(self._device.reboot(down_s, not_ready_s), "reboot")

    def rate_limit(self, duration_s: float) -> None:
        """Answer WebSocket handshakes with 503 for ``duration_s``."""
        self._count("rate_limit")
        self.state.rate_limited_until = self._now() + duration_s

    def duplicate(self, duration_s: float | None = None, count: int | None = None) -> None:
        """Send each event notification twice, for ``duration_s`` and/or the next ``count``."""
        self._count("duplicate")
        if duration_s is None and count is None:
            count = 1
        if duration_s is not None:
            self.state.duplicate_until = self._now() + duration_s
        if count is not None:
            self.state.duplicate_left = count

    def event_copies(self) -> int:
        if self.state.duplicate_left > 0:
            self.state.duplicate_left -= 1
            return 2
        return 2 if self.state.duplicate_until > self._now() else 1

    def malformed(self, kind: str | None = None, count: int = 1, every: int | None = None) -> None:
        """Send malformed frames: ``count`` now on every connection, or with ``every`` one after
        every N-th frame from now on (``every=0`` stops). ``kind``: invalid_json, not_jsonrpc,
        unknown_subscription, binary; None rotates through them."""
        self._count("malformed")
        if kind is not None:
            malformed_frame(kind)  # validate
        if every is not None:
            self.state.malformed_every = every
            self.state.malformed_kind = kind
            return
        for link in list(self._device.links):
            for i in range(count):
                self._device.enqueue(link, MalformedMarker(kind or MALFORMED_KINDS[i % 4]))

    def slow(self, delay_ms: float, duration_s: float | None = None) -> None:
        """Delay each reply by ``delay_ms`` (for ``duration_s``, or until ``slow(0)``)."""
        self._count("slow")
        self.state.slow_ms = delay_ms
        self.state.slow_until = None if duration_s is None else self._now() + duration_s

    def reply_delay(self) -> float:
        if self.state.slow_ms <= 0:
            return 0.0
        if self.state.slow_until is not None and self.state.slow_until <= self._now():
            self.state.slow_ms = 0.0
            return 0.0
        return self.state.slow_ms / 1000

    def clear(self) -> None:
        """End every fault at once (a reboot in progress still finishes)."""
        reboots, counts = self.state.reboots, self.state.counts
        down = self.state.down
        self.state = FaultState(down=down, reboots=reboots, counts=counts)
        for link in self._device.links:
            link.ws.transport.resume_reading()

    def describe(self) -> dict[str, Any]:
        now = self._now()
        s = self.state
        return {
            "rebooting": s.down or not self._device.core.ready,
            "silent_s": max(0.0, s.silent_until - now),
            "rate_limited_s": max(0.0, s.rate_limited_until - now),
            "duplicate_s": max(0.0, s.duplicate_until - now),
            "duplicate_left": s.duplicate_left,
            "slow_ms": s.slow_ms,
            "malformed_every": s.malformed_every,
            "injected": dict(s.counts),
        }


class DeviceCalendar:
    """Calendar actions for scripts and tests: changes made "in Outlook" (behind the device's
    back) and on the room's touch panel. Times are aware datetimes; durations in minutes."""

    def __init__(self, device: Device) -> None:
        self._device = device

    @property
    def _core(self) -> DeviceCore:
        return self._device.core

    def bookings(self) -> list[Booking]:
        """The device's bookings, by start time."""
        return self._core.calendar.sorted_bookings()

    def list(self, day_offset: int = 0, days: int = 2) -> dict[str, Any]:
        """What ``Bookings List DayOffset Days`` answers now."""
        core = self._core
        return core.calendar.list_bookings(
            self._device.clock.now(), core.zone, day_offset=day_offset, days=days
        )

    def add(
        self,
        start: datetime,
        duration_min: int = 30,
        title: str = "Meeting",
        organizer: str | Organizer = "Ola Normann",
        *,
        organizer_email: str = "",
        meeting_id: str | None = None,
        platform: str = "Webex",
        number: str = "",
        announce: bool = True,
    ) -> Booking:
        """A booking appears in the room's calendar: BookingCreated, Updated (with ``announce``)."""
        core = self._core
        now = self._device.clock.now()
        org = organizer if isinstance(organizer, Organizer) else Organizer.from_name(organizer)
        if organizer_email:
            org.email = organizer_email
        if not org.id:
            org.id = core.calendar.new_uuid()
        booking = Booking(
            id="",
            meeting_id=core.calendar.new_meeting_id() if meeting_id is None else meeting_id,
            title=title,
            start=start.replace(microsecond=0),
            end=start.replace(microsecond=0) + timedelta(minutes=duration_min),
            organizer=org,
            platform=platform,
            number=number,
        )
        booking = core.calendar.add(now, booking, announce=announce)
        core.flush(now)
        return booking

    def move(self, booking_id: str, start: datetime, duration_min: int | None = None) -> Booking:
        """The organizer moves a booking: BookingMoved, Updated."""
        now = self._device.clock.now()
        booking = self._core.calendar.move(
            now, str(booking_id), start.replace(microsecond=0), duration_min
        )
        self._core.flush(now)
        return booking

    def delete(self, booking_id: str) -> Booking:
        """The organizer deletes a booking: Deleted, Updated."""
        now = self._device.clock.now()
        booking = self._core.calendar.delete(now, booking_id=str(booking_id))
        self._core.flush(now)
        return booking

    def request(
        self,
        duration_min: int = 30,
        start: datetime | None = None,
        title: str = "",
        request_uuid: str | None = None,
    ) -> str:
        """Someone books the room on its touch panel (``Bookings Book``); the request UUID."""
        now = self._device.clock.now()
        made = self._core.calendar.book(
            now, request_uuid=request_uuid, duration_min=duration_min, start=start, title=title
        )
        self._core.flush(now)
        return made

    def decline_next(self, n: int = 1) -> None:
        """The calendar backend declines the next ``n`` requests (Book, Edit, Extend)."""
        self._core.calendar.backend.decline_next += n

    def people(
        self,
        people_count: int | None = None,
        *,
        clear: bool = False,
        counting: bool | None = None,
        presence_detector: bool | None = None,
    ) -> None:
        """Force the room's head count (``clear``: back to the calendar-driven model), or turn
        counting / presence detection on or off (see ``DeviceCore.set_people``)."""
        self._core.set_people(
            self._device.clock.now(),
            people_count=people_count,
            clear=clear,
            counting=counting,
            presence_detector=presence_detector,
        )


class Device:
    """One simulated device on its own port."""

    def __init__(
        self,
        core: DeviceCore,
        clock: SimClock,
        *,
        credentials: dict[str, tuple[str, str]],
        http: bool,
        spawn: Spawn,
        send_queue_frames: int = 1024,
    ) -> None:
        self.core = core
        self.clock = clock
        self.device_index = core.settings.index
        self.device_id = core.settings.device_id
        self.credentials = credentials  # user -> (password, role)
        self.http = http
        self.spawn_task = spawn
        self.send_queue_frames = send_queue_frames
        self.links: set[Link] = set()
        self.faults = Faults(self)
        self.calendar = DeviceCalendar(self)
        self.core.event_copies = self.faults.event_copies
        self.host = ""
        self.port = 0
        self.handshakes: dict[int, int] = {}
        self.credentials_received = 0
        """Upgrade requests that carried credentials (Basic header or auth subprotocol)."""
        self._server: Server | None = None

    @property
    def url(self) -> str:
        scheme = "ws" if self.http else "wss"
        return f"{scheme}://{self.host}:{self.port}/ws"

    @property
    def produced(self) -> dict[str, int]:
        """Events this device emitted, per type ("Bookings.Start", "Status.Bookings.Availability")."""
        return dict(self.core.produced)

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        self.spawn_task(coro, f"device-sim[{self.device_id}].{what}")

    # ---- server lifecycle --------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on ``host:port`` (0: any free port)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            ssl=ssl_context,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression=None,
            max_size=MAX_FRAME,
            max_queue=64,
            ping_interval=None,  # the device never pings its clients; it answers their pings
            server_header="RoomOS-sim",
            logger=WS_LOG,
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            for link in list(self.links):
                link.abort()
            self._server.close(close_connections=False)
            await self._server.wait_closed()

    # ---- handshake ---------------------------------------------------------------------------

    def _answer(self, ws: ServerConnection, status: HTTPStatus, text: str) -> Response:
        self.handshakes[status.value] = self.handshakes.get(status.value, 0) + 1
        return ws.respond(status, text + "\n")

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        faults = self.faults
        if parse_credentials(request) is not None:
            self.credentials_received += 1
        if request.path.split("?")[0] != "/ws":
            return self._answer(ws, HTTPStatus.NOT_FOUND, "Not Found")
        if faults.state.down:
            return self._answer(ws, HTTPStatus.BAD_GATEWAY, "Device is rebooting")
        if faults.state.rate_limited_until > asyncio.get_running_loop().time():
            return self._answer(ws, HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections")
        while faults.is_silent():
            await asyncio.sleep(
                max(0.01, faults.state.silent_until - asyncio.get_running_loop().time())
            )
        if self.http and self.core.config["NetworkServices"]["HTTP"]["Mode"] == "HTTPS":
            return self._answer(ws, HTTPStatus.UNAUTHORIZED, "HTTPS only")
        if self.role_of(request) is None:
            return self._answer(ws, HTTPStatus.FORBIDDEN, "Forbidden")
        return None

    def role_of(self, request: Request) -> str | None:
        creds = parse_credentials(request)
        if creds is None:
            return None
        known = self.credentials.get(creds[0])
        if known is None or known[0] != creds[1]:
            return None
        return known[1]

    @staticmethod
    def _select_subprotocol(ws: ServerConnection, subprotocols: Any) -> Subprotocol | None:
        for proto in subprotocols:
            if proto.startswith("auth-"):
                return Subprotocol(proto)  # the device echoes the auth subprotocol (jsxapi)
        return None

    # ---- connections -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.handshakes[101] = self.handshakes.get(101, 0) + 1
        session = self.core.open_session(self.role_of(ws.request) or ADMIN)
        link = Link(ws, session, asyncio.Queue(self.send_queue_frames))
        session.send = lambda frame: self.enqueue(link, frame)
        self.links.add(link)
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(
                    self._write_loop(link), name=f"device-sim[{self.device_id}].writer"
                )
                await self._read_loop(link)
                writer.cancel()
        finally:
            self.core.close_session(session)
            self.links.discard(link)

    def enqueue(self, link: Link, frame: Outgoing | MalformedMarker) -> None:
        if link.overflowed:
            return
        try:
            link.queue.put_nowait(frame)
        except asyncio.QueueFull:
            link.overflowed = True
            log.warning(
                "device %s: client too slow (%d frames queued); disconnecting it",
                self.device_id,
                link.queue.qsize(),
            )
            link.abort()

    async def _read_loop(self, link: Link) -> None:
        try:
            async for message in link.ws:
                await self.wait_awake()
                self.core.receive(link.session, message, self.clock.now())
        except ConnectionClosed:
            pass

    async def _write_loop(self, link: Link) -> None:
        ws, faults = link.ws, self.faults
        try:
            while True:
                frame = await link.queue.get()
                await self.wait_awake()
                if isinstance(frame, MalformedMarker):
                    await ws.send(malformed_frame(frame.kind))
                    continue
                if frame.reply and (delay := faults.reply_delay()) > 0:
                    await asyncio.sleep(delay)
                await ws.send(orjson.dumps(frame.message), text=True)
                link.frames_sent += 1
                every = faults.state.malformed_every
                if every > 0 and link.frames_sent % every == 0:
                    kind = faults.state.malformed_kind
                    kind = (
                        kind or MALFORMED_KINDS[(link.frames_sent // every) % len(MALFORMED_KINDS)]
                    )
                    await ws.send(malformed_frame(kind))
        except ConnectionClosed:
            pass

    async def wait_awake(self) -> None:
        """Return once the device is not silent."""
        loop = asyncio.get_running_loop()
        while (left := self.faults.state.silent_until - loop.time()) > 0:
            await asyncio.sleep(left)

    async def end_silence(self) -> None:
        await self.wait_awake()
        for link in list(self.links):
            if not link.ws.transport.is_closing():
                link.ws.transport.resume_reading()

    async def reboot(self, down_s: float, not_ready_s: float) -> None:
        state = self.faults.state
        state.down = True
        self.core.ready = False
        for link in list(self.links):
            link.abort()
        log.info(
            "device %s: rebooting (down %.1fs, not ready %.1fs)",
            self.device_id,
            down_s,
            not_ready_s,
        )
        try:
            await asyncio.sleep(down_s)
            self.faults.state.down = False
            await asyncio.sleep(not_ready_s)
        finally:
            self.faults.state.down = False
            self.faults.state.reboots += 1
            self.core.rebooted(self.clock.now())
        log.info("device %s: ready after reboot at %s", self.device_id, utc_iso(self.clock.now()))
