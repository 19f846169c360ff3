"""The MQTT mirror of the booking routes, in zigbee2mqtt's request/response convention.

A client publishes a JSON request to ``<base>/bridge/request/book`` or
``<base>/bridge/request/release``; the agent answers on ``<base>/bridge/response/book`` /
``.../release`` with ``{"status": "ok", "data": {...}, "transaction": ...}`` or
``{"status": "error", "error": "...", "data": {}, "transaction": ...}``, echoing the caller's
``transaction`` (any JSON value; absent when the request had none).

- ``book``: ``{"room", "title", "duration_min", "start"?, "organizer"?}`` -> ``data``
  ``{request_uuid, status: "pending", room_id, expires_at}``; the outcome arrives as events
  (``booking.created`` / ``failed`` / ``request_expired`` with the UUID) and in
  ``GET /v1/requests/{uuid}``. The same checks as the HTTP route, before anything is sent.
- ``release``: ``{"room", "id"}`` -> ``data`` ``{room_id, booking_id, status: "releasing"}``.

Only these two exact topics under the configured base topic are subscribed; retained messages
are ignored (a retained "book" would book again at every reconnect) and a payload is bounded.
Requests are taken only while the MQTT sink is connected (else answered with an error): the
outcome events go out through it. This module keeps a connection of its own (client id
``<sink client id>-requests``), so a slow booking never sits in the sink's delivery path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.bookings.book import BookingOrder, OrderInvalid, OrderRefused, parse_order
from edge_agent.clock import utc_iso
from edge_agent.forward.mqtt.errors import BrokerError
from edge_agent.forward.mqtt.link import (
    BrokerLink,
    BrokerLinkLost,
    BrokerSettings,
    open_link,
    raise_if_cancelling,
)

log = structlog.get_logger(__name__)

__all__ = ["ACTIONS", "MAX_PAYLOAD_BYTES", "BridgeRequests"]

ACTIONS = ("book", "release")
MAX_PAYLOAD_BYTES = 16 * 1024
QUEUE_MAX = 64
"""Requests waiting for the worker; past it a request is answered "busy" at once."""
PUBLISH_TIMEOUT_S = 10.0


class BookingDesk(Protocol):
    """What the mirror uses of the agent (the same desk as the HTTP routes)."""

    def booking_room(self, room_id: str) -> str | None: ...

    async def book(self, room_id: str, order: BookingOrder) -> Any: ...

    async def release(self, room_id: str, booking_id: str) -> Any: ...


class RequestError(Exception):
    """A request the agent answers with ``status: error``."""


class BridgeRequests:
    """Serves the two request topics until cancelled (reconnecting with backoff).

    Args:
        settings: the broker connection (the sink's, with its own client id).
        base_topic: the configured base topic; nothing outside it is subscribed.
        desk: the agent.
        sink_ready: whether the MQTT sink is connected right now.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        base_topic: str,
        desk: BookingDesk,
        sink_ready: Callable[[], bool],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._base = base_topic.rstrip("/")
        self._desk = desk
        self._sink_ready = sink_ready
        self._backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self._link: BrokerLink | None = None
        self._poke = asyncio.Event()  # reconnect_now(): end the wait before the next attempt
        self._log = log.bind(client_id=settings.client_id)
        self.subscribed = asyncio.Event()
        """Set while the request topics are subscribed (tests wait on it)."""

    def request_topic(self, action: str) -> str:
        return f"{self._base}/bridge/request/{action}"

    def response_topic(self, action: str) -> str:
        return f"{self._base}/bridge/response/{action}"

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe, serve; reconnect with backoff. Cancelling is safe, and always
        ends it (also when Python 3.11 dropped the cancellation: :func:`raise_if_cancelling`)."""
        attempt = 0
        while True:
            attempt += 1
            self._poke.clear()
            try:
                await self._serve()
                attempt = 0
                delay = self._backoff.delay(1)
            except BrokerError as exc:
                delay = self._backoff.delay(attempt)
                self._log.warning(f"mqtt requests: {exc}; retrying in {delay:.0f} s", kind=exc.kind)
            raise_if_cancelling()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._poke.wait()
            if self._poke.is_set():
                attempt = 0

    def reconnect_now(self, *, credentials: tuple[str | None, str | None] | None = None) -> None:
        """Retry at once with ``(username, password)`` as reloaded (the agent's SIGHUP, as for
        the sink: a password fixed in its file must not wait for a restart). A link that is up
        is left alone; the new credentials apply on its next connect."""
        if credentials is not None:
            username, password = credentials
            self._settings = dataclasses.replace(
                self._settings, username=username, password=password
            )
        if self._link is None:
            self._poke.set()

    async def _serve(self) -> None:
        link = await open_link(self._settings, max_in_flight=8, on_message=self._on_message)
        name = f"mqtt[{self._settings.client_id}]"
        try:
            # Subscribed before the group: a failure raised inside a TaskGroup comes out as an
            # ExceptionGroup, which the except below would not match (and the supervisor would
            # take for a crash).
            for action in ACTIONS:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await link.subscribe(self.request_topic(action))
            raise_if_cancelling()
            self._link = link
            self.subscribed.set()
            self._log.info(
                "mqtt requests: listening", topics=[self.request_topic(a) for a in ACTIONS]
            )
            async with asyncio.TaskGroup() as tg:
                keepalive = tg.create_task(
                    link.keepalive(min(1.0, self._settings.keepalive / 4)),
                    name=f"{name}.keepalive",
                )
                worker = tg.create_task(self._work(), name=f"{name}.worker")
                await link.lost
                self._log.warning("mqtt requests: link lost", reason=link.lost.result())
                keepalive.cancel()
                worker.cancel()
        except (BrokerLinkLost, TimeoutError) as exc:
            self._log.warning("mqtt requests: link lost", reason=repr(exc))
        finally:
            self.subscribed.clear()
            self._link = None
            # Bounded (BrokerLink.close waits at most 2 s for the DISCONNECT to go out), and
            # shielded so a second cancellation does not leave the socket open.
            with contextlib.suppress(Exception):
                await asyncio.shield(link.close())

    # -- requests ------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        # paho's callback on the loop thread: decide at once, never block.
        action = topic.rsplit("/", 1)[-1]
        if topic != self.request_topic(action) or action not in ACTIONS:
            return  # not ours (we subscribe to exact topics; a broker may still route others)
        if retain:
            self._log.warning("mqtt requests: retained request ignored", topic=topic)
            return
        try:
            self._queue.put_nowait((action, payload))
        except asyncio.QueueFull:
            self._answer(action, _transaction(payload), error="the agent is busy; try again")

    async def _work(self) -> None:
        while True:
            action, payload = await self._queue.get()
            transaction = _transaction(payload)
            try:
                data = await self._handle(action, payload)
            except RequestError as exc:
                self._answer(action, transaction, error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad request never stops the worker
                self._log.exception("mqtt requests: request failed", action=action)
                self._answer(action, transaction, error=f"{type(exc).__name__}: {exc}")
            else:
                self._answer(action, transaction, data=data)

    async def _handle(self, action: str, payload: bytes) -> dict[str, Any]:
        from edge_agent.session import BookingRejected, DeviceOffline
        from edge_agent.store import StoreError

        if len(payload) > MAX_PAYLOAD_BYTES:
            raise RequestError(f"the request is larger than {MAX_PAYLOAD_BYTES} bytes")
        try:
            body = jsoncodec.loads(payload)
        except ValueError:
            raise RequestError("the request is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request must be a JSON object")
        if not self._sink_ready():
            raise RequestError("the MQTT sink is not connected: its outcome could not be sent")
        body.pop("transaction", None)
        room = body.pop("room", None)
        if not isinstance(room, str) or not room:
            raise RequestError("room: required (a room id)")
        kind = self._desk.booking_room(room)
        if kind is None:
            raise RequestError(f"unknown room {room!r}")
        try:
            if action == "book":
                order = parse_order(body)
                sent = await self._desk.book(room, order)
                return {
                    "request_uuid": sent.request_uuid,
                    "status": "pending",
                    "room_id": room,
                    "expires_at": utc_iso(sent.deadline),
                }
            booking_id = body.get("id")
            if not isinstance(booking_id, str) or not booking_id or set(body) - {"id"}:
                raise RequestError("release takes {room, id} (the booking id)")
            await self._desk.release(room, booking_id)
            return {"room_id": room, "booking_id": booking_id, "status": "releasing"}
        except OrderInvalid as exc:
            raise RequestError(str(exc)) from None
        except (
            OrderRefused,
            DeviceOffline,
            BookingRejected,
            LookupError,
            StoreError,
            NotImplementedError,
        ) as exc:
            raise RequestError(str(exc)) from None

    def _answer(
        self,
        action: str,
        transaction: Any,
        *,
        data: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        message: dict[str, Any] = {"data": data or {}, "status": "error" if error else "ok"}
        if error:
            message["error"] = error
        if transaction is not None:
            message["transaction"] = transaction
        link = self._link
        if link is None:
            return
        try:
            link.publish(self.response_topic(action), jsoncodec.dumpb(message), retain=False)
        except BrokerLinkLost:
            self._log.warning("mqtt requests: answer lost with the link", action=action)


def _transaction(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        body = jsoncodec.loads(payload)
    except ValueError:
        return None
    return body.get("transaction") if isinstance(body, dict) else None
