"""One MQTT connection: paho does the protocol, the asyncio loop drives its socket.

The bridge is modelled on aiomqtt's client (``add_reader``/``add_writer`` on paho's socket,
paho's ``loop_misc`` for keepalive), written here against paho directly so that a lost link
fails every outstanding PUBACK at once and a PUBACK's reason code is not thrown away.

:func:`open_link` is the one way the agent connects to a broker: the sink uses it for every
connection, ``edge-agent check-config --connect`` for its probe, and :func:`read_retained`
(what a late subscriber sees) for its subscription. Same TLS, credentials, protocol version,
errors and hints everywhere. Every connection gets a fresh paho client, with a clean session,
so paho never replays anything on its own.

Writes and reads are batched (after profiles of the MQTT flood, where paho's one ``send()``
per PUBLISH and its three ``recv()`` per PUBACK were ~7 % and ~2 % of the agent's samples):
every publish of one loop turn goes out in one ``send()`` (:meth:`BrokerLink._flush`, in queue
order), and paho reads its packets from one buffered ``recv()`` (:class:`_BufferedSocket`).
Both lean on two paho internals, checked by ``tests/forward/test_mqtt_link.py``: the
outgoing packet queue (``Client._out_packet``) and the socket attribute (``Client._sock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.forward.mqtt.errors import (
    BrokerAddress,
    BrokerError,
    closed_before_connack,
    connack_error,
    parse_broker_url,
    socket_error,
    tls_files_error,
)
from edge_agent.forward.mqtt.topics import Publication

MessageHandler = Callable[[str, bytes, bool], None]
"""``(topic, payload, retain)`` for each message a subscription delivers (on the loop)."""


class BrokerLinkLost(Exception):
    """The link to the broker dropped (or was never up) while an answer was outstanding."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """How to reach and log in to a broker; build with :func:`broker_settings`."""

    address: BrokerAddress
    client_id: str
    username: str | None = None
    password: str | None = None
    password_source: str | None = None
    """Where the password came from, as the config says (``"password_env MQTT_PW"``): hints."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    protocol: Literal["3.1.1", "5"] = "5"
    connect_timeout_s: float = 10.0

    @property
    def protocol_name(self) -> str:
        return "MQTT 5" if self.protocol == "5" else "MQTT 3.1.1"

    def tls_context(self) -> ssl.SSLContext:
        """The verifying context: ``ca_file`` (else the system CAs), the client certificate."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise tls_files_error(exc, self.ca_file, self.cert_file, self.key_file) from None
        # Hostname checking and CERT_REQUIRED are the defaults of create_default_context.
        return ctx


def broker_settings(
    url: str,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    password_source: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    keepalive: int = 30,
    protocol: Literal["3.1.1", "5"] = "5",
    connect_timeout_s: float = 10.0,
) -> BrokerSettings:
    """Check and combine the connection options. Raises ``ValueError`` with the reason."""
    address = parse_broker_url(url)
    if protocol not in ("3.1.1", "5"):
        raise ValueError(f"mqtt protocol {protocol!r}: use '3.1.1' or '5'")
    if (cert_file is None) != (key_file is None):
        raise ValueError("mqtt: cert_file and key_file go together")
    if not address.tls and (ca_file or cert_file):
        raise ValueError("mqtt: ca_file/cert_file need an mqtts:// url")
    return BrokerSettings(
        address=address,
        client_id=client_id,
        username=username,
        password=password,
        password_source=password_source,
        ca_file=os.fspath(ca_file) if ca_file is not None else None,
        cert_file=os.fspath(cert_file) if cert_file is not None else None,
        key_file=os.fspath(key_file) if key_file is not None else None,
        keepalive=keepalive,
        protocol=protocol,
        connect_timeout_s=connect_timeout_s,
    )


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop but the request got lost.

    Python 3.11's ``asyncio.wait_for`` returns the result (or raises the exception) of a future
    that completed in the same loop iteration as the task's cancellation, and drops the
    cancellation (fixed in 3.12). A CONNACK refusal or a PUBACK arriving just as the agent
    stops then turns its one ``cancel()`` into a retry loop that never ends, and the agent's
    shutdown waits for it forever. The task still counts the request (``cancelling()``), so
    every ``wait_for`` on the way out of a link is followed by this check.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # Futures failed on link loss after their waiter gave up: read the exception so asyncio does
    # not log "Future exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


_PUBLISH, _DISCONNECT = 0x30, 0xE0  # MQTT control packet types (the high nibble)
_READ_SIZE = 65536


def _coalesce(queue: deque[dict[str, Any]]) -> int:
    """Join the packets at the head of paho's outgoing queue into one, in order, so that
    ``loop_write`` sends them with one ``send()``; returns how many were joined.

    Joined: packets after whose sending paho does nothing (QoS 1 PUBLISH, PUBACK, PINGREQ,
    SUBSCRIBE...). A QoS 0 PUBLISH (paho marks it published once written) and a DISCONNECT
    (paho closes the socket once written) end the run and keep their own entry. The joined
    entry looks like a QoS 1 PUBLISH to paho: nothing to do once written, and a partial write
    carries on from its ``pos`` like any packet's.
    """
    taken: list[dict[str, Any]] = []
    while queue:
        head = queue[0]
        kind = head["command"] & 0xF0
        if kind == _DISCONNECT or (kind == _PUBLISH and head["qos"] == 0):
            break
        taken.append(queue.popleft())
    if len(taken) > 1:
        joined = b"".join(
            memoryview(p["packet"])[p["pos"] :] if p["pos"] else p["packet"] for p in taken
        )
        queue.appendleft(
            {
                "command": _PUBLISH,
                "mid": 0,
                "qos": 1,
                "pos": 0,
                "to_process": len(joined),
                "packet": joined,
                "info": None,
            }
        )
    elif taken:  # one packet: put it back as it was
        queue.appendleft(taken[0])
    return len(taken)


class _BufferedSocket:
    """paho's socket, read in large chunks: paho asks for one byte (the packet type), then the
    length bytes one by one, then the rest, a ``recv()`` each; a PUBACK is four bytes. Here one
    ``recv()`` takes whatever the kernel holds (many PUBACKs) and paho reads from the buffer.
    Everything else is the socket's own."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(_READ_SIZE)  # BlockingIOError, SSLWantReadError: paho's
            if not data:
                return b""  # end of stream
            self._buf, self._pos = data, 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken by paho, plus what TLS holds
        decrypted: the selector sees neither."""
        own = len(self._buf) - self._pos
        tls = getattr(self._sock, "pending", None)
        return own + (tls() if tls is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class PubackGroup:
    """The PUBACKs of one batch of publishes (one device's events, :meth:`MqttSink.send`):
    :attr:`done` resolves once every one is in (or raises :class:`BrokerLinkLost` when the link
    drops first). One future per batch, not one per message with its callbacks and waiters:
    the link counts the PUBACKs down and frees each one's slot as it comes.

    :meth:`BrokerLink.publish_in` adds a message (it takes a slot first). :meth:`abandon`
    (the sender gives up: a timeout, a cancel) frees the slots still held; a PUBACK arriving
    after it is ignored.
    """

    __slots__ = ("_closed", "_finished", "_slots", "done", "failure", "left", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.add_done_callback(_retrieve)
        self.sent = 0  # messages published in this group
        self.left = 0  # of which without PUBACK yet
        self.failure: tuple[int, ReasonCode] | None = None  # the first refusal, in publish order
        self._closed = False
        self._finished = False

    def _acked(self, index: int, reason: ReasonCode) -> None:
        if self._closed:
            return
        self._slots.release()
        self.left -= 1
        if reason.is_failure and (self.failure is None or index < self.failure[0]):
            self.failure = (index, reason)
        if self.left == 0 and self._finished and not self.done.done():
            self.done.set_result(None)

    def finish(self) -> asyncio.Future[None]:
        """Nothing more will be published in this group: :attr:`done`, resolved at once when
        every PUBACK is already in."""
        self._finished = True
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)
        return self.done

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in range(self.left):
            self._slots.release()  # whoever waits for a slot then finds the link lost
        self.left = 0
        if not self.done.done():
            self.done.set_exception(BrokerLinkLost(reason))

    def abandon(self) -> None:
        """The sender stopped waiting: free the slots still held (the messages may still be
        acknowledged; nobody counts them)."""
        if self._closed:
            return
        self._closed = True
        for _ in range(self.left):
            self._slots.release()
        self.left = 0
        if not self.done.done():
            self.done.cancel()


def _raw(sock: Any) -> Any:
    """The socket itself, wrapped or not (paho hands out whichever it holds at the time)."""
    return sock._sock if isinstance(sock, _BufferedSocket) else sock


class _ConnackRefused(Exception):
    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(reason.getName())
        self.reason = reason


class BrokerLink:
    """One MQTT connection: a paho client whose socket the asyncio loop drives.

    paho's callbacks run on the loop thread (from ``loop_read``/``loop_write``/``loop_misc``),
    except the socket ones during the blocking connect, which runs in an executor thread and
    hands over with ``call_soon_threadsafe``. The callbacks only resolve futures: no locks.
    """

    def __init__(
        self,
        client: paho.Client,
        loop: asyncio.AbstractEventLoop,
        on_message: MessageHandler | None = None,
    ) -> None:
        self.client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.connack: asyncio.Future[Properties | None] = loop.create_future()
        self.connack.add_done_callback(_retrieve)
        self.lost: asyncio.Future[str] = loop.create_future()
        self._acks: dict[int, asyncio.Future[ReasonCode] | tuple[PubackGroup, int]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._on_message_cb = on_message
        self._fd = -1
        self._flush_soon = False  # a _flush is scheduled for this loop turn
        self._writer_armed = False  # the socket was full: the loop calls _writable when it drains
        self.sends = 0  # send() batches written (one per loop turn under load): tests, figures
        # Event publishes awaiting PUBACK on this link; sized once the CONNACK is in.
        self.window = 1
        self.slots = asyncio.Semaphore(1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write

    @property
    def up(self) -> bool:
        return self.connack.done() and not self.connack.exception() and not self.lost.done()

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> asyncio.Future[ReasonCode]:
        """Queue one QoS 1 message; the future resolves to the PUBACK's reason code.

        Synchronous, so messages go on the wire in call order. Raises BrokerLinkLost.
        """
        if self.lost.done():
            raise BrokerLinkLost(self.lost.result())
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerLinkLost(paho.error_string(info.rc))
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        fut.add_done_callback(_retrieve)
        self._acks[info.mid] = fut
        return fut

    async def publish_in(
        self, group: PubackGroup, topic: str, payload: bytes, *, retain: bool
    ) -> None:
        """Take a slot (wait for one while the window is full), then queue one QoS 1 message
        whose PUBACK ``group`` counts. In call order on the wire. Raises BrokerLinkLost."""
        slots = self.slots
        await slots.acquire()
        try:
            if self.lost.done():
                raise BrokerLinkLost(self.lost.result())
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerLinkLost(paho.error_string(info.rc))
        except BaseException:
            slots.release()
            raise
        self._acks[info.mid] = (group, group.sent)
        group.sent += 1
        group.left += 1

    def subscribe(self, topic_filter: str) -> asyncio.Future[list[ReasonCode]]:
        """Subscribe at QoS 1; the future resolves to the SUBACK's reason codes.

        Messages go to the ``on_message`` handler given at construction. Raises BrokerLinkLost.
        """
        if self.lost.done():
            raise BrokerLinkLost(self.lost.result())
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerLinkLost(paho.error_string(rc))
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        fut.add_done_callback(_retrieve)
        self._subacks[mid] = fut
        return fut

    async def keepalive(self, tick: float) -> None:
        """PINGREQ when idle, and drop the link when PINGRESP does not come (paho's loop_misc)."""
        while not self.lost.done():
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(tick)

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the will); ``lost`` resolves once sent."""
        if not self.lost.done():
            self.client.disconnect()

    async def close(self, timeout: float = 2.0) -> None:
        """DISCONNECT, wait (bounded) until it is sent, then close the socket.

        Cancelling is safe: the socket is closed anyway.
        """
        try:
            if self.up:
                self.disconnect()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self.lost)
                raise_if_cancelling()
        finally:
            self.abort("closed")

    def abort(self, reason: str) -> None:
        """Close the socket without DISCONNECT (the broker will fire the will)."""
        self._unwatch()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._mark_lost(reason)

    # paho callbacks

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.connack.done():
            return
        if reason.is_failure:
            self.connack.set_exception(_ConnackRefused(reason))
        else:
            self.connack.set_result(properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        server = flags.is_disconnect_packet_from_server
        who = "the broker closed the connection" if server else "connection lost"
        self._mark_lost(f"{who} ({reason.getName()})")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        waiter = self._acks.pop(mid, None)
        if isinstance(waiter, tuple):
            group, index = waiter
            group._acked(index, reason)
        elif waiter is not None and not waiter.done():
            waiter.set_result(reason)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(reasons))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._on_message_cb is not None:
            self._on_message_cb(message.topic, bytes(message.payload), bool(message.retain))

    def _mark_lost(self, reason: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(BrokerLinkLost(reason))
        if not self.lost.done():
            self.lost.set_result(reason)
        acks, self._acks = self._acks, {}
        subacks, self._subacks = self._subacks, {}
        for waiter in acks.values():
            if isinstance(waiter, tuple):
                waiter[0]._lost(reason)
            elif not waiter.done():
                waiter.set_exception(BrokerLinkLost(reason))
        for sub in subacks.values():
            if not sub.done():
                sub.set_exception(BrokerLinkLost(reason))

    # socket readiness (after aiomqtt): paho reads and writes, the loop says when

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        current = _raw(self.client.socket())
        if current is None or current is not _raw(sock) or self.lost.done():
            return
        self._fd = current.fileno()
        # paho leaves Nagle on: a lone PUBLISH then waits for the peer's delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            current.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if getattr(self.client, "_sock", None) is current:
            # paho reads through the buffer from now on (nothing was read yet: the CONNACK
            # comes after this, through the reader added below).
            self.client._sock = _BufferedSocket(current)
        self._loop.add_reader(self._fd, self._readable)

    def _unwatch(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = -1
            self._writer_armed = False

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._unwatch)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._want_write, sock)

    def _want_write(self, sock: Any) -> None:
        """paho queued a packet into an empty queue (it says so once, until a write empties
        the queue again): everything queued in this loop turn goes out together, at its end.
        Whether the socket took it all, :meth:`_write` sees for itself."""
        if self._fd < 0 or _raw(self.client.socket()) is not _raw(sock):
            return
        if not self._flush_soon and not self._writer_armed:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop.is_closed():
            # paho's Client.__del__ closes a socket an abort() already closed, possibly long
            # after the loop ended (a connect cancelled midway): nothing is watched any more.
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _readable(self) -> None:
        try:
            while self.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                # Bytes the selector cannot see: our read buffer's (paho reads at most one
                # packet per message in flight per call), and an SSL socket's decrypted ones
                # (paho #131).
                sock = self.client.socket()
                if sock is None or not getattr(sock, "pending", lambda: 0)():
                    break
        except Exception as exc:  # noqa: BLE001 - a broken socket surfaces as anything
            self.abort(f"read failed: {exc!r}")

    def _flush(self) -> None:
        """End of the loop turn: what paho queued meanwhile, in one ``send()``."""
        self._flush_soon = False
        if self._writer_armed or self._fd < 0:
            return  # the socket is full (_writable sends when it drains), or gone
        self._write()

    def _writable(self) -> None:
        self._write()

    def _write(self) -> None:
        try:
            if self.connack.done():
                # After the CONNACK only this thread touches paho's queue (the connect
                # thread queues the CONNECT before it).
                _coalesce(self.client._out_packet)  # type: ignore[arg-type]
            self.sends += 1
            self.client.loop_write()
        except Exception as exc:  # noqa: BLE001
            self.abort(f"write failed: {exc!r}")
            return
        if self._fd < 0:
            return  # the write ended the link (a DISCONNECT, an error)
        if self.client.want_write():
            # The socket took only part: the loop says when it drains. (paho does not tell:
            # it asks once per empty queue, and the queue was not empty.)
            if not self._writer_armed:
                self._writer_armed = True
                self._loop.add_writer(self._fd, self._writable)
        elif self._writer_armed:
            self._writer_armed = False
            self._loop.remove_writer(self._fd)


async def open_link(
    settings: BrokerSettings,
    *,
    will: Publication | None = None,
    max_in_flight: int = 50,
    on_message: MessageHandler | None = None,
) -> BrokerLink:
    """TCP, TLS, CONNECT and CONNACK: a link that is up, or :class:`BrokerError` saying why.

    ``will`` is sent at QoS 1; ``max_in_flight`` sizes :attr:`BrokerLink.slots` (lowered to the
    broker's Receive Maximum under MQTT 5). Cancelling is safe: whatever the connect thread
    still opens is closed.
    """
    loop = asyncio.get_running_loop()
    addr = settings.address
    v5 = settings.protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=False,
    )
    # The real bound is the link's semaphore; paho's is only a backstop.
    client.max_inflight_messages_set(max_in_flight + 2)
    client.connect_timeout = settings.connect_timeout_s
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    link = BrokerLink(client, loop, on_message)

    def connect() -> None:  # blocking: TCP, TLS handshake, CONNECT; in an executor thread
        if addr.tls:
            client.tls_set_context(settings.tls_context())
        client.connect(
            addr.host,
            addr.port,
            settings.keepalive,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )

    connecting = loop.run_in_executor(None, connect)
    try:
        await asyncio.shield(connecting)
        async with asyncio.timeout(settings.connect_timeout_s):
            props = await asyncio.shield(link.connack)
    except BaseException as exc:
        if not connecting.done():
            # Cancelled mid-connect: the thread still finishes; drop what it opens.
            connecting.add_done_callback(lambda _f: link.abort("abandoned"))
        else:
            link.abort("connect failed")
        raise_if_cancelling()  # a refusal that arrived with the cancellation (3.11)
        if isinstance(exc, _ConnackRefused):
            raise connack_error(
                exc.reason,
                addr,
                settings.username,
                settings.client_id,
                settings.password_source,
            ) from None
        if isinstance(exc, BrokerLinkLost):
            raise closed_before_connack(addr) from None
        if isinstance(exc, TimeoutError):
            raise BrokerError(
                f"mqtt: broker {addr} sent no CONNACK within {settings.connect_timeout_s:g} s",
                "unreachable",
            ) from None
        if isinstance(exc, BrokerError):
            raise
        if isinstance(exc, OSError):
            raise socket_error(exc, addr) from None
        if isinstance(exc, ValueError):  # ssl.CertificateError is an OSError too
            raise BrokerError(f"mqtt: cannot connect to broker {addr}: {exc}", "config") from None
        raise
    try:
        raise_if_cancelling()  # a CONNACK that arrived with the cancellation (3.11)
    except asyncio.CancelledError:
        link.abort("abandoned")
        raise
    link.window = max_in_flight
    receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
    if receive_max:
        # MQTT 5: the broker says how many unacknowledged publishes it takes (mosquitto: 20,
        # its max_inflight_messages); going past it is a protocol error. Keep two for the
        # bridge state and health messages.
        link.window = max(1, min(max_in_flight, receive_max - 2))
    link.slots = asyncio.Semaphore(link.window)
    return link


async def read_retained(
    settings: BrokerSettings, topic_filter: str, *, quiet_s: float = 1.0, timeout_s: float = 10.0
) -> dict[str, bytes]:
    """What a subscriber that connects now sees: ``{topic: payload}`` of the retained messages.

    Subscribes to ``topic_filter`` and collects until no retained message came for ``quiet_s``
    (a broker sends them right after the SUBACK) or ``timeout_s`` passed. Raises
    :class:`BrokerError` when it cannot connect, :class:`BrokerLinkLost` when the link drops,
    ``TimeoutError`` when no SUBACK came within ``timeout_s``.
    """
    seen: dict[str, bytes] = {}
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            seen[topic] = payload
            arrived.set()

    link = await open_link(settings, max_in_flight=1, on_message=on_message)
    loop = asyncio.get_running_loop()
    failed: BrokerLinkLost | TimeoutError | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            keepalive = tg.create_task(
                link.keepalive(min(1.0, settings.keepalive / 4)),
                name=f"mqtt[{settings.client_id}].keepalive",
            )
            try:
                async with asyncio.timeout(timeout_s):
                    await link.subscribe(topic_filter)
                raise_if_cancelling()
                deadline = loop.time() + timeout_s
                while (left := deadline - loop.time()) > 0:
                    arrived.clear()
                    try:
                        async with asyncio.timeout(min(quiet_s, left)):
                            await arrived.wait()
                    except TimeoutError:
                        break
                    raise_if_cancelling()
            except (BrokerLinkLost, TimeoutError) as exc:
                # Raised after the group: from inside it would come out as an ExceptionGroup.
                failed = exc
            finally:
                keepalive.cancel()
        if failed is not None:
            raise failed
        if link.lost.done():
            raise BrokerLinkLost(link.lost.result())
    finally:
        await link.close()
    return seen
