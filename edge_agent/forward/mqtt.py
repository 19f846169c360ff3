"""Forward the outbox over MQTT: the ``mqtt`` sink.

Topics, under a base that defaults to ``roomos-edge/<site>``:

``<base>/bridge/state``
    Retained ``online`` / ``offline``. ``offline`` is the Last Will (QoS 1, retained): the
    broker publishes it when the agent dies (kill -9: at once, the kernel closes the socket) or
    its link goes silent for 1.5 x keepalive. ``online`` is published, retained, after EVERY
    CONNACK; a broker finishes a client-id takeover (and fires the old link's will) before it
    answers CONNACK, so the fresh ``online`` always lands after a stale ``offline``. A clean
    DISCONNECT discards the will, so :meth:`MqttSink.close` publishes ``offline`` itself first.
``<base>/bridge/health``
    JSON, QoS 1, not retained (a retained health message from a dead agent would look alive):
    ``timestamp``, ``site``, ``uptime_s``, ``mqtt`` (this link's counters) and whatever the
    agent's ``health()`` callback returns (devices connected, outbox depth, deliveries...). Sent
    on connect and every ``health_interval_s``.
``<base>/devices/<id>/events``
    QoS 1, not retained: every event's envelope (``OutboxEvent.body``, byte for byte the
    webhook body), one per message, in order per device, ``bookings.snapshot`` included.
``<base>/devices/<id>/availability``
    Retained ``online`` / ``offline``, following the ``device.online`` / ``device.offline``
    events of the stream. Meaningful only while ``bridge/state`` is ``online``: when the agent is
    gone the last value stays retained, and consumers should read the bridge state first.
``<base>/devices/<id>/bookings``
    Retained: the whole envelope of the latest ``bookings.snapshot`` (``data.window``,
    ``data.bookings``), not just its ``data``, so a late subscriber gets the current window with
    its ``event_id`` and ``timestamp`` and can line it up against the events topic.

At least once. An event counts as delivered to this sink only when the broker has PUBACKed
every message it maps to (events topic and, for availability and snapshots, the retained
topic): :meth:`MqttSink.send` returns :class:`Delivered` only then, and the drainer marks the
events done in the outbox only on that outcome. If the link drops with PUBACKs outstanding,
``send`` returns :class:`Retry`; the events are still undelivered in the outbox, and after the
reconnect the drainer hands the same batch over again and it is published again, from its
first event. So nothing PUBACK-less is ever marked done, and nothing is lost across broker
restarts, network loss or agent restarts (the outbox is on disk). The price is duplicates: a
message the broker accepted but whose PUBACK was lost is published twice, and QoS 1 itself may
duplicate. Receivers drop duplicates by ``data.event_id``. The MQTT session is clean on
every connect (the durable queue is the outbox, not the broker's session state), and every
connection gets a fresh paho client, so paho never replays anything on its own.

Under MQTT 5 a PUBACK may carry a failure reason code (e.g. 0x87 "Not authorized" when an ACL
forbids the topic); that is not a delivery: permanent refusals give :class:`Reject` (dead
letter after a few tries), others :class:`Retry`. MQTT 3.1.1 has no such code; mosquitto then
PUBACKs and silently drops a message the ACL forbids, which no client can detect.

The connection shell is modelled on aiomqtt's client (paho does the protocol; the asyncio loop
drives its socket), written here against paho directly so that a lost link fails every
outstanding PUBACK at once and a PUBACK's reason code is not thrown away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.clock import system_clock, utc_iso
from edge_agent.forward.base import Delivered, OutboxEvent, Outcome, Reject, Retry, SinkStats

log = structlog.get_logger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"

# CONNACK reason codes (MQTT 5 numbering; paho maps the 3.1.1 return codes 4 and 5 onto these).
# 0x86 bad user name or password, 0x87 not authorized, 0x8C bad authentication method.
_CONNACK_BAD_CREDENTIALS = {0x86, 0x87, 0x8C}
_CONNACK_BAD_CLIENT_ID = 0x85
# PUBACK failures that another try will not fix: not authorized, topic name invalid, packet too
# large, payload format invalid.
_PUBACK_PERMANENT = {0x87, 0x90, 0x95, 0x99}


# --- pure: addresses, topics, what an event becomes -------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` -> :class:`BrokerAddress`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"mqtt url {url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"mqtt url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise ValueError(
            f"mqtt url {url!r}: only scheme://host:port (credentials go in username/password)"
        )
    tls = scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


@dataclass(frozen=True, slots=True)
class Topics:
    base: str

    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state"

    @property
    def bridge_health(self) -> str:
        return f"{self.base}/bridge/health"

    def device(self, device_id: str, leaf: Literal["events", "availability", "bookings"]) -> str:
        return f"{self.base}/devices/{device_id}/{leaf}"


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool


@functools.lru_cache(maxsize=4096)  # device ids: checked once each, not per message
def check_topic_level(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` can stand as one MQTT topic level."""
    if not name or any(c in name for c in "/+#\0"):
        raise ValueError(f"{name!r} cannot be an MQTT topic level (empty, or has / + # NUL)")


def publications(event: OutboxEvent, topics: Topics) -> list[Publication]:
    """The messages one event becomes, in publish order."""
    check_topic_level(event.device_id)
    out = [Publication(topics.device(event.device_id, "events"), event.body, False)]
    if event.type == "device.online":
        out.append(Publication(topics.device(event.device_id, "availability"), ONLINE, True))
    elif event.type == "device.offline":
        out.append(Publication(topics.device(event.device_id, "availability"), OFFLINE, True))
    elif event.type == "bookings.snapshot":
        out.append(Publication(topics.device(event.device_id, "bookings"), event.body, True))
    return out


class BrokerError(Exception):
    """A connection attempt failed. ``str()`` is for a person; ``kind`` picks the retry policy."""

    def __init__(
        self, message: str, kind: Literal["auth", "tls", "config", "refused", "unreachable"]
    ) -> None:
        super().__init__(message)
        self.kind = kind


class ConnectionLost(Exception):
    """The link to the broker dropped (or was never up) while a PUBACK was outstanding."""


def _connack_error(
    reason: ReasonCode, addr: BrokerAddress, username: str | None, client_id: str
) -> BrokerError:
    name = reason.getName().lower()
    if reason.value in _CONNACK_BAD_CREDENTIALS:
        if username is None:
            return BrokerError(
                f"mqtt: broker {addr} refused the connection without credentials ({name}); "
                "set [mqtt] username and password_env in the config",
                "auth",
            )
        return BrokerError(
            f"mqtt: broker {addr} refused the credentials for user {username!r} ({name}); "
            "check [mqtt] username and password_env in the config",
            "auth",
        )
    if reason.value == _CONNACK_BAD_CLIENT_ID:
        return BrokerError(
            f"mqtt: broker {addr} rejected client id {client_id!r} ({name}); "
            "set [mqtt] client_id to an id the broker accepts",
            "auth",
        )
    return BrokerError(f"mqtt: broker {addr} refused the connection ({name})", "refused")


def _socket_error(exc: OSError, addr: BrokerAddress) -> BrokerError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            f"mqtt: TLS to broker {addr} failed: the broker's certificate was not accepted "
            f"(certificate verify failed: {exc.verify_message}); check [mqtt] ca_file (the CA that signed the broker's "
            f"certificate) and that the certificate is issued for {addr.host!r}",
            "tls",
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            f"mqtt: TLS handshake with broker {addr} failed ({exc.reason or exc}); check that "
            "the port is a TLS listener and [mqtt] ca_file, cert_file and key_file",
            "tls",
        )
    if isinstance(exc, ConnectionRefusedError):
        detail = "connection refused; is the broker running, and is the port right?"
    elif isinstance(exc, TimeoutError):
        detail = "timed out"
    else:
        detail = exc.strerror or str(exc)
    return BrokerError(f"mqtt: cannot reach broker {addr} ({detail})", "unreachable")


def _seconds(delay: float) -> str:
    return f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # Futures failed on link loss after their waiter gave up: read the exception so asyncio does
    # not log "Future exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


# --- one connection: paho driven by the asyncio loop -----------------------------------------


class _Link:
    """One MQTT connection: a paho client whose socket the asyncio loop drives.

    paho's callbacks run on the loop thread (from ``loop_read``/``loop_write``/``loop_misc``),
    except the socket ones during the blocking connect, which runs in an executor thread and
    hands over with ``call_soon_threadsafe``. The callbacks only resolve futures: no locks.
    """

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.connack: asyncio.Future[Properties | None] = loop.create_future()
        self.connack.add_done_callback(_retrieve)
        self.lost: asyncio.Future[str] = loop.create_future()
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._fd = -1
        # Event publishes awaiting PUBACK on this link; sized once the CONNACK is in.
        self.window = 1
        self.slots = asyncio.Semaphore(1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    @property
    def up(self) -> bool:
        return self.connack.done() and not self.connack.exception() and not self.lost.done()

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> asyncio.Future[ReasonCode]:
        """Queue one QoS 1 message; the future resolves to the PUBACK's reason code.

        Synchronous, so messages go on the wire in call order. Raises ConnectionLost.
        """
        if self.lost.done():
            raise ConnectionLost(self.lost.result())
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionLost(paho.error_string(info.rc))
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        fut.add_done_callback(_retrieve)
        self._acks[info.mid] = fut
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
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason)

    def _mark_lost(self, reason: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionLost(reason))
        if not self.lost.done():
            self.lost.set_result(reason)
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))

    # socket readiness (after aiomqtt): paho reads and writes, the loop says when

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        current = self.client.socket()
        if current is None or current is not sock or self.lost.done():
            return
        self._fd = current.fileno()
        # paho leaves Nagle on: a lone PUBLISH then waits for the peer's delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            current.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
        self._loop.add_reader(self._fd, self._readable)

    def _unwatch(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = -1

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._unwatch)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._want_write, sock)

    def _want_write(self, sock: Any) -> None:
        if self.client.socket() is sock and self._fd >= 0:
            self._loop.add_writer(self._fd, self._writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._fd >= 0:
            self._call(self._loop.remove_writer, self._fd)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _readable(self) -> None:
        try:
            while self.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                # An SSL socket can hold decrypted bytes the selector cannot see (paho #131).
                sock = self.client.socket()
                if sock is None or not getattr(sock, "pending", lambda: 0)():
                    break
        except Exception as exc:  # noqa: BLE001 - a broken socket surfaces as anything
            self.abort(f"read failed: {exc!r}")

    def _writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:  # noqa: BLE001
            self.abort(f"write failed: {exc!r}")


class _ConnackRefused(Exception):
    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(reason.getName())
        self.reason = reason


# --- the sink --------------------------------------------------------------------------------


class MqttSink:
    """Forwards outbox events to an MQTT broker at QoS 1; see the module docstring.

    Args:
        url: ``mqtt://host:port`` (default port 1883) or ``mqtts://host:port`` (8883; TLS with
            the server certificate and its host name verified).
        site: the site name, used in the default base topic.
        client_id: MQTT client id; one per agent (two agents with one id take turns kicking
            each other off). Default ``edge-agent-<site>``.
        username, password: already resolved from the environment or a credentials file.
        ca_file: CA bundle that signed the broker's certificate (default: the system store).
        cert_file, key_file: a client certificate, for brokers that require one.
        keepalive: seconds; the broker fires the will after 1.5 x this without traffic.
        base_topic: default ``roomos-edge/<site>``.
        protocol: ``"3.1.1"`` or ``"5"``.
        health: returns the agent's figures for ``bridge/health`` (must not block).
        health_interval_s: seconds between ``bridge/health`` messages.
        max_batch: events handed to one :meth:`send`.
        max_in_flight: publishes awaiting PUBACK, across all devices (20-100 is the sweet spot).
        connect_timeout_s: TCP + TLS + CONNACK.
        publish_timeout_s: a batch with a PUBACK still missing after this is retried.
        backoff_initial_s, backoff_max_s: reconnect delays (jittered, exponential).
        refused_retry_s: the first delay after the broker refused the credentials or TLS failed
            (a person has to fix something; hammering the broker does not help).
        stable_after_s: a link that lived this long resets the backoff.
    """

    name = "mqtt"

    def __init__(
        self,
        url: str,
        *,
        site: str,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        keepalive: int = 30,
        base_topic: str | None = None,
        protocol: Literal["3.1.1", "5"] = "5",
        health: Callable[[], dict[str, Any]] | None = None,
        health_interval_s: float = 60.0,
        max_batch: int = 50,
        max_in_flight: int = 50,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 30.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        refused_retry_s: float = 300.0,
        stable_after_s: float = 30.0,
    ) -> None:
        self._addr = parse_broker_url(url)
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f"mqtt protocol {protocol!r}: use '3.1.1' or '5'")
        if (cert_file is None) != (key_file is None):
            raise ValueError("mqtt: cert_file and key_file go together")
        if not self._addr.tls and (ca_file or cert_file):
            raise ValueError("mqtt: ca_file/cert_file need an mqtts:// url")
        self.max_batch = max_batch
        self._site = site
        self._client_id = client_id or f"edge-agent-{site}"
        self._username = username
        self._password = password
        self._ca_file = os.fspath(ca_file) if ca_file is not None else None
        self._cert_file = os.fspath(cert_file) if cert_file is not None else None
        self._key_file = os.fspath(key_file) if key_file is not None else None
        self._keepalive = keepalive
        self._topics = Topics((base_topic or f"roomos-edge/{site}").rstrip("/"))
        self._protocol = protocol
        self._health = health
        self._health_interval_s = health_interval_s
        self._max_in_flight = max_in_flight
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._backoff = Backoff(initial=backoff_initial_s, maximum=backoff_max_s)
        self._refused_backoff = Backoff(
            initial=refused_retry_s, maximum=max(refused_retry_s, 4 * refused_retry_s)
        )
        self._stable_after_s = stable_after_s

        self._link: _Link | None = None
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._started = time.monotonic()
        self._in_flight = 0
        self._connected_since: str | None = None
        self._connects = 0
        self.stats = SinkStats()
        self._log = log.bind(sink=self.name, broker=str(self._addr), client_id=self._client_id)

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def last_error(self) -> str | None:
        """The last connection or delivery problem, as a sentence for a person."""
        return self.stats.last_error

    def ready(self) -> bool:
        return self._link is not None and self._link.up

    # --- delivery ----------------------------------------------------------------------------

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        """Publish one device's events in order, pipelined; Delivered once every PUBACK is in.

        Cancelling is safe: the events stay undelivered and are published again next time.
        """
        link = self._link
        if link is None or not link.up:
            return self._retry(f"mqtt: not connected to broker {self._addr}", count=False)
        acks: list[asyncio.Future[ReasonCode]] = []
        try:
            try:
                for event in events:
                    for pub in publications(event, self._topics):
                        await link.slots.acquire()
                        try:
                            fut = link.publish(pub.topic, pub.payload, retain=pub.retain)
                        except BaseException:
                            link.slots.release()
                            raise
                        self._in_flight += 1
                        fut.add_done_callback(functools.partial(self._release_slot, link.slots))
                        acks.append(fut)
            except ValueError as exc:
                return Reject(f"mqtt: {exc}")
            if acks:
                done, pending = await asyncio.wait(
                    acks, timeout=self._publish_timeout_s, return_when=asyncio.FIRST_EXCEPTION
                )
                lost = next((f.exception() for f in done if f.exception() is not None), None)
                if lost is not None:
                    raise ConnectionLost(str(lost))
                if pending:
                    return self._retry(
                        f"mqtt: {len(pending)} of {len(acks)} PUBACKs from broker {self._addr} "
                        f"missing after {self._publish_timeout_s:g} s"
                    )
        except ConnectionLost as exc:
            return self._retry(f"mqtt: link to broker {self._addr} lost before PUBACK ({exc})")
        finally:
            for fut in acks:
                if not fut.done():
                    fut.cancel()  # frees its slot; a late PUBACK finds no waiter
        for fut in acks:
            reason = fut.result()
            if reason.is_failure:
                text = f"mqtt: broker {self._addr} refused a publish ({reason.getName()})"
                self.stats.last_error = text
                if reason.value in _PUBACK_PERMANENT:
                    return Reject(text)
                return self._retry(text)
        self.stats.delivered += len(events)
        return Delivered()

    def _release_slot(self, slots: asyncio.Semaphore, _fut: asyncio.Future[ReasonCode]) -> None:
        self._in_flight -= 1
        slots.release()

    def _retry(self, reason: str, count: bool = True) -> Retry:
        if count:
            self.stats.retried += 1
        return Retry(reason)

    # --- the connection loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, keep connected, reconnect with jittered backoff until :meth:`close`.

        Cancelling is safe: a live link says ``offline`` (best effort) and disconnects.
        """
        if self._running:
            raise RuntimeError("MqttSink.run() is already running (one connection loop per sink)")
        self._running = True
        attempt = refused = 0
        try:
            while not self._closing.is_set():
                attempt += 1
                try:
                    lived = await self._connect_and_serve()
                except BrokerError as exc:
                    if exc.kind in ("auth", "tls", "config"):
                        refused += 1
                        delay = max(
                            self._backoff.delay(attempt), self._refused_backoff.delay(refused)
                        )
                        level = "error"
                    else:
                        delay = self._backoff.delay(attempt)
                        level = "warning"
                    text = f"{exc}; retrying in {_seconds(delay)} s"
                    self.stats.last_error = text
                    getattr(self._log, level)(text, kind=exc.kind, attempt=attempt)
                else:
                    refused = 0
                    if self._closing.is_set():
                        break
                    if lived >= self._stable_after_s:
                        attempt = 1
                    delay = self._backoff.delay(attempt)
                    self._log.warning(
                        "mqtt: link to broker lost; reconnecting",
                        reason=self.stats.last_error,
                        retry_in_s=round(delay, 3),
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._running = False
            self._stopped.set()

    async def _connect_and_serve(self) -> float:
        """One connection's life; returns how long it was up. Raises BrokerError."""
        link = await self._open()
        up_at = time.monotonic()
        try:
            try:
                await asyncio.wait_for(
                    link.publish(self._topics.bridge_state, ONLINE, retain=True),
                    self._publish_timeout_s,
                )
            except (ConnectionLost, TimeoutError) as exc:
                link.abort(f"no PUBACK for the online state: {exc!r}")
                raise BrokerError(
                    f"mqtt: broker {self._addr} did not acknowledge {self._topics.bridge_state} "
                    f"({exc!r})",
                    "unreachable",
                ) from None
            self._connects += 1
            self._connected_since = utc_iso(system_clock.now())
            self._link = link
            self.stats.last_error = None
            self._log.info(
                "mqtt: connected",
                protocol=self._protocol,
                tls=self._addr.tls,
                in_flight_window=link.window,
                base_topic=self._topics.base,
            )
            tag = f"mqtt[{self._client_id}]"
            async with asyncio.TaskGroup() as tg:
                keepalive = tg.create_task(
                    link.keepalive(min(1.0, self._keepalive / 4)), name=f"{tag}.keepalive"
                )
                health = tg.create_task(self._health_loop(link), name=f"{tag}.health")
                closing = tg.create_task(self._closing.wait(), name=f"{tag}.closing")
                watched: list[asyncio.Future[Any]] = [link.lost, closing]
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                self._link = None
                for task in (keepalive, health, closing):
                    task.cancel()
            if link.lost.done():
                self.stats.last_error = (
                    f"mqtt: link to broker {self._addr} lost ({link.lost.result()})"
                )
            else:
                await self._goodbye(link)
        except asyncio.CancelledError:
            self._link = None
            if link.up:
                await self._goodbye(link)
            raise
        finally:
            self._link = None
            link.abort("closed")
        return time.monotonic() - up_at

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if self._protocol == "5" else paho.MQTTv311,
            clean_session=None if self._protocol == "5" else True,
            reconnect_on_failure=False,
        )
        # The real bound is the link's semaphore; paho's is only a backstop.
        client.max_inflight_messages_set(self._max_in_flight + 2)
        client.connect_timeout = self._connect_timeout_s
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.will_set(self._topics.bridge_state, OFFLINE, qos=1, retain=True)
        link = _Link(client, loop)
        link.window = self._max_in_flight

        def connect() -> None:  # blocking: TCP, TLS handshake, CONNECT; in an executor thread
            if self._addr.tls:
                client.tls_set_context(self._tls_context())
            client.connect(
                self._addr.host,
                self._addr.port,
                self._keepalive,
                clean_start=True if self._protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            )

        connecting = loop.run_in_executor(None, connect)
        try:
            await asyncio.shield(connecting)
            props = await asyncio.wait_for(asyncio.shield(link.connack), self._connect_timeout_s)
        except BaseException as exc:
            if not connecting.done():
                # Cancelled mid-connect: the thread still finishes; drop what it opens.
                connecting.add_done_callback(lambda _f: link.abort("abandoned"))
            else:
                link.abort("connect failed")
            if isinstance(exc, _ConnackRefused):
                raise _connack_error(
                    exc.reason, self._addr, self._username, self._client_id
                ) from None
            if isinstance(exc, ConnectionLost):
                hint = (
                    " (over TLS: it may require a client certificate, [mqtt] cert_file and "
                    "key_file, or refuse the one given)"
                    if self._addr.tls
                    else ""
                )
                raise BrokerError(
                    f"mqtt: broker {self._addr} closed the connection before answering "
                    f"CONNECT{hint}",
                    "tls" if self._addr.tls else "refused",
                ) from None
            if isinstance(exc, TimeoutError):
                raise BrokerError(
                    f"mqtt: broker {self._addr} sent no CONNACK within "
                    f"{self._connect_timeout_s:g} s",
                    "unreachable",
                ) from None
            if isinstance(exc, BrokerError):
                raise
            if isinstance(exc, OSError):
                raise _socket_error(exc, self._addr) from None
            if isinstance(exc, ValueError):  # ssl.CertificateError is an OSError too
                raise BrokerError(f"mqtt: cannot connect to broker {self._addr}: {exc}", "config")
            raise
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        if receive_max:
            # MQTT 5: the broker says how many unacknowledged publishes it takes (mosquitto: 20,
            # its max_inflight_messages); going past it is a protocol error. Keep two for the
            # bridge state and health messages.
            link.window = max(1, min(self._max_in_flight, receive_max - 2))
        link.slots = asyncio.Semaphore(link.window)
        return link

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self._ca_file)
            if self._cert_file is not None:
                ctx.load_cert_chain(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError) as exc:
            which = (
                f"ca_file {self._ca_file}"
                if self._cert_file is None
                else f"ca_file {self._ca_file} / cert_file {self._cert_file} / key_file "
                f"{self._key_file}"
            )
            raise BrokerError(
                f"mqtt: cannot load the TLS files ({which}): {exc}; check [mqtt] in the config",
                "config",
            ) from None
        # Hostname checking and CERT_REQUIRED are the defaults of create_default_context.
        return ctx

    # --- health and goodbye ------------------------------------------------------------------

    async def _health_loop(self, link: _Link) -> None:
        while link.up:
            try:
                await asyncio.wait_for(
                    link.publish(self._topics.bridge_health, self._health_payload(), retain=False),
                    self._publish_timeout_s,
                )
            except (ConnectionLost, TimeoutError):
                return
            await asyncio.sleep(self._health_interval_s)

    def _health_payload(self) -> bytes:
        doc: dict[str, Any] = {
            "timestamp": utc_iso(system_clock.now()),
            "site": self._site,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "mqtt": {
                "connects": self._connects,
                "connected_since": self._connected_since,
                "delivered": self.stats.delivered,
                "retried": self.stats.retried,
                "in_flight": self._in_flight,
            },
        }
        if self._health is not None:
            try:
                doc.update(self._health())
            except Exception:  # noqa: BLE001 - a broken callback must not take the link down
                self._log.exception("mqtt: health callback failed")
        return jsoncodec.dumpb(doc)

    async def _goodbye(self, link: _Link) -> None:
        try:
            await asyncio.wait_for(
                link.publish(self._topics.bridge_state, OFFLINE, retain=True),
                min(self._publish_timeout_s, 5.0),
            )
        except (ConnectionLost, TimeoutError) as exc:
            self._log.warning("mqtt: could not publish the offline state", error=repr(exc))
            return
        link.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(link.lost), 2.0)
        self._log.info("mqtt: disconnected")

    async def close(self) -> None:
        """Say ``offline`` (retained), disconnect, and let :meth:`run` return.

        Cancelling is safe; the broker then fires the will.
        """
        self._closing.set()
        if self._running:
            await self._stopped.wait()


__all__ = [
    "BrokerAddress",
    "BrokerError",
    "MqttSink",
    "Publication",
    "Topics",
    "check_topic_level",
    "parse_broker_url",
    "publications",
]
