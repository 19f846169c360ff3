"""The asyncio shell around :class:`~edge_agent.xapi.protocol.XapiProtocol`: one device link.

One task per device does everything that waits on the network: ``run()`` connects, then reads
frames (the one reader), sends the WebSocket pings and the application probe from the same
loop, and reconnects with jittered backoff. Requests are made by other tasks: their futures are
registered before the frame is written and all fail with :class:`ConnectionLost` when the link
goes. After each connect a short-lived task re-makes the subscriptions and then calls
``on_connected``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame
from websockets.typing import Subprotocol
from websockets.uri import parse_uri
from websockets.version import version as websockets_version

from edge_agent.backoff import Backoff
from edge_agent.clock import Clock, system_clock
from edge_agent.metrics import DEVICE_ERRORS, DEVICES_CONNECTED, RECONNECTS

from . import tls
from .endpoint import DeviceEndpoint, format_fingerprint
from .errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectionLost,
    DeviceRebooting,
    FingerprintMismatch,
    HandshakeFailed,
    HttpsOnly,
    NotConnected,
    NotReady,
    RateLimited,
    RequestTimeout,
    TlsError,
    Unreachable,
    XapiError,
)
from .protocol import (
    ErrorResponse,
    Handler,
    Malformed,
    Notification,
    PathLike,
    Request,
    Response,
    Subscription,
    XapiProtocol,
)

OnConnected = Callable[["XapiClient"], Awaitable[Any]]
OnDisconnected = Callable[[BaseException | None], Any]

PROBE_PATH: tuple[str, ...] = ("Status", "SystemUnit", "Uptime")
USER_AGENT = f"roomos-edge-agent websockets/{websockets_version}"
MAX_MESSAGE_SIZE = 16 * 2**20


class XapiClient:
    """One device's xAPI link: requests, feedback subscriptions, reconnects forever.

    Args:
        endpoint: where the device is, its credentials and its trust mode.
        on_connected: ``async fn(client)`` run in its own task after every (re)connect, once the
            subscriptions are re-made (the agent re-lists here). Errors are logged.
        on_disconnected: ``fn(exc)`` called on every loss (``exc`` says why; ``None`` on close).
            May be async (then run in a task). Errors are logged.
        request_timeout: default seconds to wait for an answer.
        open_timeout: seconds for TCP + TLS + upgrade.
        ping_interval / ping_timeout: WebSocket keepalive (``None`` disables).
        probe_interval / probe_timeout: application probe (an ``xGet`` of ``probe_path``) that
            catches a link whose device stopped answering while TCP stays up (``None`` disables).
        backoff: reconnect delays (jittered, capped).
        auth_retry_delay: minimum delay after HTTP 403; repeated bad logins can lock the
            device's account, so this is long (10 min).
        stable_after: a connection that lasted this long resets the backoff.
        not_ready_delay: pause between re-subscribe attempts while the device answers NotReady.
        close_timeout: seconds for the WebSocket closing handshake in ``close()``.
        max_size: largest accepted message (the device's ``Bookings List`` can be large).
        max_handler_tasks: async feedback handlers running at once; at the bound, reading
            pauses until one finishes (back-pressure to the device).
        max_queue / write_limit: websockets' receive queue (frames) and write buffer (bytes).
        clock: monotonic time source.
        rng: randomness for the backoff jitter (tests pass a seeded one).
    """

    __slots__ = (
        "_after_connect_task",
        "_clock",
        "_closing",
        "_conn",
        "_handler_tasks",
        "_pending",
        "_protocol",
        "_ready",
        "_ready_waiter",
        "_rng",
        "_running",
        "_stopped",
        "_subscribing",
        "_wake",
        "auth_retry_delay",
        "backoff",
        "close_timeout",
        "device_id",
        "endpoint",
        "frames",
        "handler_errors",
        "last_error",
        "last_exception",
        "malformed",
        "max_handler_tasks",
        "max_queue",
        "max_size",
        "not_ready_delay",
        "on_connected",
        "on_disconnected",
        "open_timeout",
        "ping_interval",
        "ping_timeout",
        "probe_interval",
        "probe_path",
        "probe_timeout",
        "reconnects",
        "request_timeout",
        "stable_after",
        "write_limit",
        "_logger",
    )

    def __init__(
        self,
        endpoint: DeviceEndpoint,
        *,
        on_connected: OnConnected | None = None,
        on_disconnected: OnDisconnected | None = None,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 25.0,
        ping_timeout: float | None = 20.0,
        probe_interval: float | None = 60.0,
        probe_timeout: float = 15.0,
        probe_path: PathLike = PROBE_PATH,
        backoff: Backoff = Backoff(initial=1.0, maximum=120.0, factor=2.0, jitter=0.3),
        auth_retry_delay: float = 600.0,
        stable_after: float = 60.0,
        not_ready_delay: float = 2.0,
        close_timeout: float = 2.0,
        max_size: int = MAX_MESSAGE_SIZE,
        max_handler_tasks: int = 32,
        max_queue: int = 16,
        write_limit: int = 2**15,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.device_id = endpoint.device_id
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.probe_path = probe_path
        self.backoff = backoff
        self.auth_retry_delay = auth_retry_delay
        self.stable_after = stable_after
        self.not_ready_delay = not_ready_delay
        self.close_timeout = close_timeout
        self.max_size = max_size
        self.max_handler_tasks = max_handler_tasks
        self.max_queue = max_queue
        self.write_limit = write_limit
        self._clock = clock
        self._rng = rng

        self._logger: Any = None
        self._protocol = XapiProtocol(device=endpoint.device_id)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._conn: ClientConnection | None = None
        self._subscribing: dict[int, asyncio.Future[None]] = {}
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._after_connect_task: asyncio.Task[None] | None = None
        self._running = False
        self._closing = False
        self._wake: asyncio.Future[None] | None = None
        self._ready = False  # connected and the subscriptions re-made
        self._ready_waiter: asyncio.Future[None] | None = None  # made only when someone waits
        self._stopped: asyncio.Future[None] | None = None

        self.last_error: str | None = None
        """A person-readable account of the last thing that went wrong (``None`` until then)."""
        self.last_exception: BaseException | None = None
        """The typed error behind :attr:`last_error`."""
        self.reconnects = 0
        self.frames = 0
        self.malformed = 0
        self.handler_errors = 0

    @property
    def _log(self) -> Any:
        # Made on first use: a logger bound per device is ~1 KiB, and most links log rarely.
        if self._logger is None:
            self._logger = structlog.get_logger(__name__).bind(device=self.device_id)
        return self._logger

    # --- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the WebSocket is open (subscriptions may still be being re-made)."""
        return self._conn is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: a closed client does not run again."""
        return self._closing

    @property
    def pending(self) -> int:
        """Requests waiting for an answer."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters for the local API."""
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "frames": self.frames,
            "malformed": self.malformed,
            "handler_errors": self.handler_errors,
            "pending": len(self._pending),
            "subscriptions": len(self._protocol.subscriptions),
        }

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up and the subscriptions are re-made.

        Cancelling is safe. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not self._ready:
                if self._ready_waiter is None:
                    self._ready_waiter = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._ready_waiter)

    # --- requests ----------------------------------------------------------------------------

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one JSON-RPC request and return its ``result``.

        Raises the typed device error (:class:`CommandError`, :class:`NotReady`...),
        :class:`RequestTimeout`, or :class:`ConnectionLost` (also when not connected). Never
        retried. Cancelling is safe for the client; the request may or may not have reached
        the device.
        """
        conn = self._require_conn()
        return await self._send(conn, self._protocol.request(method, params), timeout)

    async def get(self, path: PathLike, *, timeout: float | None = None) -> Any:
        """``xGet``: a leaf value or a subtree. Cancelling is safe (see :meth:`request`)."""
        conn = self._require_conn()
        return await self._send(conn, self._protocol.get(path), timeout)

    async def query(self, query: PathLike, *, timeout: float | None = None) -> Any:
        """``xQuery`` (``**`` wildcards allowed). Cancelling is safe (see :meth:`request`)."""
        conn = self._require_conn()
        return await self._send(conn, self._protocol.query(query), timeout)

    async def set(self, path: PathLike, value: Any, *, timeout: float | None = None) -> Any:
        """``xSet`` a configuration. Cancelling is safe (see :meth:`request`)."""
        conn = self._require_conn()
        return await self._send(conn, self._protocol.set(path, value), timeout)

    async def command(self, path: PathLike, /, *, timeout: float | None = None, **args: Any) -> Any:
        """``xCommand/A/B`` with named args: ``command("Bookings List", DayOffset=0, Days=2)``.

        Never replayed after a reconnect (``Bookings Book`` is not idempotent). Cancelling is
        safe for the client; the command may or may not have run on the device.
        """
        conn = self._require_conn()
        return await self._send(conn, self._protocol.command(path, args), timeout)

    # --- feedback ----------------------------------------------------------------------------

    async def subscribe(
        self,
        query: PathLike,
        handler: Handler,
        notify_current_value: bool = False,
        *,
        timeout: float | None = None,
    ) -> int:
        """Subscribe ``handler`` to feedback matching ``query``; returns a stable id.

        The subscription is kept for the life of the client and re-made after every reconnect
        (subscribe once, not in ``on_connected``; an identical call returns the same id). When
        not connected it is registered and made on connect. ``handler(payload)`` gets the
        notification params without ``Id``, e.g. ``{"Event": {"Bookings": {...}}}``; it may be
        sync or async; its errors are logged. A device refusal (:class:`TooManySubscriptions`,
        :class:`PermissionDenied`) unregisters it and is raised. Cancelling is safe.
        """
        sub = self._protocol.subscriptions.add(query, handler, notify_current_value)
        conn = self._conn
        if conn is None or sub.device_id is not None:
            return sub.key
        try:
            await self._make_subscription(conn, sub, timeout)
        except ConnectionLost:
            pass  # made again on the next connect
        except XapiError:
            self._protocol.subscriptions.remove(sub.key)
            raise
        return sub.key

    async def unsubscribe(self, sub_id: int, *, timeout: float | None = None) -> None:
        """Drop subscription ``sub_id`` (and tell the device if connected). Cancelling is safe."""
        req = self._protocol.unsubscribe(sub_id)
        conn = self._conn
        if req is None:
            return
        if conn is None:
            self._protocol.forget(req.request_id)
            return
        try:
            await self._send(conn, req, timeout)
        except ConnectionLost:
            pass

    async def check_connection(self) -> None:
        """Open the link once (TCP, TLS, pin, upgrade) and close it; raise what went wrong.

        For a configuration check or a test: raises the typed :class:`ConnectError`.
        Cancelling is safe.
        """
        conn = await self._open()
        try:
            async with asyncio.timeout(self.close_timeout):
                await conn.close()
        except TimeoutError:
            conn.transport.abort()

    # --- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve the link, reconnect forever until :meth:`close`.

        Returns after :meth:`close`. Cancelling is safe: the link is aborted, every pending
        request fails with :class:`ConnectionLost` and handler tasks are cancelled.
        """
        if self._running:
            raise RuntimeError(f"{self.device_id}: run() is already running")
        loop = asyncio.get_running_loop()
        self._running = True
        self._stopped = loop.create_future()
        self._wake = loop.create_future()
        attempt = 0
        first = True
        try:
            while not self._closing:
                if not first:
                    self.reconnects += 1
                    RECONNECTS.labels(self.device_id).inc()
                first = False
                try:
                    conn = await self._interruptible_open()
                except ConnectError as exc:
                    attempt += 1
                    delay = self._delay_after(exc, attempt)
                    self._note_error(exc, retry_in=delay)
                    await self._interruptible_sleep(delay)
                    continue
                started = self._clock.monotonic()
                reason = await self._serve(conn)
                if self._closing:
                    break
                if self._clock.monotonic() - started >= self.stable_after:
                    attempt = 0
                attempt += 1
                delay = self.backoff.delay(attempt, self._rng)
                self._note_error(reason, retry_in=delay)
                await self._interruptible_sleep(delay)
        except _Interrupted:
            pass
        finally:
            self._running = False
            for task in list(self._handler_tasks):
                task.cancel()
            if not self._stopped.done():
                self._stopped.set_result(None)
            self._stopped = None

    async def close(self) -> None:
        """Close the link and make :meth:`run` return. Idempotent.

        Pending requests fail with :class:`ConnectionLost`. Cancelling is safe (the link is
        then aborted rather than closed gracefully).
        """
        self._closing = True
        conn = self._conn
        stopped = self._stopped
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if conn is not None:
            try:
                async with asyncio.timeout(self.close_timeout):
                    await conn.close()
            except TimeoutError:
                conn.transport.abort()
            except BaseException:
                conn.transport.abort()
                raise
        if stopped is not None and not stopped.done():
            await asyncio.shield(stopped)

    # --- internals: requests -----------------------------------------------------------------

    def _require_conn(self) -> ClientConnection:
        conn = self._conn
        if conn is None:
            raise NotConnected(
                f"{self.device_id}: not connected to the device"
                + (f" ({self.last_error})" if self.last_error else ""),
                device=self.device_id,
            )
        return conn

    async def _send(self, conn: ClientConnection, req: Request, timeout: float | None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Registered before the write: the answer can arrive before send() returns.
        self._pending[req.request_id] = fut
        limit = self.request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await conn.send(req.text)
                return await fut
        except TimeoutError:
            raise RequestTimeout(
                f"{self.device_id}: no answer to {req.method} within {limit:g} s; "
                "the device may be busy or the link half-open",
                device=self.device_id,
            ) from None
        except ConnectionClosed as exc:
            raise ConnectionLost(
                f"{self.device_id}: connection lost before {req.method} was answered ({exc})",
                device=self.device_id,
            ) from None
        finally:
            if self._pending.pop(req.request_id, None) is not None:
                self._protocol.forget(req.request_id)

    async def _make_subscription(
        self, conn: ClientConnection, sub: Subscription, timeout: float | None
    ) -> None:
        inflight = self._subscribing.get(sub.key)
        if inflight is not None:
            await asyncio.shield(inflight)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribing[sub.key] = done
        try:
            await self._send(conn, self._protocol.subscribe(sub), timeout)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, Exception) else ConnectionLost("cancelled"))
            done.exception()  # retrieved: the waiters re-raise it
            raise
        finally:
            del self._subscribing[sub.key]

    # --- internals: connecting ---------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        ep = self.endpoint
        try:
            async with _opening_slot(), asyncio.timeout(self.open_timeout):
                return await self._establish()
        except ConnectError:
            raise
        except InvalidStatus as exc:
            raise self._status_error(exc) from None
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"{self.device_id}: the device's certificate did not verify "
                f"({exc.verify_message}); give the device CA in ca_file, pin its SHA-256 "
                "fingerprint, or (last resort) set insecure = true",
                device=self.device_id,
            ) from None
        except ssl.SSLError as exc:
            raise TlsError(
                f"{self.device_id}: TLS handshake failed ({exc.reason or exc}); check that "
                f"{ep.ws_url} is the device's HTTPS port",
                device=self.device_id,
            ) from None
        except socket.gaierror as exc:
            raise Unreachable(
                f"{self.device_id}: cannot resolve the device's name ({exc.strerror}); check the "
                "host in the configuration and DNS",
                device=self.device_id,
            ) from None
        except ConnectionRefusedError:
            raise Unreachable(
                f"{self.device_id}: connection refused by {ep.ws_url}; is the device up, the "
                "port right, and HTTP(S) enabled on it?",
                device=self.device_id,
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"{self.device_id}: no connection to {ep.ws_url} within {self.open_timeout:g} s; "
                "check the network path and firewall",
                device=self.device_id,
            ) from None
        except OSError as exc:
            raise Unreachable(
                f"{self.device_id}: cannot reach {ep.ws_url} ({exc.strerror or exc}); check the "
                "network path",
                device=self.device_id,
            ) from None
        except InvalidHandshake as exc:
            raise HandshakeFailed(
                f"{self.device_id}: WebSocket upgrade failed ({exc}); is {ep.ws_url} the "
                "device's xAPI endpoint?",
                device=self.device_id,
            ) from None

    async def _establish(self) -> ClientConnection:
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        uri = parse_uri(ep.ws_url)
        headers: dict[str, str] = {}
        subprotocols: list[Subprotocol] | None = None
        if ep.auth == "subprotocol":
            subprotocols = [Subprotocol(ep.auth_subprotocol())]
        else:
            headers["Authorization"] = ep.basic_authorization()
        # No extensions: permessage-deflate costs ~33 KiB per connection (DESIGN.md).
        protocol = ClientProtocol(uri, subprotocols=subprotocols, max_size=self.max_size)
        conn = _Connection(
            protocol,
            ping_interval=None,  # pings are sent by run()'s loop, not a task per connection
            ping_timeout=None,
            close_timeout=self.close_timeout,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
        )
        # websockets gives each connection a LoggerAdapter holding a weakref proxy (~0.4 KiB);
        # its debug logs lose the connection's repr (ours carry the device id).
        conn.logger = conn.protocol.logger = _WEBSOCKETS_LOGGER
        # Its drain waiters are a deque, which allocates a 0.7 KiB block up front; websockets
        # only appends, removes and iterates them, so a list serves.
        conn.drain_waiters = []  # type: ignore[assignment]
        if uri.secure:
            if ep.insecure and ep.fingerprint is None:
                self._log.warning(
                    "TLS verification is OFF for this device (insecure = true): anyone on the "
                    "path can read its credentials; pin its fingerprint instead",
                    url=ep.ws_url,
                )
            ctx = tls.context_for(ep)
            if tls.lean_buffers_supported(loop):
                waiter: asyncio.Future[None] = loop.create_future()
                transport, _ = await loop.create_connection(
                    lambda: tls.LeanSSLProtocol(
                        loop,
                        conn,
                        ctx,
                        waiter,
                        server_side=False,
                        server_hostname=uri.host,
                        ssl_handshake_timeout=self.open_timeout,
                    ),
                    uri.host,
                    uri.port,
                )
                try:
                    await waiter
                except BaseException:
                    transport.abort()
                    raise
            else:
                await loop.create_connection(
                    lambda: conn, uri.host, uri.port, ssl=ctx, server_hostname=uri.host
                )
            # The credentials go in the upgrade request below: the pin is checked first.
            if ep.fingerprint is not None:
                actual = tls.peer_fingerprint(conn.transport.get_extra_info("ssl_object"))
                if actual != ep.fingerprint:
                    conn.transport.abort()
                    raise FingerprintMismatch(
                        f"{self.device_id}: the device's certificate is not the pinned one "
                        f"(expected SHA-256 {format_fingerprint(ep.fingerprint)}, got "
                        f"{format_fingerprint(actual)}); credentials were not sent. If the "
                        "device's certificate was replaced, update the fingerprint",
                        device=self.device_id,
                        expected=ep.fingerprint,
                        actual=actual,
                    )
        else:
            await loop.create_connection(lambda: conn, uri.host, uri.port)
        try:
            await conn.handshake(headers, USER_AGENT)
        except BaseException:
            conn.transport.abort()
            raise
        # Neither the upgrade request (it carries the credentials) nor the response headers are
        # needed once open: ~3 KiB per connection, which matters at 1,000 devices. The headers
        # are cleared in place because the sans-I/O parser's suspended frame keeps the
        # response for the life of the connection.
        conn.request = None
        if conn.response is not None:
            conn.response.headers.clear()
        return conn

    def _status_error(self, exc: InvalidStatus) -> ConnectError:
        status = exc.response.status_code
        d = self.device_id
        retry_after = _retry_after(exc.response.headers.get("Retry-After"))
        if status == 403 or (status == 401 and self.endpoint.secure):
            return AuthenticationFailed(
                f"{d}: device refused the credentials (HTTP {status}); check the user and "
                f"password for this device in the configuration; retrying only every "
                f"{self.auth_retry_delay / 60:g} min, since repeated bad logins can lock the "
                "device's account",
                device=d,
            )
        if status == 401:
            return HttpsOnly(
                f"{d}: device accepts HTTPS only (HTTP 401 on ws://); use "
                f"wss:// in the device's url",
                device=d,
            )
        if status == 502:
            return DeviceRebooting(f"{d}: device is rebooting (HTTP 502); retrying", device=d)
        if status == 503:
            return RateLimited(
                f"{d}: device is limiting new connections (HTTP 503); retrying later",
                device=d,
                retry_after=retry_after,
            )
        return HandshakeFailed(
            f"{d}: WebSocket upgrade refused with HTTP {status}; is "
            f"{self.endpoint.ws_url} the device's xAPI endpoint?",
            device=d,
            retry_after=retry_after,
        )

    def _delay_after(self, exc: ConnectError, attempt: int) -> float:
        delay = self.backoff.delay_honouring(attempt, exc.retry_after, self._rng)
        if isinstance(exc, AuthenticationFailed):
            delay = max(delay, self.auth_retry_delay)
        return delay

    def _note_error(self, exc: BaseException | None, *, retry_in: float) -> None:
        if exc is None:
            return
        kind = exc.kind if isinstance(exc, XapiError) else "lost"
        DEVICE_ERRORS.labels(kind).inc()
        self.last_error = str(exc)
        self.last_exception = exc
        level = (
            self._log.error
            if isinstance(exc, (AuthenticationFailed, TlsError))
            else (self._log.warning)
        )
        level("device link down", error=str(exc), kind=kind, retry_in_s=round(retry_in, 3))

    async def _interruptible_open(self) -> ClientConnection:
        """:meth:`_open`, cut short by :meth:`close` (raises :class:`_Interrupted`)."""
        wake = self._wake
        assert wake is not None
        if wake.done():
            raise _Interrupted
        opening = asyncio.ensure_future(self._open())
        try:
            await asyncio.wait((opening, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not opening.done():
                opening.cancel()
                await asyncio.wait((opening,))  # its cleanup aborts the half-open transport
        if opening.cancelled():
            raise _Interrupted
        conn = opening.result()
        if wake.done():
            conn.transport.abort()
            raise _Interrupted
        return conn

    async def _interruptible_sleep(self, delay: float) -> None:
        wake = self._wake
        assert wake is not None
        await asyncio.wait((wake,), timeout=delay)
        if wake.done():
            raise _Interrupted

    # --- internals: the connected phase ------------------------------------------------------

    async def _serve(self, conn: ClientConnection) -> BaseException | None:
        """Own the open link until it ends; returns why (``None`` when closed by us)."""
        loop = asyncio.get_running_loop()
        self._conn = conn
        DEVICES_CONNECTED.inc()
        self._log.info("connected", url=self.endpoint.ws_url)
        self._after_connect_task = loop.create_task(
            self._after_connect(conn), name=f"xapi[{self.device_id}].after_connect"
        )
        self._after_connect_task.add_done_callback(self._after_connect_done)
        reason: BaseException | None = None
        try:
            reason = await self._read(conn)
        finally:
            self._conn = None
            DEVICES_CONNECTED.dec()
            self._ready = False
            conn.transport.abort()
            if self._after_connect_task is not None:
                self._after_connect_task.cancel()
                self._after_connect_task = None
            lost = reason or ConnectionLost(
                f"{self.device_id}: connection closed", device=self.device_id
            )
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            self._pending.clear()
            self._protocol.connection_lost()
            if self._closing and reason is not None and isinstance(reason, ConnectionLost):
                reason = None
            self._call_disconnected(reason)
        return reason

    async def _read(self, conn: ClientConnection) -> ConnectionLost | None:
        """The one reader: frames in order, plus pings and probes on the same loop."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        inf = math.inf
        next_ping = now + self.ping_interval if self.ping_interval else inf
        next_probe = now + self.probe_interval if self.probe_interval else inf
        pong: Awaitable[float] | None = None
        pong_deadline = inf
        probe: asyncio.Future[Any] | None = None
        probe_deadline = inf
        while True:
            deadline = min(next_ping, pong_deadline, next_probe, probe_deadline)
            try:
                # One timeout per tick, not per frame: frames are the hot path.
                async with asyncio.timeout_at(None if deadline == inf else deadline):
                    while True:
                        self._on_message(await conn.recv())
                        if len(self._handler_tasks) >= self.max_handler_tasks:
                            await asyncio.wait(
                                self._handler_tasks, return_when=asyncio.FIRST_COMPLETED
                            )
            except TimeoutError:
                pass
            except ConnectionClosed as exc:
                return self._closed_by(exc)
            now = loop.time()
            if pong is not None and pong_deadline == inf and _done(pong):
                pong = None
            if pong is not None and now >= pong_deadline:
                if not _done(pong):
                    return self._dead(conn, f"no WebSocket pong within {self.ping_timeout:g} s")
                pong, pong_deadline = None, inf
            if probe is not None and now >= probe_deadline:
                if not probe.done():
                    return self._dead(
                        conn, f"no answer to the liveness probe within {self.probe_timeout:g} s"
                    )
                probe, probe_deadline = None, inf
            try:
                async with asyncio.timeout(self.ping_timeout or self.request_timeout):
                    # One ping and one probe outstanding at most: the next is due an
                    # interval after the previous one was answered or timed out.
                    if now >= next_ping and pong is None:
                        pong = await conn.ping()
                        pong_deadline = now + (self.ping_timeout or inf)
                        next_ping = max(pong_deadline, now + (self.ping_interval or inf))
                    if now >= next_probe and probe is None:
                        probe = await self._start_probe(conn)
                        probe_deadline = now + self.probe_timeout
                        next_probe = max(probe_deadline, now + (self.probe_interval or inf))
            except TimeoutError:
                return self._dead(conn, "could not write to the device (send buffer full)")
            except ConnectionClosed as exc:
                return self._closed_by(exc)

    async def _start_probe(self, conn: ClientConnection) -> asyncio.Future[Any]:
        """Send the probe without waiting for it: the reader that will read the answer is us."""
        req = self._protocol.get(self.probe_path)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._probe_done(req.request_id))
        self._pending[req.request_id] = fut
        await conn.send(req.text)
        return fut

    def _probe_done(self, request_id: int) -> Callable[[asyncio.Future[Any]], None]:
        def done(fut: asyncio.Future[Any]) -> None:
            self._pending.pop(request_id, None)
            if not fut.cancelled():
                fut.exception()  # an error answer (NotReady...) still proves the link alive

        return done

    def _closed_by(self, exc: ConnectionClosed) -> ConnectionLost | None:
        """Why the link closed: ``None`` when we closed it, else a ConnectionLost."""
        if self._closing:
            return None
        return ConnectionLost(
            f"{self.device_id}: connection lost ({_describe_close(exc)})", device=self.device_id
        )

    def _dead(self, conn: ClientConnection, why: str) -> ConnectionLost:
        conn.transport.abort()
        return ConnectionLost(f"{self.device_id}: link is dead: {why}", device=self.device_id)

    def _on_message(self, frame: str | bytes) -> None:
        self.frames += 1
        for event in self._protocol.receive(frame):
            if type(event) is Notification:
                self._deliver(event)
            elif type(event) is Response:
                fut = self._pending.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.result)
            elif type(event) is ErrorResponse:
                fut = self._pending.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(event.exception(self.device_id))
            elif type(event) is Malformed:
                self.malformed += 1
                DEVICE_ERRORS.labels("malformed").inc()
                self._log.warning("skipped a frame", reason=event.reason, frame=event.preview)

    def _deliver(self, event: Notification) -> None:
        sub = event.subscription
        try:
            result = sub.handler(event.payload)
        except Exception:
            self.handler_errors += 1
            self._log.exception("feedback handler failed", query=sub.query)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_finished)

    def _handler_finished(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.handler_errors += 1
            self._log.error("feedback handler failed", exc_info=exc)

    def _after_connect_done(self, task: asyncio.Task[None]) -> None:
        if self._after_connect_task is task:
            self._after_connect_task = None  # a finished task still holds its coroutine

    async def _after_connect(self, conn: ClientConnection) -> None:
        """Re-make every subscription (waiting out NotReady), then run ``on_connected``."""
        try:
            for sub in self._protocol.subscriptions:
                while sub.device_id is None and self._conn is conn:
                    if self._protocol.subscriptions.get(sub.key) is None:
                        break
                    try:
                        await self._make_subscription(conn, sub, None)
                    except NotReady:
                        self._log.info(
                            "device not ready yet; will subscribe again",
                            retry_in_s=self.not_ready_delay,
                        )
                        await asyncio.sleep(self.not_ready_delay)
                    except RequestTimeout as exc:
                        self._log.warning("re-subscribe timed out; reconnecting", error=str(exc))
                        conn.transport.abort()
                        return
                    except ConnectionLost:
                        return
                    except XapiError as exc:
                        self.last_error = str(exc)
                        DEVICE_ERRORS.labels(exc.kind).inc()
                        self._log.error(
                            "device refused a subscription", query=sub.query, error=str(exc)
                        )
                        break
            self._ready = True
            if self._ready_waiter is not None:
                if not self._ready_waiter.done():
                    self._ready_waiter.set_result(None)
                self._ready_waiter = None
            if self.on_connected is not None:
                try:
                    await self.on_connected(self)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._log.exception("on_connected hook failed")
        except asyncio.CancelledError:
            raise

    def _call_disconnected(self, reason: BaseException | None) -> None:
        if self.on_disconnected is None:
            return
        try:
            result = self.on_disconnected(reason)
        except Exception:
            self._log.exception("on_disconnected hook failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_finished)


OPENS_IN_FLIGHT = 64
"""Opening handshakes in flight per event loop: a reconnect storm of 1,000 devices is spread
out (TLS handshakes cost CPU) and the handshakes' temporary memory does not pile up at once."""

_open_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _opening_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _open_slots.get(loop)
    if slots is None:
        slots = _open_slots[loop] = asyncio.Semaphore(OPENS_IN_FLIGHT)
    return slots


_WEBSOCKETS_LOGGER = logging.getLogger("websockets.client")


class _Connection(ClientConnection):
    """websockets' client connection, without its parser pinning the last frame received.

    The sans-I/O parser is a generator whose suspended frame keeps the previous ``Frame`` until
    the next one arrives: on a quiet device, the last ``Bookings List`` reply (~1 KiB a booking)
    for up to a ping interval, across the whole fleet after every (re)list. The assembler gets
    a copy of each frame with a payload; the parser's own is emptied.
    """

    def process_event(self, event: Any) -> None:
        if type(event) is Frame and len(event.data) > _FRAME_KEEP:
            frame = event
            event = Frame(frame.opcode, frame.data, frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)
            frame.data = b""
        super().process_event(event)


_FRAME_KEEP = 256  # bytes: smaller payloads are not worth a copy of the frame


class _Interrupted(Exception):
    """close() cut a connect attempt or a backoff sleep short."""


def _done(aw: Awaitable[Any]) -> bool:
    return isinstance(aw, asyncio.Future) and aw.done() and not aw.cancelled()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is None and exc.sent is None:
        return "dropped without a close frame"
    if exc.rcvd is not None:
        return f"device closed it: code {exc.rcvd.code} {exc.rcvd.reason}".rstrip()
    return str(exc)
