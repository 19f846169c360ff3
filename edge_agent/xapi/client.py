"""The asyncio shell of one device link: the one reader, request futures, subscriptions.

One task per device does everything that waits on the network: ``run()`` opens the link
(:mod:`.connect`), then reads frames (the one reader), sends the WebSocket pings and the
application probe when :mod:`.liveness` says so, and waits as long as :mod:`.reconnect` says
before the next attempt. Requests are made by other tasks: their futures are registered before
the frame is written and all fail with :class:`ConnectionLost` when the link goes. After each
connect a short-lived task re-makes the subscriptions and then calls ``on_connected``.

The JSON-RPC itself is :class:`~edge_agent.xapi.protocol.XapiProtocol` (sans-I/O); the memory
trims on websockets' internals are in :mod:`.lean`. Nothing here reports to the agent's
metrics: :attr:`XapiClient.counters` has the numbers, the agent exports them.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from edge_agent.backoff import Backoff
from edge_agent.clock import Clock, system_clock, utc_iso

from .budget import MAX_WAIT_S, FeedbackBudget, LinkShare, loop_budget
from .connect import MAX_MESSAGE_SIZE, LinkOptions, open_link
from .endpoint import DeviceEndpoint
from .errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectionLost,
    NotConnected,
    NotReady,
    RequestTimeout,
    TlsError,
    XapiError,
)
from .liveness import Dead, Liveness, LivenessTimes
from .protocol import (
    STALL_AFTER_S,
    CatchUp,
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
from .reconnect import Reconnect, ReconnectPolicy

__all__ = ["PROBE_PATH", "LinkCounters", "XapiClient"]

OnConnected = Callable[["XapiClient"], Awaitable[Any]]
OnDisconnected = Callable[[BaseException | None], Any]

PROBE_PATH: tuple[str, ...] = ("Status", "SystemUnit", "Uptime")
DEFAULT_BACKOFF = ReconnectPolicy().backoff


@dataclass(slots=True)
class LinkCounters:
    """What happened on one client's link since it was made (all only ever grow).

    The agent exports them (``edge_agent_device_reconnects``, ``edge_agent_device_errors``);
    a new client (the session makes one per run) starts again from zero.
    """

    connects: int = 0
    """Links opened (TCP, TLS, pin and upgrade all done)."""
    reconnects: int = 0
    """Connection attempts after the first one."""
    frames: int = 0
    """Frames received."""
    malformed: int = 0
    """Frames skipped as not JSON-RPC (also counted in ``errors["malformed"]``)."""
    handler_errors: int = 0
    """Feedback handlers (or ``on_disconnected``) that raised."""
    catch_up_frames: int = 0
    """Frames read in the catch-up after a stall, their arrival uncertain
    (:attr:`~.protocol.Feedback.arrived_after`)."""
    budget_waits: int = 0
    """Times the reader stopped reading because the loop's feedback budget was full
    (:mod:`.budget`: the process held as many notifications as it may)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Failures by :attr:`XapiError.kind` (``auth``, ``tls``, ``unreachable``, ``lost``,
    ``malformed``, a refused subscription's kind...)."""

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


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
        ping_interval / ping_timeout: WebSocket keepalive (``None`` disables; a ``None``
            timeout sends pings without waiting for the pong).
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
            The queue is outside the loop's feedback budget: while the budget makes the reader
            wait, each link still buffers up to ``max_queue`` frames off its socket (16,000 at
            1,000 devices). 4 was tried (docs/perf-notes.md, eighth session): RSS after the
            benchmark's flood and burst median 135.6 MiB of five runs against 149.6 of three,
            but ~8 % more CPU under an MQTT flood (pausing and resuming the transport's
            reading); websockets' 16 is kept.
        feedback_budget: the bound on notifications alive shared with other links (default:
            the running loop's, :func:`~.budget.loop_budget`); full, the reader waits.
        clock: monotonic time (timeouts, backoff) and wall time (feedback arrival stamps).
        rng: randomness for the backoff jitter (tests pass a seeded one).
    """

    __slots__ = (
        "_after_connect_task",
        "_answer_frames",
        "_beat",
        "_budget",
        "_catch_up",
        "_clock",
        "_error_at",
        "_error_connects",
        "_previous_error",
        "_closing",
        "_conn",
        "_handler_tasks",
        "_logger",
        "_pending",
        "_protocol",
        "_ready",
        "_ready_waiter",
        "_running",
        "_share",
        "_stopped",
        "_subscribing",
        "_wake",
        "counters",
        "device_id",
        "endpoint",
        "last_error",
        "last_exception",
        "link_options",
        "liveness_times",
        "max_handler_tasks",
        "not_ready_delay",
        "on_connected",
        "on_disconnected",
        "probe_path",
        "reconnect",
        "request_timeout",
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
        backoff: Backoff = DEFAULT_BACKOFF,
        auth_retry_delay: float = 600.0,
        stable_after: float = 60.0,
        not_ready_delay: float = 2.0,
        close_timeout: float = 2.0,
        max_size: int = MAX_MESSAGE_SIZE,
        max_handler_tasks: int = 32,
        max_queue: int = 16,
        write_limit: int = 2**15,
        feedback_budget: FeedbackBudget | None = None,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.device_id = endpoint.device_id
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.request_timeout = request_timeout
        self.probe_path = probe_path
        self.not_ready_delay = not_ready_delay
        self.max_handler_tasks = max_handler_tasks
        # Options are shared by every client that has the same: 1,000 devices, one of each.
        self.link_options = _shared(
            LinkOptions(
                open_timeout=open_timeout,
                close_timeout=close_timeout,
                max_size=max_size,
                max_queue=max_queue,
                write_limit=write_limit,
                auth_retry_delay=auth_retry_delay,
            )
        )
        self.liveness_times = _shared(
            LivenessTimes(
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                probe_interval=probe_interval,
                probe_timeout=probe_timeout,
            )
        )
        self.reconnect = Reconnect(
            _shared(
                ReconnectPolicy(
                    backoff=backoff, auth_retry_delay=auth_retry_delay, stable_after=stable_after
                )
            ),
            rng,
        )
        self._clock = clock

        self._logger: Any = None
        self._protocol = XapiProtocol(device=endpoint.device_id)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._answer_frames: dict[int, int] = {}
        """Request id -> the number of the frame its answer came in (``command_at`` only)."""
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
        self._beat: _LoopBeat | None = None  # the loop's heartbeat while the reader runs
        self._catch_up = CatchUp()
        self._budget = feedback_budget  # the loop's when None: known once run() runs
        self._share = LinkShare()  # what this link holds of it (at most budget.share_max)

        self.last_error: str | None = None
        """A person-readable account of the last thing that went wrong (``None`` until then)."""
        self.last_exception: BaseException | None = None
        """The typed error behind :attr:`last_error`."""
        self._error_at: datetime | None = None  # when last_error happened (the client's clock)
        self._error_connects = 0  # counters.connects then: a later connect means recovered
        self._previous_error: tuple[str, datetime] | None = None
        self.counters = LinkCounters()

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

    @property
    def reconnects(self) -> int:
        return self.counters.reconnects

    @property
    def frames(self) -> int:
        return self.counters.frames

    @property
    def malformed(self) -> int:
        return self.counters.malformed

    @property
    def handler_errors(self) -> int:
        return self.counters.handler_errors

    def stats(self) -> dict[str, Any]:
        """Counters for the local API (``/v1/devices``).

        ``last_error`` is what is wrong now: once the link is up again after it, it shows as
        ``previous_error`` (the error from before this connection) and ``last_error`` is null.
        Each carries its time (``*_at``, UTC ISO)."""
        c = self.counters
        current: tuple[str, datetime] | None = None
        previous = self._previous_error
        if self.last_error is not None and self._error_at is not None:
            if self.connected and c.connects > self._error_connects:
                previous = (self.last_error, self._error_at)
            else:
                current = (self.last_error, self._error_at)
        return {
            "connected": self.connected,
            "last_error": current[0] if current else None,
            "last_error_at": utc_iso(current[1]) if current else None,
            "previous_error": previous[0] if previous else None,
            "previous_error_at": utc_iso(previous[1]) if previous else None,
            "reconnects": c.reconnects,
            "frames": c.frames,
            "malformed": c.malformed,
            "handler_errors": c.handler_errors,
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

    async def command_at(
        self, path: PathLike, /, *, timeout: float | None = None, **args: Any
    ) -> tuple[Any, int]:
        """:meth:`command`, and the number of the frame its answer came in (as
        :attr:`frames_read` counted it then). Feedback delivered while :attr:`frames_read` was
        higher was read after the answer, so it is newer than what the answer describes, even
        when whoever awaits the answer gets to it later than to that feedback.
        """
        conn = self._require_conn()
        req = self._protocol.command(path, args)
        self._answer_frames[req.request_id] = 0
        try:
            result = await self._send(conn, req, timeout)
            return result, self._answer_frames[req.request_id]
        finally:
            self._answer_frames.pop(req.request_id, None)

    @property
    def frames_read(self) -> int:
        """Frames read off the link so far (this client's life; one count across reconnects):
        a feedback handler reading it learns its frame's number."""
        return self.counters.frames

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
        notification params without ``Id``, e.g. ``{"Event": {"Bookings": {...}}}``, as a
        :class:`~.protocol.Feedback` (a dict) whose ``arrived_at`` is when the frame was read
        (``clock.now()``); it may be sync or async; its errors are logged. A device refusal
        (:class:`TooManySubscriptions`, :class:`PermissionDenied`) unregisters it and is
        raised. Cancelling is safe.
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
        conn = await open_link(self.endpoint, self.link_options)
        try:
            async with asyncio.timeout(self.link_options.close_timeout):
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
        if self._budget is None:
            self._budget = loop_budget()
        self._stopped = loop.create_future()
        self._wake = loop.create_future()
        first = True
        try:
            while not self._closing:
                if not first:
                    self.counters.reconnects += 1
                first = False
                try:
                    conn = await self._interruptible_open()
                except ConnectError as exc:
                    delay = self.reconnect.connect_failed(exc)
                    self._note_error(exc, retry_in=delay)
                    await self._interruptible_sleep(delay)
                    continue
                self.counters.connects += 1
                self.reconnect.connected(self._clock.monotonic())
                reason = await self._serve(conn)
                if self._closing:
                    break
                delay = self.reconnect.lost(self._clock.monotonic())
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
                async with asyncio.timeout(self.link_options.close_timeout):
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

    def _note_error(self, exc: BaseException | None, *, retry_in: float) -> None:
        if exc is None:
            return
        kind = exc.kind if isinstance(exc, XapiError) else "lost"
        self.counters.error(kind)
        self._remember_error(str(exc))
        self.last_exception = exc
        level = (
            self._log.error
            if isinstance(exc, (AuthenticationFailed, TlsError))
            else (self._log.warning)
        )
        level("device link down", error=str(exc), kind=kind, retry_in_s=round(retry_in, 3))

    def _remember_error(self, text: str) -> None:
        """Make ``text`` the last error, stamped now; an error the link recovered from since
        becomes the previous one."""
        if (
            self.last_error is not None
            and self._error_at is not None
            and self.counters.connects > self._error_connects
        ):
            self._previous_error = (self.last_error, self._error_at)
        self.last_error = text
        self._error_at = self._clock.now()
        self._error_connects = self.counters.connects

    async def _interruptible_open(self) -> ClientConnection:
        """:func:`.connect.open_link`, cut short by :meth:`close` (raises :class:`_Interrupted`)."""
        wake = self._wake
        assert wake is not None
        if wake.done():
            raise _Interrupted
        opening = asyncio.ensure_future(open_link(self.endpoint, self.link_options))
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
        self._log.info("connected", url=self.endpoint.ws_url)
        self._after_connect_task = loop.create_task(
            self._after_connect(conn), name=f"xapi[{self.device_id}].after_connect"
        )
        self._after_connect_task.add_done_callback(self._after_connect_done)
        reason: BaseException | None = None
        self._beat = _LoopBeat.acquire()
        try:
            reason = await self._read(conn)
        finally:
            _LoopBeat.release()
            self._beat = None
            self._conn = None
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
        """The one reader: frames in order; pings and probes when :mod:`.liveness` says."""
        loop = asyncio.get_running_loop()
        live = Liveness(self.liveness_times, loop.time())
        write_timeout = self.liveness_times.ping_timeout or self.request_timeout
        pong: Awaitable[float] | None = None
        probe: asyncio.Future[Any] | None = None
        budget = self._budget
        share = self._share
        while True:
            room = budget.room_for(share) if budget is not None else None
            if room is not None:
                self.counters.budget_waits += 1
                await asyncio.wait(
                    (room, conn.connection_lost_waiter),
                    timeout=MAX_WAIT_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                # Not reading, the link could not read a pong or the probe's answer either:
                # its clocks start again now (a lost link shows in the next recv()).
                live = Liveness(self.liveness_times, loop.time())
                pong = probe = None
            try:
                # One timeout per tick, not per frame: frames are the hot path.
                async with asyncio.timeout_at(live.deadline()):
                    while True:
                        self._on_message(await conn.recv())
                        if budget is not None and budget.full_for(share):
                            break  # wait for room, outside the liveness timeout
                        if len(self._handler_tasks) >= self.max_handler_tasks:
                            await asyncio.wait(
                                self._handler_tasks, return_when=asyncio.FIRST_COMPLETED
                            )
            except TimeoutError:
                pass
            except ConnectionClosed as exc:
                return self._closed_by(exc)
            now = loop.time()
            if pong is not None and _answered(pong):
                live.pong_received()
                pong = None
            if probe is not None and probe.done():
                live.probe_answered()
                probe = None
            due = live.tick(now)
            if isinstance(due, Dead):
                return self._dead(conn, due.why)
            try:
                async with asyncio.timeout(write_timeout):
                    if due.ping:
                        waiter = await conn.ping()
                        live.ping_sent(now)
                        pong = waiter if live.awaiting_pong else None
                    if due.probe:
                        probe = await self._start_probe(conn)
                        live.probe_sent(now)
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
        self.counters.frames += 1
        # The arrival stamp is taken here, in the one reader, as the frame comes off the link:
        # whoever handles the feedback later (behind a stuck store, say) still knows when the
        # device sent it, and dedupes and stamps ``observed_at`` by that, not by its own delay.
        # Except after a stall (SIGSTOP, a blocked loop): then what the kernel buffered is read
        # now, back to back, and only known to have arrived since the stall began.
        now = self._clock.now()
        after = None
        beat = self._beat
        if beat is not None:
            t = beat.time()
            start = self._catch_up.read(t, beat.last, BEAT_INTERVAL_S, beat.stall)
            if start is not None:
                self.counters.catch_up_frames += 1
                after = now - timedelta(seconds=t - start)
        for event in self._protocol.receive(frame, now, after):
            if type(event) is Notification:
                self._deliver(event)
            elif type(event) is Response:
                if event.request_id in self._answer_frames:
                    self._answer_frames[event.request_id] = self.counters.frames
                fut = self._pending.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.result)
            elif type(event) is ErrorResponse:
                fut = self._pending.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(event.exception(self.device_id))
            elif type(event) is Malformed:
                self.counters.malformed += 1
                self.counters.error("malformed")
                self._log.warning("skipped a frame", reason=event.reason, frame=event.preview)

    def _deliver(self, event: Notification) -> None:
        sub = event.subscription
        payload = event.payload
        budget = self._budget
        if budget is not None:
            budget.take(self._share)
            payload.budget = budget  # freeing the payload gives the place back
            payload.share = self._share
        try:
            result = sub.handler(payload)
        except Exception:
            self.counters.handler_errors += 1
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
            self.counters.handler_errors += 1
            self._log.error("feedback handler failed", exc_info=exc)

    def _after_connect_done(self, task: asyncio.Task[None]) -> None:
        if self._after_connect_task is task:
            self._after_connect_task = None  # a finished task still holds its coroutine

    async def _after_connect(self, conn: ClientConnection) -> None:
        """Re-make every subscription (waiting out NotReady), then run ``on_connected``."""
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
                    self._remember_error(str(exc))
                    self.counters.error(exc.kind)
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


BEAT_INTERVAL_S = 0.25
"""How often the loop's heartbeat turns (one timer per process, not per link)."""


class _LoopBeat:
    """The event loop's heartbeat: one timer every :data:`BEAT_INTERVAL_S` for all the links
    on a loop, noting when the loop last turned. A turn later than due by more than
    :data:`~.protocol.STALL_AFTER_S` is a stall (the process was stopped, the loop blocked):
    the frames buffered meanwhile are read together on resume, and each link's
    :class:`~.protocol.CatchUp` marks them. Loop time, not the injected clock: a stall is
    of this process, whatever time the agent is told it is (a simulated clock jumps, the
    loop does not stall). Runs while at least one reader does."""

    __slots__ = ("_handle", "_loop", "_users", "last", "stall", "stalls")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._users = 0
        self.last = loop.time()
        self.stall: tuple[float, float] | None = None
        """The last stall seen: loop times of the last turn before it and the first after."""
        self.stalls = 0
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def acquire(cls) -> _LoopBeat:
        loop = asyncio.get_running_loop()
        beat = _BEATS.get(loop)
        if beat is None:
            beat = _BEATS[loop] = cls(loop)
            beat._handle = loop.call_later(BEAT_INTERVAL_S, beat._turn)
        beat._users += 1
        return beat

    @staticmethod
    def release() -> None:
        loop = asyncio.get_running_loop()
        beat = _BEATS.get(loop)
        if beat is None:
            return
        beat._users -= 1
        if beat._users <= 0:
            del _BEATS[loop]  # the dict holds the loop only while a reader runs on it
            if beat._handle is not None:
                beat._handle.cancel()

    def time(self) -> float:
        return self._loop.time()

    def _turn(self) -> None:
        now = self._loop.time()
        late = now - self.last - BEAT_INTERVAL_S
        if late > STALL_AFTER_S:
            self.stall = (self.last, now)
            self.stalls += 1
            structlog.get_logger(__name__).warning(
                "the process was stalled (stopped, or its event loop blocked): the device "
                "frames buffered meanwhile are read now, their arrival uncertain; identical "
                "events among them are not deduped",
                stalled_s=round(late + BEAT_INTERVAL_S, 1),
            )
        self.last = now
        self._handle = self._loop.call_later(BEAT_INTERVAL_S, self._turn)


_BEATS: dict[asyncio.AbstractEventLoop, _LoopBeat] = {}

_T = TypeVar("_T")
_SHARED_OPTIONS: dict[Any, Any] = {}
_SHARED_MAX = 256  # distinct option sets remembered (a fleet has a handful)


def _shared(value: _T) -> _T:
    """The one object equal to ``value`` (frozen options): ~0.3 KiB a client less."""
    if len(_SHARED_OPTIONS) >= _SHARED_MAX:
        _SHARED_OPTIONS.clear()  # options made by tests by the thousand: forget, stay bounded
    got: _T = _SHARED_OPTIONS.setdefault(value, value)
    return got


class _Interrupted(Exception):
    """close() cut a connect attempt or a backoff sleep short."""


def _answered(aw: Awaitable[Any]) -> bool:
    return isinstance(aw, asyncio.Future) and aw.done() and not aw.cancelled()


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is None and exc.sent is None:
        return "dropped without a close frame"
    if exc.rcvd is not None:
        return f"device closed it: code {exc.rcvd.code} {exc.rcvd.reason}".rstrip()
    return str(exc)
